//! Child tasks and joins: a step spawns children with its own move, the
//! parent waits for them without a slot, and its join step reads their typed
//! results; parked, cancelled and hand-edited children; families cancelled
//! whole; ten thousand children joined once.

mod common;

use std::time::Duration;

use common::{conformance, reaches, recorded, Db, TestDb, DEADLINE};
use jetpack::{
    Child, ChildError, Context, NextStep, OnPark, Signal, Step, StepError, StepResult, TaskState,
    Wait,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Receipt {
    cents: u64,
}

/// Charges; a declined card parks the payment.
#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    cents: u64,
    declined: bool,
}
jetpack::task!(Payment -> Receipt { Charge });

#[jetpack::async_trait]
impl Step<Payment> for Charge {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        if self.declined {
            return Err(StepError::permanent("card declined"));
        }
        NextStep::finish(Receipt { cents: self.cents })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Pack {
    parcels: u32,
}
jetpack::task!(Shipping -> String { Pack });

#[jetpack::async_trait]
impl Step<Shipping> for Pack {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::finish(format!("{} parcels", self.parcels))
    }
}

/// Spawns a payment (awaited as `on_park` says) and a shipment, and joins them.
#[derive(Debug, Serialize, Deserialize)]
struct Place {
    cents: u64,
    declined: bool,
    on_park: String,
}

/// Records what the children returned.
#[derive(Debug, Serialize, Deserialize)]
struct Joined {
    payment: Child<Payment>,
    shipping: Child<Shipping>,
}

jetpack::task!(Order { Place => [join Joined], Joined });

#[jetpack::async_trait]
impl Step<Order> for Place {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let on_park = match self.on_park.as_str() {
            "fail" => OnPark::Fail,
            "result" => OnPark::Result,
            _ => OnPark::Wait,
        };
        let charge = Charge {
            cents: self.cents,
            declined: self.declined,
        };
        let payment = cx.spawn(charge).on_park(on_park).await?;
        let shipping = cx.spawn(Pack { parcels: 2 }).await?;
        NextStep::join(Joined { payment, shipping })
    }
}

#[jetpack::async_trait]
impl Step<Order> for Joined {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let payment = match cx.result(&self.payment).await? {
            Ok(receipt) => format!("paid {}", receipt.cents),
            Err(ChildError { state, error, .. }) => format!("{state:?}: {error}"),
        };
        let shipping = cx.result(&self.shipping).await??;
        Db::of(cx)
            .record_run(cx, &format!("{payment}; {shipping}"))
            .await?;
        NextStep::none()
    }
}

/// A tree of tasks: each node above `depth` 0 spawns two children and
/// returns the size of its subtree. Leaves that `sleep` wait for a ping.
#[derive(Debug, Serialize, Deserialize)]
struct Grow {
    depth: u32,
    sleep: bool,
}
#[derive(Debug, Serialize, Deserialize)]
struct Gather;
jetpack::task!(Tree -> u64 { Grow => [join Gather, wait Gather], Gather });

#[jetpack::async_trait]
impl Step<Tree> for Grow {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        if self.depth == 0 && self.sleep {
            return NextStep::wait(Gather, Wait::signal::<Ping>());
        }
        if self.depth == 0 {
            return NextStep::finish(1);
        }
        let (depth, sleep) = (self.depth - 1, self.sleep);
        cx.spawn_all([Grow { depth, sleep }, Grow { depth, sleep }])
            .await?;
        NextStep::join(Gather)
    }
}

#[jetpack::async_trait]
impl Step<Tree> for Gather {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let mut size = 1;
        for (child, result) in cx.results::<Tree>().await? {
            size += result.map_err(|e| format!("child {}: {e}", child.id()))?;
        }
        NextStep::finish(size)
    }
}

/// Fans out to `n` leaves and sums their results.
#[derive(Debug, Serialize, Deserialize)]
struct Fan {
    n: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct Sum;
jetpack::task!(Fanout { Fan => [join Sum], Sum });

#[derive(Debug, Serialize, Deserialize)]
struct Leaf {
    i: u64,
}
jetpack::task!(Leaves -> u64 { Leaf });

#[jetpack::async_trait]
impl Step<Leaves> for Leaf {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::finish(self.i)
    }
}

#[jetpack::async_trait]
impl Step<Fanout> for Fan {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        cx.spawn_all((1..=self.n).map(|i| Leaf { i })).await?;
        NextStep::join(Sum)
    }
}

