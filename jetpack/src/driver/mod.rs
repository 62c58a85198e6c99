//! The driver: every SQL statement, behind one sealed [`Driver`] implemented
//! for `sqlx::Postgres` and `sqlx::Sqlite`. A file per concern here (its
//! trait, and what the backends share) and in `postgres/` and `sqlite/` (its
//! statements); `erased.rs` erases it once for the worker. Imports only `model`.

use std::time::Duration;

mod admin;
mod claim;
mod clean;
mod complete;
mod enqueue;
mod erased;
mod history;
mod limits;
mod migrate;
mod own;
mod registry;
mod schedule;
mod workflow;

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

pub use admin::{Admin, AdminStatements};
pub(crate) use claim::back_and_slow;
pub use claim::{Claims, Listener};
pub use clean::Clean;
pub(crate) use complete::which_held;
pub use complete::Completes;
pub(crate) use enqueue::{set_window_task, take_window, WindowStatements};
pub use enqueue::{Enqueues, KeyedStatements};
pub(crate) use erased::{Pooled, Store};
pub use history::Histories;
pub(crate) use history::COUNTS_AT;
pub use limits::Limits;
pub(crate) use limits::IDLE_BUCKET;
pub use migrate::Migrations;
pub use registry::Registry;
pub use schedule::Schedules;
pub use workflow::Workflows;
pub(crate) use workflow::{child_results, detach_children, ChildRow};

/// A database Jetpack can store tasks in: PostgreSQL or SQLite (sealed).
///
/// Every statement Jetpack runs is one of its methods, grouped by concern
/// (claims, completions, enqueues, the admin API, workflows, limits,
/// schedules, the history, the registry, retention, migrations); none of them
/// is a public API. The calls of the public API (`enqueue`, `find`, `signal`,
/// the admin API) take any executor of a `Driver`: a pool, a connection or a
/// transaction.
pub trait Driver:
    Base
    + Claims
    + Completes
    + Enqueues
    + Admin
    + Workflows
    + Limits
    + Schedules
    + Histories
    + Registry
    + Clean
    + Migrations
{
}

impl<D> Driver for D where
    D: Base
        + Claims
        + Completes
        + Enqueues
        + Admin
        + Workflows
        + Limits
        + Schedules
        + Histories
        + Registry
        + Clean
        + Migrations
{
}

/// The name the public API's bounds use for a [`Driver`] (`DB: Backend`).
pub use self::Driver as Backend;

/// What the driver's traits share: the database (sealed) and the worker's
/// state of one of its pools.
pub trait Base: sqlx::Database + sealed::Sealed {
    /// What the worker's statements run on: the pool, and what the backend
    /// keeps beside it (SQLite: the worker's own writing connection).
    type Handle: Send + Sync + 'static;

    /// How often a worker polls when no notification arrives, unless its
    /// builder says.
    const DEFAULT_POLL: Duration;

    /// The connections a worker takes from its pool at the least.
    const WORKER_CONNECTIONS: u32;

    /// The worker's state of `pool`.
    fn handle(pool: sqlx::Pool<Self>) -> Self::Handle;
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
}

#[cfg(all(test, feature = "postgres", feature = "sqlite"))]
mod conformance;
