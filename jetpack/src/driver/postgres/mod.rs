//! The PostgreSQL backend: a file per concern of the driver, each the
//! statements of its trait and the code that binds them.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPool, Postgres};
use sqlx::{Executor, PgConnection};

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
}

impl crate::driver::Base for Postgres {
    type Handle = PgHandle;
    const DEFAULT_POLL: Duration = Duration::from_secs(2);
    // The listener holds one for good; claims and flushes need another.
    const WORKER_CONNECTIONS: u32 = 2;

    fn handle(pool: PgPool) -> PgHandle {
        PgHandle { pool }
    }
}

/// The ids and the fences of attempts `(id, fence)`, as two arrays to bind.
fn split(held: &[(i64, i64)]) -> (Vec<i64>, Vec<i64>) {
    held.iter().copied().unzip()
}

#[cfg(all(test, feature = "sqlite"))]
mod tests;
