//! The admin API: counts per step and state, lists by filter, show, resume,
//! redrive (checked against the machine's types), cancel and purge; none
//! touches a task a worker holds, and one that matches nothing is an error
//! that changes nothing.

mod common;

use std::time::Duration;

use common::{conformance, finished, on, run_to_the_end, Db, TestDb};
use jetpack::admin::{self, Filter};
use jetpack::{Context, NextStep, Step, StepError, StepResult, TaskState};
use serde::{Deserialize, Serialize};

/// Parks at once with `boom <n>`.
#[derive(Debug, Serialize, Deserialize)]
struct Fail {
    n: u32,
}

/// Succeeds; the same fields as [`Fail`].
#[derive(Debug, Serialize, Deserialize)]
struct Fixed {
    n: u32,
}

/// Fields [`Fail`]'s do not fit.
#[derive(Debug, Serialize, Deserialize)]
struct Strict {
    name: String,
}

jetpack::task!(Job {
    Fail,
    Fixed,
    Strict
});
jetpack::task!(Other { Elsewhere });

#[derive(Debug, Serialize, Deserialize)]
struct Elsewhere;

jetpack::scheduler!(Tasks { Job, Other });

/// A step renamed from `Bill` (and its field from `cents`), with a
/// concurrency limit, and the step after it, renamed from `Thank`.
#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    #[serde(alias = "cents")]
    amount: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    amount: u32,
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Pay {
    #[next(Receipt)]
    #[serde(alias = "Bill")]
    Charge(Charge),
    #[serde(alias = "Thank", alias = "Thanks")]
    Receipt(Receipt),
}

jetpack::scheduler!(Renamed { Pay });

#[jetpack::async_trait]
impl Step<Pay> for Charge {
    const CONCURRENCY: Option<u32> = Some(2);

    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::now(Receipt {
            amount: self.amount,
        })
    }
}

#[jetpack::async_trait]
impl Step<Pay> for Receipt {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Job> for Fail {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        Err(StepError::permanent(format!("boom {}", self.n)))
    }
}

#[jetpack::async_trait]
impl Step<Job> for Fixed {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Job> for Strict {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Other> for Elsewhere {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

conformance!(
    counts_lists_and_show,
    counts_of_a_big_table_are_estimated_but_parked_and_waiting_ones,
    redrive_is_checked_against_the_machine_and_moves_parked_tasks,
    resume_cancel_and_purge_leave_held_tasks_alone,
    verify_lists_rows_the_program_cannot_run,
    rows_stored_under_a_former_name_are_claimed_and_run,
);

/// Three parked `Fail` tasks (`boom 1` to `boom 3`) and two `Fixed` ones
/// scheduled in an hour; their ids.
async fn parked_and_scheduled(db: &Db) -> (Vec<i64>, Vec<i64>) {
    let parked = db.enqueue_many((1..=3).map(|n| Fail { n })).await;
    let mut scheduled = Vec::new();
    for n in [10, 11] {
        let id = db
            .delay(Fixed { n }, Duration::from_secs(3600))
            .await
            .expect("delay");
        scheduled.push(id);
    }
    let worker = common::spawn(db.worker::<Tasks>().build().expect("worker"));
    for &id in &parked {
        common::parked(db, id).await;
    }
    worker.shutdown().await;
    (parked, scheduled)
}

/// On a big table, `estimated_counts` estimates ready tasks from a sample of
/// the ids and says so, and counts parked and waiting tasks exactly through
/// their indexes; on a small one it is `counts`.
async fn counts_of_a_big_table_are_estimated_but_parked_and_waiting_ones(db: TestDb) {
    parked_and_scheduled(&db).await;
    let exact = on!(db, p => admin::counts(p).await).expect("counts");
    let small = on!(db, p => admin::estimated_counts(p).await).expect("counts");
    assert_eq!(small, exact, "a small table is counted row by row");
    assert!(small.iter().all(|c| !c.estimated));

    // 150,000 ready tasks of one step, then 300 parked and 40 waiting at the
    // end of the ids (the sample would miss most of them), by hand.
    let fill = match &*db {
        Db::Postgres(_) => {
            "INSERT INTO jetpack_tasks (step, kind)
             SELECT jsonb_build_object('Job', jsonb_build_object('Fixed', jsonb_build_object('n', i))), 'Job.Fixed'
             FROM generate_series(1, 150000) i"
        }
        Db::Sqlite(_) => {
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 150000)
             INSERT INTO jetpack_tasks (step, kind)
             SELECT '{\"Job\":{\"Fixed\":{\"n\":' || i || '}}}', 'Job.Fixed' FROM g"
        }
    };
    db.exec(fill, None, None).await;
    let (parked, waiting) = match &*db {
        Db::Postgres(_) => (
            "INSERT INTO jetpack_tasks (step, kind, error)
             SELECT '{\"Job\":{\"Fail\":{\"n\":0}}}', 'Job.Fail', 'by hand' FROM generate_series(1, 300)",
            "INSERT INTO jetpack_tasks (step, kind, state, wait_for, wakeup_at)
             SELECT '{\"Job\":{\"Fixed\":{\"n\":0}}}', 'Job.Fixed', 'waiting', 'ping', '9999-12-31'
             FROM generate_series(1, 40)",
        ),
        Db::Sqlite(_) => (
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 300)
             INSERT INTO jetpack_tasks (step, kind, error)
             SELECT '{\"Job\":{\"Fail\":{\"n\":0}}}', 'Job.Fail', 'by hand' FROM g",
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 40)
             INSERT INTO jetpack_tasks (step, kind, state, wait_for, wakeup_at)
             SELECT '{\"Job\":{\"Fixed\":{\"n\":0}}}', 'Job.Fixed', 'waiting', 'ping', '9999-12-31 00:00:00'
             FROM g",
        ),
    };
    db.exec(parked, None, None).await;
    db.exec(waiting, None, None).await;

