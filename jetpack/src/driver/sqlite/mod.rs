//! The SQLite backend: one database file, no server; a file here per concern
//! of the driver, each the statements of its trait and the code that binds them.
//!
//! A claim reads and leases its tasks under SQLite's write lock (one statement
//! for a few tasks, a `BEGIN IMMEDIATE` transaction for a batch), so two
//! processes on one file never claim the same attempt. Outcomes are written
//! by statements that each write all their items or none, checked against the
//! attempts' fences (see `complete::flush`). There is no LISTEN/NOTIFY: enqueues from
//! this process wake its workers at once through an in-process signal, changes
//! from other processes are seen at the next poll (250 ms by default).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Executor, Sqlite, SqliteConnection};
use tokio::sync::Notify;

use crate::driver::{ChildRow, KeyedStatements, Listener};
use crate::model::{
    micros, one_kind, wakeup_binds, BoxFuture, Cancel, Claimed, Delivery, Encoded, EnqueueRecord,
    Error, History, Limit, NewTask, Notice, Outcome, Rate, Retention, SignalTo, TaskRow, TaskState,
    Trace, Wakeup, Window,
};

/// Wakes the workers of this process when a task is enqueued or resumed here.
pub(crate) static LOCAL_WAKE: Notify = Notify::const_new();

macro_rules! now {
    () => {
        "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    };
    ($micros:literal) => {
        concat!(
            "strftime('%Y-%m-%d %H:%M:%f', 'now', (",
            $micros,
            " / 1000000.0) || ' seconds')"
        )
    };
}

/// The order in which ready tasks are claimed: `wakeup_at` less the task's
/// head start of `priority` minutes, as the ready index has it (a task of
/// priority 0 by `wakeup_at` itself, with no date arithmetic).
macro_rules! claim_order {
    () => {
        "CASE WHEN priority = 0 THEN wakeup_at
         ELSE strftime('%Y-%m-%d %H:%M:%f', wakeup_at, -priority || ' minutes') END"
    };
}

/// `columns` of the ready tasks a claim takes: up to `?1` of the kinds `?2`
/// (a JSON array), in [`claim_order!`]. A due task's order is at most now,
/// which bounds the index scan.
macro_rules! ready_tasks {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM jetpack_tasks
             WHERE state = 'ready' AND limit_scope IS NULL AND error IS NULL AND wakeup_at <= ",
            now!(),
            " AND (lease_until IS NULL OR lease_until <= ",
            now!(),
            ") AND kind IN (SELECT value FROM json_each(?2)) AND ",
            claim_order!(),
            " <= ",
            now!(),
            " ORDER BY ",
            claim_order!(),
            " LIMIT ?1"
        )
    };
}

/// A claim's new `tried` and `fence`, saturating at the largest values the
/// table allows (its checks): a value written by hand at the maximum would
/// otherwise overflow and fail every claim. The worker parks such a task.
/// The cast: a real number written by hand passes the table's range check,
/// and would not decode as an integer.
macro_rules! next_attempt {
    () => {
        "CAST(min(tried, 2147483646) AS INTEGER) + 1"
    };
}

macro_rules! next_fence {
    () => {
        "CAST(min(fence, 9007199254740990) AS INTEGER) + 1"
    };
}

/// The update that leases a task to worker `$owner` for `$lease` µs, as a new
/// attempt.
macro_rules! lease {
    ($owner:literal, $lease:literal) => {
        concat!(
            "UPDATE jetpack_tasks
             SET tried = ",
            next_attempt!(),
            ", fence = ",
            next_fence!(),
            ", locked_by = ",
            $owner,
            ", lease_until = ",
            now!($lease),
            ", updated_at = ",
            now!()
        )
    };
}

/// Whether a parent's join waits for the task (`Claimed::awaited`).
/// A claimed task's queue lag: claim time minus due time, in µs (0 when a
/// hand-written `wakeup_at` does not read as a time).
macro_rules! lag {
    () => {
        "coalesce(CAST((julianday('now') - julianday(wakeup_at)) * 86400000000.0 AS INTEGER), 0)"
    };
}

macro_rules! awaited {
    () => {
        "coalesce(awaited <> 'done', 0)"
    };
}

