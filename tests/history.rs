//! The history: every transition of a task in `jetpack_history`, written
//! with the transition itself — outcomes of attempts by the workers, the rest
//! (enqueues, signals, cancels, hand edits) by the table's triggers; read
//! back per task, at a past moment, and as counts per step; switched off;
//! cleaned after its retention.

mod common;

use std::time::Duration;

use common::{conformance, finished, on, reaches, Db, TestDb, DEADLINE};
use jetpack::{
    chrono, Context, Machine, NextStep, Signal, SignalTo, Step, StepResult, TaskState, Wait,
};
use serde::{Deserialize, Serialize};

/// Fails its first attempt (every attempt when `n` is 0), then waits for [`Go`].
#[derive(Debug, Serialize, Deserialize)]
struct Start {
    n: u32,
}

/// Runs once [`Go`] arrived.
#[derive(Debug, Serialize, Deserialize)]
struct Done {
    n: u32,
}

#[derive(Serialize, Deserialize)]
struct Go;
impl Signal for Go {
    const NAME: &'static str = "go";
}

jetpack::task!(Flow { Start => [wait Done], Done });
jetpack::scheduler!(Tasks { Flow });

#[jetpack::async_trait]
impl Step<Flow> for Start {
    const RETRY_LIMIT: i32 = 1;
    const RETRY_DELAY: Duration = Duration::from_millis(10);
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        if cx.attempt() == 1 || self.n == 0 {
            return Err("not yet".into());
        }
        NextStep::wait(Done { n: self.n + 1 }, Wait::signal::<Go>())
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Done {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

/// The events of task `id`'s history, in order.
async fn events(db: &Db, id: i64) -> Vec<String> {
    db.history(id).await.into_iter().map(|t| t.event).collect()
}

conformance!(
    every_transition_is_recorded_with_its_attempt,
    hand_edits_and_cancels_are_recorded_and_the_past_is_read_back,
    history_can_be_switched_off,
    history_is_deleted_after_its_retention,
    workers_record_their_machines_once,
    failed_attempts_are_told_as_they_are_written,
);

async fn every_transition_is_recorded_with_its_attempt(db: TestDb) {
    let id = db.enqueue(Start { n: 1 }).await;
    let worker = common::spawn(
        db.worker::<Tasks>()
            .name("w-history")
            .build()
            .expect("worker"),
    );
    reaches(&db, id, TaskState::Waiting).await;
    db.signal(SignalTo::Task(id), &Go).await;
    finished(&db, id).await;
    worker.shutdown().await;

    let h = db.history(id).await;
    let seen: Vec<_> = (h.iter())
        .map(|t| {
            (
                t.event.as_str(),
                t.from_kind.as_deref(),
                t.to_kind.as_deref(),
                t.attempt,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("enqueued", None, Some("Flow.Start"), None),
            ("retry", Some("Flow.Start"), Some("Flow.Start"), Some(1)),
            ("wait", Some("Flow.Start"), Some("Flow.Done"), Some(2)),
            ("woken", Some("Flow.Done"), Some("Flow.Done"), None),
            ("finished", Some("Flow.Done"), None, Some(1)),
        ],
        "{h:#?}"
    );
    assert_eq!(h[1].error.as_deref(), Some("not yet"));
    assert!(h[1..3]
        .iter()
        .all(|t| t.worker.as_deref() == Some("w-history")));
    assert!(h[1].duration.is_some());
    let step: serde_json::Value =
        serde_json::from_str(h[2].step.as_deref().expect("the wait's step")).expect("JSON");
    assert_eq!(step, serde_json::json!({"Flow": {"Done": {"n": 2}}}));
    // The last hour's activity: the wait moved it, one attempt failed, one finished.
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let activity = on!(db, p => jetpack::activity(p, hour_ago).await).expect("activity");
    let sum = |f: fn(&jetpack::Minute) -> i64| activity.minutes.iter().map(f).sum::<i64>();
    assert_eq!(
        (sum(|m| m.moved), sum(|m| m.finished), sum(|m| m.failed)),
        (1, 1, 1),
        "{activity:?}"
    );
    assert_eq!(
        activity.moves,
        [("Flow.Start".to_string(), "Flow.Done".to_string(), 1)]
    );
    // Each minute has its own moves, which add up to the window's.
    let per_minute: Vec<_> = activity
        .minutes
        .iter()
        .flat_map(|m| m.moves.clone())
        .collect();
    assert_eq!(per_minute, activity.moves, "{activity:?}");
    assert_eq!(
        jetpack::Activity::from_minutes(activity.minutes.clone()),
        activity
    );
    assert!(activity
        .minutes
        .iter()
        .all(|m| m.at > hour_ago - chrono::Duration::minutes(1)));
    assert!(
        h.windows(2).all(|w| w[0].at <= w[1].at),
        "out of order: {h:#?}"
    );
}

async fn hand_edits_and_cancels_are_recorded_and_the_past_is_read_back(db: TestDb) {
    // No worker: the task stays where it is put.
    let id = db
        .delay(Start { n: 1 }, Duration::from_secs(3600))
        .await
        .expect("delay");
    let before_edits = chrono::Utc::now();
    // Clocks of the database and of this process may differ by a little.
    tokio::time::sleep(Duration::from_millis(20)).await;
    db.exec(
        "UPDATE jetpack_tasks SET error = 'held by hand' WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    db.exec(
        r#"UPDATE jetpack_tasks SET step = '{"Flow":{"Start":{"n":7}}}' WHERE id = $1"#,
        Some(id),
        None,
    )
    .await;
    db.exec(
        "UPDATE jetpack_tasks SET error = NULL WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    db.cancel(id, "no longer wanted").await;
    assert_eq!(
        events(&db, id).await,
        ["enqueued", "parked", "edited", "resumed", "cancelled"]
    );
    let h = db.history(id).await;
    assert_eq!(h[1].error.as_deref(), Some("held by hand"));
    assert_eq!(h[4].error.as_deref(), Some("no longer wanted"));

    // What it was doing before the edits: Start with n = 1, ready.
    let then = db.history_at(id, before_edits).await.expect("a past state");
    assert_eq!(then.event, "enqueued");
    let step: serde_json::Value =
        serde_json::from_str(then.step.as_deref().expect("step")).expect("JSON");
    assert_eq!(step, serde_json::json!({"Flow": {"Start": {"n": 1}}}));
    let counts = db.counts_at(before_edits).await;
    assert_eq!(counts, [("Flow.Start".to_string(), 1)]);
    // After the cancel, no task is at any step.
    assert_eq!(
        db.counts_at(chrono::Utc::now() + chrono::Duration::seconds(1))
            .await,
        []
    );
}

async fn history_can_be_switched_off(db: TestDb) {
    // Workers read the switch at start (and at each cleanup pass).
    let run = |id: i64| {
        let db = &db;
        async move {
            let worker = common::spawn(db.worker::<Tasks>().build().expect("worker"));
            reaches(db, id, TaskState::Waiting).await;
            db.signal(SignalTo::Task(id), &Go).await;
            finished(db, id).await;
            worker.shutdown().await;
        }
    };
    db.set_history(false).await;
    let off = db.enqueue(Start { n: 1 }).await;
    run(off).await;
    assert_eq!(events(&db, off).await, Vec::<String>::new());
    db.set_history(true).await;
    let on = db.enqueue(Start { n: 2 }).await;
    run(on).await;
    assert_eq!(
        events(&db, on).await,
        ["enqueued", "retry", "wait", "woken", "finished"]
    );
}

async fn history_is_deleted_after_its_retention(db: TestDb) {
    db.exec(
        "INSERT INTO jetpack_history (task_id, at, event) VALUES (-1, '2020-01-01 00:00:00', 'enqueued')",
        None,
        None,
    )
    .await;
    let id = db.enqueue(Start { n: 1 }).await;
    let worker = common::spawn(
        db.worker::<Tasks>()
            .keep_history(Duration::from_secs(3600))
            .build()
            .expect("worker"),
    );
    common::wait_for(DEADLINE, || async {
        let old = db
            .scalar(
                "SELECT count(*) FROM jetpack_history WHERE task_id = -1",
                None,
            )
            .await;
        Ok((old == 0).then_some(()))
    })
    .await
    .expect("the old row is deleted");
    worker.shutdown().await;
    assert!(!events(&db, id).await.is_empty(), "recent history is kept");
}

async fn workers_record_their_machines_once(db: TestDb) {
    // A worker records its machines before it claims: once it ran a step,
    // they are recorded.
    let start = || async {
        let id = db.enqueue(Start { n: 1 }).await;
        let worker = common::spawn(db.worker::<Tasks>().build().expect("worker"));
        reaches(&db, id, TaskState::Waiting).await;
        worker.shutdown().await;
    };
    start().await;
    let graph = db
        .text("SELECT CAST(graph AS TEXT) FROM jetpack_machines WHERE name = 'Flow'")
        .await
        .expect("Flow's graph");
    let graph: serde_json::Value = serde_json::from_str(&graph).expect("JSON");
    assert_eq!(graph, Flow::graph().to_json());
    assert_eq!(graph["steps"][0]["retry_limit"], 1);
    assert_eq!(graph["steps"][0]["waits"], serde_json::json!(["Done"]));
    let written = "SELECT CAST(updated_at AS TEXT) FROM jetpack_machines WHERE name = 'Flow'";
    let first = db.text(written).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    start().await;
    assert_eq!(
        db.text(written).await,
        first,
        "an unchanged machine is not written again"
    );
}

async fn failed_attempts_are_told_as_they_are_written(db: TestDb) {
    let mut listener = match &*db {
        Db::Postgres(pool) => {
            let mut l = jetpack::sqlx::postgres::PgListener::connect_with(pool)
                .await
                .expect("listen");
            l.listen(jetpack::ERRORS_CHANNEL).await.expect("listen");
            Some(l)
        }
        Db::Sqlite(_) => None,
    };
    let worker = db
        .worker::<Tasks>()
        .name("w-errors")
        .build()
        .expect("worker");
    let mut errors = worker.errors();
    let worker = common::spawn(worker);
    // Fails twice: a retry, then (RETRY_LIMIT 1) a park.
    let id = db.enqueue(Start { n: 0 }).await;
    let mut told = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(DEADLINE, errors.recv())
            .await
            .expect("an error event in time")
            .expect("an error event");
        told.push(e);
    }
    worker.shutdown().await;
    let seen: Vec<_> = (told.iter())
        .map(|e| {
            (
                e.task_id,
                e.kind.as_deref(),
                e.attempt,
                e.parked,
                e.error.as_str(),
                e.worker.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (id, Some("Flow.Start"), 1, false, "not yet", "w-errors"),
            (id, Some("Flow.Start"), 2, true, "not yet", "w-errors"),
        ]
    );
    if let Some(listener) = listener.as_mut() {
        for want in &told {
            let n = tokio::time::timeout(DEADLINE, listener.recv())
                .await
                .expect("a notification in time")
                .expect("a notification");
            let got: jetpack::TaskError = serde_json::from_str(n.payload()).expect("the payload");
            assert_eq!(&got, want);
        }
    }
}
