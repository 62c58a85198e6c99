//! The SQLite backend: one file, no server.
//!
//! A claim reads and leases its tasks under SQLite's write lock (one statement
//! for a few tasks, a `BEGIN IMMEDIATE` transaction for a batch), so two
//! processes on one file never claim the same attempt. Outcomes are written
//! by statements that each write all their items or none, checked against the
//! attempts' fences (see [`flush`]). There is no LISTEN/NOTIFY: enqueues from
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
    micros, one_kind, wakeup_binds, BoxFuture, Cancel, Claimed, Delivery, Encoded, Error, History,
    Limit, NewTask, Notice, Outcome, Rate, Retention, SignalTo, TaskRow, TaskState, Wakeup, Window,
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

/// The time format of the table, for binding absolute times.
pub(crate) const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

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
    writer: tokio::sync::Mutex<Option<SqliteConnection>>,
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
            writer: tokio::sync::Mutex::new(None),
            few: FEW,
        }
    }

    /// A store that takes its batched paths from `few` tasks on.
    #[cfg(all(test, feature = "postgres"))]
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
struct Writer<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<SqliteConnection>>,
    db: SqliteConnection,
}

impl Writer<'_> {
    /// Ends the write: the connection goes back for the next one, unless the
    /// write failed. Then it is closed (rolling back what it had begun) and the
    /// next write opens a new one.
    fn done<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_ok() {
            *self.slot = Some(self.db);
        }
        result
    }
}

impl SqliteHandle {
    /// Waits for this worker's earlier writes, then takes its connection.
    async fn writer(&self) -> Result<Writer<'_>, Error> {
        let mut slot = self.writer.lock().await;
        let db = match slot.take() {
            Some(db) => db,
            None => self.pool.connect_options().connect().await?,
        };
        Ok(Writer { slot, db })
    }
}

/// Tells the workers of this process which tasks were cancelled here.
pub(super) fn local_cancels() -> &'static tokio::sync::broadcast::Sender<i64> {
    static CANCELS: std::sync::OnceLock<tokio::sync::broadcast::Sender<i64>> =
        std::sync::OnceLock::new();
    CANCELS.get_or_init(|| tokio::sync::broadcast::channel(1024).0)
}

/// A time as the tables store it (`YYYY-MM-DD HH:MM:SS.SSS`, UTC); the error
/// names the column `what` says.
pub(super) fn read_time(text: &str, what: impl FnOnce() -> String) -> Result<DateTime<Utc>, Error> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| Error::InvalidTime(format!("{} {text:?}: {e}", what())))
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
mod tests {
    use super::complete::Batch;
    use super::*;
    use crate::driver::Store;
    use crate::model::FENCE_MAX;
    use crate::workflow::Wakeup;