    let counts = on!(db, p => admin::estimated_counts(p).await).expect("counts");
    let of = |state: TaskState| {
        let found = counts.iter().filter(|c| c.state == state);
        found
            .map(|c| (c.kind.as_str(), c.count, c.estimated))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(TaskState::Parked),
        [("Job.Fail", 303, false)],
        "{counts:?}"
    );
    assert_eq!(
        of(TaskState::Waiting),
        [("Job.Fixed", 40, false)],
        "{counts:?}"
    );
    let ready = of(TaskState::Ready);
    let [("Job.Fixed", n, true)] = ready.as_slice() else {
        panic!("ready tasks are estimated: {counts:?}")
    };
    assert!(
        (142_500..=157_500).contains(n),
        "150,000 ready, estimated {n}"
    );
    let exact = on!(db, p => admin::counts(p).await).expect("counts");
    assert!(exact.iter().all(|c| !c.estimated));
    assert!(
        (exact.iter())
            .any(|c| c.kind == "Job.Fixed" && c.state == TaskState::Ready && c.count == 150_000),
        "{exact:?}"
    );
}

async fn counts_lists_and_show(db: TestDb) {
    let (parked, _) = parked_and_scheduled(&db).await;
    let counts: Vec<_> = on!(db, p => admin::counts(p).await)
        .expect("counts")
        .into_iter()
        .map(|c| (c.kind, c.state, c.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("Job.Fail".to_string(), TaskState::Parked, 3),
            ("Job.Fixed".to_string(), TaskState::Scheduled, 2),
        ]
    );
    let boom2 = Filter::new().parked().error_contains("boom 2");
    let found = on!(db, p => admin::list(p, &boom2).await).expect("list");
    assert_eq!(found.iter().map(|t| t.id).collect::<Vec<_>>(), [parked[1]]);
    let page = Filter::new().step("Job.Fail").limit(2);
    let first = on!(db, p => admin::list(p, &page).await).expect("list");
    assert_eq!(first.len(), 2);
    let rest =
        on!(db, p => admin::list(p, &page.clone().after_id(first[1].id)).await).expect("list");
    assert_eq!(rest.iter().map(|t| t.id).collect::<Vec<_>>(), [parked[2]]);
    let of_machine =
        on!(db, p => admin::list(p, &Filter::new().machine("Job")).await).expect("list");
    assert_eq!(of_machine.len(), 5);

    let (task, history) = on!(db, p => admin::show(p, parked[0]).await).expect("show");
    assert_eq!(task.error.as_deref(), Some("boom 1"));
    let events: Vec<_> = history.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(events, ["enqueued", "parked"]);
    let missing = on!(db, p => admin::show(p, 999_999).await).expect_err("no such task");
    assert!(missing.to_string().contains("no task 999999"), "{missing}");
    let bad =
        on!(db, p => admin::list(p, &Filter::new().state("stuck")).await).expect_err("a bad state");
    assert!(bad.to_string().contains("unknown state"), "{bad}");
}

