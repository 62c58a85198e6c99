//! PostgreSQL restarted in the middle of a run: worker processes do not exit,
//! they reconnect and finish everything. This binary holds this one test, since
//! the restart would disturb tests running beside it (cargo runs test binaries
//! one after another). It needs the right to run `pg_ctlcluster` (CI runs as
//! root) and leaves the server running.

mod common;

use std::time::Duration;

use common::{enqueue_orders, run_counts, start_worker, worker_binary, TestDb};

fn restart_postgres() {
    let versions = std::fs::read_dir("/etc/postgresql").unwrap_or_else(|e| {
        panic!("this test restarts the local PostgreSQL with pg_ctlcluster, but /etc/postgresql is unreadable: {e}")
    });
    let version = versions
        .filter_map(|v| v.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a PostgreSQL cluster under /etc/postgresql");
    let status = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .status()
        .expect("run pg_ctlcluster (as root, or as the postgres user)");
    assert!(status.success(), "pg_ctlcluster restart failed: {status}");
}

/// Whether this process may restart the cluster: root, or the `postgres` user.
fn may_restart_postgres() -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u32>().ok()
        });
    uid == Some(0) || std::env::var("USER").as_deref() == Ok("postgres")
}

#[tokio::test]
async fn worker_processes_survive_a_postgres_restart() {
    if !may_restart_postgres() {
        // Loud, not silent: a normal user cannot restart the server, and this
        // test must not fail for them. CI runs as root and runs it.
        eprintln!(
            "SKIPPED worker_processes_survive_a_postgres_restart: restarting PostgreSQL \
             with pg_ctlcluster needs root or the postgres user"
        );
        return;
    }
    const ORDERS: i64 = 3000;
    let db = TestDb::postgres().await;
    enqueue_orders(&db, ORDERS).await;
    let binary = worker_binary();
    let args = ["--until-empty", "--concurrency", "8", "--lease-ms", "2000"];
    let workers = [
        start_worker(&binary, &db.url, &args),
        start_worker(&binary, &db.url, &args),
    ];
    common::wait_for(common::DEADLINE, || async {
        Ok((db.scalar("SELECT count(*) FROM runs", None).await >= 1000).then_some(()))
    })
    .await
    .unwrap();

    restart_postgres();

    for mut worker in workers {
        common::exits_cleanly(
            &mut worker,
            Duration::from_secs(180),
            "workers reconnect and drain the queue",
        )
        .await;
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
    let (total, distinct) = run_counts(&db).await;
    assert_eq!(distinct, ORDERS * 3, "every step of every task ran");
    // Steps whose outcome was being written when the server went down run again.
    assert!(
        total - distinct <= 16,
        "{} re-ran after the restart",
        total - distinct
    );
    eprintln!("restart: {distinct} steps, {} re-ran", total - distinct);
}
