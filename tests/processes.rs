//! Worker processes sharing one database: two real OS processes (the
//! `worker` example) drain the same tasks, and no step runs twice.

mod common;

use std::time::Duration;

use common::{conformance, TestDb};

conformance!(two_worker_processes_never_run_the_same_step);

async fn two_worker_processes_never_run_the_same_step(db: TestDb) {
    const ORDERS: i64 = 600;
    db.exec(
        "CREATE TABLE runs (task_id bigint, step text, attempt int, at_us bigint)",
        None,
        None,
    )
    .await;
    for order in 0..ORDERS {
        db.insert_raw(&format!(r#"{{"Order":{{"Reserve":{{"order":{order}}}}}}}"#))
            .await
            .unwrap();
    }
    let binary = common::worker_binary();
    let args = ["--until-empty", "--concurrency", "8"];
    let mut children = [
        common::start_worker(&binary, &db.url, &args),
        common::start_worker(&binary, &db.url, &args),
    ];
    for child in &mut children {
        common::exits_cleanly(child, Duration::from_secs(120), "drain the queue").await;
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
    let (total, distinct) = common::run_counts(&db).await;
    assert_eq!(distinct, ORDERS * 3, "every step of every task ran");
    assert_eq!(total, distinct, "no step ran twice");
}
