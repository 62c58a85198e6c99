//! Flow control at enqueue: priorities (a bounded head start), unique keys
//! under concurrent enqueues, debounce (replace), throttle, `enqueue_all` with
//! some keys taken, and the options the database or the call refuses.

mod common;

use std::time::Duration;

use common::{conformance, finished, keyed, new_key, recorded, started, Db, TestDb, DEADLINE};
use jetpack::{chrono, sqlx, Context, Enqueue, Enqueued, NextStep, OnConflict, Step, StepResult};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Records its label and finishes.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    label: String,
}

/// A `Job` whose step type asks for priority 3.
#[derive(Debug, Serialize, Deserialize)]
struct Urgent {
    label: String,
}

/// Records its label, then waits for its key's gate.
#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    key: u64,
    label: String,
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Flow {
    Job(Job),
    Urgent(Urgent),
    Hold(Hold),
}

jetpack::scheduler!(Tasks { Flow });

#[jetpack::async_trait]
impl Step<Flow> for Job {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, &self.label).await?;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Urgent {
    const PRIORITY: u8 = 3;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, &self.label).await?;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Flow> for Hold {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, &self.label).await?;
        keyed::<Notify>(self.key).notified().await;
        NextStep::none()
    }
}

fn job(label: impl Into<String>) -> Job {
    Job {
        label: label.into(),
    }
}

/// Every recorded run's label, in the order they ran.
async fn labels(db: &Db) -> Vec<String> {
    let sql = "SELECT step FROM runs ORDER BY seq";
    match db {
        Db::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
    }
    .expect("read runs")
}

/// A worker that runs one task at a time, claiming one at a time: the order
/// of the runs is the order of the claims.
fn one_at_a_time(db: &Db) -> common::Running {
    let worker = db.worker::<Tasks>().concurrency(1).batch_size(1).build();
    common::spawn(worker.expect("worker"))
}

conformance!(
    higher_priorities_run_first_in_order_of_arrival,
    a_head_start_is_bounded_to_ten_minutes_of_arrivals,
    a_unique_key_holds_under_concurrent_enqueues,
    concurrent_replaces_keep_one_task_per_key,
    a_debounce_runs_the_last_of_a_burst_once,
    replace_leaves_a_started_or_parked_task_and_creates_another,
    a_throttle_allows_one_task_per_window,
    enqueue_all_answers_each_item_with_some_keys_taken,
    bad_options_are_refused_and_store_nothing,
    hand_edits_cannot_break_priorities_or_keys,
);

async fn higher_priorities_run_first_in_order_of_arrival(db: TestDb) {
    db.create_app_tables().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(db.enqueue(job(format!("low-{i}"))).await);
    }
    for i in 0..3 {
        let high = Enqueue::new(job(format!("high-{i}"))).priority(7);
        ids.push(db.run(high).await.expect("enqueue").id());
    }
    // Its step's default priority, 3: between the others.
    let mid = db
        .enqueue(Urgent {
            label: "mid".into(),
        })
        .await;
    assert_eq!(db.find(mid).await.expect("task").priority, 3);
    ids.push(mid);
    let worker = one_at_a_time(&db);
    for id in ids {
        finished(&db, id).await;
    }
    worker.shutdown().await;
    assert_eq!(
        labels(&db).await,
        ["high-0", "high-1", "high-2", "mid", "low-0", "low-1", "low-2"]
    );
}

async fn a_head_start_is_bounded_to_ten_minutes_of_arrivals(db: TestDb) {
    db.create_app_tables().await;
    let now = chrono::Utc::now();
    // Due 11 minutes ago at priority 0: ahead of anything due now, whatever
    // its priority. Due 9 minutes ago: behind priority 10, ahead of 5.
    let eleven = Enqueue::new(job("0, due 11 min ago")).at(now - chrono::Duration::minutes(11));
    let nine = Enqueue::new(job("0, due 9 min ago")).at(now - chrono::Duration::minutes(9));
    let top = Enqueue::new(job("10, due now")).priority(10);
    let five = Enqueue::new(job("5, due now")).priority(5);
    let all = db.enqueue_all(vec![five, top, nine, eleven]).await;
    let ids: Vec<i64> = all
        .expect("enqueue")
        .into_iter()
        .map(Enqueued::id)
        .collect();
    let worker = one_at_a_time(&db);
    for id in ids {
        finished(&db, id).await;
    }
    worker.shutdown().await;
    assert_eq!(
        labels(&db).await,
        [
            "0, due 11 min ago",
            "10, due now",
            "0, due 9 min ago",
            "5, due now"
        ]
    );
}