async fn redrive_is_checked_against_the_machine_and_moves_parked_tasks(db: TestDb) {
    let (parked, _) = parked_and_scheduled(&db).await;
    let all_parked = Filter::new().parked();
    for (to, says) in [
        ("Other.Elsewhere", "another machine"),
        ("Job.Missing", "no step Missing"),
        ("Job.Strict", "do not fit"),
    ] {
        let refused =
            on!(db, p => admin::redrive::<Tasks, _>(p, "Job.Fail", to, &all_parked).await)
                .expect_err("refused");
        assert!(refused.to_string().contains(says), "{to}: {refused}");
    }
    // Without the types: checked against the graphs the workers recorded.
    for (to, says) in [
        ("Other.Elsewhere", "another machine"),
        ("Job.Missing", "no step Missing"),
    ] {
        let refused = on!(db, p => admin::redrive_recorded(p, "Job.Fail", to, &all_parked).await)
            .expect_err("refused");
        assert!(refused.to_string().contains(says), "{to}: {refused}");
    }
    let unknown = on!(db, p => admin::redrive_recorded(p, "Nope.A", "Nope.B", &all_parked).await)
        .expect_err("an unknown machine");
    assert!(unknown.to_string().contains("no machine Nope"), "{unknown}");
    let still = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE state = 'parked' AND kind = 'Job.Fail'",
            None,
        )
        .await;
    assert_eq!(still, 3, "a refused redrive changed tasks");

    let first = all_parked.clone().error_contains("boom 1");
    let moved = on!(db, p => admin::redrive_recorded(p, "Job.Fail", "Job.Fixed", &first).await)
        .expect("redrive by the recorded graph");
    assert_eq!(moved, 1);
    let moved =
        on!(db, p => admin::redrive::<Tasks, _>(p, "Job.Fail", "Job.Fixed", &all_parked).await)
            .expect("redrive");
    assert_eq!(moved, 2);
    let worker = common::spawn(db.worker::<Tasks>().build().expect("worker"));
    for &id in &parked {
        finished(&db, id).await;
    }
    worker.shutdown().await;
    let none =
        on!(db, p => admin::redrive::<Tasks, _>(p, "Job.Fail", "Job.Fixed", &all_parked).await)
            .expect_err("nothing left");
    assert!(none.to_string().contains("nothing changed"), "{none}");
}

async fn resume_cancel_and_purge_leave_held_tasks_alone(db: TestDb) {
    let (parked, scheduled) = parked_and_scheduled(&db).await;
    // One parked task is held by a worker (a live lease, written here).
    db.exec(
        "UPDATE jetpack_tasks SET locked_by = 'elsewhere', lease_until = '9999-01-01 00:00:00' WHERE id = $1",
        Some(parked[0]),
        None,
    )
    .await;
    let resumed =
        on!(db, p => admin::resume(p, &Filter::new().step("Job.Fail")).await).expect("resume");
    assert_eq!(resumed, 2);
    let held = db.find(parked[0]).await.expect("the held task");
    assert_eq!(
        held.error.as_deref(),
        Some("boom 1"),
        "a held task was resumed"
    );
    let nothing =
        on!(db, p => admin::resume(p, &Filter::new().error_contains("no such error")).await)
            .expect_err("nothing matched");
    assert!(nothing.to_string().contains("nothing changed"), "{nothing}");

    let cancelled =
        on!(db, p => admin::cancel(p, &Filter::new().step("Job.Fixed"), "not needed").await)
            .expect("cancel");
    assert_eq!(cancelled, 2);
    for &id in &scheduled {
        let row = db.find(id).await.expect("kept while cancelled");
        assert_eq!(
            (row.state, row.error.as_deref()),
            (TaskState::Cancelled, Some("not needed"))
        );
    }
    let purged = on!(db, p => admin::purge(p, &Filter::new().machine("Job")).await).expect("purge");
    assert_eq!(purged, 2);
    assert!(db.find(scheduled[0]).await.is_none());
    let again =
        on!(db, p => admin::purge(p, &Filter::new()).await).expect_err("nothing left to purge");
    assert!(
        again
            .to_string()
            .contains("no finished or cancelled tasks match"),
        "{again}"
    );
}

