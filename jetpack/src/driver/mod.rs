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
pub use enqueue::{Enqueues, KeyedStatements};
pub(crate) use erased::{Pooled, Store};
pub use history::Histories;
pub(crate) use history::COUNTS_AT;
pub use limits::Limits;
pub(crate) use limits::IDLE_BUCKET;
pub use migrate::Migrations;
pub use registry::Registry;
pub use schedule::Schedules;
pub(crate) use workflow::ChildRow;
pub use workflow::Workflows;

/// A database Jetpack can store tasks in: PostgreSQL or SQLite (sealed).
///
/// Every statement Jetpack runs is one of its methods, grouped by concern
/// ([`Claims`], [`Completes`], [`Enqueues`], [`Admin`], [`Workflows`],
/// [`Limits`], [`Schedules`], [`Histories`], [`Registry`], [`Clean`],
/// [`Migrations`]); none of them is a public API. The calls of the public API
/// (`enqueue`, `find`, `signal`, the admin API) take any executor of a
/// `Driver`: a pool, a connection or a transaction.
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
mod tests {
    //! Storage statements against real databases, below the worker.

    use std::time::Duration;

    use futures_util::future::LocalBoxFuture;
    use sqlx::Connection;

    use super::*;
    use crate::model::{Limit, Outcome, Retention, Wakeup};

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    /// The outcome that moves a task to step `{"M":{"B":null}}`, due at `wakeup`.
    fn to_b(wakeup: Wakeup) -> Outcome {
        Outcome::Next {
            step: r#"{"M":{"B":null}}"#.into(),
            kind: "M.B".into(),
            wakeup,
            scope: None,
        }
    }

