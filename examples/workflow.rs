//! A workflow that waits for the world: an order reserves stock, waits for its
//! payment, then for its delivery, each with a timeout; a third order is
//! cancelled while it waits.
//!
//! ```text
//! cargo run --example workflow                                  # SQLite, a temporary file
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --example workflow
//! ```
//!
//! What an operator sees at each stage, in SQL:
//!
//! ```sql
//! SELECT id, state, step, wait_for, wait_key, wakeup_at AS deadline FROM jetpack_tasks;
//! SELECT jetpack_signal(NULL, 'order-1', 'paid', '{"cents":4200}');   -- PostgreSQL
//! UPDATE jetpack_tasks SET state = 'cancelled', error = 'customer withdrew' WHERE id = 3;
//! ```

use std::time::Duration;

use jetpack::{
    sqlx, Context, NextStep, Signal, SignalTo, Step, StepResult, TaskState, Wait, Worker,
};
use serde::{Deserialize, Serialize};

/// Signal `paid`: the payment provider's webhook sends it.
#[derive(Debug, Serialize, Deserialize)]
struct Paid {
    cents: u64,
}
impl Signal for Paid {
    const NAME: &'static str = "paid";
}

/// Signal `delivered`: the carrier's tracking sends it.
#[derive(Debug, Serialize, Deserialize)]
struct Delivered {
    carrier: String,
}
impl Signal for Delivered {
    const NAME: &'static str = "delivered";
}

#[derive(Debug, Serialize, Deserialize)]
struct Reserve {
    order: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct AwaitPayment {
    order: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct AwaitDelivery {
    order: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct Release {
    order: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct ChaseCarrier {
    order: u64,
}

jetpack::task!(Purchase {
    Reserve => [AwaitPayment],
    AwaitPayment => [AwaitDelivery, Release],
    AwaitDelivery => [ChaseCarrier],
    Release,
    ChaseCarrier,
});
jetpack::scheduler!(Tasks { Purchase });

/// How long a demo waits; a real shop would wait days.
const PAYMENT_WINDOW: Duration = Duration::from_secs(30);
const DELIVERY_WINDOW: Duration = Duration::from_secs(2);

fn key(order: u64) -> String {
    format!("order-{order}")
}

#[jetpack::async_trait]
impl Step<Purchase> for Reserve {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        tracing::info!(
            order = self.order,
            "stock reserved; waiting for the payment"
        );
        let wait = Wait::signal::<Paid>()
            .key(key(self.order))
            .timeout(PAYMENT_WINDOW);
        NextStep::wait(AwaitPayment { order: self.order }, wait)
    }
}

#[jetpack::async_trait]
impl Step<Purchase> for AwaitPayment {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let Some(paid) = cx.signal::<Paid>()? else {
            tracing::warn!(order = self.order, "not paid in time");
            return NextStep::now(Release { order: self.order });
        };
        tracing::info!(order = self.order, cents = paid.cents, "paid; shipping");
        let wait = Wait::signal::<Delivered>()
            .key(key(self.order))
            .timeout(DELIVERY_WINDOW);
        NextStep::wait(AwaitDelivery { order: self.order }, wait)
    }
}

#[jetpack::async_trait]
impl Step<Purchase> for AwaitDelivery {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        match cx.signal::<Delivered>()? {
            Some(d) => {
                tracing::info!(order = self.order, carrier = %d.carrier, "delivered");
                NextStep::none()
            }
            None => NextStep::now(ChaseCarrier { order: self.order }),
        }
    }
}

#[jetpack::async_trait]
impl Step<Purchase> for Release {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        tracing::info!(order = self.order, "stock released");
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Purchase> for ChaseCarrier {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        tracing::warn!(
            order = self.order,
            "no delivery in time: asking the carrier"
        );
        NextStep::none()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let file = std::env::temp_dir().join(format!("jetpack-workflow-{}.db", std::process::id()));
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| format!("sqlite://{}", file.display()));
    if url.starts_with("sqlite:") {
        println!("running on SQLite: {url}");
        let ran = workflow(jetpack::sqlite::connect(&url).await?).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
        ran
    } else {
        println!("running on PostgreSQL: {url}");
        workflow(sqlx::PgPool::connect(&url).await?).await
    }
}

async fn workflow<DB: jetpack::Backend>(
    pool: sqlx::Pool<DB>,
) -> Result<(), Box<dyn std::error::Error>>
where
    for<'e> &'e sqlx::Pool<DB>: sqlx::Executor<'e, Database = DB>,
{
    jetpack::migrate(&pool).await?;
    // Order numbers of this run, so that reruns on one database do not meet.
    let base = u64::from(std::process::id()) * 10;
    let (delivered, late, withdrawn) = (base + 1, base + 2, base + 3);
    let mut ids = Vec::new();
    for order in [delivered, late, withdrawn] {
        ids.push(jetpack::enqueue(&pool, Reserve { order }).await?);
    }
    let worker = Worker::<Tasks>::builder(pool.clone())
        .keep_finished(Duration::from_secs(3600))
        .build()?;
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());

    for &id in &ids {
        reaches(&pool, id, TaskState::Waiting).await?;
    }
    show(&pool, &ids, "all three wait for their payment").await?;

    // The payment provider's webhook, from any code (or SQL) that knows the order.
    for order in [delivered, late] {
        let sent = jetpack::signal(&pool, SignalTo::Key(key(order)), &Paid { cents: 4200 }).await?;
        println!("paid order {order}: {sent:?}");
    }
    let cancelled = jetpack::cancel(&pool, ids[2], "the customer withdrew").await?;
    println!("cancelled order {withdrawn}: {cancelled:?}");
    for &id in &ids[..2] {
        reaches(&pool, id, TaskState::Waiting).await?;
    }
    show(&pool, &ids, "two wait for delivery, one is cancelled").await?;

    let to = SignalTo::Key(key(delivered));
    let sent = jetpack::signal(
        &pool,
        to,
        &Delivered {
            carrier: "DHL".into(),
        },
    )
    .await?;
    println!("delivered order {delivered}: {sent:?}");
    // The other one's delivery window passes: ChaseCarrier runs.
    for &id in &ids[..2] {
        reaches(&pool, id, TaskState::Finished).await?;
    }
    show(&pool, &ids, "one delivered, one chased, one cancelled").await?;

    stop.cancel();
    running.await??;
    Ok(())
}

/// Prints the rows, as `SELECT id, state, step FROM jetpack_tasks` would.
async fn show<DB: jetpack::Backend>(
    pool: &sqlx::Pool<DB>,
    ids: &[i64],
    stage: &str,
) -> Result<(), Box<dyn std::error::Error>>
where
    for<'e> &'e sqlx::Pool<DB>: sqlx::Executor<'e, Database = DB>,
{
    println!("\n-- {stage}");
    for &id in ids {
        if let Some(row) = jetpack::find(pool, id).await? {
            let error = row.error.map(|e| format!("  ({e})")).unwrap_or_default();
            println!(
                "{id:>6}  {:<9}  {}{error}",
                format!("{:?}", row.state),
                row.step
            );
        }
    }
    Ok(())
}

/// Waits, up to 30 s, until task `id` is in `state`.
async fn reaches<DB: jetpack::Backend>(
    pool: &sqlx::Pool<DB>,
    id: i64,
    state: TaskState,
) -> Result<(), Box<dyn std::error::Error>>
where
    for<'e> &'e sqlx::Pool<DB>: sqlx::Executor<'e, Database = DB>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if jetpack::find(pool, id).await?.map(|r| r.state) == Some(state) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("task {id} did not become {state:?} within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
