//! pg_task's own examples, `delay` and `counter`, ported as the README's
//! "Porting from pg_task" says (its `tutorial` is `examples/tutorial.rs`), with
//! pg_task's unit tests of their steps, on both backends.

mod common;

use std::time::Duration;

use common::{conformance, TestDb};
use jetpack::chrono::{DateTime, Utc};
use jetpack::{Context, NextStep, Step, StepResult, TestContext, Wakeup};
use serde::{Deserialize, Serialize};

// examples/delay.rs: `pg_task::task!(Sleeper { Sleep, Wakeup })` names no
// successors; Jetpack's task! lists them.
jetpack::task!(Sleeper { Sleep => [WakeUp], WakeUp });

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Sleep(u64);

#[jetpack::async_trait]
impl Step<Sleeper> for Sleep {
    async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
        tracing::info!("Sleeping for {} ms", self.0);
        NextStep::delay(WakeUp(self.0), Duration::from_millis(self.0))
    }
}

/// pg_task's `Wakeup`: renamed, since `jetpack::Wakeup` is the type of a
/// step's due time.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct WakeUp(u64);

#[jetpack::async_trait]
impl Step<Sleeper> for WakeUp {
    async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
        tracing::info!("Woke up after {} ms", self.0);
        NextStep::none()
    }
}

// examples/counter.rs
jetpack::task!(Count {
    Start => [Proceed],
    Proceed => [Proceed, Finish],
    Finish,
});

jetpack::scheduler!(Tasks { Sleeper, Count });

#[derive(Debug, Deserialize, Serialize)]
struct Start {
    up_to: usize,
}

#[jetpack::async_trait]
impl Step<Count> for Start {
    async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
        NextStep::now(Proceed {
            up_to: self.up_to,
            started_at: Utc::now(),
            cur: 0,
        })
    }
}

#[derive(Debug, Deserialize, Serialize)]
struct Proceed {
    up_to: usize,
    started_at: DateTime<Utc>,
    cur: usize,
}

#[jetpack::async_trait]
impl Step<Count> for Proceed {
    async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
        let Self {
            up_to,
            mut cur,
            started_at,
        } = self;
        cur += 1;
        if cur < up_to {
            NextStep::now(Proceed {
                up_to,
                started_at,
                cur,
            })
        } else {
            NextStep::now(Finish { up_to, started_at })
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
struct Finish {
    up_to: usize,
    started_at: DateTime<Utc>,
}

#[jetpack::async_trait]
impl Step<Count> for Finish {
    async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
        let took = (Utc::now() - self.started_at).num_milliseconds();
        tracing::info!("1..{}: done in {took} ms", self.up_to);
        NextStep::none()
    }
}

// pg_task's unit tests of these steps, which matched `NextStep::Now(..)`.

#[tokio::test]
async fn sleep_delays_the_wakeup() {
    let test = TestContext::new();
    let next = Sleep(3).step(&test.context()).await.unwrap();
    assert!(matches!(next.next(), Some(Sleeper::WakeUp(WakeUp(3)))));
    assert_eq!(next.wakeup(), Some(Wakeup::Delay(Duration::from_millis(3))));
    let last = WakeUp(3).step(&test.context()).await.unwrap();
    assert!(last.is_finish());
}

#[tokio::test]
async fn start_advances_to_the_first_proceed_step() {
    let next = Start { up_to: 3 }
        .step(&TestContext::new().context())
        .await
        .unwrap();
    match next.next() {
        Some(Count::Proceed(Proceed {
            up_to: 3, cur: 0, ..
        })) => {}
        other => panic!("expected the first proceed step, got {other:?}"),
    }
}

#[tokio::test]
async fn proceed_counts_then_finishes() {
    let started_at = Utc::now();
    let cx = TestContext::new();
    let next = Proceed {
        up_to: 3,
        started_at,
        cur: 1,
    }
    .step(&cx.context())
    .await
    .unwrap();
    match next.next() {
        Some(Count::Proceed(p)) => assert_eq!((p.cur, p.started_at), (2, started_at)),
        other => panic!("expected the next proceed step, got {other:?}"),
    }
    let next = Proceed {
        up_to: 3,
        started_at,
        cur: 2,
    }
    .step(&cx.context())
    .await
    .unwrap();
    assert!(matches!(
        next.next(),
        Some(Count::Finish(Finish { up_to: 3, .. }))
    ));
}

conformance!(the_ported_examples_run_to_completion);

/// pg_task's `worker_counts_to_completion`, and its delay example's three
/// sleepers, on a worker.
async fn the_ported_examples_run_to_completion(db: TestDb) {
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let counter = db.enqueue(Start { up_to: 50 }).await;
    let sleepers = db.enqueue_many([Sleep(300), Sleep(100), Sleep(200)]).await;
    common::finished(&db, counter).await;
    for id in sleepers {
        common::finished(&db, id).await;
    }
    w.shutdown().await;
}