/// 8 connections enqueue 25 tasks each over 5 unique keys, each enqueue as
/// `options` makes it; the answers with their keys. Then one task per key
/// exists, created once, and every answer names the task holding its key.
async fn enqueue_concurrently(
    db: &TestDb,
    options: fn(Enqueue) -> Enqueue,
) -> Vec<(String, Enqueued)> {
    let enqueuers = (0..8).map(|n| {
        let db = db.db.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..25 {
                let key = format!("key-{}", (n + i) % 5);
                let e = options(Enqueue::new(job(format!("{n}-{i}"))).unique_key(key.clone()));
                answers.push((key, db.run(e).await.expect("enqueue")));
            }
            answers
        })
    });
    let mut answers = Vec::new();
    for enqueuer in enqueuers {
        answers.extend(enqueuer.await.expect("enqueuer"));
    }
    let created = answers.iter().filter(|(_, e)| e.is_created()).count();
    assert_eq!(created, 5, "one task per key");
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        5
    );
    for (key, answer) in &answers {
        let row = db.find(answer.id()).await.expect("the answer names a task");
        assert_eq!(row.unique_key.as_deref(), Some(key.as_str()));
    }
    answers
}

async fn a_unique_key_holds_under_concurrent_enqueues(db: TestDb) {
    for (_, answer) in enqueue_concurrently(&db, |e| e).await {
        assert!(matches!(
            answer,
            Enqueued::Created(_) | Enqueued::Existing(_)
        ));
    }
}

async fn concurrent_replaces_keep_one_task_per_key(db: TestDb) {
    let debounce = |e: Enqueue| e.debounce(Duration::from_secs(3600));
    for (_, answer) in enqueue_concurrently(&db, debounce).await {
        assert!(matches!(
            answer,
            Enqueued::Created(_) | Enqueued::Replaced(_)
        ));
    }
}

async fn a_debounce_runs_the_last_of_a_burst_once(db: TestDb) {
    db.create_app_tables().await;
    let worker = common::spawn(db.worker::<Tasks>().build().expect("worker"));
    let mut answers = Vec::new();
    for i in 0..5 {
        let e = Enqueue::new(job(format!("event {i}")))
            .unique_key("digest")
            .debounce(Duration::from_secs(1));
        answers.push(db.run(e).await.expect("enqueue"));
    }
    let id = answers[0].id();
    assert!(answers[0].is_created());
    assert_eq!(answers[1..], [Enqueued::Replaced(id); 4]);
    assert_eq!(recorded(&db, id).await, ["event 4"]);
    worker.shutdown().await;
    assert_eq!(labels(&db).await, ["event 4"]);
}

async fn replace_leaves_a_started_or_parked_task_and_creates_another(db: TestDb) {
    db.create_app_tables().await;
    let key = new_key();
    let hold = |label: &str| Hold {
        key,
        label: label.into(),
    };
    let first = db
        .run(Enqueue::new(hold("first")).unique_key("k"))
        .await
        .expect("enqueue");
    let worker = common::spawn(db.worker::<Tasks>().build().expect("worker"));
    started(&db, first.id()).await;
    // It runs: the replacement becomes a task of its own, which holds the key.
    let second = Enqueue::new(hold("second"))
        .unique_key("k")
        .on_conflict(OnConflict::Replace);
    let second = db.run(second).await.expect("enqueue");
    assert!(second.is_created(), "{second:?}");
    assert_eq!(db.find(first.id()).await.expect("first").unique_key, None);
    let again = db.run(Enqueue::new(job("third")).unique_key("k")).await;
    assert_eq!(again.expect("enqueue"), Enqueued::Existing(second.id()));
    started(&db, second.id()).await;
    // Opens the gate, one step at a time, until both have finished.
    let gate = keyed::<Notify>(key);
    common::wait_for(DEADLINE, || async {
        gate.notify_one();
        let gone = db.find(first.id()).await.is_none() && db.find(second.id()).await.is_none();
        Ok(gone.then_some(()))
    })
    .await
    .expect("both finish");
    worker.shutdown().await;

    // A parked task keeps its step for a person; a replacement is new.
    let parked = db
        .run(Enqueue::new(job("parked")).unique_key("p").delay(DEADLINE))
        .await
        .expect("enqueue")
        .id();
    db.exec(
        "UPDATE jetpack_tasks SET error = 'broken' WHERE id = $1",
        Some(parked),
        None,
    )
    .await;
    let replaced = Enqueue::new(job("fixed"))
        .unique_key("p")
        .on_conflict(OnConflict::Replace);
    let replaced = db.run(replaced).await.expect("enqueue");
    assert!(replaced.is_created(), "{replaced:?}");
    let row = db.find(parked).await.expect("parked");
    assert_eq!(
        (row.state, row.unique_key),
        (jetpack::TaskState::Parked, None)
    );
    assert!(row.step.contains("parked"), "{}", row.step);
}

async fn a_throttle_allows_one_task_per_window(db: TestDb) {
    let throttled =
        |i: i32| Enqueue::new(job(format!("{i}"))).throttle("sync", Duration::from_secs(3600));
    let first = db.run(throttled(0)).await.expect("enqueue");
    assert!(first.is_created());
    for i in 1..5 {
        let answer = db.run(throttled(i)).await.expect("enqueue");
        assert_eq!(answer, Enqueued::Throttled(first.id()));
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        1
    );
    // The window passes: the next enqueue takes a new one.
    db.exec(
        "UPDATE jetpack_throttles SET until = '2000-01-01 00:00:00'",
        None,
        None,
    )
    .await;
    let next = db.run(throttled(5)).await.expect("enqueue");
    assert!(next.is_created() && next.id() != first.id(), "{next:?}");
    assert_eq!(
        db.run(throttled(6)).await.expect("enqueue"),
        Enqueued::Throttled(next.id())
    );
}

