//! Workers against a real PostgreSQL: chains, delays, retries, parking and
//! resuming by SQL, panics, timeouts, bad rows, leases and fences, shutdown,
//! transactional steps and several workers sharing one table.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{conformance, json, Db, TestDb, DEADLINE};
use jetpack::{Context, NextStep, Step, StepError, StepResult};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
struct Start {
    n: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct Count {
    left: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct Finish;
#[derive(Debug, Serialize, Deserialize)]
struct Later {
    ms: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct Flaky {
    fail_until: i32,
    permanent: bool,
}
#[derive(Debug, Serialize, Deserialize)]
struct NeedsWorld {
    key: String,
}
#[derive(Debug, Serialize, Deserialize)]
struct Panics;
#[derive(Debug, Serialize, Deserialize)]
struct Slow {
    ms: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct Hang {
    until_attempt: i32,
}
#[derive(Debug, Serialize, Deserialize)]
struct Gate {
    key: u64,
    tx: bool,
}
#[derive(Debug, Serialize, Deserialize)]
struct Transfer {
    amount: i64,
    fail: bool,
}
#[derive(Debug, Serialize, Deserialize)]
struct UsesState;
#[derive(Debug, Serialize, Deserialize)]
struct Crowd {
    key: u64,
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Flow {
    #[next(Count, Finish)]
    Start(Start),
    #[next(Count, Finish)]
    Count(Count),
    Finish(Finish),
    #[next(Finish)]
    Later(Later),
    #[next(Finish)]
    Flaky(Flaky),
    #[next(Finish)]
    NeedsWorld(NeedsWorld),
    Panics(Panics),
    #[next(Finish)]
    Slow(Slow),
    #[next(Finish)]
    Hang(Hang),
    #[next(Finish)]
    Gate(Gate),
    #[next(Finish)]
    Transfer(Transfer),
    UsesState(UsesState),
    Crowd(Crowd),
}

jetpack::scheduler!(Tasks { Flow });

#[jetpack::async_trait]
impl Step<Flow> for Start {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Start").await?;
        match self.n {
            0 => NextStep::now(Finish),
            n => NextStep::now(Count { left: n }),
        }
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Count {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx)
            .record_run(cx, &format!("Count {}", self.left))
            .await?;
        match self.left {
            1 => NextStep::now(Finish),
            n => NextStep::now(Count { left: n - 1 }),
        }
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Finish {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Finish").await?;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Later {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Later").await?;
        NextStep::delay(Finish, Duration::from_millis(self.ms))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("charging the card failed")]
struct ChargeFailed(#[source] std::io::Error);

#[jetpack::async_trait]
impl Step<Flow> for Flaky {
    const RETRY_LIMIT: i32 = 2;
    const RETRY_DELAY: Duration = Duration::from_millis(10);

    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Flaky").await?;
        if cx.attempt() < self.fail_until {
            let error = ChargeFailed(std::io::Error::other("gateway timeout"));
            return Err(if self.permanent {
                StepError::permanent(error)
            } else {
                error.into()
            });
        }
        NextStep::now(Finish)
    }
}

#[jetpack::async_trait]
impl Step<Flow> for NeedsWorld {
    const RETRY_LIMIT: i32 = 1;
    const RETRY_DELAY: Duration = Duration::from_millis(10);

    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx)
            .record_run(cx, &format!("NeedsWorld {}", self.key))
            .await?;
        if Db::of(cx).world_has(&self.key).await? {
            NextStep::now(Finish)
        } else {
            Err(format!("the world has no {}", self.key).into())
        }
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Panics {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Panics").await?;
        panic!("boom at attempt {}", cx.attempt());
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Slow {
    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(100));

    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Slow").await?;
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        NextStep::now(Finish)
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Hang {
    const RETRY_LIMIT: i32 = 1;

    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Hang").await?;
        if cx.attempt() < self.until_attempt {
            std::future::pending::<()>().await;
        }
        NextStep::now(Finish)
    }
}

/// Gates that tests open to let a `Gate { key }` step finish; keyed so that
/// tests running in parallel (on both backends) never open each other's.
fn gate(key: u64) -> Arc<Notify> {
    common::keyed(key)
}

/// What the `Crowd` steps of one test share: how many run now, the most that
/// ran at once, how many started and finished, and the gate they wait at.
#[derive(Default)]
struct CrowdState {
    running: AtomicU64,
    most: AtomicU64,
    started: AtomicU64,
    done: AtomicU64,
    gate: Notify,
}

fn crowd(key: u64) -> Arc<CrowdState> {
    common::keyed(key)
}

#[jetpack::async_trait]
impl Step<Flow> for Crowd {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        let c = crowd(self.key);
        let now = c.running.fetch_add(1, Ordering::SeqCst) + 1;
        c.most.fetch_max(now, Ordering::SeqCst);
        c.started.fetch_add(1, Ordering::SeqCst);
        c.gate.notified().await;
        c.running.fetch_sub(1, Ordering::SeqCst);
        c.done.fetch_add(1, Ordering::SeqCst);
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Gate {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Gate").await?;
        gate(self.key).notified().await;
        // Written after the wait: on SQLite an open write transaction holds the
        // file's one write lock, which the test needs meanwhile.
        if self.tx {
            jetpack_suite::ledger_in_tx(cx, 1).await?;
        }
        NextStep::now(Finish)
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Transfer {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        jetpack_suite::ledger_in_tx(cx, self.amount).await?;
        if self.fail {
            return Err(StepError::permanent("the bank said no"));
        }
        NextStep::now(Finish)
    }
}

struct Greeting(&'static str);

#[jetpack::async_trait]
impl Step<Flow> for UsesState {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let greeting = cx.state::<Greeting>()?;
        Db::of(cx).record_run(cx, greeting.0).await?;
        let missing = cx.state::<String>().map(|_| ()).unwrap_err();
        Err(StepError::permanent(missing))
    }
}

async fn setup(db: &TestDb) {
    db.create_app_tables().await;
}

fn worker(db: &Db) -> common::Running {
    common::spawn(db.worker::<Tasks>().build().unwrap())
}

fn names(runs: &[(String, i32)]) -> Vec<&str> {
    runs.iter().map(|(s, _)| s.as_str()).collect()
}

conformance!(
    a_chain_runs_every_step_in_order_and_finishes,
    a_delayed_step_is_stored_and_runs_after_its_delay,
    failures_are_retried_then_parked_with_the_error_chain,
    a_step_that_recovers_within_its_retries_moves_on,
    a_permanent_error_parks_without_retrying,
    clearing_the_error_by_sql_resumes_with_a_full_retry_budget,
    resuming_wakes_an_idle_worker_at_once,
    a_panicking_step_is_a_failed_attempt_with_its_message,
    a_step_past_its_timeout_fails,
    bad_rows_get_clear_errors_and_unknown_steps_are_left_alone,
    steps_read_shared_state_and_a_missing_state_is_a_clear_error,
    a_transactional_step_commits_with_its_transition_or_not_at_all,
    a_stale_attempt_cannot_overwrite_the_newer_one,
    an_expired_lease_is_taken_over_and_the_crash_counts_as_an_attempt,
    a_step_that_always_crashes_its_worker_ends_parked,
    the_heartbeat_keeps_a_long_step_leased,
    graceful_shutdown_lets_running_steps_finish_and_starts_nothing_new,
    shutdown_timeout_releases_the_leases_of_unfinished_steps,
    workers_share_the_table_without_running_a_step_twice,
    concurrency_limits_the_steps_running_at_once,
);

async fn a_chain_runs_every_step_in_order_and_finishes(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let id = db.enqueue(Start { n: 3 }).await;
    common::finished(&db, id).await;
    w.shutdown().await;
    assert_eq!(
        names(&db.runs(id).await),
        ["Start", "Count 3", "Count 2", "Count 1", "Finish"]
    );
}

async fn a_delayed_step_is_stored_and_runs_after_its_delay(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let id = db.enqueue(Later { ms: 1500 }).await;
    // After Later runs, the row waits in Finish with its wakeup in the future.
    let row = common::wait_for(DEADLINE, || async {
        Ok(db
            .find(id)
            .await
            .filter(|r| json(&r.step) == json(r#"{"Flow":{"Finish":null}}"#)))
    })
    .await
    .unwrap();
    let ahead = (row.wakeup_at - jetpack::chrono::Utc::now()).num_milliseconds();
    assert!(
        (500..=1500).contains(&ahead),
        "wakeup_at is {ahead} ms ahead"
    );
    assert_eq!((row.tried, row.locked_by), (0, None));
    common::finished(&db, id).await;
    w.shutdown().await;
    let span = db.run_span_us(id).await;
    assert!(span >= 1_400_000, "Finish ran {span} µs after Later");
}

async fn failures_are_retried_then_parked_with_the_error_chain(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let id = db
        .enqueue(Flaky {
            fail_until: 99,
            permanent: false,
        })
        .await;
    let row = common::parked(&db, id).await;
    w.shutdown().await;
    assert_eq!(
        row.error.as_deref(),
        Some("charging the card failed: gateway timeout")
    );
    assert_eq!(row.tried, 3, "first try + RETRY_LIMIT of 2");
    assert_eq!(row.locked_by, None);
    assert_eq!(
        json(&row.step),
        json(r#"{"Flow":{"Flaky":{"fail_until":99,"permanent":false}}}"#)
    );
    let attempts: Vec<i32> = db.runs(id).await.into_iter().map(|(_, a)| a).collect();
    assert_eq!(attempts, [1, 2, 3]);
}

async fn a_step_that_recovers_within_its_retries_moves_on(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let id = db
        .enqueue(Flaky {
            fail_until: 3,
            permanent: false,
        })
        .await;
    common::finished(&db, id).await;
    w.shutdown().await;
    assert_eq!(
        db.runs(id).await,
        [
            ("Flaky".into(), 1),
            ("Flaky".into(), 2),
            ("Flaky".into(), 3),
            ("Finish".into(), 1)
        ]
    );
}

async fn a_permanent_error_parks_without_retrying(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let id = db
        .enqueue(Flaky {
            fail_until: 99,
            permanent: true,
        })
        .await;
    let row = common::parked(&db, id).await;
    w.shutdown().await;
    assert_eq!(row.tried, 1);
    assert_eq!(db.runs(id).await.len(), 1);
}

async fn clearing_the_error_by_sql_resumes_with_a_full_retry_budget(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let id = db.enqueue(NeedsWorld { key: "typo".into() }).await;
    let row = common::parked(&db, id).await;
    assert_eq!(row.error.as_deref(), Some("the world has no typo"));
    assert_eq!(row.tried, 2);

    // Fix the world, fix the step's JSON, clear the error: plain SQL.
    db.exec("INSERT INTO world VALUES ('key')", None, None)
        .await;
    let edited = match &*db {
        Db::Postgres(_) => "UPDATE jetpack_tasks SET step = $2::jsonb WHERE id = $1",
        Db::Sqlite(_) => "UPDATE jetpack_tasks SET step = $2 WHERE id = $1",
    };
    db.exec(
        edited,
        Some(id),
        Some(r#"{"Flow":{"NeedsWorld":{"key":"key"}}}"#),
    )
    .await;
    db.exec(
        "UPDATE jetpack_tasks SET error = NULL WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    common::finished(&db, id).await;
    w.shutdown().await;
    assert_eq!(
        db.runs(id).await,
        [
            ("NeedsWorld typo".into(), 1),
            ("NeedsWorld typo".into(), 2),
            ("NeedsWorld key".into(), 1),
            ("Finish".into(), 1)
        ],
        "the resumed step ran the edited JSON with a full retry budget (attempt 1 again)"
    );
}

async fn resuming_wakes_an_idle_worker_at_once(db: TestDb) {
    setup(&db).await;
    // A worker that would poll only every 10 minutes: only a wakeup can move it.
    let w = common::spawn(
        db.worker::<Tasks>()
            .poll_interval(Duration::from_secs(600))
            .build()
            .unwrap(),
    );
    let id = db.enqueue(NeedsWorld { key: "k".into() }).await;
    common::parked(&db, id).await;
    db.exec("INSERT INTO world VALUES ('k')", None, None).await;
    match &*db {
        // On PostgreSQL the trigger's NOTIFY wakes it, however the error is cleared.
        Db::Postgres(_) => {
            db.exec(
                "UPDATE jetpack_tasks SET error = NULL WHERE id = $1",
                Some(id),
                None,
            )
            .await;
        }
        // On SQLite, resuming from this process wakes it.
        Db::Sqlite(_) => assert!(db.resume(id).await),
    }
    common::finished(&db, id).await;
    w.shutdown().await;
}

async fn a_panicking_step_is_a_failed_attempt_with_its_message(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let id = db.enqueue(Panics).await;
    let other = db.enqueue(Start { n: 0 }).await;
    let row = common::parked(&db, id).await;
    common::finished(&db, other).await;
    w.shutdown().await;
    assert_eq!(
        row.error.as_deref(),
        Some("the step panicked: boom at attempt 1")
    );
    assert_eq!(row.tried, 1);
}

async fn a_step_past_its_timeout_fails(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let slow = db.enqueue(Slow { ms: 60_000 }).await;
    // Another task meanwhile, with no timeout of its own to race.
    let other = db.enqueue(Start { n: 0 }).await;
    let row = common::parked(&db, slow).await;
    common::finished(&db, other).await;
    w.shutdown().await;
    assert_eq!(row.error.as_deref(), Some("the step timed out after 100ms"));
}

async fn bad_rows_get_clear_errors_and_unknown_steps_are_left_alone(db: TestDb) {
    setup(&db).await;
    let mistyped = db
        .insert_raw(r#"{"Flow":{"Start":{"n":"three"}}}"#)
        .await
        .unwrap();
    let missing = db.insert_raw(r#"{"Flow":{"Start":{}}}"#).await.unwrap();
    let malformed = db.insert_raw(r#"{"Flow":42}"#).await.unwrap();
    let not_a_step = db.insert_raw("[1, 2, 3]").await.unwrap();
    let newer_step = db.insert_raw(r#"{"Flow":{"Rocket":{}}}"#).await.unwrap();
    let newer_machine = db
        .insert_raw(r#"{"Billing":{"Charge":{"cents":100}}}"#)
        .await
        .unwrap();
    let not_json = db.insert_raw("{oops").await;
    assert!(
        not_json.is_err(),
        "the database refuses text that is not JSON"
    );
    // SQLite checks only what leaves `kind` to its trigger: text that is not
    // JSON with a kind written by hand gets in, and is parked like the rest.
    let mut bad_rows = vec![mistyped, missing, malformed, not_a_step];
    if let Db::Sqlite(_) = &*db {
        let sql =
            "INSERT INTO jetpack_tasks (step, kind) VALUES ('{oops', 'Flow.Start') RETURNING id";
        bad_rows.push(db.scalar(sql, None).await);
    }
    let good = db.enqueue(Start { n: 0 }).await;

    let w = worker(&db);
    common::finished(&db, good).await;
    let mut errors = Vec::new();
    for id in bad_rows {
        let row = common::parked(&db, id).await;
        assert_eq!(row.tried, 1);
        errors.push(row.error.unwrap());
    }
    w.shutdown().await;
    for (error, expected) in errors.iter().zip([
        "invalid type: string \"three\", expected u32",
        "missing field `n`",
        "expected value at line 1 column",
        "expected value at line 1 column 1 ",
        "key must be a string at line 1 column 2",
    ]) {
        assert!(
            error.starts_with("cannot decode the step JSON: "),
            "{error}"
        );
        assert!(
            error.contains(expected),
            "{error} should mention {expected}"
        );
    }
    // Steps this binary does not know wait, untouched, for a worker that does.
    for id in [newer_step, newer_machine] {
        let row = db.find(id).await.unwrap();
        assert_eq!((row.tried, row.error, row.locked_by), (0, None, None));
    }
}

async fn steps_read_shared_state_and_a_missing_state_is_a_clear_error(db: TestDb) {
    setup(&db).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .state(Greeting("hello from state"))
            .build()
            .unwrap(),
    );
    let id = db.enqueue(UsesState).await;
    let row = common::parked(&db, id).await;
    w.shutdown().await;
    assert_eq!(names(&db.runs(id).await), ["hello from state"]);
    let error = row.error.unwrap();
    assert!(
        error.contains("no state of type `alloc::string::String`"),
        "{error}"
    );
}

async fn a_transactional_step_commits_with_its_transition_or_not_at_all(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let ok = db
        .enqueue(Transfer {
            amount: 5,
            fail: false,
        })
        .await;
    let failed = db
        .enqueue(Transfer {
            amount: 7,
            fail: true,
        })
        .await;
    common::finished(&db, ok).await;
    common::parked(&db, failed).await;
    w.shutdown().await;
    assert_eq!(db.ledger(ok).await, [5]);
    assert_eq!(
        db.ledger(failed).await,
        Vec::<i64>::new(),
        "a failed step's writes roll back"
    );
}

async fn a_stale_attempt_cannot_overwrite_the_newer_one(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let key = common::new_key();
    let id = db.enqueue(Gate { key, tx: true }).await;
    common::started(&db, id).await;
    // Another claim happens meanwhile (as after an expired lease): the fence moves.
    db.exec(
        "UPDATE jetpack_tasks SET fence = fence + 1, locked_by = 'other' WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    gate(key).notify_one();
    // The stale attempt finishes; the shutdown waits for it.
    w.shutdown().await;
    let row = db.find(id).await.unwrap();
    assert_eq!(
        json(&row.step),
        serde_json::json!({"Flow": {"Gate": {"key": key, "tx": true}}}),
        "the stale attempt did not move the task"
    );
    assert_eq!(row.locked_by.as_deref(), Some("other"));
    assert_eq!(
        db.ledger(id).await,
        Vec::<i64>::new(),
        "its transaction rolled back"
    );
}

async fn an_expired_lease_is_taken_over_and_the_crash_counts_as_an_attempt(db: TestDb) {
    setup(&db).await;
    let lease = Duration::from_millis(500);
    // Worker A hangs in attempt 1 and then "crashes": its future is dropped
    // without any cleanup, as when a process dies.
    let a = common::spawn(db.worker::<Tasks>().lease(lease).build().unwrap());
    let id = db.enqueue(Hang { until_attempt: 2 }).await;
    common::started(&db, id).await;
    a.handle.abort();
    let _ = a.handle.await;

    let b = common::spawn(db.worker::<Tasks>().lease(lease).build().unwrap());
    common::finished(&db, id).await;
    b.shutdown().await;
    assert_eq!(
        db.runs(id).await,
        [("Hang".into(), 1), ("Hang".into(), 2), ("Finish".into(), 1)]
    );
}

async fn a_step_that_always_crashes_its_worker_ends_parked(db: TestDb) {
    setup(&db).await;
    let lease = Duration::from_millis(400);
    let id = db
        .enqueue(Hang {
            until_attempt: i32::MAX,
        })
        .await;
    // RETRY_LIMIT is 1: two attempts, each of which "crashes" its worker.
    for attempt in 1..=2 {
        let w = common::spawn(db.worker::<Tasks>().lease(lease).build().unwrap());
        common::wait_for(DEADLINE, || async {
            Ok((db.runs(id).await.len() == attempt).then_some(()))
        })
        .await
        .unwrap();
        w.handle.abort();
        let _ = w.handle.await;
    }
    let w = common::spawn(db.worker::<Tasks>().lease(lease).build().unwrap());
    let row = common::parked(&db, id).await;
    w.shutdown().await;
    assert_eq!(row.tried, 3);
    let error = row.error.unwrap();
    assert!(
        error.contains("attempt 2 of at most 2 never finished"),
        "{error}"
    );
    assert_eq!(
        db.runs(id).await.len(),
        2,
        "the crashing step was not run a third time"
    );
}

async fn the_heartbeat_keeps_a_long_step_leased(db: TestDb) {
    setup(&db).await;
    let lease = Duration::from_millis(300);
    let w1 = common::spawn(db.worker::<Tasks>().lease(lease).build().unwrap());
    let w2 = common::spawn(db.worker::<Tasks>().lease(lease).build().unwrap());
    let key = common::new_key();
    let id = db.enqueue(Gate { key, tx: false }).await;
    common::started(&db, id).await;
    // The step runs for six leases; without the heartbeat the other worker would
    // take the task over (and `tried` would grow).
    tokio::time::sleep(lease * 6).await;
    let row = db.find(id).await.unwrap();
    assert_eq!(
        row.tried, 1,
        "nobody else claimed the task while its step ran"
    );
    gate(key).notify_one();
    common::finished(&db, id).await;
    w1.shutdown().await;
    w2.shutdown().await;
    assert_eq!(names(&db.runs(id).await), ["Gate", "Finish"]);
}

async fn graceful_shutdown_lets_running_steps_finish_and_starts_nothing_new(db: TestDb) {
    setup(&db).await;
    let w = worker(&db);
    let key = common::new_key();
    let id = db.enqueue(Gate { key, tx: false }).await;
    common::started(&db, id).await;
    // The shutdown begins while the step runs; the step finishes after it.
    w.stop.cancel();
    gate(key).notify_one();
    w.shutdown().await;
    // Gate finished and moved on; Finish did not start.
    let ran = names(&db.runs(id).await).join(",");
    let row = db
        .find(id)
        .await
        .unwrap_or_else(|| panic!("Finish ran after the shutdown began: {ran}"));
    assert_eq!(json(&row.step), json(r#"{"Flow":{"Finish":null}}"#));
    assert_eq!((row.tried, row.locked_by), (0, None));
    assert_eq!(ran, "Gate");
}

async fn shutdown_timeout_releases_the_leases_of_unfinished_steps(db: TestDb) {
    setup(&db).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    let id = db.enqueue(Hang { until_attempt: 2 }).await;
    common::started(&db, id).await;
    w.shutdown().await;
    let row = db.find(id).await.unwrap();
    assert_eq!(
        (row.tried, row.locked_by, row.error),
        (0, None, None),
        "released, not counted"
    );
    assert!(
        row.wakeup_at <= jetpack::chrono::Utc::now(),
        "a released task is ready at once"
    );
}

async fn workers_share_the_table_without_running_a_step_twice(db: TestDb) {
    setup(&db).await;
    db.enqueue_many((0..300).map(|i| Start { n: i % 3 })).await;
    let workers: Vec<_> = (0..3)
        .map(|_| {
            common::spawn(
                db.worker::<Tasks>()
                    .concurrency(4)
                    .batch_size(3)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    common::drained(&db, Duration::from_secs(60)).await;
    for w in workers {
        w.shutdown().await;
    }
    let (total, distinct) = common::run_counts(&db).await;
    // n = 0: Start, Finish; n = 1: Start, Count 1, Finish; n = 2: Start, Count 2, Count 1, Finish.
    assert_eq!(distinct, 100 * 2 + 100 * 3 + 100 * 4);
    assert_eq!(total, distinct, "no step ran twice");
}

/// PostgreSQL only: `pg_notify('jetpack', 'stop')` reaches every worker on the database.
#[tokio::test]
async fn a_stop_notification_stops_every_postgres_worker() {
    let db = TestDb::postgres().await;
    setup(&db).await;
    let a = worker(&db);
    let b = worker(&db);
    // Both listen once each has run a task.
    let first = db.enqueue(Start { n: 0 }).await;
    let second = db.enqueue(Start { n: 0 }).await;
    common::finished(&db, first).await;
    common::finished(&db, second).await;
    let listening = "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    common::wait_for(DEADLINE, || async {
        Ok((db.scalar(listening, None).await == 2).then_some(()))
    })
    .await
    .expect("both workers listen");
    db.exec("SELECT pg_notify('jetpack', 'stop')", None, None)
        .await;
    for w in [a, b] {
        tokio::time::timeout(DEADLINE, w.handle)
            .await
            .expect("worker stopped")
            .unwrap()
            .unwrap();
    }
}

/// PostgreSQL only (where a claim can be held at a table lock): a shutdown that
/// begins while a claim is under way starts none of the tasks the claim took;
/// it gives them back, not counted as tried.
#[tokio::test]
async fn a_shutdown_during_a_claim_starts_nothing_it_took() {
    let db = TestDb::postgres().await;
    setup(&db).await;
    let Db::Postgres(pool) = &*db else {
        unreachable!("a PostgreSQL database")
    };
    let w = common::spawn(
        db.worker::<Tasks>()
            .poll_interval(Duration::from_millis(20))
            .build()
            .unwrap(),
    );
    // The task is stored in a transaction that holds the table: the worker's
    // next claim waits for it.
    let mut tx = pool.begin().await.unwrap();
    jetpack::sqlx::query("LOCK TABLE jetpack_tasks IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let id = jetpack::enqueue(&mut *tx, Start { n: 0 }).await.unwrap();
    let claiming = "SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'
                      AND query LIKE '%UPDATE jetpack_tasks t%'";
    common::wait_for(DEADLINE, || async {
        Ok((db.scalar(claiming, None).await > 0).then_some(()))
    })
    .await
    .expect("the worker's claim waits at the lock");
    // The shutdown begins; then the claim goes through and takes the task.
    w.stop.cancel();
    tx.commit().await.unwrap();
    w.shutdown().await;
    assert_eq!(names(&db.runs(id).await), Vec::<&str>::new(), "nothing ran");
    let row = db.find(id).await.expect("the task is kept");
    assert_eq!((row.tried, row.locked_by, row.lease_until), (0, None, None));
}

/// `concurrency` steps run at once, no more: steps wait at a gate the test
/// opens one at a time. (Steps whose outcome is still being written no longer
/// count, so this is checked on the steps themselves.)
async fn concurrency_limits_the_steps_running_at_once(db: TestDb) {
    setup(&db).await;
    let key = common::new_key();
    let c = crowd(key);
    let w = common::spawn(db.worker::<Tasks>().concurrency(3).build().unwrap());
    db.enqueue_many((0..8).map(|_| Crowd { key })).await;
    common::wait_for(DEADLINE, || async {
        Ok((c.started.load(Ordering::SeqCst) >= 3).then_some(()))
    })
    .await
    .unwrap();
    for released in 1..=8 {
        c.gate.notify_one();
        common::wait_for(DEADLINE, || async {
            Ok((c.done.load(Ordering::SeqCst) >= released).then_some(()))
        })
        .await
        .unwrap();
    }
    common::drained(&db, DEADLINE).await;
    w.shutdown().await;
    assert_eq!(
        c.most.load(Ordering::SeqCst),
        3,
        "at most `concurrency` steps ran at once, and that many did"
    );
}