    /// The all-or-nothing statements write every item of a batch whose
    /// attempts all hold their tasks, in one statement: SQLite evaluates their
    /// check once, before the first row changes (were it evaluated per row,
    /// the first write would fail it for the rest, and every flush would go
    /// the exact way).
    #[tokio::test]
    async fn a_batch_of_held_attempts_is_written_by_one_statement_each(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let pool = connect("sqlite::memory:").await?;
        <Sqlite as crate::driver::Migrations>::migrate(&pool).await?;
        sqlx::query(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
             INSERT INTO jetpack_tasks (step) SELECT '{\"M\":{\"A\":null}}' FROM s",
        )
        .execute(&pool)
        .await?;
        let store = crate::driver::Pooled::<Sqlite>::new(pool.clone());
        let claimed = store
            .claim(50, &["M.A".to_string()], "w", Duration::from_secs(60))
            .await?;
        assert_eq!(claimed.len(), 50);
        let next = Outcome::Next {
            step: r#"{"M":{"B":null}}"#.into(),
            kind: "M.B".into(),
            wakeup: Wakeup::Now,
            scope: None,
        };
        let retry = Outcome::Retry {
            delay: Duration::from_secs(60),
            error: "again".into(),
        };
        let park = Outcome::park("boom".into());
        let done: Vec<(i64, i64, &Outcome)> = claimed
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let outcome = match i {
                    0..20 => &Outcome::Finish,
                    20..40 => &next,
                    40..45 => &retry,
                    _ => &park,
                };
                (t.id, t.fence, outcome)
            })
            .collect();
        let batch = Batch::of(&done)?;
        assert_eq!(batch.statements.len(), 3);
        let mut db = pool.acquire().await?;
        for statement in &batch.statements {
            assert!(
                statement.write_if_all_held(&mut db).await?,
                "{} wrote less than all its items",
                statement.if_held
            );
        }
        let left: Vec<(String, Option<String>, bool, i64)> = sqlx::query_as(
            "SELECT kind, error, locked_by IS NULL AND lease_until IS NULL, count(*)
             FROM jetpack_tasks GROUP BY 1, 2, 3 ORDER BY 1, 2",
        )
        .fetch_all(&mut *db)
        .await?;
        assert_eq!(
            left,
            [
                ("M.A".to_string(), None, true, 5),
                ("M.A".to_string(), Some("boom".to_string()), true, 5),
                ("M.B".to_string(), None, true, 20),
            ]
        );
        Ok(())
    }

    /// Migration 0018 refuses rows that would stall; those already written
    /// are parked saying what was wrong (a negative join count first set to
    /// the awaited children still live), and clearing `error` resumes each.
    #[tokio::test]
    async fn rows_that_would_stall_are_parked_by_the_migration(
    ) -> Result<(), Box<dyn std::error::Error>> {
        const CHECKED: i64 = 20261207000018;
        let pool = connect("sqlite::memory:").await?;
        let migrator = migrator();
        migrator.run_to(CHECKED - 1, &pool).await?;
        sqlx::raw_sql(
            r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"A":1}}'), ('{"M":{"B":2}}'),
                   ('{"M":{"C":3}}'), ('{"M":{"D":4}}');
               UPDATE jetpack_tasks SET state = 'parked' WHERE id = 1;
               UPDATE jetpack_tasks SET state = 'waiting' WHERE id = 2;
               UPDATE jetpack_tasks SET state = 'waiting', children_left = -1 WHERE id = 3;
               UPDATE jetpack_tasks SET parent_id = 3, awaited = 'wait' WHERE id = 4;"#,
        )
        .execute(&pool)
        .await?;
        migrator.run_to(CHECKED, &pool).await?;
        const ROWS: &str = "SELECT id, state, children_left, error FROM jetpack_tasks
                            WHERE id < 4 ORDER BY id";
        let rows: Vec<(i64, String, Option<i64>, Option<String>)> =
            sqlx::query_as(ROWS).fetch_all(&pool).await?;
        let said: Vec<_> = rows
            .iter()
            .map(|r| r.3.clone().unwrap_or_default())
            .collect();
        assert!(said[0].contains("parked without an error"), "{said:?}");
        assert!(
            said[1].contains("neither a signal nor children"),
            "{said:?}"
        );
        assert!(said[2].contains("children_left was -1"), "{said:?}");
        assert!(rows.iter().all(|r| r.1 == "parked"), "{rows:?}");
        assert_eq!(rows[2].2, Some(1), "the child still awaited");

        sqlx::query("UPDATE jetpack_tasks SET error = NULL WHERE id < 4")
            .execute(&pool)
            .await?;
        let rows: Vec<(i64, String, Option<i64>, Option<String>)> =
            sqlx::query_as(ROWS).fetch_all(&pool).await?;
        assert_eq!(
            rows,
            [
                (1, "ready".into(), None, None),
                (2, "ready".into(), None, None),
                (3, "waiting".into(), Some(1), None),
            ],
            "resumed: the parent waits for its child again"
        );
        Ok(())
    }

    /// Migration 0004 rebuilds the table to relax its check: every row, the id
    /// sequence (a finished task's id is never given again) and the triggers
    /// survive it, and text that is not JSON written by hand is still refused.
    #[tokio::test]
    async fn the_table_rebuild_keeps_rows_ids_and_triggers(
    ) -> Result<(), Box<dyn std::error::Error>> {
        const REBUILD: i64 = 20261126000004;
        let pool = connect("sqlite::memory:").await?;
        let migrator = migrator();
        migrator.run_to(REBUILD - 1, &pool).await?;
        // A parked task, a leased one, and the newest one finished: its id
        // must not come back.
        sqlx::raw_sql(
            r#"INSERT INTO jetpack_tasks (step)
                   VALUES ('{"M":{"A":1}}'), ('{"M":{"B":2}}'), ('{"M":{"C":3}}');
               UPDATE jetpack_tasks SET error = 'boom', tried = 3 WHERE id = 1;
               UPDATE jetpack_tasks SET locked_by = 'w', fence = 7, tried = 1,
                   lease_until = '2999-01-01 00:00:00.000' WHERE id = 2;
               DELETE FROM jetpack_tasks WHERE id = 3;"#,
        )
        .execute(&pool)
        .await?;
        const ROWS: &str = "SELECT json_group_array(json_array(id, step, wakeup_at, tried, error,
             locked_by, fence, created_at, updated_at, kind, lease_until)) FROM jetpack_tasks";
        let before: String = sqlx::query_scalar(ROWS).fetch_one(&pool).await?;

        migrator.run_to(REBUILD, &pool).await?;
        let after: String = sqlx::query_scalar(ROWS).fetch_one(&pool).await?;
        assert_eq!(after, before);
        assert!(
            after.contains(r#""M.A""#) && after.contains(r#""boom""#),
            "{after}"
        );

        let id: i64 = sqlx::query_scalar(
            r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"D":4}}') RETURNING id"#,
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(id, 4, "the id sequence went on from the highest id given");
        let kind: String = sqlx::query_scalar("SELECT kind FROM jetpack_tasks WHERE id = 4")
            .fetch_one(&pool)
            .await?;
        assert_eq!(kind, "M.D", "the insert trigger derives kind");

        let refused = sqlx::query("INSERT INTO jetpack_tasks (step) VALUES ('{oops')")
            .execute(&pool)
            .await;
        assert!(refused.is_err(), "a hand insert of text that is not JSON");
        let refused = sqlx::query("UPDATE jetpack_tasks SET step = '{oops' WHERE id = 2")
            .execute(&pool)
            .await;
        assert!(
            refused.is_err(),
            "a hand update of step to text that is not JSON"
        );
        sqlx::query(r#"UPDATE jetpack_tasks SET step = '{"M":{"E":5}}' WHERE id = 2"#)
            .execute(&pool)
            .await?;
        sqlx::query("UPDATE jetpack_tasks SET error = NULL WHERE id = 1")
            .execute(&pool)
            .await?;
        let rows: Vec<(i64, String, i32, Option<String>)> = sqlx::query_as(
            "SELECT id, kind, tried, error FROM jetpack_tasks WHERE id < 3 ORDER BY id",
        )
        .fetch_all(&pool)
        .await?;
        assert_eq!(
            rows,
            [(1, "M.A".into(), 0, None), (2, "M.E".into(), 1, None)],
            "the resume trigger resets a resumed task; the update trigger derives kind"
        );
        let indexed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE name = 'jetpack_tasks_ready'",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(indexed, 1);
        Ok(())
    }

    /// Migration 0005 adds checks for values written by hand: rows that break
    /// them already are kept, parked with what was wrong, with valid values;
    /// good rows, the id sequence, the index and the triggers stay.
    #[tokio::test]
    async fn the_checks_migration_parks_bad_rows_and_keeps_the_rest(
    ) -> Result<(), Box<dyn std::error::Error>> {
        const CHECKS: i64 = 20261130000005;
        let pool = connect("sqlite::memory:").await?;
        let migrator = migrator();
        migrator.run_to(CHECKS - 1, &pool).await?;
        sqlx::raw_sql(
            r#"INSERT INTO jetpack_tasks (step, wakeup_at, tried, fence) VALUES
                   ('{"M":{"A":1}}', '2026-11-30 10:00:00.000', 2, 5),
                   ('{"M":{"B":2}}', 'tomorrow', 0, 0),
                   ('{"M":{"C":3}}', '2026-11-30T10:00:00Z', 2147483647, 9223372036854775807),
                   ('{"M":{"D":4}}', '2026-11-30 10:00:00.000', 'abc', -3),
                   ('{"M":{"E":5}}', '2026-11-30 10:00:00.000', 0, 0);
               DELETE FROM jetpack_tasks WHERE id = 5;"#,
        )
        .execute(&pool)
        .await?;
        migrator.run(&pool).await?;
        let rows: Vec<(i64, String, i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, wakeup_at, tried, fence, error FROM jetpack_tasks ORDER BY id",
        )
        .fetch_all(&pool)
        .await?;
        assert_eq!(
            rows[0],
            (1, "2026-11-30 10:00:00.000".into(), 2, 5, None),
            "a good row is unchanged"
        );
        let error = |i: usize| rows[i].4.clone().unwrap_or_default();
        assert!(error(1).contains("wakeup_at was 'tomorrow'"), "{rows:?}");
        assert!(
            rows[1].1.len() == 23 && rows[1].1.as_str() > "2026",
            "{rows:?}"
        );
        assert_eq!(
            rows[2].1, "2026-11-30 10:00:00.000",
            "an ISO time is rewritten"
        );
        assert_eq!((rows[2].2, rows[2].3), (2147483647, FENCE_MAX), "{rows:?}");
        assert!(
            error(2).contains("fence was 9223372036854775807"),
            "{rows:?}"
        );
        assert_eq!((rows[3].2, rows[3].3), (0, 0), "{rows:?}");
        assert!(
            error(3).contains("tried was 'abc'") && error(3).contains("fence was -3"),
            "{rows:?}"
        );
        let id: i64 = sqlx::query_scalar(
            r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"F":6}}') RETURNING id"#,
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(id, 6, "the id sequence went on from the highest id given");
        for bad in [
            "UPDATE jetpack_tasks SET wakeup_at = 'tomorrow' WHERE id = 1",
            "UPDATE jetpack_tasks SET wakeup_at = '2026-11-30T10:00:00Z' WHERE id = 1",
            "UPDATE jetpack_tasks SET tried = -1 WHERE id = 1",
            "UPDATE jetpack_tasks SET fence = 9007199254740992 WHERE id = 1",
            "UPDATE jetpack_tasks SET id = 9223372036854775807 WHERE id = 1",
        ] {
            let refused = sqlx::query(bad).execute(&pool).await;
            assert!(refused.is_err(), "{bad} was not refused");
        }
        sqlx::query("UPDATE jetpack_tasks SET wakeup_at = datetime('now', '+1 hour') WHERE id = 1")
            .execute(&pool)
            .await?;
        let kind: String = sqlx::query_scalar("SELECT kind FROM jetpack_tasks WHERE id = 6")
            .fetch_one(&pool)
            .await?;
        assert_eq!(kind, "M.F", "the insert trigger derives kind");
        Ok(())
    }
}
