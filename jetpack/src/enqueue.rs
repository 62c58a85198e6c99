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
    fn insert<'e, E>(db: E, step: String, wakeup: Wakeup) -> BoxFuture<'e, Result<i64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>>;

    #[doc(hidden)]
    fn insert_many<'e, E>(db: E, steps: Vec<String>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {
    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut migrator = sqlx::migrate!("../migrations/postgres");
            migrator.dangerous_set_table_name("_jetpack_migrations");
            migrator.run(pool).await?;
            Ok(())
        })
    }

    fn insert<'e, E>(db: E, step: String, wakeup: Wakeup) -> BoxFuture<'e, Result<i64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let (delay, at) = crate::store::wakeup_binds(&wakeup)?;
            Ok(sqlx::query_scalar(crate::store::postgres::INSERT)
                .bind(step)
                .bind(delay)
                .bind(at)
                .fetch_one(db)
                .await?)
        })
    }

    fn insert_many<'e, E>(db: E, steps: Vec<String>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            Ok(sqlx::query_scalar(crate::store::postgres::INSERT_MANY)
                .bind(steps)
                .fetch_all(db)
                .await?)
        })
    }
}

fn to_json(task: impl IntoTask) -> Result<String, Error> {
    task.into_step_json().map_err(Error::Serialize)
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
