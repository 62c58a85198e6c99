//! Schedules (cron) without a leader: each tick enqueues its task once,
//! whatever the number of workers, through kills and restarts; a schedule no
//! worker declares stops; bad schedules are refused.

mod common;

use std::time::Duration;

use common::{conformance, exits_cleanly, start_worker, worker_binary, TestDb, DEADLINE};
use jetpack::{chrono, Missed, Schedule};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Report {
    at: String,
}
jetpack::task!(Nightly { Report });

#[jetpack::async_trait]
impl jetpack::Step<Nightly> for Report {
    async fn step(self, _: &jetpack::Context<'_>) -> jetpack::StepResult<Self> {
        jetpack::NextStep::none()
    }
}

jetpack::scheduler!(Tasks { Nightly });

/// The ticks recorded in `runs` (`tick <time>`), each with how many tasks ran it.
async fn ticks(db: &TestDb) -> Vec<(chrono::DateTime<chrono::Utc>, i64)> {
    let sql = "SELECT step, count(DISTINCT task_id) FROM runs WHERE step LIKE 'tick %'
               GROUP BY step ORDER BY step";
    let rows: Vec<(String, i64)> = match &db.db {
        jetpack_suite::Db::Postgres(p) => jetpack::sqlx::query_as(sql).fetch_all(p).await,
        jetpack_suite::Db::Sqlite(p) => jetpack::sqlx::query_as(sql).fetch_all(p).await,
    }
    .expect("read runs");
    rows.into_iter()
        .map(|(step, tasks)| {
            let at = chrono::DateTime::parse_from_rfc3339(step.trim_start_matches("tick "))
                .expect("a tick's time")
                .with_timezone(&chrono::Utc);
            (at, tasks)
        })
        .collect()
}

/// Three worker processes run the `worker` example's every-second schedule;
/// one is killed (SIGKILL) after a few ticks. Every second from the first
/// tick to the last has exactly one task, and at least 20 passed.
async fn three_processes_enqueue_each_tick_once_with_one_killed(db: TestDb) {
    db.exec(
        "CREATE TABLE runs (task_id bigint, step text, attempt int, at_us bigint)",
        None,
        None,
    )
    .await;
    let binary = worker_binary();
    let args = ["--every-second", "--lease-ms", "1000"];
    let mut workers: Vec<_> = (0..3)
        .map(|_| start_worker(&binary, &db.url, &args))
        .collect();
    let enough = |n: usize| {
        let db = &db;
        async move {
            common::wait_for(DEADLINE * 2, || async {
                Ok((ticks(db).await.len() >= n).then_some(()))
            })
            .await
            .unwrap_or_else(|e| panic!("{n} ticks did not run: {e}"));
        }
    };
    enough(8).await;
    workers[0].start_kill().expect("SIGKILL a worker");
    enough(22).await;
    for worker in &mut workers {
        let _ = worker.start_kill();
        let _ = worker.wait().await;
    }
    // The ticks' tasks left behind run on a worker without the schedule,
    // which stops once they are done: the schedule stopped with its workers.
    let mut drain = start_worker(&binary, &db.url, &["--until-empty"]);
    exits_cleanly(&mut drain, DEADLINE, "run the ticks left").await;
    let ticks = ticks(&db).await;
    assert!(ticks.len() >= 22, "{ticks:?}");
    for (at, tasks) in &ticks {
        assert_eq!(*tasks, 1, "tick {at} has {tasks} tasks");
    }
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            chrono::Duration::seconds(1),
            "a tick is missing between {} and {}",
            pair[0].0,
            pair[1].0
        );
    }
}

async fn a_schedule_nobody_runs_leaves_its_row_alone(db: TestDb) {
    let schedule = Schedule::cron("nightly", "0 0 3 * * *", |tick| Report {
        at: tick.to_rfc3339(),
    })
    .expect("schedule");
    let worker = db
        .worker::<Tasks>()
        .schedule(schedule)
        .build()
        .expect("worker");
    let running = common::spawn(worker);
    common::wait_for(DEADLINE, || async {
        let rows = db
            .scalar("SELECT count(*) FROM jetpack_schedules", None)
            .await;
        Ok((rows == 1).then_some(()))
    })
    .await
    .expect("the worker records its schedule");
    running.shutdown().await;
    // First seen now: its latest tick passed before it existed, so nothing runs.
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
}

/// A last tick set far into the future by hand would stop the schedule for
/// good without a word: the worker takes it for a hand edit, says so, and
/// fires from now on.
async fn a_last_tick_set_into_the_future_does_not_stop_the_schedule(db: TestDb) {
    let schedule = Schedule::cron("every-second", "* * * * * *", |tick| Report {
        at: tick.to_rfc3339(),
    })
    .expect("schedule");
    let (logs, _guard) = common::capture_logs();
    let worker = db.worker::<Tasks>().schedule(schedule).build();
    let running = common::spawn(worker.expect("worker"));
    let fired = "SELECT count(*) FROM jetpack_history WHERE event = 'enqueued'";
    let fired_since = |at_least: i64| {
        let db = &db;
        async move {
            common::wait_for(DEADLINE, || async {
                Ok((db.scalar(fired, None).await >= at_least).then_some(()))
            })
            .await
            .unwrap_or_else(|e| panic!("the schedule did not fire {at_least} times: {e}"))
        }
    };
    fired_since(1).await;
    db.exec(
        "UPDATE jetpack_schedules SET last_tick = '9999-12-31 00:00:00.000'",
        None,
        None,
    )
    .await;
    let before = db.scalar(fired, None).await;
    fired_since(before + 2).await;
    running.shutdown().await;
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM jetpack_schedules WHERE last_tick < '9000-01-01'",
            None
        )
        .await,
        1
    );
    let logs = logs.text();
    assert!(
        logs.contains("the schedule's last tick is in the future"),
        "{logs}"
    );
}

conformance!(
    three_processes_enqueue_each_tick_once_with_one_killed,
    a_schedule_nobody_runs_leaves_its_row_alone,
    a_last_tick_set_into_the_future_does_not_stop_the_schedule,
);

#[test]
fn bad_schedules_are_refused() {
    let report = |tick: chrono::DateTime<chrono::Utc>| Report {
        at: tick.to_rfc3339(),
    };
    for expression in ["", "61 * * * *", "* * * * * * * *", "every day"] {
        let refused = Schedule::cron("x", expression, report);
        assert!(
            matches!(refused, Err(jetpack::Error::InvalidSchedule(_))),
            "{expression:?}: {refused:?}"
        );
    }
    assert!(Schedule::cron("", "* * * * *", report).is_err());
    let zone = Schedule::cron("x", "* * * * *", report).and_then(|s| s.time_zone("Mars/Olympus"));
    assert!(
        matches!(zone, Err(jetpack::Error::InvalidSchedule(_))),
        "{zone:?}"
    );
    let berlin =
        Schedule::cron("x", "0 30 2 * * *", report).and_then(|s| s.time_zone("Europe/Berlin"));
    assert!(berlin.is_ok());
    let _ = Missed::Skip;
}

#[tokio::test]
async fn two_schedules_of_one_name_are_refused() {
    let db = TestDb::sqlite().await;
    let report = |tick: chrono::DateTime<chrono::Utc>| Report {
        at: tick.to_rfc3339(),
    };
    let one = Schedule::cron("same", "* * * * *", report).expect("schedule");
    let two = Schedule::cron("same", "0 * * * *", report).expect("schedule");
    let built = db.worker::<Tasks>().schedule(one).schedule(two).build();
    assert!(matches!(built, Err(jetpack::Error::Config(_))));
    let _ = Duration::ZERO;
}
