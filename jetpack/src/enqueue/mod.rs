//! Putting tasks into the table: [`enqueue`], [`delay`], [`schedule`],
//! [`enqueue_many`], and [`Enqueue`] with its options.
//!
//! Each takes any sqlx executor: a pool, a connection, or your own open
//! transaction (`&mut *tx`), so a task enqueued in a transaction that rolls back
//! never exists.
//!
//! A feature: imports `model`, `driver` and `workflow` (docs/design.md, layers).

mod options;

pub use crate::model::Encoded;
pub use crate::model::{Cancel, Delivery, SignalTo, TaskRow, TaskState};
pub use options::{enqueue_all, Enqueue, Enqueued, OnConflict, MAX_PRIORITY};

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Executor;

pub use crate::driver::Backend;
use crate::driver::{Admin, AdminStatements, Enqueues, Workflows};
use crate::model::Error;
pub(crate) use crate::workflow::to_json;
use crate::workflow::IntoTask;
use crate::workflow::Wakeup;

/// Sends signal `S` to a task, or to the tasks waiting under a key; says what
/// became of it (see [`Delivery`]). Takes any executor, so the signal is part
/// of your transaction: it is delivered when that commits. From SQL:
/// `SELECT jetpack_signal(NULL, 'order-42', 'delivered', '{..}')` on
/// PostgreSQL.
///
/// ```no_run
/// # use jetpack::{Signal, SignalTo};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Delivered { carrier: String }
/// impl Signal for Delivered { const NAME: &'static str = "delivered"; }
///
/// # async fn f(pool: sqlx::PgPool) -> Result<(), jetpack::Error> {
/// let to = SignalTo::Key("order-42".into());
/// let sent = jetpack::signal(&pool, to, &Delivered { carrier: "DHL".into() }).await?;
/// # Ok(()) }
/// ```
pub async fn signal<'e, E, S>(db: E, to: SignalTo, signal: &S) -> Result<Delivery, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
    S: crate::workflow::Signal,
{
    if let SignalTo::Key(key) = &to {
        if key.is_empty() || key.contains('\0') || key.len() > crate::model::MAX_KEY_LEN {
            return Err(Error::Config(format!(
                "a signal's key must be non-empty text without NUL, at most {} bytes",
                crate::model::MAX_KEY_LEN
            )));
        }
    }
    let payload = serde_json::to_string(signal).map_err(Error::Serialize)?;
    <E::Database>::signal(db, to, S::NAME, payload).await
}

/// Reads task `id`; `None` when there is no such task (finished tasks are
/// deleted unless workers keep them).
pub async fn find<'e, E>(db: E, id: i64) -> Result<Option<TaskRow>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::find(db, id).await
}

/// Resumes a parked task, as `UPDATE jetpack_tasks SET error = NULL WHERE id = ..`
/// does: it runs again at once with its full retry budget. Returns false when the
/// task was not parked. Workers of this process wake at once on both backends.
pub async fn resume<'e, E>(db: E, id: i64) -> Result<bool, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::resume(db, id).await
}

/// Cancels task `id`, keeping `reason` in its `error` column: a ready,
/// scheduled, waiting or parked task stops at once; a running step is told
/// through [`Context::stopped`](crate::Context::stopped) (within a second on
/// PostgreSQL, within a third of the lease on SQLite when the worker is in
/// another process), and whatever it then returns is discarded, its
/// [`Context::tx`](crate::Context::tx) rolled back. Cancelling a cancelled task
/// changes nothing.
///
/// Takes any executor, so a cancel can be part of your own transaction. From
/// SQL: `SELECT jetpack_cancel(42, 'reason')` on PostgreSQL, or on either
/// backend `UPDATE jetpack_tasks SET state = 'cancelled', error = 'reason'
/// WHERE id = 42`.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool, id: i64) -> Result<(), jetpack::Error> {
/// match jetpack::cancel(&pool, id, "the customer withdrew").await? {
///     jetpack::Cancel::Cancelled => {}
///     jetpack::Cancel::Finished => println!("too late: it finished"),
///     _ => println!("no task {id}"),
/// }
/// # Ok(()) }
/// ```
pub async fn cancel<'e, E>(db: E, id: i64, reason: &str) -> Result<Cancel, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    // PostgreSQL's text cannot hold NUL.
    let reason = reason.replace('\0', "");
    <E::Database>::cancel(db, id, reason, false).await
}

/// Cancels task `id` as [`cancel`] does, and with it every descendant that
/// has not ended: its children, their children, and so on, in one statement.
/// Each descendant's `error` says which ancestor was cancelled and why. The
/// answer is task `id`'s. From SQL on PostgreSQL:
/// `SELECT jetpack_cancel(42, 'reason', true)`.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool, order: i64) -> Result<(), jetpack::Error> {
/// jetpack::cancel_with_descendants(&pool, order, "the order was withdrawn").await?;
/// # Ok(()) }
/// ```
pub async fn cancel_with_descendants<'e, E>(db: E, id: i64, reason: &str) -> Result<Cancel, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    let reason = reason.replace('\0', "");
    <E::Database>::cancel(db, id, reason, true).await
}

/// Enqueues a task to run as soon as a worker is free; returns its id.
///
/// `task` is a step (`ReadName { .. }`), a machine value or a scheduler value.
///
/// ```no_run
/// # use jetpack::task;
/// # async fn f(pool: sqlx::PgPool, step: impl jetpack::IntoTask) -> Result<(), jetpack::Error> {
/// let id = jetpack::enqueue(&pool, step).await?;
/// # Ok(()) }
/// ```
pub async fn enqueue<'e, E, T>(db: E, task: T) -> Result<i64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
    T: IntoTask,
{
    <E::Database>::insert(db, to_json(task)?, Wakeup::Now).await
}

/// Enqueues a task to run after `delay` (on the database clock); returns its id.
pub async fn delay<'e, E, T>(db: E, task: T, delay: Duration) -> Result<i64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
    T: IntoTask,
{
    <E::Database>::insert(db, to_json(task)?, Wakeup::Delay(delay)).await
}

/// Enqueues a task to run at `at` (at once if that has passed); returns its id.
pub async fn schedule<'e, E, T>(db: E, task: T, at: DateTime<Utc>) -> Result<i64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
    T: IntoTask,
{
    <E::Database>::insert(db, to_json(task)?, Wakeup::At(at)).await
}

/// Enqueues many tasks, due now, in one statement; returns their ids in order.
pub async fn enqueue_many<'e, E, T, I>(db: E, tasks: I) -> Result<Vec<i64>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
    T: IntoTask,
    I: IntoIterator<Item = T>,
{
    let steps = tasks
        .into_iter()
        .map(to_json)
        .collect::<Result<Vec<_>, _>>()?;
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    <E::Database>::insert_many(db, steps).await
}
