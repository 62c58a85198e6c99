//! Enqueues: one task, many, and the statements of an enqueue with a unique
//! key or a throttle (its logic is the enqueue feature's).

use async_trait::async_trait;
use sqlx::{Encode, Executor, FromRow, IntoArguments, Type};

use super::Base;
use crate::model::{BoxFuture, Encoded, Error, NewTask, Wakeup, Window};

/// The statements of enqueues.
pub trait Enqueues: Base {
    /// Stores `step`, due at `wakeup`; its id.
    fn insert<'e, E>(db: E, step: Encoded, wakeup: Wakeup) -> BoxFuture<'e, Result<i64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Stores `steps`, due now, in one statement; their ids in order.
    fn insert_many<'e, E>(db: E, steps: Vec<Encoded>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The connection's keyed statements, for an enqueue with a unique key
    /// or a throttle.
    fn keyed(db: &mut Self::Connection) -> &mut dyn KeyedStatements;

    /// After an enqueue: wakes the workers of this process (SQLite, which has
    /// no notifications; PostgreSQL's triggers notify every worker).
    fn enqueued() {}
}

/// The statements of a keyed or throttled enqueue, on one connection inside a
/// transaction; the enqueue's logic runs them.
#[async_trait]
pub trait KeyedStatements: Send {
    /// Stores `task` unless a live task holds its unique key; its id.
    async fn insert_unless_held(&mut self, task: &NewTask) -> Result<Option<i64>, Error>;
    /// The live task holding `key`, locked, and whether it has not started
    /// (ready, and no live lease).
    async fn holder(&mut self, key: &str) -> Result<Option<(i64, bool)>, Error>;
    /// Replaces the step, due time and priority of task `id`.
    async fn replace(&mut self, id: i64, task: &NewTask) -> Result<(), Error>;
    /// Takes the unique key from task `id`.
    async fn detach(&mut self, id: i64) -> Result<(), Error>;
    /// Takes throttle `key`'s window of `window` µs, if it is free.
    async fn take_window(&mut self, key: &str, window: i64) -> Result<Window, Error>;
    /// Records the task that took throttle `key`'s window.
    async fn set_window_task(&mut self, key: &str, id: i64) -> Result<(), Error>;
}

/// A backend's statements of a throttle's window: `take` takes window `$1`
/// for `$2` µs (a row when it was free), `task` reads the task that took
/// window `$1`, `set` records task `$2` as the one that took window `$1`.
pub(crate) struct WindowStatements {
    pub(crate) take: &'static str,
    pub(crate) task: &'static str,
    pub(crate) set: &'static str,
}

/// [`KeyedStatements::take_window`] by `sql`.
pub(crate) async fn take_window<D>(
    db: &mut D::Connection,
    sql: &WindowStatements,
    key: &str,
    window: i64,
) -> Result<Window, Error>
where
    D: sqlx::Database,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> String: Encode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'r> (String,): FromRow<'r, D::Row>,
    for<'r> (Option<i64>,): FromRow<'r, D::Row>,
{
    let taken: Option<String> = sqlx::query_scalar(sql.take)
        .bind(key.to_owned())
        .bind(window)
        .fetch_optional(&mut *db)
        .await?;
    if taken.is_some() {
        return Ok(Window::Taken);
    }
    let task: Option<Option<i64>> = sqlx::query_scalar(sql.task)
        .bind(key.to_owned())
        .fetch_optional(&mut *db)
        .await?;
    Ok(Window::Held(task.flatten()))
}

/// [`KeyedStatements::set_window_task`] by `sql`.
pub(crate) async fn set_window_task<D>(
    db: &mut D::Connection,
    sql: &WindowStatements,
    key: &str,
    id: i64,
) -> Result<(), Error>
where
    D: sqlx::Database,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> String: Encode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
{
    sqlx::query(sql.set)
        .bind(key.to_owned())
        .bind(id)
        .execute(&mut *db)
        .await?;
    Ok(())
}