async fn verify_lists_rows_the_program_cannot_run(db: TestDb) {
    let ok = on!(db, p => jetpack::verify::<Tasks, _>(p).await).expect("verify");
    assert!(ok.is_ok() && ok.checked == 0, "{ok}");
    let good = db
        .insert_raw(r#"{"Job":{"Fixed":{"n":1}}}"#)
        .await
        .expect("insert");
    let bad = db
        .insert_raw(r#"{"Job":{"Fixed":{"n":"one"}}}"#)
        .await
        .expect("insert");
    let gone = db
        .insert_raw(r#"{"Gone":{"Step":null}}"#)
        .await
        .expect("insert");
    let renamed = db
        .insert_raw(r#"{"Job":{"Renamed":{"n":1}}}"#)
        .await
        .expect("insert");
    // A finished task is not read again: it does not count.
    let done = db
        .insert_raw(r#"{"Job":{"Fixed":{"n":"no"}}}"#)
        .await
        .expect("insert");
    db.exec(
        "UPDATE jetpack_tasks SET state = 'finished' WHERE id = $1",
        Some(done),
        None,
    )
    .await;
    let report = on!(db, p => jetpack::verify::<Tasks, _>(p).await).expect("verify");
    assert!(!report.is_ok());
    assert_eq!(report.checked, 4, "{report}");
    let unknown: Vec<_> = (report.unknown.iter())
        .map(|(k, (n, ids))| (k.as_str(), *n, ids.clone()))
        .collect();
    assert_eq!(
        unknown,
        [
            ("Gone.Step", 1, vec![gone]),
            ("Job.Renamed", 1, vec![renamed])
        ]
    );
    assert_eq!(report.undecodable, 1);
    assert_eq!(report.undecodable_examples[0].0, bad);
    assert!(report.to_string().contains("task"), "{report}");
    let _ = good;
    // Rows of a step the machine no longer has are what a redrive rescues.
    let moved = on!(db, p => admin::redrive::<Tasks, _>(p, "Job.Renamed", "Job.Fixed", &Filter::new()).await)
        .expect("redrive from a step that is gone");
    assert_eq!(moved, 1);
    let after = on!(db, p => jetpack::verify::<Tasks, _>(p).await).expect("verify");
    assert!(!after.unknown.contains_key("Job.Renamed"), "{after}");
}

async fn rows_stored_under_a_former_name_are_claimed_and_run(db: TestDb) {
    // Rows an older binary wrote: the old step names, the old field name.
    let mut ids = Vec::new();
    for step in [
        r#"{"Pay":{"Bill":{"cents":100}}}"#,
        r#"{"Pay":{"Bill":{"amount":200}}}"#,
        r#"{"Pay":{"Thank":{"amount":300}}}"#,
        r#"{"Pay":{"Thanks":{"amount":400}}}"#,
        r#"{"Pay":{"Charge":{"amount":500}}}"#,
    ] {
        ids.push(db.insert_raw(step).await.expect("insert"));
    }
    let report = on!(db, p => jetpack::verify::<Renamed, _>(p).await).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.checked, 5, "{report}");
    run_to_the_end::<Renamed>(&db, &ids).await;
    // Each ran on: the renamed step wrote its successor under the new name.
    // A row of a limited step first gets its scope, and with it the new name.
    let history = on!(db, p => jetpack::history(p, ids[0]).await).expect("history");
    let kinds = |history: &[jetpack::Transition]| -> Vec<(Option<String>, Option<String>)> {
        (history.iter())
            .map(|t| (t.from_kind.clone(), t.to_kind.clone()))
            .collect()
    };
    let some = |k: &str| Some(k.to_string());
    assert_eq!(
        kinds(&history),
        [
            (None, some("Pay.Bill")),
            (some("Pay.Charge"), some("Pay.Receipt")),
            (some("Pay.Receipt"), None)
        ]
    );
    // One of no limit runs as it is stored; its attempt is recorded under
    // the name the step has now.
    let thanked = on!(db, p => jetpack::history(p, ids[2]).await).expect("history");
    assert_eq!(
        kinds(&thanked),
        [(None, some("Pay.Thank")), (some("Pay.Receipt"), None)]
    );
    assert_eq!(
        common::json(history[1].step.as_deref().expect("a step")),
        common::json(r#"{"Pay":{"Receipt":{"amount":100}}}"#)
    );
    // The registry records the former names for tools without the types.
    let (graph, _) = on!(db, p => admin::recorded_graph(p, "Pay").await)
        .expect("read")
        .expect("recorded");
    let aliases: Vec<_> = (graph.steps.iter())
        .map(|s| (s.name.as_str(), s.aliases.clone()))
        .collect();
    assert_eq!(
        aliases,
        [
            ("Charge", vec!["Bill".to_string()]),
            ("Receipt", vec!["Thank".to_string(), "Thanks".to_string()])
        ]
    );
}