    /// After an attempt recorded its outcome, its `(id, fence)` must no longer
    /// touch the row: a heartbeat or release racing the completion would
    /// otherwise move the next step's `wakeup_at` (a delayed step made due at
    /// once, or a due step pushed back by a lease).
    fn completed_attempt_is_inert(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let kinds = vec!["M.A".to_string(), "M.B".to_string()];
            let mut problems = Vec::new();
            let claimed = store.claim(1, &kinds, "w", Duration::from_secs(30)).await?;
            let (id, fence) = (claimed[0].id, claimed[0].fence);
            let next = to_b(Wakeup::Delay(Duration::from_secs(3600)));
            assert_eq!(
                store.complete_many(&[(id, fence, &next)], None).await?,
                [true]
            );
            let due = store.next_due(&kinds).await?.ok_or("the task is gone")?;
            if !store
                .heartbeat(&[(id, fence)], Duration::from_secs(1))
                .await?
                .is_empty()
            {
                problems.push("heartbeat touched a completed attempt".to_string());
            }
            store.release(&[(id, fence)]).await?;
            let after = store.next_due(&kinds).await?.ok_or("the task is gone")?;
            if after + Duration::from_secs(5) < due {
                problems.push(format!(
                    "the delayed step became due in {after:?} instead of {due:?}"
                ));
            }
            Ok(problems)
        })
    }

    /// A leased task is not ready, not even "due", until its lease expires;
    /// then another claim takes it as a new attempt.
    fn a_lease_holds_until_it_expires(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let kinds = vec!["M.A".to_string()];
            let mut problems = Vec::new();
            let lease = Duration::from_millis(400);
            let first = store.claim(10, &kinds, "a", lease).await?;
            if first.len() != 1 {
                return Err(format!("claimed {} tasks instead of 1", first.len()).into());
            }
            if !store.claim(10, &kinds, "b", lease).await?.is_empty() {
                problems.push("a leased task was claimed again".into());
            }
            if let Some(due) = store.next_due(&kinds).await? {
                problems.push(format!("a leased task is reported due in {due:?}"));
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let second = loop {
                let got = store.claim(10, &kinds, "b", lease).await?;
                if !got.is_empty() || std::time::Instant::now() > deadline {
                    break got;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            match second.as_slice() {
                [again] if again.id == first[0].id && again.fence == first[0].fence + 1 => {
                    if again.tried != 2 {
                        problems.push(format!("tried is {} after two claims", again.tried));
                    }
                }
                other => problems.push(format!("after the lease expired, claimed {other:?}")),
            }
            Ok(problems)
        })
    }

    /// A limited task's share: one attempt at a time under a limit of 1; the
    /// heartbeat does not revive an expired lease of a limited task (its
    /// share may have passed to another attempt), and the share comes back
    /// to the claims once the lease expired.
    fn a_limited_lease_is_not_revived(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let mut problems = Vec::new();
            let limits = [Limit {
                kind: "M.A".to_string(),
                concurrency: Some(1),
                rate: None,
            }];
            // Rows written without a scope: give them theirs.
            for task in store
                .claim(10, &["M.A".to_string()], "w", Duration::from_secs(30))
                .await?
            {
                store
                    .rescope(task.id, task.fence, "M.A", &task.step, "M.A")
                    .await?;
            }
            let lease = Duration::from_millis(300);
            let first = store.claim_limited(10, &limits, "a", lease).await?;
            let [held] = first.as_slice() else {
                return Err(format!("claimed {} tasks under a limit of 1", first.len()).into());
            };
            if !store
                .claim_limited(10, &limits, "b", lease)
                .await?
                .is_empty()
            {
                problems.push("a second task was claimed while the share was held".into());
            }
            tokio::time::sleep(lease + Duration::from_millis(100)).await;
            if !store
                .heartbeat(&[(held.id, held.fence)], lease)
                .await?
                .is_empty()
            {
                problems.push("the heartbeat renewed an expired lease of a limited task".into());
            }
            let next = store.claim_limited(10, &limits, "b", lease).await?;
            if next.len() != 1 {
                problems.push(format!("after the lease expired, claimed {next:?}"));
            }
            Ok(problems)
        })
    }

    /// A next step due now is due at once, also after the heartbeat moved the
    /// row's `wakeup_at` to a lease expiry in the future (a next step keeps a
    /// passed `wakeup_at`, so that its update can be HOT).
    fn a_next_step_due_now_is_claimable_at_once(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let kinds = vec!["M.A".to_string(), "M.B".to_string()];
            let mut problems = Vec::new();
            let hour = Duration::from_secs(3600);
            for heartbeat in [false, true] {
                let claimed = store.claim(1, &kinds, "w", hour).await?;
                let (id, fence) = match claimed.as_slice() {
                    [c] => (c.id, c.fence),
                    other => return Err(format!("claimed {other:?}").into()),
                };
                if heartbeat {
                    store.heartbeat(&[(id, fence)], hour).await?;
                }
                let next = to_b(Wakeup::Now);
                store.complete_many(&[(id, fence, &next)], None).await?;
                let again = store.claim(1, &["M.B".to_string()], "w", hour).await?;
                if again.len() != 1 || again[0].id != id {
                    problems.push(format!(
                        "the next step was not claimable at once (heartbeat: {heartbeat})"
                    ));
                }
                store
                    .complete_many(&[(id, fence + 1, &Outcome::Finish)], None)
                    .await?;
            }
            Ok(problems)
        })
    }

    /// A flush of many outcomes answers, for each, whether its attempt still
    /// held the task, and writes only those: an attempt that lost its lease
    /// changes nothing, and the others are written all the same (SQLite first
    /// writes a batch assuming every attempt held its task, and rolls back when
    /// one did not).
    fn a_batch_writes_only_what_attempts_held(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let kinds = vec!["M.A".to_string(), "M.B".to_string()];
            let mut problems = Vec::new();
            let hour = Duration::from_secs(3600);
            let claimed = store.claim(3, &kinds, "w", hour).await?;
            let [a, b, c] = claimed.as_slice() else {
                return Err(format!("claimed {claimed:?}").into());
            };
            let next = to_b(Wakeup::Now);
            let held = store
                .complete_many(
                    &[
                        (a.id, a.fence, &Outcome::Finish),
                        (b.id, b.fence - 1, &Outcome::Finish),
                        (c.id, c.fence, &next),
                    ],
                    None,
                )
                .await?;
            if held != [true, false, true] {
                problems.push(format!("held {held:?}, not [true, false, true]"));
            }
            let again = store.claim(3, &kinds, "w", hour).await?;
            match again.as_slice() {
                [t] if t.id == c.id && t.step.replace(' ', "") == r#"{"M":{"B":null}}"# => {}
                other => problems.push(format!(
                    "after the flush, claimed {other:?} instead of only task {}'s next step",
                    c.id
                )),
            }
            // The attempt that lost nothing still finishes its task.
            let held = store
                .complete_many(&[(b.id, b.fence, &Outcome::Finish)], None)
                .await?;
            if held != [true] {
                problems.push(format!("the live attempt's finish reported {held:?}"));
            }
            Ok(problems)
        })
    }

    /// A stale attempt and the live attempt of one task in the same flush: only
    /// the live one writes (SQLite's check that all attempts hold their tasks
    /// counts each task once).
    fn a_stale_and_a_live_attempt_in_one_flush(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let kinds = vec!["M.A".to_string(), "M.B".to_string()];
            let mut problems = Vec::new();
            // A lease of zero has expired at once: the second claim takes the
            // task as a new attempt.
            let stale = store.claim(1, &kinds, "w", Duration::ZERO).await?;
            let live = store.claim(1, &kinds, "w", Duration::from_secs(60)).await?;
            let ([stale], [live]) = (stale.as_slice(), live.as_slice()) else {
                return Err(format!("claimed {stale:?}, then {live:?}").into());
            };
            let next = to_b(Wakeup::Now);
            let held = store
                .complete_many(
                    &[
                        (stale.id, stale.fence, &Outcome::Finish),
                        (live.id, live.fence, &next),
                    ],
                    None,
                )
                .await?;
            if held != [false, true] {
                problems.push(format!("held {held:?}, not [false, true]"));
            }
            let again = store.claim(1, &kinds, "w", Duration::from_secs(60)).await?;
            match again.as_slice() {
                [t] if t.id == live.id && t.step.replace(' ', "") == r#"{"M":{"B":null}}"# => {}
                other => problems.push(format!(
                    "after the flush, claimed {other:?} instead of the live attempt's next step"
                )),
            }
            Ok(problems)
        })
    }

    /// A claim hands the step over exactly as stored, whatever characters it
    /// holds (SQLite returns a batch as one JSON value with the steps inside).
    fn a_claim_returns_the_step_as_stored(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let mut problems = Vec::new();
            let claimed = store
                .claim(1, &["M.A".to_string()], "w", Duration::from_secs(60))
                .await?;
            let [task] = claimed.as_slice() else {
                return Err(format!("claimed {claimed:?}").into());
            };
            let stored: serde_json::Value = serde_json::from_str(&task.step)?;
            if stored != serde_json::from_str::<serde_json::Value>(STEP_A)? {
                problems.push(format!("claimed step {:?}, stored {STEP_A:?}", task.step));
            }
            Ok(problems)
        })
    }

    /// Finishes, next steps, retries and parkings in one flush: each written,
    /// the failed attempts' leases given back, a retry due after its delay, a
    /// parked task not claimable (and its error storable: no NUL).
    fn every_kind_of_outcome_in_one_flush(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let kinds = vec!["M.A".to_string(), "M.B".to_string()];
            let mut problems = Vec::new();
            let claimed = store.claim(4, &kinds, "w", Duration::from_secs(60)).await?;
            let [finish, next, retry, park] = claimed.as_slice() else {
                return Err(format!("claimed {claimed:?}").into());
            };
            let outcomes = [
                Outcome::Finish,
                to_b(Wakeup::Now),
                Outcome::Retry {
                    delay: Duration::from_secs(3600),
                    error: "once more".into(),
                },
                Outcome::park("a NUL \0 here".into()),
            ];
            let done: Vec<(i64, i64, &Outcome)> = [finish, next, retry, park]
                .iter()
                .zip(&outcomes)
                .map(|(t, o)| (t.id, t.fence, o))
                .collect();
            let held = store.complete_many(&done, None).await?;
            if held != [true; 4] {
                problems.push(format!("held {held:?}"));
            }
            let again = store.claim(4, &kinds, "w", Duration::from_secs(60)).await?;
            match again.as_slice() {
                [t] if t.id == next.id => {}
                other => problems.push(format!(
                    "after the flush, claimed {other:?} instead of the next step alone"
                )),
            }
            let due = store.next_due(&kinds).await?;
            if due.is_none_or(|d| d <= Duration::from_secs(3000)) {
                problems.push(format!("the retry is due in {due:?}, not in an hour"));
            }
            Ok(problems)
        })
    }

    /// A finished task kept (`Outcome::Keep`) is `finished` in `states`, and
    /// `clean` deletes it once its period has passed, not before (and at once
    /// when finished tasks are no longer kept); tasks that are not finished it
    /// leaves alone.
    fn kept_tasks_are_cleaned_after_their_period(
        store: &dyn Store,
    ) -> LocalBoxFuture<'_, TestResult<Vec<String>>> {
        Box::pin(async move {
            let kinds = vec!["M.A".to_string()];
            let mut problems = Vec::new();
            let claimed = store.claim(2, &kinds, "w", Duration::from_secs(30)).await?;
            let [a, b] = claimed.as_slice() else {
                return Err(format!("claimed {} tasks instead of 2", claimed.len()).into());
            };
            let done = store
                .complete_many(&[(a.id, a.fence, &Outcome::Keep { result: None })], None)
                .await?;
            if done != [true] {
                problems.push(format!("keeping a finished task: {done:?}"));
            }
            let mut states = store.states(&[a.id, b.id]).await?;
            states.sort();
            let want = vec![(a.id, "finished".to_string()), (b.id, "ready".to_string())];
            if states != want {
                problems.push(format!("states {states:?}, not {want:?}"));
            }
            let hour = Duration::from_secs(3600);
            let long = Retention {
                finished: Some(hour),
                cancelled: hour,
                signals: hour,
                history: hour,
            };
            if store.clean(&long, 10).await? != 0 {
                problems.push("deleted a task kept for an hour".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            // A worker that keeps no finished tasks deletes those kept before.
            let short = Retention {
                finished: None,
                cancelled: hour,
                signals: hour,
                history: hour,
            };
            let deleted = store.clean(&short, 10).await?;
            if deleted != 1 {
                problems.push(format!("deleted {deleted} tasks, not the one kept"));
            }
            let left = store.states(&[a.id, b.id]).await?;
            if left != [(b.id, "ready".to_string())] {
                problems.push(format!("left {left:?}"));
            }
            Ok(problems)
        })
    }

    /// One check of a store: the problems it found.
    type Check = for<'a> fn(&'a dyn Store) -> LocalBoxFuture<'a, TestResult<Vec<String>>>;

    /// Runs `checks` in turn on `store`; the problems of all of them.
    async fn run_checks(store: &dyn Store, checks: &[Check]) -> TestResult<Vec<String>> {
        let mut problems = Vec::new();
        for check in checks {
            problems.extend(check(store).await?);
        }
        Ok(problems)
    }

    /// The step of every task the checks start with.
    const STEP_A: &str = r#"{"M": {"A": {"text": "a \"quote\", a \\, a ✓ and a\nline"}}}"#;

    fn insert_tasks(tasks: usize) -> String {
        let rows = vec![format!("('{STEP_A}')"); tasks].join(", ");
        format!("INSERT INTO jetpack_tasks (step) VALUES {rows}")
    }

    /// Runs `checks` on a fresh SQLite file holding `tasks` ready tasks of step
    /// [`STEP_A`]; fails with every problem they found.
    async fn on_sqlite(tasks: usize, checks: &[Check]) -> TestResult {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "jetpack_unit_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}", dir.join("unit.db").display());
        let pool = sqlite::connect(&url).await?;
        <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
        // Once on the statements for a few tasks, once on those for batches,
        // each from the same `tasks` ready tasks.
        let problems = async {
            let mut problems = Vec::new();
            for (paths, few) in [("few-task statements", usize::MAX), ("batch statements", 0)] {
                sqlx::query("DELETE FROM jetpack_tasks")
                    .execute(&pool)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(insert_tasks(tasks)))
                    .execute(&pool)
                    .await?;
                let store = Pooled::with(
                    pool.clone(),
                    sqlite::SqliteHandle::with_few(pool.clone(), few),
                );
                let found = run_checks(&store, checks).await?;
                problems.extend(found.into_iter().map(|p| format!("({paths}) {p}")));
            }
            Ok::<_, Box<dyn std::error::Error>>(problems)
        }
        .await;
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        let problems = problems?;
        assert!(problems.is_empty(), "{problems:?}");
        Ok(())
    }

    /// [`on_sqlite`] on a fresh PostgreSQL database.
    async fn on_postgres(tasks: usize, checks: &[Check]) -> TestResult {
        let (admin, name, pool) = pg_database().await?;
        sqlx::query(sqlx::AssertSqlSafe(insert_tasks(tasks)))
            .execute(&pool)
            .await?;
        let problems = run_checks(&Pooled::<sqlx::Postgres>::new(pool.clone()), checks).await;
        drop_pg(admin, &name, pool).await?;
        let problems = problems?;
        assert!(problems.is_empty(), "{problems:?}");
        Ok(())
    }

    /// Runs each set of checks on both backends, as the tests `<set>::sqlite`
    /// and `<set>::postgres`, on a fresh database holding `tasks` ready tasks.
    macro_rules! on_both {
        ($($(#[$meta:meta])* $set:ident($tasks:expr) = [$($check:ident),+ $(,)?];)+) => {$(
            $(#[$meta])*
            mod $set {
                use super::*;

                #[tokio::test]
                async fn sqlite() -> TestResult {
                    on_sqlite($tasks, &[$($check),+]).await
                }

                #[tokio::test]
                async fn postgres() -> TestResult {
                    on_postgres($tasks, &[$($check),+]).await
                }
            }
        )+};
    }

    on_both! {
        claims_and_batches(4) = [
            a_claim_returns_the_step_as_stored,
            a_batch_writes_only_what_attempts_held,
        ];
        completed_attempt(1) = [completed_attempt_is_inert];
        retention(2) = [kept_tasks_are_cleaned_after_their_period];
        failures_in_one_flush(4) = [every_kind_of_outcome_in_one_flush];
        stale_and_live_attempts(1) = [a_stale_and_a_live_attempt_in_one_flush];
        /// Two tasks for the next-step check (which finishes them), one for the lease.
        leases_and_next_steps(3) = [
            a_next_step_due_now_is_claimable_at_once,
            a_lease_holds_until_it_expires,
        ];
        limited_leases(2) = [a_limited_lease_is_not_revived];
    }

    /// The SQLite worker writes on a connection of its own, opened from the
    /// pool's options: on an in-memory database it must reach the same
    /// database as the pool (sqlx names it, shared-cache), not a new empty one.
    #[tokio::test]
    async fn sqlite_worker_writes_reach_an_in_memory_database() -> TestResult {
        let pool = sqlite::connect("sqlite::memory:").await?;
        <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
        sqlx::query(sqlx::AssertSqlSafe(insert_tasks(3)))
            .execute(&pool)
            .await?;
        for few in [usize::MAX, 0] {
            let store = Pooled::with(
                pool.clone(),
                sqlite::SqliteHandle::with_few(pool.clone(), few),
            );
            let claimed = store
                .claim(1, &["M.A".to_string()], "w", Duration::from_secs(60))
                .await?;
            let [task] = claimed.as_slice() else {
                return Err(format!("claimed {claimed:?} (few: {few})").into());
            };
            let held = store
                .complete_many(&[(task.id, task.fence, &Outcome::Finish)], None)
                .await?;
            assert_eq!(held, [true], "few: {few}");
        }
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jetpack_tasks")
            .fetch_one(&pool)
            .await?;
        assert_eq!(
            left, 1,
            "two of three tasks finished, seen through the pool"
        );
        pool.close().await;
        Ok(())
    }

    /// A write of the SQLite worker that fails inside its transaction leaves
    /// no lock behind (its connection is closed, rolling back), and the next
    /// write opens a new connection and succeeds.
    #[tokio::test]
    async fn sqlite_failed_write_leaves_no_lock_and_the_next_succeeds() -> TestResult {
        let dir = std::env::temp_dir().join(format!("jetpack_unit_fail_{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}", dir.join("unit.db").display());
        let pool = sqlite::connect(&url).await?;
        let result = async {
            <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
            sqlx::query(sqlx::AssertSqlSafe(insert_tasks(2)))
                .execute(&pool)
                .await?;
            // Batch statements: the claim begins a transaction, then reads.
            let store = Pooled::with(
                pool.clone(),
                sqlite::SqliteHandle::with_few(pool.clone(), 0),
            );
            let kinds = vec!["M.A".to_string()];
            let hour = Duration::from_secs(3600);
            store.claim(1, &kinds, "w", hour).await?;
            sqlx::query("ALTER TABLE jetpack_tasks RENAME TO jetpack_gone")
                .execute(&pool)
                .await?;
            let failed = store.claim(1, &kinds, "w", hour).await;
            assert!(failed.is_err(), "a claim without its table: {failed:?}");
            // A write elsewhere gets the lock (it would time out if the failed
            // claim still held it).
            sqlx::query("ALTER TABLE jetpack_gone RENAME TO jetpack_tasks")
                .execute(&pool)
                .await?;
            let again = store.claim(1, &kinds, "w", hour).await?;
            assert_eq!(again.len(), 1, "the claim after the failure: {again:?}");
            Ok::<_, Box<dyn std::error::Error>>(())
        }
        .await;
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// A claim changes no indexed column, so on a page with room PostgreSQL
    /// updates the row in place (HOT) without new index entries. It wrote the
    /// lease into the indexed `wakeup_at` before, and no claim was HOT.
    #[tokio::test]
    async fn postgres_claims_are_hot_updates() -> TestResult {
        let (admin, name, pool) = pg_database().await?;
        let counts = async {
            sqlx::query(
                r#"INSERT INTO jetpack_tasks (step, kind)
                   SELECT format('{"Order":{"Ship":{"order":%s}}}', i)::jsonb, 'Order.Ship'
                   FROM generate_series(1, 1000) i"#,
            )
            .execute(&pool)
            .await?;
            let mut tx = pool.begin().await?;
            sqlx::query(postgres::CLAIM)
                .bind(100_i64)
                .bind(vec!["Order.Ship".to_string()])
                .bind("worker-1234567-0123abcd")
                .bind(30_000_000_i64)
                .execute(&mut *tx)
                .await?;
            let counts: (i64, i64) = sqlx::query_as(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables
                 WHERE relname = 'jetpack_tasks'",
            )
            .fetch_one(&mut *tx)
            .await?;
            Ok::<_, Box<dyn std::error::Error>>(counts)
        }
        .await;
        drop_pg(admin, &name, pool).await?;
        let (updated, hot) = counts?;
        assert_eq!(updated, 100);
        assert!(hot >= 90, "only {hot} of {updated} claims were HOT updates");
        Ok(())
    }

    /// The first migration of the explicit lifecycle.
    const LIFECYCLE: i64 = 20261202000000;

    /// Only the migrations before the lifecycle.
    fn before_lifecycle(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
        let before: Vec<_> = migrator
            .migrations
            .iter()
            .filter(|m| m.version < LIFECYCLE)
            .cloned()
            .collect();
        migrator.migrations = before.into();
        migrator
    }

    /// Two tasks written before the lifecycle, one of them parked.
    const OLD_ROWS: &str = r#"INSERT INTO jetpack_tasks (step, kind, error)
        VALUES ('{"M":{"A":null}}', 'M.A', NULL), ('{"M":{"A":null}}', 'M.A', 'broken')"#;

    /// After the lifecycle migration the parked row is 'parked', the other
    /// 'ready' and claimed as before.
    async fn lifecycle_states_after_migrating(store: &dyn Store) -> TestResult {
        let states = store.states(&[1, 2]).await?;
        let mut states: Vec<(i64, &str)> = states.iter().map(|(i, s)| (*i, s.as_str())).collect();
        states.sort();
        assert_eq!(states, [(1, "ready"), (2, "parked")]);
        let claimed = store
            .claim(10, &["M.A".to_string()], "w", Duration::from_secs(30))
            .await?;
        let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        assert_eq!(ids, [1], "only the ready task is claimed");
        Ok(())
    }

    /// A database migrated before the lifecycle migrates in place, with no
    /// task lost or changed in meaning.
    #[tokio::test]
    async fn postgres_migrates_to_the_lifecycle_in_place() -> TestResult {
        let (admin, name, pool) = pg_empty_database().await?;
        let result = async {
            let mut old = sqlx::migrate!("../migrations/postgres");
            old.dangerous_set_table_name("_jetpack_migrations");
            before_lifecycle(old).run(&pool).await?;
            sqlx::query(OLD_ROWS).execute(&pool).await?;
            <sqlx::Postgres as Migrations>::migrate(&pool).await?;
            lifecycle_states_after_migrating(&Pooled::<sqlx::Postgres>::new(pool.clone())).await
        }
        .await;
        drop_pg(admin, &name, pool).await?;
        result
    }

    /// [`postgres_migrates_to_the_lifecycle_in_place`] on SQLite.
    #[tokio::test]
    async fn sqlite_migrates_to_the_lifecycle_in_place() -> TestResult {
        let dir = std::env::temp_dir().join(format!("jetpack_unit_life_{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}", dir.join("unit.db").display());
        let pool = sqlite::connect(&url).await?;
        let result = async {
            before_lifecycle(sqlite::migrator()).run(&pool).await?;
            sqlx::query(OLD_ROWS).execute(&pool).await?;
            <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
            lifecycle_states_after_migrating(&Pooled::<sqlx::Sqlite>::new(pool.clone())).await
        }
        .await;
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// A fresh PostgreSQL database with Jetpack's tables, dropped by `drop_pg`.
    async fn pg_database() -> TestResult<(sqlx::PgConnection, String, sqlx::PgPool)> {
        let (admin, name, pool) = pg_empty_database().await?;
        <sqlx::Postgres as Migrations>::migrate(&pool).await?;
        Ok((admin, name, pool))
    }

    /// A fresh, empty PostgreSQL database, dropped by `drop_pg`.
    async fn pg_empty_database() -> TestResult<(sqlx::PgConnection, String, sqlx::PgPool)> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let admin_url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres"))
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach PostgreSQL at {admin_url}: {e}; start it or set DATABASE_URL")
            });
        let name = format!(
            "jetpack_unit_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let create = format!("CREATE DATABASE {name}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await?;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("DATABASE_URL has no database part"),
        };
        let pool = sqlx::PgPool::connect(&url).await?;
        Ok((admin, name, pool))
    }

    async fn drop_pg(mut admin: sqlx::PgConnection, name: &str, pool: sqlx::PgPool) -> TestResult {
        pool.close().await;
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut admin)
            .await?;
        Ok(())
    }

    /// The claim must be an index scan of the ready index, then a TID scan of
    /// the rows it locked, on a queue of any real size: written as a join, it
    /// was planned as a hash join over a sequential scan of all 10,000 rows of
    /// a freshly filled queue. (A table of a page or two is rightly read whole.)
    #[tokio::test]
    async fn postgres_claim_never_scans_the_table() -> TestResult {
        let (admin, name, pool) = pg_database().await?;
        let plan = async {
            for rows in [10_000, 200_000] {
                sqlx::query("TRUNCATE jetpack_tasks").execute(&pool).await?;
                // Every priority, and a tenth scheduled within the head
                // start of the highest.
                sqlx::query(
                    r#"INSERT INTO jetpack_tasks (step, kind, priority, wakeup_at)
                       SELECT '{"M":{"A":null}}', 'M.A', i % 11,
                              now() + CASE WHEN i % 10 = 0 THEN (i % 600) * interval '1 second'
                                           ELSE -(i % 600) * interval '1 second' END
                       FROM generate_series(1, $1) i"#,
                )
                .bind(rows)
                .execute(&pool)
                .await?;
                sqlx::query("ANALYZE jetpack_tasks").execute(&pool).await?;
                let explain = format!("EXPLAIN {}", postgres::CLAIM);
                let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
                    .bind(100_i64)
                    .bind(vec!["M.A".to_string()])
                    .bind("w")
                    .bind(30_000_000_i64)
                    .fetch_all(&pool)
                    .await?;
                let plan = plan.join("\n");
                if plan.contains("Seq Scan")
                    || !plan.contains("Index Scan using jetpack_tasks_ready")
                    || !plan.contains("Tid Scan")
                {
                    return Ok::<_, Box<dyn std::error::Error>>(Some(format!(
                        "with {rows} rows:\n{plan}"
                    )));
                }
            }
            Ok(None)
        }
        .await;
        drop_pg(admin, &name, pool).await?;
        if let Some(plan) = plan? {
            panic!("the claim is not planned as an index scan and a TID scan {plan}");
        }
        Ok(())
    }

    /// The claim of limited steps reads the limited index, one probe per
    /// scope, never the whole table: 200,000 ready tasks of a limited step in
    /// 100 scopes, and as many without a limit.
    #[tokio::test]
    async fn postgres_limited_claim_never_scans_the_table() -> TestResult {
        let (admin, name, pool) = pg_database().await?;
        let plan = async {
            sqlx::query(
                r#"INSERT INTO jetpack_tasks (step, kind, limit_scope)
                   SELECT '{"M":{"A":null}}', 'M.A', CASE WHEN i % 2 = 0 THEN 'M.A/' || (i % 100) END
                   FROM generate_series(1, 400000) i"#,
            )
            .execute(&pool)
            .await?;
            sqlx::query("ANALYZE jetpack_tasks").execute(&pool).await?;
            let explain = format!("EXPLAIN {}", postgres::CLAIM_LIMITED);
            let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
                .bind(100_i64)
                .bind(vec!["M.A".to_string()])
                .bind(vec![4_i32])
                .bind("w")
                .bind(30_000_000_i64)
                // Under a rate too: the buckets are read and written.
                .bind(vec![Some(10.0_f64)])
                .bind(vec![Some(10.0_f64)])
                .bind(vec![Some(1.0_f64)])
                .fetch_all(&pool)
                .await?;
            let plan = plan.join("\n");
            let scans_table = plan.contains("Seq Scan on jetpack_tasks");
            let uses_index = plan.contains("jetpack_tasks_limited");
            Ok::<_, Box<dyn std::error::Error>>((!uses_index || scans_table).then_some(plan))
        }
        .await;
        drop_pg(admin, &name, pool).await?;
        if let Some(plan) = plan? {
            panic!("the limited claim reads more than the limited index:\n{plan}");
        }
        Ok(())
    }
}
