//! Putting tasks into the table: [`enqueue`], [`delay`], [`schedule`], [`enqueue_many`].
//!
//! Each takes any sqlx executor: a pool, a connection, or your own open
//! transaction (`&mut *tx`), so a task enqueued in a transaction that rolls back
//! never exists.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Executor;

use crate::machine::{BoxFuture, IntoTask};
use crate::step::Wakeup;
use crate::Error;

/// A database Jetpack can store tasks in.
pub trait Backend: sqlx::Database + sealed::Sealed {
    #[doc(hidden)]
    fn insert<'e, E>(db: E, step: Encoded, wakeup: Wakeup) -> BoxFuture<'e, Result<i64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn find<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<Option<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn resume<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<bool, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>>;

    #[doc(hidden)]
    fn insert_many<'e, E>(db: E, steps: Vec<Encoded>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
}

/// A task's row, as [`find`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// The task's id.
    pub id: i64,
    /// The current step as JSON, `{"Machine":{"Step":{..}}}`.
    pub step: String,
    /// When the step may run. While a step runs longer than a third of its
    /// lease, the heartbeat moves this along with the lease.
    pub wakeup_at: DateTime<Utc>,
    /// Attempts of the current step so far.
    pub tried: i32,
    /// The error the task is parked with, if it is.
    pub error: Option<String>,
    /// The worker running the step, if one is.
    pub locked_by: Option<String>,
    /// While a worker runs the step: when its lease expires.
    pub lease_until: Option<DateTime<Utc>>,
}

/// A task row as selected: step, wakeup_at (as the backend stores it), tried,
/// error, locked_by, lease_until.
type RowTuple<T> = (String, T, i32, Option<String>, Option<String>, Option<T>);

/// Reads task `id`; `None` once it has finished (finished tasks are deleted).
pub async fn find<'e, E>(db: E, id: i64) -> Result<Option<TaskRow>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database as Backend>::find(db, id).await
}

/// Resumes a parked task, as `UPDATE jetpack_tasks SET error = NULL WHERE id = ..`
/// does: it runs again at once with its full retry budget. Returns false when the
/// task was not parked. Workers of this process wake at once on both backends.
pub async fn resume<'e, E>(db: E, id: i64) -> Result<bool, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database as Backend>::resume(db, id).await
}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {
    fn find<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<Option<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let row: Option<RowTuple<DateTime<Utc>>> = sqlx::query_as(
                "SELECT step::text, wakeup_at, tried, error, locked_by, lease_until
                 FROM jetpack_tasks WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(db)
            .await?;
            Ok(row.map(
                |(step, wakeup_at, tried, error, locked_by, lease_until)| TaskRow {
                    id,
                    step,
                    wakeup_at,
                    tried,
                    error,
                    locked_by,
                    lease_until,
                },
            ))
        })
    }

    fn resume<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<bool, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE jetpack_tasks SET error = NULL WHERE id = $1 AND error IS NOT NULL",
            )
            .bind(id)
            .execute(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut migrator = sqlx::migrate!("../migrations/postgres");
            migrator.dangerous_set_table_name("_jetpack_migrations");
            migrator.run(pool).await?;
            Ok(())
        })
    }

    fn insert<'e, E>(db: E, step: Encoded, wakeup: Wakeup) -> BoxFuture<'e, Result<i64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let (delay, at) = crate::store::wakeup_binds(&wakeup)?;
            let kind = step.kind();
            Ok(sqlx::query_scalar(crate::store::postgres::INSERT)
                .bind(step.json)
                .bind(kind)
                .bind(delay)
                .bind(at)
                .fetch_one(db)
                .await?)
        })
    }

    fn insert_many<'e, E>(db: E, steps: Vec<Encoded>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        use crate::store::postgres::{INSERT_MANY, INSERT_MANY_OF_KIND};
        Box::pin(async move {
            // Usually all steps are of one kind: bound once, not once per row.
            let query = if one_kind(&steps) {
                let kind = steps.first().map(Encoded::kind).unwrap_or_default();
                let json: Vec<String> = steps.into_iter().map(|s| s.json).collect();
                sqlx::query_scalar(INSERT_MANY_OF_KIND)
                    .bind(json)
                    .bind(kind)
            } else {
                let kinds: Vec<String> = steps.iter().map(Encoded::kind).collect();
                let json: Vec<String> = steps.into_iter().map(|s| s.json).collect();
                sqlx::query_scalar(INSERT_MANY).bind(json).bind(kinds)
            };
            Ok(query.fetch_all(db).await?)
        })
    }
}

/// A task ready to insert: its JSON and its `kind`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Encoded {
    json: String,
    /// `(machine, step)`; stored as "machine.step".
    kind: (&'static str, &'static str),
}

impl Encoded {
    fn kind(&self) -> String {
        crate::machine::kind(self.kind.0, self.kind.1)
    }
}

