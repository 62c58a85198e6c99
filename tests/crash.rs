//! Real worker processes killed with SIGKILL under load, and stopped with
//! SIGTERM: nothing is lost, and a step runs twice only when its attempt was in
//! flight at a kill. Steps record every execution in the application table
//! `runs`, so all of this is checked from the outside.

mod common;

use std::time::{Duration, Instant};

use common::{conformance, enqueue_orders, run_counts, start_worker, worker_binary, TestDb};

conformance!(
    kill_nine_under_load_loses_nothing,
    kill_nine_during_fan_outs_and_joins_loses_nothing,
    sigterm_stops_gracefully_and_a_restart_resumes_exactly,
);

/// PostgreSQL only: on SQLite a process frozen while it holds the file's write
/// lock blocks every other writer until it resumes (the OS releases the lock
/// when a process dies, not when it is paused), so no other worker can take
/// over meanwhile.
#[tokio::test]
async fn a_paused_postgres_worker_cannot_overwrite_the_newer_attempt() {
    a_paused_worker_cannot_overwrite_the_newer_attempt(TestDb::postgres().await).await
}

fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("a running worker").to_string();
    let sent = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

const STEPS_PER_ORDER: i64 = 3;

/// Kills one of the two `workers` with SIGKILL every 50–300 ms, `kills` times,
/// each time starting a new one in its place.
async fn kill_and_restart(
    workers: &mut [tokio::process::Child],
    kills: usize,
    binary: &std::path::Path,
    url: &str,
    args: &[&str],
) {
    for kill in 0..kills {
        tokio::time::sleep(Duration::from_millis(50 + clock_random(250))).await;
        let victim = (kill + clock_random(2) as usize) % workers.len();
        if let Ok(Some(status)) = workers[victim].try_wait() {
            panic!(
                "worker {victim} exited ({status}) before {kills} kills: the workload is too small"
            );
        }
        workers[victim].start_kill().expect("SIGKILL a worker"); // tokio sends SIGKILL
        workers[victim]
            .wait()
            .await
            .expect("reap the killed worker");
        workers[victim] = start_worker(binary, url, args);
    }
}

/// The `worker` example's signal.
#[derive(serde::Serialize, serde::Deserialize)]
struct Delivered {
    carrier: String,
}
impl jetpack::Signal for Delivered {
    const NAME: &'static str = "delivered";
}

/// Worker processes killed with SIGKILL while a parent's 10,000 children run
/// and are counted, and while parcels wait for signals sent meanwhile: every
/// child runs, the parent loses none and counts none twice, and its join
/// step's effect (a ledger row in its transaction, the sum of its children's
/// results) happens exactly once; every signal reaches its parcel, whose
/// step records it once.
async fn kill_nine_during_fan_outs_and_joins_loses_nothing(db: TestDb) {
    const PARENTS: i64 = 1;
    const PARTS: i64 = 10_000;
    const PARCELS: i64 = 100;
    const KILLS: usize = 10;
    let sql = match &*db {
        jetpack_suite::Db::Postgres(_) => {
            "INSERT INTO jetpack_tasks (step)
             SELECT jsonb_build_object('Batch', jsonb_build_object('Split', jsonb_build_object('parts', $1::bigint)))
             FROM generate_series(1, 1)"
        }
        jetpack_suite::Db::Sqlite(_) => {
            "INSERT INTO jetpack_tasks (step)
             SELECT json_object('Batch', json_object('Split', json_object('parts', $1)))
             FROM (SELECT 1)"
        }
    };
    assert_eq!(db.exec(sql, Some(PARTS), None).await, PARENTS as u64);
    // The workers' tables, before two workers race to create them.
    for table in [
        "CREATE TABLE runs (task_id bigint, step text, attempt int, at_us bigint)",
        "CREATE TABLE ledger (task_id bigint, amount bigint)",
    ] {
        db.exec(table, None, None).await;
    }
    let parcels =
        (1..=PARCELS).map(|order| format!(r#"{{"Parcel":{{"Dispatch":{{"order":{order}}}}}}}"#));
    for parcel in parcels {
        db.insert_raw(&parcel).await.expect("a parcel");
    }
    let binary = worker_binary();
    let args = ["--until-empty", "--concurrency", "8", "--lease-ms", "1000"];
    let mut workers = vec![
        start_worker(&binary, &db.url, &args),
        start_worker(&binary, &db.url, &args),
    ];
    // Signals go out during the kills: some before their parcel waits (kept),
    // some to a waiting parcel.
    let signals = async {
        for order in 1..=PARCELS {
            let to = jetpack::SignalTo::Key(format!("order-{order}"));
            let carrier = Delivered {
                carrier: "DHL".into(),
            };
            db.signal(to, &carrier).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    };
    tokio::join!(
        kill_and_restart(&mut workers, KILLS, &binary, &db.url, &args),
        signals
    );
    for mut worker in workers {
        common::exits_cleanly(
            &mut worker,
            Duration::from_secs(300),
            "the workers finish the fan-outs after the kills",
        )
        .await;
    }
    let live = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE state IN ('ready', 'waiting', 'parked')",
            None,
        )
        .await;
    assert_eq!(live, 0, "every parent and child ended");
    let parts = db
        .scalar(
            "SELECT count(DISTINCT task_id) FROM runs WHERE step = 'Part'",
            None,
        )
        .await;
    assert_eq!(parts, PARENTS * PARTS, "every child ran");
    let joins = db
        .scalar("SELECT count(*) FROM ledger WHERE amount <> 1", None)
        .await;
    assert_eq!(joins, PARENTS, "each join step's effect happened once");
    let received = db
        .scalar(
            "SELECT count(*) FROM ledger WHERE amount = 1 AND task_id IN
             (SELECT task_id FROM ledger WHERE amount = 1 GROUP BY task_id HAVING count(*) = 1)",
            None,
        )
        .await;
    assert_eq!(received, PARCELS, "each parcel recorded its signal once");
    let kept = db
        .scalar("SELECT count(*) FROM jetpack_signals", None)
        .await;
    assert_eq!(kept, 0, "every signal was taken by its wait");
    let right = db
        .scalar(
            "SELECT count(*) FROM ledger WHERE amount = $1",
            Some(PARTS * (PARTS + 1) / 2),
        )
        .await;
    assert_eq!(right, PARENTS, "each join saw every child's result, once");
    assert_eq!(
        common::attempts_run_twice(&db).await,
        0,
        "no attempt ran twice"
    );
}

async fn kill_nine_under_load_loses_nothing(db: TestDb) {
    const ORDERS: i64 = 5000;
    const KILLS: usize = 20;
    const CONCURRENCY: &str = "8";
    enqueue_orders(&db, ORDERS).await;
    let binary = worker_binary();
    let args = [
        "--until-empty",
        "--concurrency",
        CONCURRENCY,
        "--lease-ms",
        "1000",
    ];
    let mut workers = vec![
        start_worker(&binary, &db.url, &args),
        start_worker(&binary, &db.url, &args),
    ];

    kill_and_restart(&mut workers, KILLS, &binary, &db.url, &args).await;
    let started = Instant::now();
    for mut worker in workers {
        common::exits_cleanly(
            &mut worker,
            Duration::from_secs(300),
            "the workers drain the queue after the kills",
        )
        .await;
    }

    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0,
        "every task finished"
    );
    let (total, distinct) = run_counts(&db).await;
    assert_eq!(
        distinct,
        ORDERS * STEPS_PER_ORDER,
        "every step of every task ran"
    );
    let duplicates = total - distinct;
    // A step runs again only as a new attempt after one that never finished.
    let same_attempt_twice = common::attempts_run_twice(&db).await;
    assert_eq!(same_attempt_twice, 0, "no attempt ran twice");
    // At most the attempts a worker held at each kill can run again: ≤8
    // running and ≤8 more that finished but were not recorded yet.
    let bound = KILLS as i64 * 16;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates for {KILLS} kills of ≤16 attempts held"
    );
    eprintln!(
        "[{}] {KILLS} SIGKILLs: {distinct} steps ran, {duplicates} re-ran after a kill \
         (bound {bound}); drained {:?} after the last kill",
        db.backend(),
        started.elapsed()
    );
}

