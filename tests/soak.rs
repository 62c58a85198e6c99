//! Soak: 100,000 single-step tasks drained by two worker processes. Nothing is
//! lost, nothing runs twice without a kill, worker memory stays flat, and the
//! table's dead tuples and size are reported. Too long for every CI run:
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{enqueue_steps, run_counts, start_worker, worker_binary, Db, TestDb};

/// Resident memory of a process, in kB (Linux).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
#[ignore = "soak: 100,000 tasks; run with --ignored"]
async fn soak_postgres() {
    soak(TestDb::postgres().await).await
}

#[tokio::test]
#[ignore = "soak: 100,000 tasks; run with --ignored"]
async fn soak_sqlite() {
    soak(TestDb::sqlite().await).await
}

async fn soak(db: TestDb) {
    const TASKS: i64 = 100_000;
    enqueue_steps(&db, TASKS, "Ship").await;
    let binary = worker_binary();
    let args = ["--until-empty", "--concurrency", "16"];
    let started = Instant::now();
    let mut workers = [
        start_worker(&binary, &db.url, &args),
        start_worker(&binary, &db.url, &args),
    ];
    let pids: Vec<u32> = workers.iter().filter_map(|w| w.id()).collect();
    // Warm-up: the first 10% of the work.
    common::wait_for(Duration::from_secs(600), || async {
        Ok((db.scalar("SELECT count(*) FROM runs", None).await >= TASKS / 10).then_some(()))
    })
    .await
    .unwrap();
    let warm: Vec<Option<u64>> = pids.iter().map(|&p| rss_kb(p)).collect();
    let mut late = warm.clone();
    loop {
        let left = db.scalar("SELECT count(*) FROM jetpack_tasks", None).await;
        if left < TASKS / 20 {
            break;
        }
        late = pids.iter().map(|&p| rss_kb(p)).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for worker in &mut workers {
        common::exits_cleanly(worker, Duration::from_secs(1800), "the soak drains").await;
    }
    let elapsed = started.elapsed();
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
    let (total, distinct) = run_counts(&db).await;
    assert_eq!(distinct, TASKS, "nothing lost");
    assert_eq!(total, distinct, "no duplicates without a kill");
    let table = match &*db {
        Db::Postgres(_) => {
            let dead = db
                .scalar(
                    "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'jetpack_tasks'",
                    None,
                )
                .await;
            let size = db
                .scalar("SELECT pg_total_relation_size('jetpack_tasks')", None)
                .await;
            format!("dead tuples {dead}, table+indexes {} kB", size / 1024)
        }
        Db::Sqlite(_) => {
            let pages = db
                .scalar(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                    None,
                )
                .await;
            format!("file {} kB", pages / 1024)
        }
    };
    eprintln!(
        "[soak {}] {TASKS} tasks by 2 processes in {elapsed:?} ({:.0} tasks/s); RSS kB after warm-up {warm:?}, near the end {late:?}; {table}",
        db.backend(),
        TASKS as f64 / elapsed.as_secs_f64()
    );
    for (w, l) in warm.iter().zip(&late) {
        if let (Some(w), Some(l)) = (w, l) {
            assert!(
                *l < w * 2 + 4096,
                "worker memory grew from {w} kB to {l} kB"
            );
        }
    }
}
