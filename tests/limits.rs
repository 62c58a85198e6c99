//! Global concurrency limits: `Step::CONCURRENCY`, per step type and per key,
//! across workers and processes; a dead worker's share comes back when its
//! lease expires; rows written by hand are limited too; a limit removed from
//! the code frees its tasks.

mod common;

use std::time::Duration;

use common::{conformance, finished, Db, TestDb, DEADLINE};
use jetpack::{chrono, Context, Enqueue, NextStep, Step, StepResult};
use jetpack_suite::overlap;
use serde::{Deserialize, Serialize};

/// Sleeps `ms`, then records when it ran in `spans`. At most 2 at once, per
/// `key` when given.
#[derive(Debug, Serialize, Deserialize)]
struct Call {
    ms: u64,
    key: Option<String>,
}

/// No limit: moves on to a `Call`.
#[derive(Debug, Serialize, Deserialize)]
struct Prepare {
    key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Api {
    #[next(Call)]
    Prepare(Prepare),
    Call(Call),
}

jetpack::scheduler!(Tasks { Api });

const LIMIT: usize = 2;

#[jetpack::async_trait]
impl Step<Api> for Prepare {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::now(Call {
            ms: 50,
            key: self.key,
        })
    }
}

#[jetpack::async_trait]
impl Step<Api> for Call {
    // A dead worker's attempt counts.
    const RETRY_LIMIT: i32 = 3;
    const CONCURRENCY: Option<u32> = Some(LIMIT as u32);
    fn limit_key(&self) -> Option<String> {
        self.key.clone()
    }
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let start = chrono::Utc::now().timestamp_micros();
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        let end = chrono::Utc::now().timestamp_micros();
        let scope = self.key.unwrap_or_default();
        Db::of(cx)
            .record_span(cx.task_id(), &scope, start, end)
            .await?;
        NextStep::none()
    }
}

fn call(key: Option<&str>) -> Call {
    Call {
        ms: 50,
        key: key.map(str::to_string),
    }
}

/// The spans of `scope`, as (start, end).
async fn spans_of(db: &Db, scope: &str) -> Vec<(i64, i64)> {
    db.spans()
        .await
        .into_iter()
        .filter(|s| s.1 == scope)
        .map(|s| (s.2, s.3))
        .collect()
}

conformance!(
    no_more_than_the_limit_run_at_once_across_workers,
    a_limit_per_key_counts_each_key_apart,
    a_dead_workers_share_comes_back_when_its_lease_expires,
    rows_written_by_hand_are_limited_too,
    a_limit_removed_from_the_code_frees_its_tasks,
    a_bad_limit_key_is_refused,
);

async fn no_more_than_the_limit_run_at_once_across_workers(db: TestDb) {
    db.create_app_tables().await;
    // Half enqueued at the limited step, half reaching it from a step of none.
    let mut ids = db.enqueue_many((0..10).map(|_| call(None))).await;
    ids.extend(
        db.enqueue_many((0..10).map(|_| Prepare { key: None }))
            .await,
    );
    let workers = common::two_workers::<Tasks>(&db);
    for id in ids {
        finished(&db, id).await;
    }
    // The holders of finished attempts are forgotten by the next claim (the
    // idle workers poll): nothing is left holding a share.
    common::wait_for(DEADLINE, || async {
        let left = db
            .scalar("SELECT count(*) FROM jetpack_holders", None)
            .await;
        Ok((left == 0).then_some(()))
    })
    .await
    .expect("the holders are forgotten");
    for w in workers {
        w.shutdown().await;
    }
    let spans = spans_of(&db, "").await;
    assert_eq!(spans.len(), 20);
    let (most, _) = overlap(&spans);
    assert_eq!(
        most, LIMIT,
        "at most {LIMIT} at once, and as many: {spans:?}"
    );
}

async fn a_limit_per_key_counts_each_key_apart(db: TestDb) {
    db.create_app_tables().await;
    let mut ids = Vec::new();
    for key in ["a", "b", "c"] {
        ids.extend(db.enqueue_many((0..6).map(|_| call(Some(key)))).await);
    }
    common::run_to_the_end::<Tasks>(&db, &ids).await;
    let mut all = Vec::new();
    for key in ["a", "b", "c"] {
        let spans = spans_of(&db, key).await;
        assert_eq!(spans.len(), 6);
        assert!(overlap(&spans).0 <= LIMIT, "key {key}: {spans:?}");
        all.extend(spans);
    }
    // Keys do not wait for each other.
    assert!(overlap(&all).0 > LIMIT, "{all:?}");
}

