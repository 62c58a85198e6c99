//! No poison row or poison batch, no step running twice at once, no silent
//! failure: outcomes the database refuses, values written by hand at their
//! extremes, hand edits of running tasks, lost leases, settings that cannot
//! work, and workers that meet in the database.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{conformance, new_key, Db, TestDb, DEADLINE};
use jetpack::chrono::{TimeZone, Utc};
use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

/// Moves on to `Carry`, whose text PostgreSQL's `jsonb` may refuse (a NUL), or
/// at a time no database holds; with `tx`, inside the step's own transaction.
#[derive(Debug, Serialize, Deserialize)]
struct Move {
    nul: bool,
    far: bool,
    tx: bool,
}
#[derive(Debug, Serialize, Deserialize)]
struct Carry {
    text: String,
}
/// Waits at gate `key`; marks the key dropped if its future is dropped.
#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    key: u64,
}
/// Counts down to zero, one step at a time.
#[derive(Debug, Serialize, Deserialize)]
struct Quick {
    left: u32,
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Hard {
    #[next(Carry)]
    Move(Move),
    Carry(Carry),
    Hold(Hold),
    #[next(Quick)]
    Quick(Quick),
}

jetpack::scheduler!(Tasks { Hard });

#[jetpack::async_trait]
impl Step<Hard> for Move {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        if self.tx {
            jetpack_suite::ledger_in_tx(cx, 1).await?;
        }
        if self.far {
            let year_10000 = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
            return NextStep::at(Carry { text: "far".into() }, year_10000);
        }
        let text = if self.nul { "a\0b" } else { "fine" };
        NextStep::now(Carry { text: text.into() })
    }
}

#[jetpack::async_trait]
impl Step<Hard> for Carry {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

/// The gate of each `Hold` key, and whether a `Hold` step of that key was
/// dropped while it waited.
#[derive(Default)]
struct HoldState {
    gate: Notify,
    dropped: AtomicBool,
}

fn hold(key: u64) -> Arc<HoldState> {
    common::keyed(key)
}

struct MarkDropped(Arc<HoldState>, bool);

impl Drop for MarkDropped {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.store(true, Ordering::SeqCst);
        }
    }
}

#[jetpack::async_trait]
impl Step<Hard> for Hold {
    // A lost attempt counts as one: the task runs again as attempt 2.
    const RETRY_LIMIT: i32 = 1;

    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Hold").await?;
        let state = hold(self.key);
        let mut guard = MarkDropped(state.clone(), false);
        state.gate.notified().await;
        guard.1 = true;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Hard> for Quick {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        match self.left {
            0 => NextStep::none(),
            n => NextStep::now(Quick { left: n - 1 }),
        }
    }
}

fn moves(nul: bool, far: bool, tx: bool) -> Move {
    Move { nul, far, tx }
}

conformance!(
    a_refused_outcome_parks_only_its_own_task,
    hand_written_extremes_are_refused_or_parked,
    clearing_error_on_a_running_task_keeps_its_lease,
    a_running_step_cannot_be_edited,
    a_lost_lease_stops_the_step,
    a_busy_worker_raises_no_false_alarm_and_never_deadlocks,
    tasks_of_machines_the_worker_does_not_run_are_reported,
);

