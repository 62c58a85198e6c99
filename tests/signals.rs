//! Signals: a task waits for a named signal, addressed to its id or to a key,
//! with a timeout; signals sent early are kept; every send gets an answer.

mod common;

use std::time::Duration;

use common::{conformance, reaches, recorded, Db, TestDb, DEADLINE};
use jetpack::{Context, Delivery, NextStep, Signal, SignalTo, Step, StepResult, TaskState, Wait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Delivered {
    carrier: String,
}
impl Signal for Delivered {
    const NAME: &'static str = "delivered";
}

/// The same name with a payload `Delivered` cannot read.
#[derive(Debug, Serialize, Deserialize)]
struct Garbled {
    carrier: u64,
}
impl Signal for Garbled {
    const NAME: &'static str = "delivered";
}

/// Waits for `Delivered`, under `key` if given, for `timeout_ms` if given.
#[derive(Debug, Serialize, Deserialize)]
struct Ship {
    key: Option<String>,
    timeout_ms: Option<u64>,
}

/// Records what arrived (the carrier, or "timeout") as a run.
#[derive(Debug, Serialize, Deserialize)]
struct Arrived;

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Parcel {
    #[next(wait Arrived)]
    Ship(Ship),
    Arrived(Arrived),
}

jetpack::scheduler!(Tasks { Parcel });

#[jetpack::async_trait]
impl Step<Parcel> for Ship {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        let mut wait = Wait::signal::<Delivered>();
        if let Some(key) = self.key {
            wait = wait.key(key);
        }
        if let Some(ms) = self.timeout_ms {
            wait = wait.timeout(Duration::from_millis(ms));
        }
        NextStep::wait(Arrived, wait)
    }
}

#[jetpack::async_trait]
impl Step<Parcel> for Arrived {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let what = match cx.signal::<Delivered>()? {
            Some(d) => d.carrier,
            None => "timeout".into(),
        };
        Db::of(cx).record_run(cx, &what).await?;
        NextStep::none()
    }
}

conformance!(
    a_signal_wakes_the_waiting_task,
    a_signal_sent_early_is_kept_for_the_wait,
    every_send_gets_an_answer,
    a_wait_times_out,
    a_signal_racing_its_timeout_has_one_winner,
    a_payload_that_does_not_decode_parks_the_task,
    kept_signals_are_deleted_after_their_period,
    a_signal_without_a_payload_is_refused,
);

/// A signal sent by SQL with a NULL payload is refused (a NULL `signal` is
/// what a wait that timed out reads): the task goes on waiting, and the next
/// signal wakes it with its payload.
async fn a_signal_without_a_payload_is_refused(db: TestDb) {
    db.create_app_tables().await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let id = db.enqueue(ship(None, None)).await;
    reaches(&db, id, TaskState::Waiting).await;
    let sent = match &*db {
        Db::Postgres(_) => "SELECT jetpack_signal($1, NULL, 'delivered', NULL)",
        Db::Sqlite(_) => {
            "INSERT INTO jetpack_signals (task_id, name, payload, verdict)
             VALUES ($1, 'delivered', NULL, 'delivered')"
        }
    };
    let refused = db.try_exec(sent, Some(id), None).await;
    let error = refused.expect_err("a NULL payload is refused").to_string();
    assert!(error.contains("NULL"), "{error}");
    assert_eq!(
        db.find(id).await.map(|row| row.state),
        Some(TaskState::Waiting)
    );
    assert_eq!(
        send(&db, SignalTo::Task(id), &delivered("DHL")).await,
        Delivery::Delivered
    );
    assert_eq!(recorded(&db, id).await, ["DHL"]);
    w.shutdown().await;
}

