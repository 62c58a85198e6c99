//! A workflow with children and the world: an order reserves stock, starts
//! a payment and a shipment as child tasks, joins their typed results, then
//! waits for a "delivered" signal with a timeout. One order is delivered, one
//! is late (its carrier is chased), one is cancelled with its family while it
//! waits, and one has its card declined (the join reads the payment's error
//! and releases the stock).
//!
//! ```text
//! cargo run --example workflow                                  # SQLite, a temporary file
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --example workflow
//! ```
//!
//! What an operator sees at each stage, in SQL:
//!
//! ```sql
//! -- every task of an order, its children by parent_id, their results
//! SELECT id, parent_id, state, step, result, error FROM jetpack_tasks ORDER BY id;
//! -- parents in a join, and how many children they still wait for
//! SELECT id, step, children_left FROM jetpack_tasks WHERE children_left > 0;
//! -- tasks waiting for a signal, and until when
//! SELECT id, wait_for, wait_key, wakeup_at AS deadline FROM jetpack_tasks WHERE wait_for IS NOT NULL;
//! SELECT jetpack_signal(NULL, 'order-1', 'delivered', '{"carrier":"DHL"}');   -- PostgreSQL
//! SELECT jetpack_cancel(3, 'customer withdrew', true);   -- with its descendants
//! ```

use std::time::Duration;

use jetpack::{
    sqlx, Child, Context, NextStep, OnPark, Signal, SignalTo, Step, StepError, StepResult,
    TaskState, Wait, Worker,
};
use serde::{Deserialize, Serialize};

/// Signal `delivered`: the carrier's tracking sends it.
#[derive(Debug, Serialize, Deserialize)]
struct Delivered {
    carrier: String,
}
impl Signal for Delivered {
    const NAME: &'static str = "delivered";
}

/// A child machine: charges the card, returns a receipt.
#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    order: u64,
    cents: u64,
    card: String,
}
#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    cents: u64,
}
jetpack::task!(Payment -> Receipt { Charge });

/// A child machine: books the carrier, returns the tracking number.
#[derive(Debug, Serialize, Deserialize)]
struct BookCarrier {
    order: u64,
}
jetpack::task!(Shipping -> String { BookCarrier });

#[derive(Debug, Serialize, Deserialize)]
struct Reserve {
    order: u64,
    card: String,
}
/// The join step: runs once both children have ended.
#[derive(Debug, Serialize, Deserialize)]
struct Fulfil {
    order: u64,
    payment: Child<Payment>,
    shipping: Child<Shipping>,
}
#[derive(Debug, Serialize, Deserialize)]
struct AwaitDelivery {
    order: u64,
    tracking: String,
}
#[derive(Debug, Serialize, Deserialize)]
struct Release {
    order: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct ChaseCarrier {
    order: u64,
    tracking: String,
}

jetpack::task!(Purchase {
    Reserve => [join Fulfil],
    Fulfil => [wait AwaitDelivery, Release],
    AwaitDelivery => [ChaseCarrier],
    Release,
    ChaseCarrier,
});
jetpack::scheduler!(Tasks {
    Purchase,
    Payment,
    Shipping
});

/// How long a demo waits for a delivery; a real shop would wait days.
const DELIVERY_WINDOW: Duration = Duration::from_secs(3);

fn key(order: u64) -> String {
    format!("order-{order}")
}

#[jetpack::async_trait]
impl Step<Payment> for Charge {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        if self.card == "declined" {
            return Err(StepError::permanent("the card was declined"));
        }
        tracing::info!(order = self.order, cents = self.cents, "charged");
        NextStep::finish(Receipt { cents: self.cents })
    }
}

#[jetpack::async_trait]
impl Step<Shipping> for BookCarrier {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        tracing::info!(order = self.order, "carrier booked");
        NextStep::finish(format!("TRK-{}", self.order))
    }
}