#[jetpack::async_trait]
impl Step<Fanout> for Sum {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let results = cx.results::<Leaves>().await?;
        let sum: u64 = results.iter().map(|(_, r)| *r.as_ref().unwrap_or(&0)).sum();
        Db::of(cx)
            .record_run(cx, &format!("{} children, sum {sum}", results.len()))
            .await?;
        NextStep::none()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Ping;
impl Signal for Ping {
    const NAME: &'static str = "ping";
}

/// Waits for a ping, then finishes with "pinged".
#[derive(Debug, Serialize, Deserialize)]
struct Sleep;
#[derive(Debug, Serialize, Deserialize)]
struct Woke;
jetpack::task!(Idle -> String { Sleep => [wait Woke], Woke });

#[jetpack::async_trait]
impl Step<Idle> for Sleep {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::wait(Woke, Wait::signal::<Ping>())
    }
}

#[jetpack::async_trait]
impl Step<Idle> for Woke {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::finish("pinged".to_string())
    }
}

/// Spawns `n` sleepers and `detached` detached ones, joins the first, and
/// records what each returned.
#[derive(Debug, Serialize, Deserialize)]
struct Nap {
    n: usize,
    detached: usize,
}
#[derive(Debug, Serialize, Deserialize)]
struct Awake;
jetpack::task!(Dorm { Nap => [join Awake], Awake });

#[jetpack::async_trait]
impl Step<Dorm> for Nap {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        cx.spawn_all((0..self.n).map(|_| Sleep)).await?;
        cx.spawn_all((0..self.detached).map(|_| Sleep))
            .detached()
            .await?;
        NextStep::join(Awake)
    }
}

#[jetpack::async_trait]
impl Step<Dorm> for Awake {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let seen: Vec<String> = cx
            .results::<Idle>()
            .await?
            .into_iter()
            .map(|(_, r)| r.unwrap_or_else(|e| format!("{:?}", e.state)))
            .collect();
        Db::of(cx).record_run(cx, &seen.join(",")).await?;
        NextStep::none()
    }
}

jetpack::scheduler!(Tasks {
    Order,
    Payment,
    Shipping,
    Tree,
    Fanout,
    Leaves,
    Idle,
    Dorm
});

conformance!(
    a_join_step_reads_each_childs_typed_result,
    a_parked_child_leaves_its_parent_waiting,
    a_child_that_parks_can_park_its_parent,
    a_child_that_parks_can_be_an_error_for_the_join,
    children_have_children,
    a_cancelled_child_is_an_error_for_the_join_and_detached_ones_are_not_awaited,
    a_family_is_cancelled_together,
    a_result_that_does_not_decode_parks_the_join,
    a_task_set_to_waiting_by_hand_is_refused_or_goes_on,
    hand_written_states_that_would_stall_are_refused,
    ten_thousand_children_join_once,
);

fn place(declined: bool, on_park: &str) -> Place {
    Place {
        cents: 500,
        declined,
        on_park: on_park.into(),
    }
}

/// The children of `parent`, by id: (id, kind).
async fn children(db: &Db, parent: i64) -> Vec<(i64, String)> {
    let sql = "SELECT id, kind FROM jetpack_tasks WHERE parent_id = $1 ORDER BY id";
    match db {
        Db::Postgres(p) => jetpack::sqlx::query_as(sql).bind(parent).fetch_all(p).await,
        Db::Sqlite(p) => jetpack::sqlx::query_as(sql).bind(parent).fetch_all(p).await,
    }
    .expect("children")
}

/// Edits the step of parked task `id` and clears its error, as a person would.
async fn fix_step(db: &Db, id: i64, step: &str) {
    let sql = match db {
        Db::Postgres(_) => "UPDATE jetpack_tasks SET step = $2::jsonb, error = NULL WHERE id = $1",
        Db::Sqlite(_) => "UPDATE jetpack_tasks SET step = $2, error = NULL WHERE id = $1",
    };
    assert_eq!(db.exec(sql, Some(id), Some(step)).await, 1);
}