async fn sigterm_stops_gracefully_and_a_restart_resumes_exactly(db: TestDb) {
    const ORDERS: i64 = 2000;
    enqueue_orders(&db, ORDERS).await;
    let binary = worker_binary();
    let args = ["--until-empty", "--concurrency", "8"];
    let mut worker = start_worker(&binary, &db.url, &args);
    common::wait_for(common::DEADLINE, || async {
        Ok((db.scalar("SELECT count(*) FROM runs", None).await >= 300).then_some(()))
    })
    .await
    .unwrap();
    let pid = worker.id().expect("worker pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    common::exits_cleanly(
        &mut worker,
        Duration::from_secs(30),
        "the worker stops within its shutdown timeout",
    )
    .await;
    let left = db.scalar("SELECT count(*) FROM jetpack_tasks", None).await;
    assert!(left > 0, "the worker was stopped mid-way");
    let held = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE locked_by IS NOT NULL",
            None,
        )
        .await;
    assert_eq!(held, 0, "no task is left leased by the stopped worker");

    let mut restarted = start_worker(&binary, &db.url, &args);
    common::exits_cleanly(
        &mut restarted,
        Duration::from_secs(120),
        "the restarted worker finishes the rest",
    )
    .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
    let (total, distinct) = run_counts(&db).await;
    assert_eq!(
        distinct,
        ORDERS * STEPS_PER_ORDER,
        "the restart picked up where the stop left"
    );
    assert_eq!(total, distinct, "a graceful stop makes no step run twice");
}

async fn a_paused_worker_cannot_overwrite_the_newer_attempt(db: TestDb) {
    const ORDERS: i64 = 300;
    enqueue_orders(&db, ORDERS).await;
    let binary = worker_binary();
    let args = ["--until-empty", "--concurrency", "4", "--lease-ms", "600"];
    let mut paused = start_worker(&binary, &db.url, &args);
    common::wait_for(common::DEADLINE, || async {
        Ok((db.scalar("SELECT count(*) FROM runs", None).await >= 20).then_some(()))
    })
    .await
    .unwrap();
    // Freeze it mid-run, holding leases: no heartbeat, no progress.
    signal(&paused, "-STOP");
    // Another worker takes over once the leases expire, and finishes everything.
    let mut other = start_worker(&binary, &db.url, &args);
    common::exits_cleanly(
        &mut other,
        Duration::from_secs(120),
        "another worker takes over and finishes",
    )
    .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
    // The frozen worker wakes up with stale attempts: its writes are fenced off.
    signal(&paused, "-CONT");
    common::exits_cleanly(
        &mut paused,
        Duration::from_secs(60),
        "the paused worker resumes and exits",
    )
    .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0,
        "no task came back"
    );
    let (_, distinct) = run_counts(&db).await;
    assert_eq!(distinct, ORDERS * STEPS_PER_ORDER);
    let same_attempt_twice = common::attempts_run_twice(&db).await;
    assert_eq!(
        same_attempt_twice, 0,
        "the stale attempts did not overwrite the newer ones"
    );
}

/// A pseudo-random number below `n`, from the clock (no dependency needed).
fn clock_random(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos / 1000) % n.max(1)
}