async fn a_dead_workers_share_comes_back_when_its_lease_expires(db: TestDb) {
    db.create_app_tables().await;
    let ids = db.enqueue_many((0..3).map(|_| call(None))).await;
    // Two attempts of a worker that died, leases expiring in 2 s, hold the
    // two shares: as a claim records them.
    let lease = match &*db {
        Db::Postgres(_) => {
            "UPDATE jetpack_tasks SET locked_by = 'dead', fence = fence + 1, tried = 1,
                    lease_until = now() + interval '2 seconds' WHERE id = $1"
        }
        Db::Sqlite(_) => {
            "UPDATE jetpack_tasks SET locked_by = 'dead', fence = fence + 1, tried = 1,
                    lease_until = strftime('%Y-%m-%d %H:%M:%f', 'now', '+2 seconds') WHERE id = $1"
        }
    };
    for &id in &ids[..2] {
        db.exec(lease, Some(id), None).await;
        db.exec(
            "INSERT INTO jetpack_holders (task_id, fence, scope)
             SELECT id, fence, limit_scope FROM jetpack_tasks WHERE id = $1",
            Some(id),
            None,
        )
        .await;
    }
    let expires_us = match &*db {
        Db::Postgres(_) => {
            "SELECT (extract(epoch FROM max(lease_until)) * 1000000)::bigint FROM jetpack_tasks"
        }
        Db::Sqlite(_) => {
            "SELECT CAST((julianday(max(lease_until)) - 2440587.5) * 86400000000 AS INTEGER)
             FROM jetpack_tasks"
        }
    };
    let expires_us = db.scalar(expires_us, None).await;
    common::run_to_the_end::<Tasks>(&db, &ids).await;
    let spans = spans_of(&db, "").await;
    assert_eq!(
        spans.len(),
        3,
        "every task ran, the dead worker's two again"
    );
    // The third task found both shares taken: it started only once the dead
    // leases expired (the database clock and this one agree within ms).
    assert!(
        spans.iter().all(|&(start, _)| start >= expires_us - 50_000),
        "a task ran while both shares were held: {spans:?}, leases until {expires_us}"
    );
    assert!(overlap(&spans).0 <= LIMIT);
}

async fn rows_written_by_hand_are_limited_too(db: TestDb) {
    db.create_app_tables().await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let id = db
            .insert_raw(r#"{"Api":{"Call":{"ms":50,"key":null}}}"#)
            .await
            .expect("insert");
        ids.push(id);
    }
    common::run_to_the_end::<Tasks>(&db, &ids).await;
    let spans = spans_of(&db, "").await;
    assert_eq!(spans.len(), 6);
    assert!(overlap(&spans).0 <= LIMIT, "{spans:?}");
}

async fn a_limit_removed_from_the_code_frees_its_tasks(db: TestDb) {
    db.create_app_tables().await;
    // A task of a step with no limit, scoped as an older deploy had it.
    let id = db.enqueue(Prepare { key: None }).await;
    db.exec(
        "UPDATE jetpack_tasks SET limit_scope = kind WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    // A scope that is not its kind's is refused.
    let wrong = "UPDATE jetpack_tasks SET limit_scope = 'Api.Call' WHERE id = $1";
    assert!(db.try_exec(wrong, Some(id), None).await.is_err());
    let workers = common::two_workers::<Tasks>(&db);
    finished(&db, id).await;
    for w in workers {
        w.shutdown().await;
    }
}

async fn a_bad_limit_key_is_refused(db: TestDb) {
    for key in ["", "nul\0"] {
        let refused = db.run(Enqueue::new(call(Some(key)))).await;
        assert!(
            matches!(refused, Err(jetpack::Error::InvalidEnqueue(_))),
            "{key:?}: {refused:?}"
        );
    }
    let long = "k".repeat(1025);
    assert!(db.run(Enqueue::new(call(Some(&long)))).await.is_err());
    // A step that moves to a call with a bad key parks with the reason.
    let id = db
        .enqueue(Prepare {
            key: Some(String::new()),
        })
        .await;
    let workers = common::two_workers::<Tasks>(&db);
    let row = common::parked(&db, id).await;
    for w in workers {
        w.shutdown().await;
    }
    let error = row.error.unwrap_or_default();
    assert!(error.contains("limit key"), "{error}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        1
    );
}

/// Three worker processes of the `worker` example share its `Partner.Call`
/// limit of 4; one is killed (SIGKILL) in the middle. Never more than 4 calls
/// overlap, 4 do at times, and every call runs: the killed worker's shares
/// come back when its leases expire.
async fn three_processes_keep_a_limit_with_one_killed(db: TestDb) {
    const CALLS: i64 = 60;
    db.exec(
        "CREATE TABLE spans (task_id bigint, scope text, start_us bigint, end_us bigint)",
        None,
        None,
    )
    .await;
    for _ in 0..CALLS {
        db.exec(
            r#"INSERT INTO jetpack_tasks (step, kind, limit_scope)
               VALUES ('{"Partner":{"Call":{"ms":100,"tenant":null}}}', 'Partner.Call', 'Partner.Call')"#,
            None,
            None,
        )
        .await;
    }
    let binary = common::worker_binary();
    let args = ["--until-empty", "--concurrency", "8", "--lease-ms", "1000"];
    let mut workers: Vec<_> = (0..3)
        .map(|_| common::start_worker(&binary, &db.url, &args))
        .collect();
    common::wait_for(DEADLINE, || async {
        let n = db.scalar("SELECT count(*) FROM spans", None).await;
        Ok((n >= 12).then_some(()))
    })
    .await
    .expect("calls run");
    workers[0].start_kill().expect("SIGKILL a worker");
    for worker in &mut workers[1..] {
        common::exits_cleanly(worker, DEADLINE * 3, "run every call").await;
    }
    let ran = db
        .scalar("SELECT count(DISTINCT task_id) FROM spans", None)
        .await;
    assert_eq!(ran, CALLS, "every call ran");
    let spans: Vec<(i64, i64)> = db.spans().await.into_iter().map(|s| (s.2, s.3)).collect();
    let (most, mean) = overlap(&spans);
    println!(
        "{}: at most {most} calls at once, {mean:.2} on average",
        db.backend()
    );
    assert_eq!(most, 4, "at most 4 at once, and as many: {spans:?}");
}

mod processes {
    use super::three_processes_keep_a_limit_with_one_killed;
    use crate::common::conformance;
    conformance!(three_processes_keep_a_limit_with_one_killed);
}
