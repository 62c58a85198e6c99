//! The lifecycle every row states in its `state` column: ready (or scheduled,
//! or running, as `find` derives them), parked, cancelled and finished; hand
//! edits that keep `state` and `error` in step; cancellation from Rust and SQL,
//! of waiting and of running tasks; kept finished tasks and their cleanup.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::{conformance, new_key, reaches, Db, TestDb, DEADLINE};
use jetpack::{Cancel, Context, NextStep, Step, StepResult, StopReason, TaskState};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Finishes at once.
#[derive(Debug, Serialize, Deserialize)]
struct Done;

/// Waits until stopped (or released through its key's gate), records why,
/// writes to the ledger in its own transaction, then finishes.
#[derive(Debug, Serialize, Deserialize)]
struct Wait {
    key: u64,
}

/// Writes to the ledger in its own transaction and finishes, after `micros`.
#[derive(Debug, Serialize, Deserialize)]
struct Pay {
    micros: u64,
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Life {
    Done(Done),
    Wait(Wait),
    Pay(Pay),
}

jetpack::scheduler!(Tasks { Life });

#[jetpack::async_trait]
impl Step<Life> for Done {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

/// What a `Wait` step of one key saw.
#[derive(Default)]
struct Seen {
    started: Notify,
    gate: Notify,
    /// 0 until the step was stopped; then 1 + the reason's index.
    reason: AtomicU8,
    stopped: Notify,
}

#[jetpack::async_trait]
impl Step<Life> for Wait {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let seen = common::keyed::<Seen>(self.key);
        seen.started.notify_one();
        tokio::select! {
            () = seen.gate.notified() => {}
            reason = cx.stopped() => {
                let code = match reason {
                    StopReason::Shutdown => 1,
                    StopReason::Cancelled => 2,
                    StopReason::LeaseLost => 3,
                    _ => 4,
                };
                seen.reason.store(code, Ordering::SeqCst);
            }
        }
        // Written after the wait: on SQLite a write transaction held while
        // waiting would lock out every other writer, the cancel included.
        jetpack_suite::ledger_in_tx(cx, 1).await?;
        seen.stopped.notify_one();
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Life> for Pay {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        jetpack_suite::ledger_in_tx(cx, 1).await?;
        tokio::time::sleep(Duration::from_micros(self.micros)).await;
        NextStep::none()
    }
}

conformance!(
    find_tells_every_state_apart,
    hand_edits_keep_state_and_error_in_step,
    cancel_stops_a_task_that_is_not_running,
    cancel_tells_the_running_step_and_discards_its_outcome,
    cancel_racing_completion_has_one_winner,
    a_cancel_by_sql_reaches_the_running_step,
    kept_tasks_are_deleted_once_their_period_passes,
);

async fn state(db: &Db, id: i64) -> Option<TaskState> {
    db.find(id).await.map(|row| row.state)
}

async fn find_tells_every_state_apart(db: TestDb) {
    db.create_app_tables().await;
    let ready = db.enqueue(Done).await;
    let scheduled = db.delay(Done, Duration::from_secs(3600)).await.unwrap();
    let parked = db.enqueue(Done).await;
    db.exec(
        "UPDATE jetpack_tasks SET error = 'stopped by hand' WHERE id = $1",
        Some(parked),
        None,
    )
    .await;
    let cancelled = db.enqueue(Done).await;
    assert_eq!(db.cancel(cancelled, "not wanted").await, Cancel::Cancelled);
    assert_eq!(state(&db, ready).await, Some(TaskState::Ready));
    assert_eq!(state(&db, scheduled).await, Some(TaskState::Scheduled));
    assert_eq!(state(&db, parked).await, Some(TaskState::Parked));
    let row = db.find(cancelled).await.unwrap();
    assert_eq!(row.state, TaskState::Cancelled);
    assert_eq!(row.error.as_deref(), Some("not wanted"));
    assert!(row.finished_at.is_some());
    assert_eq!(state(&db, 1 << 40).await, None, "unknown");

    let key = new_key();
    let running = db.enqueue(Wait { key }).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .keep_finished(Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    reaches(&db, running, TaskState::Running).await;
    reaches(&db, ready, TaskState::Finished).await;
    let row = db.find(ready).await.unwrap();
    assert!(
        row.finished_at.is_some() && row.locked_by.is_none(),
        "{row:?}"
    );
    assert_eq!(
        common::json(&row.step),
        common::json(r#"{"Life":{"Done":null}}"#)
    );
    common::keyed::<Seen>(key).gate.notify_one();
    reaches(&db, running, TaskState::Finished).await;
    w.shutdown().await;
    assert_eq!(state(&db, parked).await, Some(TaskState::Parked));
    assert_eq!(state(&db, cancelled).await, Some(TaskState::Cancelled));
}

/// `state` and `error` can each be written by hand, and the other follows;
/// what would make them disagree is refused.
async fn hand_edits_keep_state_and_error_in_step(db: TestDb) {
    let id = db.enqueue(Done).await;
    let set = |sql| db.exec(sql, Some(id), None);
    set("UPDATE jetpack_tasks SET error = 'wait for the fix' WHERE id = $1").await;
    assert_eq!(state(&db, id).await, Some(TaskState::Parked));
    set("UPDATE jetpack_tasks SET error = NULL WHERE id = $1").await;
    assert_eq!(state(&db, id).await, Some(TaskState::Ready));
    set("UPDATE jetpack_tasks SET error = 'again', tried = 3 WHERE id = $1").await;
    set("UPDATE jetpack_tasks SET state = 'ready' WHERE id = $1").await;
    let row = db.find(id).await.unwrap();
    assert_eq!(
        (row.state, row.error, row.tried),
        (TaskState::Ready, None, 0)
    );

    let mut refused = vec!["UPDATE jetpack_tasks SET state = 'sleeping' WHERE id = $1"];
    if matches!(&*db, Db::Postgres(_)) {
        // SQLite cannot check this (see its lifecycle migration).
        refused.push("UPDATE jetpack_tasks SET state = 'parked' WHERE id = $1");
    }
    for refused in refused {
        assert!(
            db.try_exec(refused, Some(id), None).await.is_err(),
            "{refused} was not refused"
        );
    }
    // Inserted by hand with an error: parked, with its kind written too (as
    // a copy of another database's rows would be) or derived.
    for insert in [
        r#"INSERT INTO jetpack_tasks (step, error) VALUES ('{"Life":"Done"}', 'imported broken') RETURNING id"#,
        r#"INSERT INTO jetpack_tasks (step, kind, error) VALUES ('{"Life":"Done"}', 'Life.Done', 'imported broken') RETURNING id"#,
    ] {
        let inserted: i64 = match &*db {
            Db::Postgres(p) => jetpack::sqlx::query_scalar(insert).fetch_one(p).await,
            Db::Sqlite(p) => jetpack::sqlx::query_scalar(insert).fetch_one(p).await,
        }
        .unwrap();
        assert_eq!(
            state(&db, inserted).await,
            Some(TaskState::Parked),
            "{insert}"
        );
    }

    set("UPDATE jetpack_tasks SET state = 'cancelled', error = 'by hand' WHERE id = $1").await;
    let row = db.find(id).await.unwrap();
    assert_eq!(row.state, TaskState::Cancelled);
    assert!(row.finished_at.is_some());
    assert!(!db.resume(id).await, "a cancelled task does not resume");
}

/// Ready, scheduled and parked tasks stop at once: no worker runs them, and
/// each answer of `cancel` says what it found. From SQL too.
async fn cancel_stops_a_task_that_is_not_running(db: TestDb) {
    db.create_app_tables().await;
    let ready = db.enqueue(Pay { micros: 0 }).await;
    let scheduled = db
        .delay(Pay { micros: 0 }, Duration::from_millis(300))
        .await
        .unwrap();
    let parked = db.enqueue(Pay { micros: 0 }).await;
    db.exec(
        "UPDATE jetpack_tasks SET error = 'x' WHERE id = $1",
        Some(parked),
        None,
    )
    .await;
    let by_sql = db.enqueue(Pay { micros: 0 }).await;
    for id in [ready, scheduled, parked] {
        assert_eq!(db.cancel(id, "changed our mind").await, Cancel::Cancelled);
    }
    let sql = match &*db {
        Db::Postgres(_) => "SELECT jetpack_cancel($1, 'from SQL')",
        Db::Sqlite(_) => {
            "UPDATE jetpack_tasks SET state = 'cancelled', error = 'from SQL' WHERE id = $1"
        }
    };
    db.exec(sql, Some(by_sql), None).await;
    assert_eq!(db.cancel(ready, "twice").await, Cancel::Cancelled);
    assert_eq!(db.cancel(1 << 40, "nobody").await, Cancel::NotFound);

    let other = db.enqueue(Pay { micros: 0 }).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .keep_finished(Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    reaches(&db, other, TaskState::Finished).await;
    // The scheduled one would be due by now.
    tokio::time::sleep(Duration::from_millis(400)).await;
    w.shutdown().await;
    assert_eq!(db.cancel(other, "too late").await, Cancel::Finished);
    for id in [ready, scheduled, parked, by_sql] {
        let row = db.find(id).await.unwrap();
        assert_eq!(row.state, TaskState::Cancelled, "{row:?}");
        assert!(db.ledger(id).await.is_empty(), "cancelled task {id} ran");
    }
    assert_eq!(
        db.find(ready).await.unwrap().error.as_deref(),
        Some("changed our mind")
    );
    assert_eq!(
        db.find(by_sql).await.unwrap().error.as_deref(),
        Some("from SQL")
    );
}

/// A running step hears of the cancel through `cx.stopped()`; what it then
/// returns is discarded and its transaction rolled back. The worker is in this
/// process: on PostgreSQL the notification tells it, on SQLite the cancel does.
async fn cancel_tells_the_running_step_and_discards_its_outcome(db: TestDb) {
    db.create_app_tables().await;
    let key = new_key();
    let seen = common::keyed::<Seen>(key);
    let started = seen.started.notified();
    let id = db.enqueue(Wait { key }).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    tokio::time::timeout(DEADLINE, started)
        .await
        .expect("the step started");
    let stopped = seen.stopped.notified();
    assert_eq!(
        db.cancel(id, "the customer withdrew").await,
        Cancel::Cancelled
    );
    // The lease is 30 s: only the notice can tell the step this soon.
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the step was told within 5 s");
    assert_eq!(
        seen.reason.load(Ordering::SeqCst),
        2,
        "told it was cancelled"
    );
    common::wait_for(DEADLINE, || async {
        let row = db.find(id).await.unwrap();
        Ok(row.locked_by.is_none().then_some(()))
    })
    .await
    .unwrap();
    // Its outcome (finish) was discarded: the row stays cancelled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = db.find(id).await.unwrap();
    assert_eq!(row.state, TaskState::Cancelled);
    assert_eq!(row.error.as_deref(), Some("the customer withdrew"));
    w.shutdown().await;
    assert!(
        db.ledger(id).await.is_empty(),
        "the step's transaction rolled back"
    );
}

/// A cancel written as plain SQL reaches the running step too: on PostgreSQL
/// through the trigger's notification, on SQLite (where another process may
/// have written it) at the worker's next heartbeat, a third of the lease.
async fn a_cancel_by_sql_reaches_the_running_step(db: TestDb) {
    db.create_app_tables().await;
    let key = new_key();
    let seen = common::keyed::<Seen>(key);
    let started = seen.started.notified();
    let id = db.enqueue(Wait { key }).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .lease(Duration::from_millis(900))
            .build()
            .unwrap(),
    );
    tokio::time::timeout(DEADLINE, started)
        .await
        .expect("the step started");
    let stopped = seen.stopped.notified();
    db.exec(
        "UPDATE jetpack_tasks SET state = 'cancelled', error = 'by SQL' WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    tokio::time::timeout(DEADLINE, stopped)
        .await
        .expect("the step was told");
    assert_eq!(
        seen.reason.load(Ordering::SeqCst),
        2,
        "told it was cancelled"
    );
    w.shutdown().await;
    assert_eq!(state(&db, id).await, Some(TaskState::Cancelled));
    assert!(
        db.ledger(id).await.is_empty(),
        "the step's transaction rolled back"
    );
}

/// Cancels sent while steps finish: for each task exactly one wins. Either
/// the cancel found it live (the row is cancelled, the step's transaction
/// rolled back), or the step finished first (the cancel finds no task, the
/// ledger has its entry).
async fn cancel_racing_completion_has_one_winner(db: TestDb) {
    db.create_app_tables().await;
    let tasks: Vec<Pay> = (0..60).map(|i| Pay { micros: i * 500 }).collect();
    let ids = db.enqueue_many(tasks).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let mut answers = Vec::new();
    for &id in &ids {
        tokio::time::sleep(Duration::from_micros(300)).await;
        answers.push((id, db.cancel(id, "race").await));
    }
    common::wait_for(DEADLINE, || async {
        let live = db
            .scalar(
                "SELECT count(*) FROM jetpack_tasks WHERE state = 'ready'",
                None,
            )
            .await;
        Ok((live == 0).then_some(()))
    })
    .await
    .unwrap();
    w.shutdown().await;
    let (mut won, mut lost) = (0, 0);
    for (id, answer) in answers {
        let row = db.find(id).await;
        let ledger = db.ledger(id).await;
        match answer {
            Cancel::Cancelled => {
                won += 1;
                assert_eq!(row.map(|r| r.state), Some(TaskState::Cancelled));
                assert!(
                    ledger.is_empty(),
                    "task {id}: cancelled, yet its step committed"
                );
            }
            Cancel::NotFound => {
                lost += 1;
                assert!(row.is_none());
                assert_eq!(
                    ledger,
                    [1],
                    "task {id}: finished, so its step committed once"
                );
            }
            other => panic!("task {id}: {other:?}"),
        }
    }
    assert_eq!(won + lost, ids.len());
}

/// Finished tasks kept for a period, and cancelled ones, are deleted by the
/// workers once it has passed.
async fn kept_tasks_are_deleted_once_their_period_passes(db: TestDb) {
    let cancelled = db.enqueue(Done).await;
    db.cancel(cancelled, "gone").await;
    let done = db.enqueue(Done).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .keep_finished(Duration::from_millis(500))
            .keep_cancelled(Duration::from_millis(500))
            .build()
            .unwrap(),
    );
    reaches(&db, done, TaskState::Finished).await;
    common::finished(&db, done).await;
    common::finished(&db, cancelled).await;
    w.shutdown().await;
}
