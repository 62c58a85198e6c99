//! Workers against a real PostgreSQL: chains, delays, retries, parking and
//! resuming by SQL, panics, timeouts, bad rows, leases and fences, shutdown,
//! transactional steps and several workers sharing one table.

mod common;

use std::time::Duration;

use common::{create_runs, record_run, runs, TestDb, DEADLINE};
use jetpack::sqlx::{self, PgPool};
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
struct Gate;
#[derive(Debug, Serialize, Deserialize)]
struct Transfer {
    amount: i64,
    fail: bool,
}
#[derive(Debug, Serialize, Deserialize)]
struct UsesState;

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
}

jetpack::scheduler!(Tasks { Flow });

#[jetpack::async_trait]
impl Step<Flow> for Start {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        record_run(cx, "Start").await?;
        match self.n {
            0 => NextStep::now(Finish),
            n => NextStep::now(Count { left: n }),
        }
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Count {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        record_run(cx, &format!("Count {}", self.left)).await?;
        match self.left {
            1 => NextStep::now(Finish),
            n => NextStep::now(Count { left: n - 1 }),
        }
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Finish {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        record_run(cx, "Finish").await?;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Later {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        record_run(cx, "Later").await?;
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
        record_run(cx, "Flaky").await?;
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
        record_run(cx, &format!("NeedsWorld {}", self.key)).await?;
        let pool: &PgPool = cx.pool()?;
        let found: Option<String> = sqlx::query_scalar("SELECT key FROM world WHERE key = $1")
            .bind(&self.key)
            .fetch_optional(pool)
            .await?;
        match found {
            Some(_) => NextStep::now(Finish),
            None => Err(format!("the world has no {}", self.key).into()),
        }
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Panics {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        record_run(cx, "Panics").await?;
        panic!("boom at attempt {}", cx.attempt());
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Slow {
    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(100));

    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        record_run(cx, "Slow").await?;
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        NextStep::now(Finish)
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Hang {
    const RETRY_LIMIT: i32 = 1;

    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        record_run(cx, "Hang").await?;
        if cx.attempt() < self.until_attempt {
            std::future::pending::<()>().await;
        }
        NextStep::now(Finish)
    }
}

static GATE: Notify = Notify::const_new();

#[jetpack::async_trait]
impl Step<Flow> for Gate {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let mut tx = cx.tx::<sqlx::Postgres>().await?;
        sqlx::query("INSERT INTO ledger (task_id, amount) VALUES ($1, 1)")
            .bind(cx.task_id())
            .execute(&mut **tx)
            .await?;
        drop(tx);
        record_run(cx, "Gate").await?;
        GATE.notified().await;
        NextStep::now(Finish)
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Transfer {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let mut tx = cx.tx::<sqlx::Postgres>().await?;
        sqlx::query("INSERT INTO ledger (task_id, amount) VALUES ($1, $2)")
            .bind(cx.task_id())
            .bind(self.amount)
            .execute(&mut **tx)
            .await?;
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
        record_run(cx, greeting.0).await?;
        let missing = cx.state::<String>().map(|_| ()).unwrap_err();
        Err(StepError::permanent(missing))
    }
}

async fn setup() -> TestDb {
    let db = TestDb::new().await;
    create_runs(&db.pool).await;
    for sql in [
        "CREATE TABLE world (key text PRIMARY KEY)",
        "CREATE TABLE ledger (task_id bigint, amount bigint)",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    db
}

fn worker(pool: &PgPool) -> common::Running {
    common::spawn(common::builder::<Tasks>(pool).build().unwrap())
}

fn names(runs: &[(String, i32)]) -> Vec<&str> {
    runs.iter().map(|(s, _)| s.as_str()).collect()
}

#[tokio::test]
async fn a_chain_runs_every_step_in_order_and_finishes() {
    let db = setup().await;
    let w = worker(&db.pool);
    let id = jetpack::enqueue(&db.pool, Start { n: 3 }).await.unwrap();
    common::finished(&db.pool, id).await;
    w.shutdown().await;
    assert_eq!(
        names(&runs(&db.pool, id).await),
        ["Start", "Count 3", "Count 2", "Count 1", "Finish"]
    );
}

#[tokio::test]
async fn a_delayed_step_is_stored_and_runs_after_its_delay() {
    let db = setup().await;
    let w = worker(&db.pool);
    let id = jetpack::enqueue(&db.pool, Later { ms: 700 }).await.unwrap();
    // After Later runs, the row waits in Finish with a wakeup in the future.
    let due: f64 = common::wait_for(DEADLINE, || async {
        sqlx::query_scalar(
            "SELECT extract(epoch FROM wakeup_at - updated_at)::float8 FROM jetpack_tasks
             WHERE id = $1 AND kind = 'Flow.Finish' AND locked_by IS NULL",
        )
        .bind(id)
        .fetch_optional(&db.pool)
        .await
    })
    .await
    .unwrap();
    assert!(
        (0.69..0.75).contains(&due),
        "wakeup_at - updated_at = {due}"
    );
    common::finished(&db.pool, id).await;
    w.shutdown().await;
    // The database clock separates the two runs by at least the delay.
    let gap: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(at) - min(at))::float8 FROM runs WHERE task_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(gap >= 0.69, "gap {gap}");
}

#[tokio::test]
async fn failures_are_retried_then_parked_with_the_error_chain() {
    let db = setup().await;
    let w = worker(&db.pool);
    let id = jetpack::enqueue(
        &db.pool,
        Flaky {
            fail_until: 99,
            permanent: false,
        },
    )
    .await
    .unwrap();
    let row = common::parked(&db.pool, id).await;
    w.shutdown().await;
    assert_eq!(
        row.error.as_deref(),
        Some("charging the card failed: gateway timeout")
    );
    assert_eq!(row.tried, 3, "first try + RETRY_LIMIT of 2");
    assert_eq!(row.locked_by, None);
    assert_eq!(
        row.step,
        r#"{"Flow": {"Flaky": {"permanent": false, "fail_until": 99}}}"#
    );
    let attempts: Vec<i32> = runs(&db.pool, id)
        .await
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test]
async fn a_step_that_recovers_within_its_retries_moves_on() {
    let db = setup().await;
    let w = worker(&db.pool);
    let id = jetpack::enqueue(
        &db.pool,
        Flaky {
            fail_until: 3,
            permanent: false,
        },
    )
    .await
    .unwrap();
    common::finished(&db.pool, id).await;
    w.shutdown().await;
    assert_eq!(
        runs(&db.pool, id).await,
        [
            ("Flaky".into(), 1),
            ("Flaky".into(), 2),
            ("Flaky".into(), 3),
            ("Finish".into(), 1)
        ]
    );
}

#[tokio::test]
async fn a_permanent_error_parks_without_retrying() {
    let db = setup().await;
    let w = worker(&db.pool);
    let id = jetpack::enqueue(
        &db.pool,
        Flaky {
            fail_until: 99,
            permanent: true,
        },
    )
    .await
    .unwrap();
    let row = common::parked(&db.pool, id).await;
    w.shutdown().await;
    assert_eq!(row.tried, 1);
    assert_eq!(runs(&db.pool, id).await.len(), 1);
}

#[tokio::test]
async fn clearing_the_error_by_sql_resumes_with_a_full_retry_budget() {
    let db = setup().await;
    let pool = &db.pool;
    let w = worker(pool);
    let id = jetpack::enqueue(pool, NeedsWorld { key: "typo".into() })
        .await
        .unwrap();
    let row = common::parked(pool, id).await;
    assert_eq!(row.error.as_deref(), Some("the world has no typo"));
    assert_eq!(row.tried, 2);

    // Fix the world, fix the step's JSON, clear the error: plain SQL.
    sqlx::query("INSERT INTO world VALUES ('key')")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        r#"UPDATE jetpack_tasks SET step = '{"Flow":{"NeedsWorld":{"key":"key"}}}' WHERE id = $1"#,
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    let reset: i32 =
        sqlx::query_scalar("UPDATE jetpack_tasks SET error = NULL WHERE id = $1 RETURNING tried")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        reset, 0,
        "clearing the error gives the step its full retry budget"
    );
    common::finished(pool, id).await;
    w.shutdown().await;
    assert_eq!(
        runs(pool, id).await,
        [
            ("NeedsWorld typo".into(), 1),
            ("NeedsWorld typo".into(), 2),
            ("NeedsWorld key".into(), 1),
            ("Finish".into(), 1)
        ]
    );
}

#[tokio::test]
async fn resuming_by_sql_wakes_an_idle_worker_at_once() {
    let db = setup().await;
    let pool = &db.pool;
    // A worker that would poll only every 10 minutes: only the notification can wake it.
    let w = common::spawn(
        jetpack::Worker::<Tasks>::builder(pool.clone())
            .poll_interval(Duration::from_secs(600))
            .build()
            .unwrap(),
    );
    let id = jetpack::enqueue(pool, NeedsWorld { key: "k".into() })
        .await
        .unwrap();
    common::parked(pool, id).await;
    sqlx::query("INSERT INTO world VALUES ('k')")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jetpack_tasks SET error = NULL WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    common::finished(pool, id).await;
    w.shutdown().await;
}

#[tokio::test]
async fn a_panicking_step_is_a_failed_attempt_with_its_message() {
    let db = setup().await;
    let w = worker(&db.pool);
    let id = jetpack::enqueue(&db.pool, Panics).await.unwrap();
    let other = jetpack::enqueue(&db.pool, Start { n: 0 }).await.unwrap();
    let row = common::parked(&db.pool, id).await;
    common::finished(&db.pool, other).await;
    w.shutdown().await;
    assert_eq!(
        row.error.as_deref(),
        Some("the step panicked: boom at attempt 1")
    );
    assert_eq!(row.tried, 1);
}

#[tokio::test]
async fn a_step_past_its_timeout_fails() {
    let db = setup().await;
    let w = worker(&db.pool);
    let slow = jetpack::enqueue(&db.pool, Slow { ms: 60_000 })
        .await
        .unwrap();
    let quick = jetpack::enqueue(&db.pool, Slow { ms: 1 }).await.unwrap();
    let row = common::parked(&db.pool, slow).await;
    common::finished(&db.pool, quick).await;
    w.shutdown().await;
    assert_eq!(row.error.as_deref(), Some("the step timed out after 100ms"));
}

#[tokio::test]
async fn bad_rows_get_clear_errors_and_unknown_steps_are_left_alone() {
    let db = setup().await;
    let pool = &db.pool;
    let insert = |json: &'static str| async move {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO jetpack_tasks (step) VALUES ($1::jsonb) RETURNING id",
        )
        .bind(json)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let mistyped = insert(r#"{"Flow":{"Start":{"n":"three"}}}"#).await;
    let missing = insert(r#"{"Flow":{"Start":{}}}"#).await;
    let malformed = insert(r#"{"Flow":42}"#).await;
    let not_a_step = insert(r#"[1, 2, 3]"#).await;
    let newer_step = insert(r#"{"Flow":{"Rocket":{}}}"#).await;
    let newer_machine = insert(r#"{"Billing":{"Charge":{"cents":100}}}"#).await;
    let good = jetpack::enqueue(pool, Start { n: 0 }).await.unwrap();

    let w = worker(pool);
    common::finished(pool, good).await;
    let mut errors = Vec::new();
    for id in [mistyped, missing, malformed, not_a_step] {
        let row = common::parked(pool, id).await;
        assert_eq!(row.tried, 1);
        errors.push(row.error.unwrap());
    }
    w.shutdown().await;
    for (error, expected) in errors.iter().zip([
        "invalid type: string \"three\", expected u32",
        "missing field `n`",
        "expected value at line 1 column 10",
        "expected value at line 1 column 1 ",
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
        let row = common::row(pool, id).await.unwrap();
        assert_eq!((row.tried, row.error, row.locked_by), (0, None, None));
    }
}

#[tokio::test]
async fn steps_read_shared_state_and_a_missing_state_is_a_clear_error() {
    let db = setup().await;
    let w = common::spawn(
        common::builder::<Tasks>(&db.pool)
            .state(Greeting("hello from state"))
            .build()
            .unwrap(),
    );
    let id = jetpack::enqueue(&db.pool, UsesState).await.unwrap();
    let row = common::parked(&db.pool, id).await;
    w.shutdown().await;
    assert_eq!(names(&runs(&db.pool, id).await), ["hello from state"]);
    let error = row.error.unwrap();
    assert!(
        error.contains("no state of type `alloc::string::String`"),
        "{error}"
    );
}

async fn ledger(pool: &PgPool, id: i64) -> Vec<i64> {
    sqlx::query_scalar("SELECT amount FROM ledger WHERE task_id = $1")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_transactional_step_commits_with_its_transition_or_not_at_all() {
    let db = setup().await;
    let pool = &db.pool;
    let w = worker(pool);
    let ok = jetpack::enqueue(
        pool,
        Transfer {
            amount: 5,
            fail: false,
        },
    )
    .await
    .unwrap();
    let failed = jetpack::enqueue(
        pool,
        Transfer {
            amount: 7,
            fail: true,
        },
    )
    .await
    .unwrap();
    common::finished(pool, ok).await;
    common::parked(pool, failed).await;
    w.shutdown().await;
    assert_eq!(ledger(pool, ok).await, [5]);
    assert_eq!(
        ledger(pool, failed).await,
        Vec::<i64>::new(),
        "a failed step's writes roll back"
    );
}

#[tokio::test]
async fn a_stale_attempt_cannot_overwrite_the_newer_one() {
    let db = setup().await;
    let pool = &db.pool;
    let w = worker(pool);
    let id = jetpack::enqueue(pool, Gate).await.unwrap();
    common::started(pool, id).await;
    // Another claim happens meanwhile (as after an expired lease): the fence moves.
    sqlx::query("UPDATE jetpack_tasks SET fence = fence + 1, locked_by = 'other' WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    GATE.notify_one();
    // The stale attempt finishes; wait until its worker has nothing in flight.
    w.shutdown().await;
    let row = common::row(pool, id).await.unwrap();
    assert_eq!(
        row.step, r#"{"Flow": {"Gate": null}}"#,
        "the stale attempt did not move the task"
    );
    assert_eq!(row.locked_by.as_deref(), Some("other"));
    assert_eq!(
        ledger(pool, id).await,
        Vec::<i64>::new(),
        "its transaction rolled back"
    );
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_crash_counts_as_an_attempt() {
    let db = setup().await;
    let pool = &db.pool;
    let lease = Duration::from_millis(500);
    // Worker A hangs in attempt 1 and then "crashes": its future is dropped
    // without any cleanup, as when a process dies.
    let a = common::spawn(common::builder::<Tasks>(pool).lease(lease).build().unwrap());
    let id = jetpack::enqueue(pool, Hang { until_attempt: 2 })
        .await
        .unwrap();
    common::started(pool, id).await;
    a.handle.abort();
    let _ = a.handle.await;

    let b = common::spawn(common::builder::<Tasks>(pool).lease(lease).build().unwrap());
    common::finished(pool, id).await;
    b.shutdown().await;
    assert_eq!(
        runs(pool, id).await,
        [("Hang".into(), 1), ("Hang".into(), 2), ("Finish".into(), 1)]
    );
}

#[tokio::test]
async fn a_step_that_always_crashes_its_worker_ends_parked() {
    let db = setup().await;
    let pool = &db.pool;
    let lease = Duration::from_millis(400);
    let id = jetpack::enqueue(
        pool,
        Hang {
            until_attempt: i32::MAX,
        },
    )
    .await
    .unwrap();
    // RETRY_LIMIT is 1: two attempts, each of which "crashes" its worker.
    for attempt in 1..=2 {
        let w = common::spawn(common::builder::<Tasks>(pool).lease(lease).build().unwrap());
        common::wait_for(DEADLINE, || async {
            Ok((runs(pool, id).await.len() == attempt).then_some(()))
        })
        .await
        .unwrap();
        w.handle.abort();
        let _ = w.handle.await;
    }
    let w = common::spawn(common::builder::<Tasks>(pool).lease(lease).build().unwrap());
    let row = common::parked(pool, id).await;
    w.shutdown().await;
    assert_eq!(row.tried, 3);
    let error = row.error.unwrap();
    assert!(
        error.contains("attempt 2 of at most 2 never finished"),
        "{error}"
    );
    assert_eq!(
        runs(pool, id).await.len(),
        2,
        "the crashing step was not run a third time"
    );
}

#[tokio::test]
async fn the_heartbeat_keeps_a_long_step_leased() {
    let db = setup().await;
    let pool = &db.pool;
    let lease = Duration::from_millis(300);
    let w1 = common::spawn(common::builder::<Tasks>(pool).lease(lease).build().unwrap());
    let w2 = common::spawn(common::builder::<Tasks>(pool).lease(lease).build().unwrap());
    // Runs for six leases; without the heartbeat the other worker would take it over.
    let id = jetpack::enqueue(pool, Slow { ms: 90 }).await.unwrap();
    let long = jetpack::enqueue(pool, Later { ms: 0 }).await.unwrap();
    common::finished(pool, id).await;
    common::finished(pool, long).await;
    let hang = jetpack::enqueue(pool, Gate).await.unwrap();
    common::started(pool, hang).await;
    tokio::time::sleep(lease * 6).await;
    let row = common::row(pool, hang).await.unwrap();
    assert_eq!(
        row.tried, 1,
        "nobody else claimed the task while its step ran"
    );
    GATE.notify_one();
    common::finished(pool, hang).await;
    w1.shutdown().await;
    w2.shutdown().await;
    assert_eq!(names(&runs(pool, hang).await), ["Gate", "Finish"]);
}

#[tokio::test]
async fn graceful_shutdown_lets_running_steps_finish_and_starts_nothing_new() {
    let db = setup().await;
    let pool = &db.pool;
    let w = worker(pool);
    let id = jetpack::enqueue(pool, Slow { ms: 50 }).await.unwrap();
    common::started(pool, id).await;
    w.shutdown().await;
    // Slow finished (within its timeout) and moved on; Finish did not start.
    let row = common::row(pool, id).await;
    let ran = names(&runs(pool, id).await).join(",");
    match row {
        Some(row) => {
            assert_eq!(row.step, r#"{"Flow": {"Finish": null}}"#);
            assert_eq!((row.tried, row.locked_by), (0, None));
            assert_eq!(ran, "Slow");
        }
        None => panic!("Finish ran after the shutdown began: {ran}"),
    }
}

#[tokio::test]
async fn shutdown_timeout_releases_the_leases_of_unfinished_steps() {
    let db = setup().await;
    let pool = &db.pool;
    let w = common::spawn(
        common::builder::<Tasks>(pool)
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    let id = jetpack::enqueue(pool, Hang { until_attempt: 2 })
        .await
        .unwrap();
    common::started(pool, id).await;
    w.shutdown().await;
    let row = common::row(pool, id).await.unwrap();
    assert_eq!(
        (row.tried, row.locked_by, row.error),
        (0, None, None),
        "released, not counted"
    );
    let due: bool =
        sqlx::query_scalar("SELECT wakeup_at <= now() FROM jetpack_tasks WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(due, "a released task is ready at once");
}

#[tokio::test]
async fn a_stop_notification_stops_every_worker() {
    let db = setup().await;
    let pool = &db.pool;
    let a = worker(pool);
    let b = worker(pool);
    // Make sure both listen before the stop is sent.
    let id = jetpack::enqueue(pool, Start { n: 0 }).await.unwrap();
    common::finished(pool, id).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    sqlx::query("SELECT pg_notify('jetpack', 'stop')")
        .execute(pool)
        .await
        .unwrap();
    for w in [a, b] {
        tokio::time::timeout(DEADLINE, w.handle)
            .await
            .expect("worker stopped")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn workers_share_the_table_without_running_a_step_twice() {
    let db = setup().await;
    let pool = &db.pool;
    let ids = jetpack::enqueue_many(pool, (0..300).map(|i| Start { n: i % 3 }))
        .await
        .unwrap();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            common::spawn(
                common::builder::<Tasks>(pool)
                    .concurrency(4)
                    .batch_size(3)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    common::wait_for(Duration::from_secs(60), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jetpack_tasks")
            .fetch_one(pool)
            .await?;
        Ok((left == 0).then_some(()))
    })
    .await
    .unwrap();
    for w in workers {
        w.shutdown().await;
    }
    let (total, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (task_id, step)) FROM runs WHERE task_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .unwrap();
    // n = 0: Start, Finish; n = 1: Start, Count 1, Finish; n = 2: Start, Count 2, Count 1, Finish.
    assert_eq!(distinct, 100 * 2 + 100 * 3 + 100 * 4);
    assert_eq!(total, distinct, "no step ran twice");
}