#[jetpack::async_trait]
impl Step<Purchase> for Reserve {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        tracing::info!(order = self.order, "stock reserved; paying and shipping");
        let charge = Charge {
            order: self.order,
            cents: 4200,
            card: self.card,
        };
        // Committed with this step's move: both children exist, or neither.
        // A declined card parks the payment; the join reads that error.
        let payment = cx.spawn(charge).on_park(OnPark::Result).await?;
        let shipping = cx.spawn(BookCarrier { order: self.order }).await?;
        NextStep::join(Fulfil {
            order: self.order,
            payment,
            shipping,
        })
    }
}

#[jetpack::async_trait]
impl Step<Purchase> for Fulfil {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let tracking: String = cx.result(&self.shipping).await??;
        match cx.result(&self.payment).await? {
            Ok(receipt) => {
                tracing::info!(order = self.order, cents = receipt.cents, %tracking, "paid and shipped");
                let wait = Wait::signal::<Delivered>()
                    .key(key(self.order))
                    .timeout(DELIVERY_WINDOW);
                let next = AwaitDelivery {
                    order: self.order,
                    tracking,
                };
                NextStep::wait(next, wait)
            }
            Err(failed) => {
                tracing::warn!(order = self.order, %failed, "not paid");
                NextStep::now(Release { order: self.order })
            }
        }
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
            None => NextStep::now(ChaseCarrier {
                order: self.order,
                tracking: self.tracking,
            }),
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
        tracing::warn!(order = self.order, tracking = %self.tracking, "no delivery in time: asking the carrier");
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
    let (delivered, late, withdrawn, declined) = (base + 1, base + 2, base + 3, base + 4);
    let mut ids = Vec::new();
    for order in [delivered, late, withdrawn, declined] {
        let card = if order == declined {
            "declined"
        } else {
            "visa"
        };
        let reserve = Reserve {
            order,
            card: card.into(),
        };
        ids.push(jetpack::enqueue(&pool, reserve).await?);
    }
    let worker = Worker::<Tasks>::builder(pool.clone())
        .keep_finished(Duration::from_secs(3600))
        .build()?;
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());

    for &id in &ids[..3] {
        reaches(&pool, id, TaskState::Waiting).await?;
    }
    reaches(&pool, ids[3], TaskState::Finished).await?;
    show(
        &pool,
        ids[0],
        "children joined: three wait for delivery, the declined one released its stock",
    )
    .await?;

    let cancelled =
        jetpack::cancel_with_descendants(&pool, ids[2], "the customer withdrew").await?;
    println!("cancelled order {withdrawn}: {cancelled:?}");
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
    // The late one's delivery window passes: ChaseCarrier runs.
    for &id in &ids[..2] {
        reaches(&pool, id, TaskState::Finished).await?;
    }
    show(
        &pool,
        ids[0],
        "one delivered, one chased, one cancelled, one declined",
    )
    .await?;

    stop.cancel();
    running.await??;
    Ok(())
}

/// Prints the rows of this run (the orders and their children), as
/// `SELECT id, parent_id, state, step, result, error FROM jetpack_tasks` would.
async fn show<DB: jetpack::Backend>(
    pool: &sqlx::Pool<DB>,
    first: i64,
    stage: &str,
) -> Result<(), Box<dyn std::error::Error>>
where
    for<'e> &'e sqlx::Pool<DB>: sqlx::Executor<'e, Database = DB>,
{
    println!("\n-- {stage}");
    println!(
        "{:>6}  {:>6}  {:<9}  step / result / error",
        "id", "parent", "state"
    );
    // Four orders and their eight children.
    for id in first..first + 12 {
        if let Some(row) = jetpack::find(pool, id).await? {
            let parent = row.parent_id.map(|p| p.to_string()).unwrap_or_default();
            let result = row.result.map(|r| format!("  => {r}")).unwrap_or_default();
            let error = row.error.map(|e| format!("  ({e})")).unwrap_or_default();
            println!(
                "{id:>6}  {parent:>6}  {:<9}  {}{result}{error}",
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