/// One outcome the database cannot store, flushed with a hundred others:
/// only its task parks, with the database's reason; the others move on.
async fn a_refused_outcome_parks_only_its_own_task(db: TestDb) {
    db.create_app_tables().await;
    let mut tasks: Vec<Move> = (0..100).map(|_| moves(false, false, false)).collect();
    tasks.extend([
        moves(true, false, false),
        moves(false, true, false),
        moves(true, false, true),
    ]);
    // Claimed together, finished together: one flush.
    let ids = db.enqueue_many(tasks).await;
    let (nul, far, nul_in_tx) = (ids[100], ids[101], ids[102]);
    let worker = db
        .worker::<Tasks>()
        .lease(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut errors = worker.errors();
    let w = common::spawn(worker);
    let postgres = matches!(&*db, Db::Postgres(_));
    let parked_ids: Vec<i64> = if postgres {
        vec![nul, far, nul_in_tx]
    } else {
        vec![far]
    };
    common::wait_for(DEADLINE, || async {
        let left = db.scalar("SELECT count(*) FROM jetpack_tasks", None).await;
        let parked = db
            .scalar(
                "SELECT count(*) FROM jetpack_tasks WHERE error IS NOT NULL",
                None,
            )
            .await;
        Ok((left == parked && parked as usize == parked_ids.len()).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("only the refused outcomes' tasks should be left: {e}"));
    // Each park is told, those of outcomes the database refused too.
    let mut told = Vec::new();
    while told.len() < parked_ids.len() {
        match tokio::time::timeout(DEADLINE, errors.recv()).await {
            Ok(Ok(e)) if e.parked => told.push(e.task_id),
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) | Err(_) => break,
        }
    }
    told.sort_unstable();
    assert_eq!(told, parked_ids, "the parks told as error events");
    w.shutdown().await;

    let db = &db;
    let error = |id| async move { db.find(id).await.unwrap().error.unwrap() };
    let far_error = error(far).await;
    assert!(
        far_error.contains("cannot schedule the next step")
            && far_error.contains("outside the years 1 to 9999"),
        "{far_error}"
    );
    if postgres {
        for id in [nul, nul_in_tx] {
            let e = error(id).await;
            assert!(
                e.starts_with("the database refused the step's outcome")
                    && e.contains("unsupported Unicode escape sequence"),
                "{e}"
            );
            let row = db.find(id).await.unwrap();
            assert!(row.step.contains("Move"), "parked at the step that failed");
            assert_eq!(row.locked_by, None);
        }
        assert_eq!(
            db.ledger(nul_in_tx).await,
            Vec::<i64>::new(),
            "the step's transaction rolled back"
        );
    } else {
        assert_eq!(db.ledger(nul_in_tx).await, [1], "SQLite stores the NUL");
    }
}

/// Values a person can write by hand at the edges of each column: the
/// database refuses those that would stop or disturb other tasks, and a worker
/// parks, with a clear error, the rows it cannot run safely; other tasks run on.
async fn hand_written_extremes_are_refused_or_parked(db: TestDb) {
    let refused: &[&str] = match &*db {
        Db::Postgres(_) => &[
            "UPDATE jetpack_tasks SET wakeup_at = 'infinity' WHERE id = $1",
            "UPDATE jetpack_tasks SET wakeup_at = '-infinity' WHERE id = $1",
            "UPDATE jetpack_tasks SET wakeup_at = '10000-01-01' WHERE id = $1",
            "UPDATE jetpack_tasks SET lease_until = 'infinity' WHERE id = $1",
            "UPDATE jetpack_tasks SET tried = -1 WHERE id = $1",
            "UPDATE jetpack_tasks SET transitions = -1 WHERE id = $1",
        ],
        Db::Sqlite(_) => &[
            "UPDATE jetpack_tasks SET wakeup_at = 'tomorrow' WHERE id = $1",
            "UPDATE jetpack_tasks SET wakeup_at = '2026-11-30T10:00:00Z' WHERE id = $1",
            "UPDATE jetpack_tasks SET wakeup_at = 2461010.5 WHERE id = $1",
            "UPDATE jetpack_tasks SET tried = -1 WHERE id = $1",
            "UPDATE jetpack_tasks SET tried = 'many' WHERE id = $1",
            "UPDATE jetpack_tasks SET transitions = -1 WHERE id = $1",
            "UPDATE jetpack_tasks SET transitions = 'many' WHERE id = $1",
            "UPDATE jetpack_tasks SET fence = 9007199254740992 WHERE id = $1",
            "UPDATE jetpack_tasks SET id = 9223372036854775807 WHERE id = $1",
        ],
    };
    let victim = db.enqueue(Quick { left: 0 }).await;
    for sql in refused {
        assert!(
            db.try_exec(sql, Some(victim), None).await.is_err(),
            "{sql} was not refused"
        );
    }
    let max_tried = db.enqueue(Quick { left: 0 }).await;
    db.exec(
        "UPDATE jetpack_tasks SET tried = 2147483647 WHERE id = $1",
        Some(max_tried),
        None,
    )
    .await;
    let max_fence = db.enqueue(Quick { left: 0 }).await;
    let largest = match &*db {
        Db::Postgres(_) => "UPDATE jetpack_tasks SET fence = 9223372036854775807 WHERE id = $1",
        Db::Sqlite(_) => "UPDATE jetpack_tasks SET fence = 9007199254740991 WHERE id = $1",
    };
    db.exec(largest, Some(max_fence), None).await;
    // A count of transitions at its largest stays there; the task runs.
    let max_transitions = db.enqueue(Quick { left: 1 }).await;
    db.exec(
        "UPDATE jetpack_tasks SET transitions = 2147483647 WHERE id = $1",
        Some(max_transitions),
        None,
    )
    .await;

    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    common::finished(&db, victim).await;
    common::finished(&db, max_transitions).await;
    let tried_error = common::parked(&db, max_tried).await.error.unwrap();
    let fence_error = common::parked(&db, max_fence).await.error.unwrap();
    let later = db.enqueue(Quick { left: 2 }).await;
    common::finished(&db, later).await;
    w.shutdown().await;
    assert!(
        tried_error.starts_with("tried is 2147483647, beyond the 1 attempts"),
        "{tried_error}"
    );
    assert!(fence_error.contains("its largest value"), "{fence_error}");
}

/// Setting `error` on a running task and clearing it again (by SQL or
/// `resume`) must not release the lease: another worker would run the step
/// while the first attempt still runs.
async fn clearing_error_on_a_running_task_keeps_its_lease(db: TestDb) {
    db.create_app_tables().await;
    let a = common::spawn(db.worker::<Tasks>().build().unwrap());
    let b = common::spawn(db.worker::<Tasks>().build().unwrap());
    let key = new_key();
    let id = db.enqueue(Hold { key }).await;
    common::started(&db, id).await;
    let set = "UPDATE jetpack_tasks SET error = 'paused by hand' WHERE id = $1";
    db.exec(set, Some(id), None).await;
    db.exec(
        "UPDATE jetpack_tasks SET error = NULL WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    db.exec(set, Some(id), None).await;
    assert!(db.resume(id).await);
    let row = db.find(id).await.unwrap();
    assert!(
        row.locked_by.is_some() && row.lease_until.is_some(),
        "the running attempt keeps its lease: {row:?}"
    );
    // Both workers poll every 200 ms: give them several chances to claim it.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(db.runs(id).await.len(), 1, "the step ran again meanwhile");
    }
    hold(key).gate.notify_one();
    common::finished(&db, id).await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(db.runs(id).await.len(), 1);
}

/// A hand edit of the step of a running task is refused, with a message that
/// says why: the running attempt's outcome would overwrite it.
async fn a_running_step_cannot_be_edited(db: TestDb) {
    db.create_app_tables().await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let key = new_key();
    let id = db.enqueue(Hold { key }).await;
    common::started(&db, id).await;
    let edit = match &*db {
        Db::Postgres(_) => "UPDATE jetpack_tasks SET step = $2::jsonb WHERE id = $1",
        Db::Sqlite(_) => "UPDATE jetpack_tasks SET step = $2 WHERE id = $1",
    };
    let refused = db
        .try_exec(edit, Some(id), Some(r#"{"Hard":{"Quick":{"left":0}}}"#))
        .await
        .expect_err("editing a running task's step is refused");
    assert!(
        refused.to_string().contains("running"),
        "the message says why: {refused}"
    );
    // A change of the lease alone, or of the error, is still allowed.
    db.exec(
        "UPDATE jetpack_tasks SET error = 'look at me' WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    hold(key).gate.notify_one();
    common::finished(&db, id).await;
    w.shutdown().await;
}

/// When the heartbeat finds the lease lost (here: another claim moved the
/// fence, as after an expiry), the step is stopped; the task runs again under
/// the new lease once the old one expired.
async fn a_lost_lease_stops_the_step(db: TestDb) {
    db.create_app_tables().await;
    let (logs, _guard) = common::capture_logs();
    let lease = Duration::from_millis(300);
    let w = common::spawn(db.worker::<Tasks>().lease(lease).build().unwrap());
    let key = new_key();
    let id = db.enqueue(Hold { key }).await;
    common::started(&db, id).await;
    db.exec(
        "UPDATE jetpack_tasks SET fence = fence + 1 WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    let state = hold(key);
    common::wait_for(DEADLINE, || async {
        Ok(state.dropped.load(Ordering::SeqCst).then_some(()))
    })
    .await
    .expect("the step was stopped");
    // The task itself is not lost: it runs again once the lease expired.
    common::wait_for(DEADLINE, || async {
        Ok((db.runs(id).await.len() == 2).then_some(()))
    })
    .await
    .expect("the task ran again");
    state.gate.notify_one();
    common::finished(&db, id).await;
    w.shutdown().await;
    let logs = logs.text();
    assert!(logs.contains("lease lost"), "{logs}");
}

/// A worker under load with a short lease: the heartbeat (every 100 ms) and
/// the completer's flushes meet on the same rows all the time. No deadlock
/// (PostgreSQL aborted one of them after a 1 s stall), and no "lease lost"
/// for attempts that merely finished between the heartbeat's look and its
/// update.
async fn a_busy_worker_raises_no_false_alarm_and_never_deadlocks(db: TestDb) {
    let (logs, _guard) = common::capture_logs();
    db.enqueue_many((0..4_000).map(|_| Quick { left: 9 })).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .lease(Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    let drained = common::wait_for(Duration::from_secs(120), || async {
        let left = db.scalar("SELECT count(*) FROM jetpack_tasks", None).await;
        Ok((left == 0).then_some(()))
    })
    .await;
    w.shutdown().await;
    let logs = logs.text();
    if let Err(e) = drained {
        panic!("the queue did not drain: {e}; the worker logged:\n{logs}");
    }
    assert!(!logs.contains("deadlock"), "{logs}");
    assert!(!logs.contains("lease lost"), "{logs}");
    assert!(!logs.contains("lease was lost"), "{logs}");
}

/// Tasks of a machine the worker's scheduler does not have, and of a step it
/// does not know, are left alone and reported once at start, with counts
/// (of live tasks only).
async fn tasks_of_machines_the_worker_does_not_run_are_reported(db: TestDb) {
    let (logs, _guard) = common::capture_logs();
    for _ in 0..3 {
        db.insert_raw(r#"{"Billing":{"Charge":{"cents":100}}}"#)
            .await
            .unwrap();
    }
    db.insert_raw(r#"{"Billing":{"Refund":{}}}"#).await.unwrap();
    // Cancelled tasks are not waiting: not counted.
    let cancelled = db.insert_raw(r#"{"Billing":{"Refund":{}}}"#).await.unwrap();
    db.cancel(cancelled, "not wanted").await;
    for _ in 0..2 {
        db.insert_raw(r#"{"Hard":{"Rocket":{}}}"#).await.unwrap();
    }
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let text = common::wait_for(DEADLINE, || async {
        let text = logs.text();
        Ok((text.contains("Billing") && text.contains("Rocket")).then_some(text))
    })
    .await
    .unwrap();
    w.shutdown().await;
    let billing = text.lines().find(|l| l.contains("Billing")).unwrap();
    assert!(
        billing.contains("machine=Billing") && billing.contains("tasks=4"),
        "{billing}"
    );
    assert!(
        billing.contains("not in this worker's scheduler"),
        "{billing}"
    );
    let rocket = text.lines().find(|l| l.contains("Rocket")).unwrap();
    assert!(
        rocket.contains("kind=Hard.Rocket") && rocket.contains("tasks=2"),
        "{rocket}"
    );
}

/// Settings with which a worker could never record an outcome are an
/// `Error::Config` at `build()`, with the reason.
#[tokio::test]
async fn settings_that_cannot_work_are_refused() {
    let db = TestDb::postgres().await;
    let Db::Postgres(pool) = &*db else {
        unreachable!()
    };
    let one = jetpack::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let error = jetpack::Worker::<Tasks>::builder(one)
        .build()
        .err()
        .expect("a pool of one connection is refused");
    assert!(
        matches!(error, jetpack::Error::Config(_)) && error.to_string().contains("max_connections"),
        "{error}"
    );
    let refuse = |builder: jetpack::WorkerBuilder<Tasks>, why: &str| {
        let error = builder.build().err().expect(why);
        assert!(matches!(error, jetpack::Error::Config(_)), "{why}: {error}");
    };
    let builder = || jetpack::Worker::<Tasks>::builder(pool.clone());
    refuse(
        builder().concurrency(usize::MAX),
        "a concurrency beyond reason",
    );
    refuse(
        builder().lease(Duration::MAX),
        "a lease the database cannot store",
    );
    refuse(
        builder().name("worker\0one"),
        "a name PostgreSQL cannot store",
    );
    refuse(builder().concurrency(0), "no concurrency");
    assert!(builder().build().is_ok(), "the defaults work");
}

/// Processes that migrate one fresh SQLite file at once all succeed: they take
/// turns, and those that come later find nothing to do.
#[tokio::test]
async fn concurrent_sqlite_migrations_all_succeed() {
    for round in 0..5 {
        let dir =
            std::env::temp_dir().join(format!("jetpack_migrate_{}_{round}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("fresh.db").display());
        let mut pools = Vec::new();
        for _ in 0..6 {
            pools.push(jetpack::sqlite::connect(&url).await.unwrap());
        }
        let mut migrations = tokio::task::JoinSet::new();
        for pool in pools.clone() {
            migrations.spawn(async move { jetpack::migrate(&pool).await });
        }
        while let Some(done) = migrations.join_next().await {
            done.unwrap()
                .unwrap_or_else(|e| panic!("a concurrent migration failed (round {round}): {e}"));
        }
        let id = jetpack::enqueue(&pools[0], Quick { left: 0 })
            .await
            .unwrap();
        assert_eq!(id, 1);
        for pool in pools {
            pool.close().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
