//! Worker processes sharing one database: two real OS processes (the
//! `worker` example) drain the same tasks, and no step runs twice.

mod common;

use std::process::Stdio;
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
    let children: Vec<_> = (0..2)
        .map(|_| {
            tokio::process::Command::new(&binary)
                .args(["--until-empty", "--concurrency", "8"])
                .env("DATABASE_URL", &db.url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    for child in children {
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("worker process finished within 2 minutes")
            .expect("wait for the worker process");
        assert!(status.status.success(), "worker process failed: {status:?}");
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
    let total = db.scalar("SELECT count(*) FROM runs", None).await;
    let distinct = db
        .scalar(
            "SELECT count(*) FROM (SELECT DISTINCT task_id, step FROM runs) d",
            None,
        )
        .await;
    assert_eq!(distinct, ORDERS * 3, "every step of every task ran");
    assert_eq!(total, distinct, "no step ran twice");
}