pub struct SqliteHandle {
    pool: SqlitePool,
    /// This worker's own connection for its writes (claims, flushes,
    /// heartbeats, releases), opened with the pool's options but outside it,
    /// so the worker never waits for, or starves, the pool its steps and the
    /// application use. `None` until first used, and again after an error.
    ///
    /// One connection, because SQLite empties a connection's page cache
    /// whenever another connection changed the file since it last read: writes
    /// spread over the pool's connections re-read their pages from the file on
    /// every claim and flush.
    ///
    /// The lock queues the worker's writes. SQLite has one writer at a time, and
    /// a connection that finds the file locked waits in SQLite's busy handler,
    /// which sleeps in steps of milliseconds: a claim and a flush of the same
    /// worker colliding there left the worker idle half the time. Queued here
    /// instead, the next write starts the moment the last one commits.
    writer: crate::driver::own::Own<SqliteConnection>,
    /// Claims of fewer tasks than this are one statement returning a row per
    /// task (see [`FEW`]).
    few: usize,
}

/// Below this many tasks, one statement that returns a row per task beats a
/// transaction that returns them as one value: the transaction's three more
/// trips to the connection's thread also hold SQLite's write lock longer, and
/// other processes wait for it in SQLite's busy handler, which sleeps in
/// milliseconds. Measured with the soak (2 processes, concurrency 16): 100,000
/// tasks in 16.6–17.5 s with one statement, 20.9–25.3 s with transactions.
const FEW: usize = 32;

impl SqliteHandle {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        SqliteHandle {
            pool,
            writer: Default::default(),
            few: FEW,
        }
    }

    /// A store that takes its batched paths from `few` tasks on.
    #[cfg(test)]
    pub(crate) fn with_few(pool: SqlitePool, few: usize) -> Self {
        SqliteHandle {
            few,
            ..SqliteHandle::new(pool)
        }
    }
}

fn json_list<T: serde::Serialize>(items: &T) -> Result<String, Error> {
    serde_json::to_string(items).map_err(Error::Serialize)
}

/// This worker's connection, taken for one write.
type Writer<'a> = crate::driver::own::Taken<'a, SqliteConnection>;

impl SqliteHandle {
    /// Waits for this worker's earlier writes, then takes its connection.
    async fn writer(&self) -> Result<Writer<'_>, Error> {
        (self.writer)
            .take(async { Ok(self.pool.connect_options().connect().await?) })
            .await
    }
}

/// Tells the workers of this process which tasks were cancelled here.
pub(super) fn local_cancels() -> &'static tokio::sync::broadcast::Sender<i64> {
    static CANCELS: std::sync::OnceLock<tokio::sync::broadcast::Sender<i64>> =
        std::sync::OnceLock::new();
    CANCELS.get_or_init(|| tokio::sync::broadcast::channel(1024).0)
}

/// A time as the tables store it (`YYYY-MM-DD HH:MM:SS.SSS`, UTC); the error
/// names the column `what` says. The tables' own format is read by hand
/// (chrono's parser reads its format string anew each time: 2% of a drain's
/// CPU when the claim read each task's `created_at` with it).
pub(super) fn read_time(text: &str, what: impl FnOnce() -> String) -> Result<DateTime<Utc>, Error> {
    if let Some(at) = read_own_time(text) {
        return Ok(at);
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| Error::InvalidTime(format!("{} {text:?}: {e}", what())))
}

/// `YYYY-MM-DD HH:MM:SS.SSS` exactly, as [`time_text`] writes it.
fn read_own_time(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() != 23
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let date =
        chrono::NaiveDate::from_ymd_opt(i32::try_from(num(0, 4)?).ok()?, num(5, 7)?, num(8, 10)?)?;
    let time = chrono::NaiveTime::from_hms_milli_opt(
        num(11, 13)?,
        num(14, 16)?,
        num(17, 19)?,
        num(20, 23)?,
    )?;
    Some(date.and_time(time).and_utc())
}

/// A time as the tables store it (`YYYY-MM-DD HH:MM:SS.SSS`, UTC), written by
/// hand: chrono's formatter reads its format string anew each time.
pub(crate) fn time_text(at: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.timestamp_subsec_millis().min(999)
    )
}

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
pub use migrate::connect;
#[cfg(test)]
pub(crate) use migrate::migrator;
use workflow::rows;

impl crate::driver::Base for Sqlite {
    type Handle = SqliteHandle;
    const DEFAULT_POLL: Duration = Duration::from_millis(250);
    // The worker writes on a connection of its own; steps use the pool.
    const WORKER_CONNECTIONS: u32 = 1;

    fn handle(pool: SqlitePool) -> SqliteHandle {
        SqliteHandle::new(pool)
    }
}

#[cfg(test)]
mod tests;