async fn a_join_step_reads_each_childs_typed_result(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(place(false, "wait")).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    assert_eq!(recorded(&db, id).await, ["paid 500; 2 parcels"]);
    // The children are deleted once the join step has moved on.
    common::drained(&db, DEADLINE).await;
    w.shutdown().await;

    // Kept, the rows show each task's result: none for the parent, which
    // finished with `NextStep::none()`.
    let id = db.enqueue(place(false, "wait")).await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .keep_finished(Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    reaches(&db, id, TaskState::Finished).await;
    assert_eq!(db.find(id).await.unwrap().result, None);
    let kids = children(&db, id).await;
    let payment = db.find(kids[0].0).await.unwrap().result.unwrap();
    assert_eq!(common::json(&payment), common::json(r#"{"cents":500}"#));
    let shipping = db.find(kids[1].0).await.unwrap().result;
    assert_eq!(shipping.as_deref(), Some(r#""2 parcels""#));
    w.shutdown().await;
}

/// By default a parked child leaves its parent waiting; fixed by SQL (its
/// step edited, its error cleared), the family goes on.
async fn a_parked_child_leaves_its_parent_waiting(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(place(true, "wait")).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    reaches(&db, id, TaskState::Waiting).await;
    let kids = children(&db, id).await;
    let kinds: Vec<&str> = kids.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["Payment.Charge", "Shipping.Pack"]);
    let payment = kids[0].0;
    let row = common::parked(&db, payment).await;
    assert_eq!(row.parent_id, Some(id));
    assert_eq!(row.error.as_deref(), Some("card declined"));
    let parent = db.find(id).await.unwrap();
    assert_eq!(parent.state, TaskState::Waiting, "the parent keeps waiting");
    assert!(
        parent.locked_by.is_none(),
        "a waiting parent holds no lease"
    );
    let fixed = r#"{"Payment":{"Charge":{"cents":500,"declined":false}}}"#;
    fix_step(&db, payment, fixed).await;
    assert_eq!(recorded(&db, id).await, ["paid 500; 2 parcels"]);
    w.shutdown().await;
}

/// Under `OnPark::Fail` the parent parks with its child, naming it; once the
/// child is fixed and the parent resumed, the join step runs.
async fn a_child_that_parks_can_park_its_parent(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(place(true, "fail")).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let parent = common::parked(&db, id).await;
    let payment = children(&db, id).await[0].0;
    let error = parent.error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "child task {payment} (Payment.Charge) parked: card declined"
        )),
        "{error}"
    );
    let fixed = r#"{"Payment":{"Charge":{"cents":7,"declined":false}}}"#;
    fix_step(&db, payment, fixed).await;
    reaches(&db, payment, TaskState::Finished).await;
    assert_eq!(db.find(id).await.unwrap().state, TaskState::Parked);
    assert!(db.resume(id).await);
    assert_eq!(recorded(&db, id).await, ["paid 7; 2 parcels"]);
    w.shutdown().await;
}

/// Under `OnPark::Result` a parked child ends for the join, which reads its
/// error; the child stays parked for a person to see.
async fn a_child_that_parks_can_be_an_error_for_the_join(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(place(true, "result")).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    assert_eq!(
        recorded(&db, id).await,
        ["Parked: card declined; 2 parcels"]
    );
    let payment = children(&db, id).await[0].0;
    assert_eq!(db.find(payment).await.unwrap().state, TaskState::Parked);
    w.shutdown().await;
}

/// Children have children: a tree of depth 3 (15 tasks) adds up, each row
/// naming its parent, and the root keeps its result when finished tasks are
/// kept.
async fn children_have_children(db: TestDb) {
    let root = db
        .enqueue(Grow {
            depth: 3,
            sleep: false,
        })
        .await;
    let w = common::spawn(
        db.worker::<Tasks>()
            .keep_finished(Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    reaches(&db, root, TaskState::Finished).await;
    let row = db.find(root).await.unwrap();
    assert_eq!(row.result.as_deref(), Some("15"));
    let parented = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE parent_id IS NOT NULL",
            None,
        )
        .await;
    assert_eq!(parented, 14);
    let grandchildren = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks c JOIN jetpack_tasks p ON c.parent_id = p.id
             WHERE p.parent_id = $1",
            Some(root),
        )
        .await;
    assert_eq!(grandchildren, 4);
    w.shutdown().await;
}

/// A cancelled child counts as ended: the join reads it as an error. A
/// detached child is not waited for, and still names its parent.
async fn a_cancelled_child_is_an_error_for_the_join_and_detached_ones_are_not_awaited(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(Nap { n: 2, detached: 1 }).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    reaches(&db, id, TaskState::Waiting).await;
    let kids = children(&db, id).await;
    assert_eq!(kids.len(), 3);
    for (child, _) in &kids {
        reaches(&db, *child, TaskState::Waiting).await;
    }
    db.cancel(kids[0].0, "not needed").await;
    db.signal(jetpack::SignalTo::Task(kids[1].0), &Ping).await;
    assert_eq!(recorded(&db, id).await, ["Cancelled,pinged"]);
    let detached = db.find(kids[2].0).await.expect("the detached child");
    assert_eq!(detached.state, TaskState::Waiting);
    assert_eq!(detached.parent_id, Some(id));
    w.shutdown().await;
}

/// Cancelling with descendants stops the whole family at once, children and
/// grandchildren, each saying which ancestor was cancelled; a plain cancel
/// of the parent leaves its children alone.
async fn a_family_is_cancelled_together(db: TestDb) {
    let root = db
        .enqueue(Grow {
            depth: 2,
            sleep: true,
        })
        .await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    // The tree grows: the root and its two children wait for their
    // children, the four leaves for a ping.
    common::wait_for(DEADLINE, || async {
        let n = db
            .scalar(
                "SELECT count(*) FROM jetpack_tasks WHERE state = 'waiting'",
                None,
            )
            .await;
        Ok((n == 7).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("the tree did not grow: {e}"));
    assert_eq!(
        db.cancel_with_descendants(root, "the customer withdrew")
            .await,
        jetpack::Cancel::Cancelled
    );
    let live = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE state IN ('ready', 'waiting', 'parked')",
            None,
        )
        .await;
    assert_eq!(live, 0, "every descendant is cancelled");
    let told = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE state = 'cancelled' AND parent_id IS NOT NULL
             AND error LIKE 'an ancestor (task %) was cancelled: the customer withdrew'",
            None,
        )
        .await;
    assert_eq!(told, 6, "each descendant says why");
    assert_eq!(
        db.find(root).await.unwrap().error.as_deref(),
        Some("the customer withdrew")
    );

    let other = db.enqueue(Nap { n: 1, detached: 0 }).await;
    reaches(&db, other, TaskState::Waiting).await;
    let child = children(&db, other).await[0].0;
    reaches(&db, child, TaskState::Waiting).await;
    db.cancel(other, "just the parent").await;
    assert_eq!(db.find(child).await.unwrap().state, TaskState::Waiting);
    // Its end no longer concerns the cancelled parent.
    db.signal(jetpack::SignalTo::Task(child), &Ping).await;
    common::finished(&db, child).await;
    assert_eq!(db.find(other).await.unwrap().state, TaskState::Cancelled);
    w.shutdown().await;
}

/// A child's result edited by hand into something the join cannot read
/// parks the parent, naming the child and the type; others are unaffected.
async fn a_result_that_does_not_decode_parks_the_join(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(place(true, "wait")).await;
    let healthy = db.enqueue(place(false, "wait")).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    reaches(&db, id, TaskState::Waiting).await;
    let kids = children(&db, id).await;
    let (payment, shipping) = (kids[0].0, kids[1].0);
    common::parked(&db, payment).await;
    reaches(&db, shipping, TaskState::Finished).await;
    db.exec(
        "UPDATE jetpack_tasks SET result = '42' WHERE id = $1",
        Some(shipping),
        None,
    )
    .await;
    let fixed = r#"{"Payment":{"Charge":{"cents":1,"declined":false}}}"#;
    fix_step(&db, payment, fixed).await;
    let parent = common::parked(&db, id).await;
    let error = parent.error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "the result of child task {shipping} of task {id} does not decode"
        )) && error.contains("String"),
        "{error}"
    );
    assert_eq!(recorded(&db, healthy).await, ["paid 500; 2 parcels"]);
    w.shutdown().await;
}