/// Whether all `steps` are of one kind.
fn one_kind(steps: &[Encoded]) -> bool {
    steps.windows(2).all(|w| w[0].kind == w[1].kind)
}

fn to_json(task: impl IntoTask) -> Result<Encoded, Error> {
    let kind = task.kind();
    let json = task.into_step_json().map_err(Error::Serialize)?;
    Ok(Encoded { json, kind })
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
    <E::Database as Backend>::insert(db, to_json(task)?, Wakeup::Now).await
}

/// Enqueues a task to run after `delay` (on the database clock); returns its id.
pub async fn delay<'e, E, T>(db: E, task: T, delay: Duration) -> Result<i64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
    T: IntoTask,
{
    <E::Database as Backend>::insert(db, to_json(task)?, Wakeup::Delay(delay)).await
}

/// Enqueues a task to run at `at` (at once if that has passed); returns its id.
pub async fn schedule<'e, E, T>(db: E, task: T, at: DateTime<Utc>) -> Result<i64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
    T: IntoTask,
{
    <E::Database as Backend>::insert(db, to_json(task)?, Wakeup::At(at)).await
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
    <E::Database as Backend>::insert_many(db, steps).await
}

#[cfg(feature = "sqlite")]
impl Backend for sqlx::Sqlite {
    fn insert<'e, E>(db: E, step: Encoded, wakeup: Wakeup) -> BoxFuture<'e, Result<i64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        use crate::store::sqlite::{INSERT, LOCAL_WAKE, TIME_FORMAT};
        Box::pin(async move {
            let (delay, at) = crate::store::wakeup_binds(&wakeup)?;
            let kind = step.kind();
            let id = sqlx::query_scalar(INSERT)
                .bind(step.json)
                .bind(kind)
                .bind(delay)
                .bind(at.map(|at| at.format(TIME_FORMAT).to_string()))
                .fetch_one(db)
                .await?;
            LOCAL_WAKE.notify_waiters();
            Ok(id)
        })
    }

    fn insert_many<'e, E>(db: E, steps: Vec<Encoded>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        use crate::store::sqlite::{INSERT_MANY, INSERT_MANY_OF_KIND, LOCAL_WAKE};
        Box::pin(async move {
            // Each step is a JSON document already: joined, they are a JSON
            // array. Usually all are of one kind, bound once; otherwise each
            // goes as a [kind, step] pair.
            let query = if one_kind(&steps) {
                let json: Vec<&str> = steps.iter().map(|s| s.json.as_str()).collect();
                let array = format!("[{}]", json.join(","));
                let kind = steps.first().map(Encoded::kind).unwrap_or_default();
                sqlx::query(INSERT_MANY_OF_KIND).bind(array).bind(kind)
            } else {
                let pairs: Vec<String> = steps
                    .iter()
                    .map(|s| format!("[{},{}]", serde_json::Value::from(s.kind()), s.json))
                    .collect();
                sqlx::query(INSERT_MANY).bind(format!("[{}]", pairs.join(",")))
            };
            let done = query.execute(db).await?;
            // One statement holds SQLite's write lock throughout, and AUTOINCREMENT
            // gives its rows consecutive ids in insertion order, ending at the
            // last one: no need to stream every id back (each row returned is a
            // hand-off from the connection's thread).
            let last = done.last_insert_rowid();
            let n = i64::try_from(done.rows_affected()).unwrap_or(i64::MAX);
            LOCAL_WAKE.notify_waiters();
            Ok((last - n + 1..=last).collect())
        })
    }

    fn find<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<Option<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let row: Option<RowTuple<String>> = sqlx::query_as(
                "SELECT step, wakeup_at, tried, error, locked_by, lease_until
                 FROM jetpack_tasks WHERE id = ?1",
            )
            .bind(id)
            .fetch_optional(db)
            .await?;
            row.map(|(step, wakeup_at, tried, error, locked_by, lease_until)| {
                let time = |column: &str, text: &str| {
                    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                        .map(|t| t.and_utc())
                        .map_err(|e| {
                            Error::InvalidTime(format!("{column} {text:?} of task {id}: {e}"))
                        })
                };
                Ok(TaskRow {
                    id,
                    step,
                    wakeup_at: time("wakeup_at", &wakeup_at)?,
                    tried,
                    error,
                    locked_by,
                    lease_until: lease_until.map(|t| time("lease_until", &t)).transpose()?,
                })
            })
            .transpose()
        })
    }

    fn resume<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<bool, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE jetpack_tasks SET error = NULL WHERE id = ?1 AND error IS NOT NULL",
            )
            .bind(id)
            .execute(db)
            .await?;
            crate::store::sqlite::LOCAL_WAKE.notify_waiters();
            Ok(done.rows_affected() == 1)
        })
    }

    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            // WAL lets workers read while another process writes; the setting is
            // kept in the file, so pools that did not ask for it get it too.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(pool)
                .await?;
            crate::store::sqlite::migrate(pool).await
        })
    }
}
