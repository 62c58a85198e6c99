//! The storage interface of the calls that run on a caller's executor.

use chrono::{DateTime, Utc};
use sqlx::Executor;

use crate::model::{BoxFuture, Cancel, Delivery, Encoded, Error, SignalTo, TaskRow, Wakeup};

/// A database Jetpack can store tasks in (PostgreSQL, SQLite): the statements
/// of the calls that take a caller's executor, one implementation per backend.
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
    fn history<'e, E>(
        db: E,
        id: i64,
    ) -> BoxFuture<'e, Result<Vec<crate::model::Transition>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn counts_at<'e, E>(
        db: E,
        at: DateTime<Utc>,
    ) -> BoxFuture<'e, Result<Vec<(String, i64)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn set_history<'e, E>(db: E, on: bool) -> BoxFuture<'e, Result<(), Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn recorded_graphs<'e, E>(db: E) -> BoxFuture<'e, Result<Vec<String>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn admin_tasks<'e, E>(
        db: E,
        which: crate::model::Related,
    ) -> BoxFuture<'e, Result<Vec<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn admin_edit<'e, E>(db: E, id: i64, step: String) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn activity<'e, E>(
        db: E,
        since: DateTime<Utc>,
    ) -> BoxFuture<'e, Result<crate::model::Activity, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn recorded_graph<'e, E>(
        db: E,
        machine: String,
    ) -> BoxFuture<'e, Result<Option<String>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn admin_counts<'e, E>(db: E) -> BoxFuture<'e, Result<Vec<crate::model::Count>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn admin_id_span<'e, E>(db: E) -> BoxFuture<'e, Result<Option<(i64, i64)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn admin_tally<'e, E>(
        db: E,
        which: crate::model::Tally,
    ) -> BoxFuture<'e, Result<crate::model::Tallies, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn admin_list<'e, E>(
        db: E,
        filter: crate::model::Filter,
    ) -> BoxFuture<'e, Result<Vec<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn admin_change<'e, E>(
        db: E,
        filter: crate::model::Filter,
        change: crate::model::Change,
    ) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    #[allow(clippy::type_complexity)]
    fn admin_redrivable<'e, E>(
        db: E,
        filter: crate::model::Filter,
    ) -> BoxFuture<'e, Result<Vec<(i64, i64, String)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn admin_redrive<'e, E>(
        db: E,
        moves: Vec<(i64, i64, String)>,
        kind: String,
    ) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn cancel<'e, E>(
        db: E,
        id: i64,
        reason: String,
        descendants: bool,
    ) -> BoxFuture<'e, Result<Cancel, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn signal<'e, E>(
        db: E,
        to: SignalTo,
        name: &'static str,
        payload: String,
    ) -> BoxFuture<'e, Result<Delivery, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    #[doc(hidden)]
    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>>;

    #[doc(hidden)]
    fn insert_many<'e, E>(db: E, steps: Vec<Encoded>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The connection's keyed statements, for an enqueue with a unique key
    /// or a throttle.
    #[doc(hidden)]
    fn keyed(db: &mut Self::Connection) -> &mut dyn crate::driver::KeyedStatements;

    /// After an enqueue: wakes the workers of this process (SQLite, which has
    /// no notifications; PostgreSQL's triggers notify every worker).
    #[doc(hidden)]
    fn enqueued() {}
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
}