/// A row set to `waiting` by hand, waiting for neither a signal nor children,
/// would wait forever: both backends refuse it, and the task runs on.
async fn a_task_set_to_waiting_by_hand_is_refused_or_goes_on(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(place(false, "wait")).await;
    let edit = "UPDATE jetpack_tasks SET state = 'waiting' WHERE id = $1";
    let refused = db.try_exec(edit, Some(id), None).await;
    let error = refused.expect_err("a wait for nothing is refused");
    assert!(
        error
            .to_string()
            .contains("jetpack_tasks_waiting_for_something"),
        "{error}"
    );
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    assert_eq!(recorded(&db, id).await, ["paid 500; 2 parcels"]);
    w.shutdown().await;
}

/// Rows nothing would ever move on are refused, alike on both backends: a
/// join's count set below zero (its last child's end would not wake the
/// parent) or to zero while it waits, a task parked without an error (clearing
/// `error` is how a parked task resumes), rows inserted waiting for nothing or
/// parked without an error. The parent stays as it was and its join runs once
/// its child ends.
async fn hand_written_states_that_would_stall_are_refused(db: TestDb) {
    db.create_app_tables().await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let parent = db.enqueue(Nap { n: 1, detached: 0 }).await;
    reaches(&db, parent, TaskState::Waiting).await;
    let edits = [
        (
            "UPDATE jetpack_tasks SET children_left = -1 WHERE id = $1",
            "jetpack_tasks_children_left_not_negative",
        ),
        (
            "UPDATE jetpack_tasks SET children_left = 0 WHERE id = $1",
            "jetpack_tasks_waiting_for_something",
        ),
        (
            "UPDATE jetpack_tasks SET state = 'parked' WHERE id = $1",
            "jetpack_tasks_parked_with_error",
        ),
        (
            r#"INSERT INTO jetpack_tasks (step, state) VALUES ('{"Idle":{"Sleep":null}}', 'waiting')"#,
            "jetpack_tasks_waiting_for_something",
        ),
        (
            r#"INSERT INTO jetpack_tasks (step, state) VALUES ('{"Idle":{"Sleep":null}}', 'parked')"#,
            "jetpack_tasks_parked_with_error",
        ),
        (
            r#"INSERT INTO jetpack_tasks (step, state, wait_for, children_left)
               VALUES ('{"Idle":{"Sleep":null}}', 'waiting', 'ping', -2)"#,
            "jetpack_tasks_children_left_not_negative",
        ),
    ];
    for (sql, says) in edits {
        let id = sql.starts_with("UPDATE").then_some(parent);
        let refused = db.try_exec(sql, id, None).await;
        let error = refused.map_err(|e| e.to_string());
        assert!(
            error.as_ref().is_err_and(|e| e.contains(says)),
            "{sql}: {error:?}, not refused by {says}"
        );
    }
    let row = db.find(parent).await.expect("the parent");
    assert_eq!((row.state, row.error), (TaskState::Waiting, None));
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        2,
        "nothing was inserted"
    );
    let kids = children(&db, parent).await;
    let [(child, _)] = kids.as_slice() else {
        panic!("one child: {kids:?}")
    };
    let pinged = match &*db {
        Db::Postgres(p) => jetpack::signal(p, jetpack::SignalTo::Task(*child), &Ping).await,
        Db::Sqlite(p) => jetpack::signal(p, jetpack::SignalTo::Task(*child), &Ping).await,
    };
    assert_eq!(pinged.expect("ping"), jetpack::Delivery::Delivered);
    assert_eq!(recorded(&db, parent).await, ["pinged"]);
    w.shutdown().await;
}