/// A signal no wait takes is deleted by the workers once kept long enough.
async fn kept_signals_are_deleted_after_their_period(db: TestDb) {
    let to = SignalTo::Key("nobody".into());
    assert_eq!(send(&db, to, &delivered("DHL")).await, Delivery::Kept);
    let w = common::spawn(
        db.worker::<Tasks>()
            .keep_signals(Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    common::wait_for(DEADLINE, || async {
        let left = db
            .scalar("SELECT count(*) FROM jetpack_signals", None)
            .await;
        Ok((left == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("the kept signal was not deleted: {e}"));
    w.shutdown().await;
}

fn ship(key: Option<&str>, timeout_ms: Option<u64>) -> Ship {
    Ship {
        key: key.map(str::to_string),
        timeout_ms,
    }
}

fn delivered(carrier: &str) -> Delivered {
    Delivered {
        carrier: carrier.into(),
    }
}

async fn send(db: &Db, to: SignalTo, signal: &impl Signal) -> Delivery {
    match db {
        Db::Postgres(p) => jetpack::signal(p, to, signal).await,
        Db::Sqlite(p) => jetpack::signal(p, to, signal).await,
    }
    .expect("signal")
}

async fn a_signal_wakes_the_waiting_task(db: TestDb) {
    db.create_app_tables().await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let by_id = db.enqueue(ship(None, None)).await;
    let by_key = db.enqueue(ship(Some("order-7"), Some(3_600_000))).await;
    reaches(&db, by_id, TaskState::Waiting).await;
    reaches(&db, by_key, TaskState::Waiting).await;
    let row = db.find(by_key).await.unwrap();
    assert!(row.locked_by.is_none(), "a waiting task holds no lease");
    assert_eq!(
        send(&db, SignalTo::Task(by_id), &delivered("DHL")).await,
        Delivery::Delivered
    );
    let key = SignalTo::Key("order-7".into());
    let sql_sent = match &*db {
        Db::Postgres(_) => {
            // From SQL, as any language or trigger can.
            db.exec(
                "SELECT jetpack_signal(NULL, $1, 'delivered', '{\"carrier\":\"UPS\"}')",
                None,
                Some("order-7"),
            )
            .await;
            true
        }
        Db::Sqlite(_) => {
            assert_eq!(send(&db, key, &delivered("UPS")).await, Delivery::Delivered);
            false
        }
    };
    assert_eq!(recorded(&db, by_id).await, ["DHL"]);
    assert_eq!(
        recorded(&db, by_key).await,
        ["UPS"],
        "sent by SQL: {sql_sent}"
    );
    w.shutdown().await;
}

/// A signal that arrives before its wait begins is kept, and the wait takes
/// it at once; a second one of the same name is kept for a later wait.
async fn a_signal_sent_early_is_kept_for_the_wait(db: TestDb) {
    db.create_app_tables().await;
    let by_id = db.enqueue(ship(None, None)).await;
    assert_eq!(
        send(&db, SignalTo::Task(by_id), &delivered("DHL")).await,
        Delivery::Kept,
        "the task has not begun to wait"
    );
    assert_eq!(
        send(&db, SignalTo::Task(by_id), &delivered("second")).await,
        Delivery::Kept
    );
    assert_eq!(
        send(&db, SignalTo::Key("order-9".into()), &delivered("UPS")).await,
        Delivery::Kept,
        "no task waits under the key yet"
    );
    let by_key = db.enqueue(ship(Some("order-9"), None)).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    assert_eq!(recorded(&db, by_id).await, ["DHL"], "the oldest first");
    assert_eq!(recorded(&db, by_key).await, ["UPS"]);
    w.shutdown().await;
    let kept = db
        .scalar(
            "SELECT count(*) FROM jetpack_signals WHERE task_id = $1",
            Some(by_id),
        )
        .await;
    assert_eq!(kept, 1, "the second signal is kept for a later wait");
}

async fn every_send_gets_an_answer(db: TestDb) {
    db.create_app_tables().await;
    let signal = delivered("DHL");
    assert_eq!(
        send(&db, SignalTo::Task(1 << 40), &signal).await,
        Delivery::NotFound
    );
    let cancelled = db.enqueue(ship(None, None)).await;
    db.cancel(cancelled, "no").await;
    assert_eq!(
        send(&db, SignalTo::Task(cancelled), &signal).await,
        Delivery::Cancelled
    );
    let finished = db.enqueue(ship(None, Some(1))).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .keep_finished(Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    reaches(&db, finished, TaskState::Finished).await;
    w.shutdown().await;
    assert_eq!(
        send(&db, SignalTo::Task(finished), &signal).await,
        Delivery::Finished
    );
    let left = db
        .scalar("SELECT count(*) FROM jetpack_signals", None)
        .await;
    assert_eq!(left, 0, "nothing kept for tasks that cannot take it");
    let empty = match &*db {
        Db::Postgres(p) => jetpack::signal(p, SignalTo::Key(String::new()), &signal).await,
        Db::Sqlite(p) => jetpack::signal(p, SignalTo::Key(String::new()), &signal).await,
    };
    assert!(empty.is_err(), "an empty key is refused: {empty:?}");
}

/// A wait ends at its deadline without a signal; a waiting task can be
/// cancelled like any other, and is then out of a signal's reach.
async fn a_wait_times_out(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(ship(Some("order-1"), Some(300))).await;
    let cancelled = db.enqueue(ship(Some("order-2"), None)).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    reaches(&db, cancelled, TaskState::Waiting).await;
    assert_eq!(db.cancel(cancelled, "no").await, jetpack::Cancel::Cancelled);
    assert_eq!(recorded(&db, id).await, ["timeout"]);
    let to = SignalTo::Key("order-2".into());
    assert_eq!(send(&db, to, &delivered("DHL")).await, Delivery::Kept);
    w.shutdown().await;
    assert_eq!(
        db.find(cancelled).await.unwrap().state,
        TaskState::Cancelled
    );
    assert!(db.runs(cancelled).await.is_empty());
}

/// Signals sent around the deadlines of their waits: for each task exactly
/// one of them wins, and the answer says which.
async fn a_signal_racing_its_timeout_has_one_winner(db: TestDb) {
    db.create_app_tables().await;
    let tasks: Vec<Ship> = (0..40).map(|_| ship(None, Some(400))).collect();
    let ids = db.enqueue_many(tasks).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .poll_interval(Duration::from_millis(20))
            .build()
            .unwrap(),
    );
    for &id in &ids {
        reaches(&db, id, TaskState::Waiting).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answers = Vec::new();
    for &id in &ids {
        answers.push((id, send(&db, SignalTo::Task(id), &delivered("DHL")).await));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_count = answers
        .iter()
        .filter(|(_, a)| *a == Delivery::Delivered)
        .count();
    for (id, answer) in answers {
        let got = recorded(&db, id).await;
        match answer {
            Delivery::Delivered => assert_eq!(got, ["DHL"], "task {id}"),
            // Timed out: waiting for a later wait, or finished already.
            Delivery::Kept | Delivery::NotFound => assert_eq!(got, ["timeout"], "task {id}"),
            other => panic!("task {id}: {other:?}"),
        }
    }
    w.shutdown().await;
    eprintln!(
        "{delivered_count} of {} signals beat their timeout",
        ids.len()
    );
}

/// A payload that does not decode as the step's signal type parks the task,
/// saying which task and which signal; other tasks go on.
async fn a_payload_that_does_not_decode_parks_the_task(db: TestDb) {
    db.create_app_tables().await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let bad = db.enqueue(ship(None, None)).await;
    let good = db.enqueue(ship(None, None)).await;
    reaches(&db, bad, TaskState::Waiting).await;
    reaches(&db, good, TaskState::Waiting).await;
    let garbled = Garbled { carrier: 7 };
    assert_eq!(
        send(&db, SignalTo::Task(bad), &garbled).await,
        Delivery::Delivered
    );
    assert_eq!(
        send(&db, SignalTo::Task(good), &delivered("DHL")).await,
        Delivery::Delivered
    );
    let error = common::parked(&db, bad).await.error.unwrap();
    assert!(
        error.contains(&format!(
            "signal `delivered` received by task {bad} does not decode"
        )),
        "{error}"
    );
    assert_eq!(recorded(&db, good).await, ["DHL"]);
    w.shutdown().await;
}
