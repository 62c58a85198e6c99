//! The PostgreSQL backend: a file per concern of the driver, each the
//! statements of its trait and the code that binds them.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPool, Postgres};
use sqlx::{Executor, PgConnection};

use crate::driver::own::Own;
use crate::driver::{ChildRow, KeyedStatements, Listener};
use crate::model::{
    micros, one_kind, wakeup_binds, BoxFuture, Cancel, Claimed, Delivery, Encoded, EnqueueRecord,
    Error, History, Limit, NewTask, Notice, Outcome, Rate, Retention, SignalTo, TaskRow, TaskState,
    Trace, Wakeup, Window,
};

mod admin;
mod claim;
mod clean;
mod complete;
mod enqueue;
mod history;
mod limits;
mod migrate;
mod registry;
mod schedule;
mod workflow;

use enqueue::INSERT;

/// The channel Jetpack's triggers notify and its workers listen on.
pub(crate) const CHANNEL: &str = "jetpack";

/// What the worker's statements run on: its pool.
pub struct PgHandle {
    pool: PgPool,
    /// The worker's own connection for its claims (and its look for the
    /// next due task), and the one for its outcomes (and leases renewed or
    /// given back): outside the pool, which pings a connection each time it
    /// hands one out, and planned generically (see [`PgHandle::connect`]).
    claims: Own<PgConnection>,
    outcomes: Own<PgConnection>,
}

impl PgHandle {
    /// Opens a connection of the worker's own with the pool's options. Its
    /// statements are planned once and reused: left to choose, PostgreSQL
    /// planned the claim anew for every execution (its plan for the values
    /// at hand looked cheaper than the generic one), 1.9 µs a claimed task
    /// (`pg_stat_statements.track_planning`), and the flush 1.6 µs an outcome.
    /// The generic plans are those the tests check (`tests.rs`).
    async fn connect(&self) -> Result<PgConnection, Error> {
        use sqlx::Connection;
        let mut db = PgConnection::connect_with(&self.pool.connect_options()).await?;
        sqlx::query("SET plan_cache_mode = force_generic_plan")
            .execute(&mut db)
            .await?;
        Ok(db)
    }
}

impl crate::driver::Base for Postgres {
    type Handle = PgHandle;
    const DEFAULT_POLL: Duration = Duration::from_secs(2);
    // The listener holds one for good; the worker's other statements need
    // another (it claims and writes outcomes on two connections of its own).
    const WORKER_CONNECTIONS: u32 = 2;

    fn handle(pool: PgPool) -> PgHandle {
        PgHandle {
            pool,
            claims: Own::default(),
            outcomes: Own::default(),
        }
    }
}

/// The ids and the fences of attempts `(id, fence)`, as two arrays to bind.
fn split(held: &[(i64, i64)]) -> (Vec<i64>, Vec<i64>) {
    held.iter().copied().unzip()
}

#[cfg(all(test, feature = "sqlite"))]
mod tests;