/// PostgreSQL: every connection of the database killed, again and again,
/// while a parent's 3,000 children run and another task waits for a signal:
/// the workers reconnect, the join step runs once with every result, and the
/// signal sent afterwards is delivered.
#[tokio::test]
async fn connections_killed_during_a_fan_out_and_a_wait_lose_nothing() {
    let db = TestDb::postgres().await;
    db.create_app_tables().await;
    let parent = db.enqueue(Fan { n: 3000 }).await;
    let sleeper = db.enqueue(Sleep).await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    reaches(&db, parent, TaskState::Waiting).await;
    for _ in 0..5 {
        db.scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reaches(&db, sleeper, TaskState::Waiting).await;
    assert_eq!(
        db.signal(jetpack::SignalTo::Task(sleeper), &Ping).await,
        jetpack::Delivery::Delivered
    );
    common::finished(&db, sleeper).await;
    common::wait_for(Duration::from_secs(60), || async {
        Ok(db.find(parent).await.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("the fan-out did not finish: {e}"));
    assert_eq!(
        db.runs(parent).await,
        [("3000 children, sum 4501500".to_string(), 1)]
    );
    w.shutdown().await;
}

/// Ten thousand children of one parent, run by two workers: the join step
/// runs exactly once and sees every result.
async fn ten_thousand_children_join_once(db: TestDb) {
    db.create_app_tables().await;
    let id = db.enqueue(Fan { n: 10_000 }).await;
    let a = common::spawn(db.worker::<Tasks>().concurrency(16).build().unwrap());
    let b = common::spawn(db.worker::<Tasks>().concurrency(16).build().unwrap());
    common::wait_for(Duration::from_secs(120), || async {
        Ok(db.find(id).await.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("the fan-out did not finish: {e}"));
    let runs = db.runs(id).await;
    assert_eq!(
        runs,
        [("10000 children, sum 50005000".to_string(), 1)],
        "one run of the join step, on its first attempt"
    );
    common::drained(&db, DEADLINE).await;
    a.shutdown().await;
    b.shutdown().await;
}