async fn enqueue_all_answers_each_item_with_some_keys_taken(db: TestDb) {
    let a = db
        .run(Enqueue::new(job("a")).unique_key("a"))
        .await
        .expect("a")
        .id();
    let c = db
        .run(Enqueue::new(job("c")).unique_key("c"))
        .await
        .expect("c")
        .id();
    let items = vec![
        Enqueue::new(job("a2")).unique_key("a"),
        Enqueue::new(job("b")).unique_key("b"),
        Enqueue::new(job("c2"))
            .unique_key("c")
            .on_conflict(OnConflict::Replace),
        Enqueue::new(job("none")),
        Enqueue::new(job("b2")).unique_key("b"),
    ];
    let done = db.enqueue_all(items).await.expect("enqueue_all");
    let [a2, b, c2, none, b2] = done[..] else {
        panic!("five answers: {done:?}");
    };
    assert_eq!(a2, Enqueued::Existing(a));
    assert!(b.is_created() && none.is_created());
    assert_eq!(c2, Enqueued::Replaced(c));
    assert_eq!(b2, Enqueued::Existing(b.id()));
    assert!(db.find(c).await.expect("c").step.contains("c2"));
    assert!(db.find(a).await.expect("a").step.contains("\"a\""));
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        4
    );
}

async fn bad_options_are_refused_and_store_nothing(db: TestDb) {
    let bad = [
        Enqueue::new(job("x")).priority(11),
        Enqueue::new(job("x")).unique_key(""),
        Enqueue::new(job("x")).unique_key("k".repeat(1025)),
        Enqueue::new(job("x")).unique_key("nul\0"),
        Enqueue::new(job("x")).throttle("t", Duration::ZERO),
        Enqueue::new(job("x")).throttle("", Duration::from_secs(1)),
    ];
    for e in bad {
        let what = format!("{e:?}");
        let err = db.run(e).await.expect_err(&what);
        assert!(
            matches!(err, jetpack::Error::InvalidEnqueue(_)),
            "{what}: {err}"
        );
    }
    // One bad item among good ones: none is stored.
    let items = vec![
        Enqueue::new(job("good")).unique_key("g"),
        Enqueue::new(job("bad")).priority(200),
    ];
    let err = db.enqueue_all(items).await.expect_err("a bad item");
    assert!(err.to_string().contains("priority 200"), "{err}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_throttles", None)
            .await,
        0
    );
}

async fn hand_edits_cannot_break_priorities_or_keys(db: TestDb) {
    let a = db
        .run(Enqueue::new(job("a")).unique_key("a"))
        .await
        .expect("a")
        .id();
    let b = db.enqueue(job("b")).await;
    for sql in [
        "UPDATE jetpack_tasks SET priority = 11 WHERE id = $1",
        "UPDATE jetpack_tasks SET priority = -1 WHERE id = $1",
        "UPDATE jetpack_tasks SET unique_key = 'a' WHERE id = $1",
        "UPDATE jetpack_tasks SET unique_key = '' WHERE id = $1",
    ] {
        let refused = db.try_exec(sql, Some(b), None).await;
        assert!(refused.is_err(), "{sql} was not refused");
    }
    // A finished or cancelled task frees its key; reviving it by hand while
    // another holds the key is refused.
    assert_eq!(db.cancel(a, "gone").await, jetpack::Cancel::Cancelled);
    let again = db
        .run(Enqueue::new(job("a2")).unique_key("a"))
        .await
        .expect("a2");
    assert!(again.is_created());
    let revive = "UPDATE jetpack_tasks SET state = 'ready', error = NULL WHERE id = $1";
    assert!(db.try_exec(revive, Some(a), None).await.is_err());
}

/// `jetpack_enqueue` from SQL takes a priority and a unique key, and answers
/// the live task that holds the key.
#[tokio::test]
async fn postgres_sql_enqueue_with_a_priority_and_a_key() {
    let db = TestDb::postgres().await;
    let Db::Postgres(pool) = &db.db else {
        unreachable!()
    };
    let sql = r#"SELECT jetpack_enqueue('{"Flow":{"Job":{"label":"sql"}}}', now(), 4, 'from-sql')"#;
    let first: i64 = sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("enqueue");
    let second: i64 = sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("enqueue");
    assert_eq!(first, second);
    let row = db.find(first).await.expect("task");
    assert_eq!(
        (row.priority, row.unique_key.as_deref()),
        (4, Some("from-sql"))
    );
    let refused = r#"SELECT jetpack_enqueue('{"Flow":{"Job":{"label":"sql"}}}', now(), 11)"#;
    assert!(sqlx::query_scalar::<_, i64>(refused)
        .fetch_one(pool)
        .await
        .is_err());
}
