//! A worker process: what you deploy. It runs until SIGINT/SIGTERM (or
//! `SELECT pg_notify('jetpack', 'stop')`), then stops gracefully: no new step
//! starts, running steps finish within the shutdown timeout, unfinished ones
//! are released for another worker.
//!
//! ```text
//! cargo run --example worker -- [--enqueue N] [--until-empty] [--concurrency N] [--lease-ms N] [--every-second]
//! ```
//! `--enqueue N` first enqueues N three-step orders in one statement;
//! `--until-empty` stops once no task is left (used by CI and the tests). It
//! also runs fan-outs (`{"Batch":{"Split":{"parts":N}}}`): N child tasks whose
//! results the parent's join step adds up, in its own transaction; and parcels
//! (`{"Parcel":{"Dispatch":{"order":N}}}`) that wait for a `delivered` signal
//! sent to the key `order-N`, then record it in their transaction; and calls
//! to a partner (`{"Partner":{"Call":{"ms":100,"tenant":null}}}`) of which at
//! most 4 run at once and 50 start a second across every worker (per tenant,
//! when given), each recording when it ran in the table `spans`. With
//! `--every-second` it also runs a schedule, `ticks`, which enqueues a
//! `Clock.Tick` each second (once, however many workers run it), recorded in
//! `runs` as `tick <time>`.
//!
//! It runs on `DATABASE_URL`: an SQLite file by default (`sqlite://jetpack.db`),
//! or PostgreSQL with `DATABASE_URL=postgres://…`. Every step records its
//! execution in the application table `runs`, so tests can check from the
//! outside that no step ran twice.

use std::time::Duration;

use jetpack::{Context, NextStep, Step, StepResult};
use jetpack_suite::Db;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Reserve {
    order: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    order: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct Ship {
    order: u64,
}

jetpack::task!(Order { Reserve => [Charge], Charge => [Ship], Ship });

#[jetpack::async_trait]
impl Step<Order> for Reserve {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Reserve").await?;
        NextStep::now(Charge { order: self.order })
    }
}

#[jetpack::async_trait]
impl Step<Order> for Charge {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Charge").await?;
        NextStep::now(Ship { order: self.order })
    }
}

#[jetpack::async_trait]
impl Step<Order> for Ship {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Ship").await?;
        tracing::debug!(order = self.order, task = cx.task_id(), "shipped");
        NextStep::none()
    }
}

/// Spawns `parts` children and joins them.
#[derive(Debug, Serialize, Deserialize)]
struct Split {
    parts: u64,
}
/// Adds up the children's results: one ledger row, written with the move.
#[derive(Debug, Serialize, Deserialize)]
struct Tally;
jetpack::task!(Batch { Split => [join Tally], Tally });

#[derive(Debug, Serialize, Deserialize)]
struct Part {
    i: u64,
}
jetpack::task!(Parts -> u64 { Part });

#[jetpack::async_trait]
impl Step<Batch> for Split {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        cx.spawn_all((1..=self.parts).map(|i| Part { i })).await?;
        NextStep::join(Tally)
    }
}

#[jetpack::async_trait]
impl Step<Batch> for Tally {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let mut sum = 0;
        for (child, result) in cx.results::<Parts>().await? {
            sum += result.map_err(|e| format!("child {}: {e}", child.id()))?;
        }
        let sum = i64::try_from(sum)?;
        jetpack_suite::ledger_in_tx(cx, sum).await?;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Parts> for Part {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Part").await?;
        NextStep::finish(self.i)
    }
}

/// Signal `delivered`, sent to `order-N`.
#[derive(Debug, Serialize, Deserialize)]
struct Delivered {
    carrier: String,
}
impl jetpack::Signal for Delivered {
    const NAME: &'static str = "delivered";
}

#[derive(Debug, Serialize, Deserialize)]
struct Dispatch {
    order: u64,
}
#[derive(Debug, Serialize, Deserialize)]
struct Received {
    order: u64,
}
jetpack::task!(Parcel { Dispatch => [wait Received], Received });

#[jetpack::async_trait]
impl Step<Parcel> for Dispatch {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        let wait = jetpack::Wait::signal::<Delivered>().key(format!("order-{}", self.order));
        NextStep::wait(Received { order: self.order }, wait)
    }
}

#[jetpack::async_trait]
impl Step<Parcel> for Received {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let delivered = cx.signal::<Delivered>()?.ok_or("no signal")?;
        tracing::debug!(order = self.order, carrier = %delivered.carrier, "delivered");
        jetpack_suite::ledger_in_tx(cx, 1).await?;
        NextStep::none()
    }
}

/// A call to a partner's API, which allows 4 at once and 50 a second (per
/// tenant, if given).
#[derive(Debug, Serialize, Deserialize)]
struct Call {
    ms: u64,
    tenant: Option<u64>,
}
jetpack::task!(Partner { Call });

#[jetpack::async_trait]
impl Step<Partner> for Call {
    const RETRY_LIMIT: i32 = 5;
    const CONCURRENCY: Option<u32> = Some(4);
    const RATE: Option<jetpack::Rate> = Some(jetpack::Rate::per_second(50));
    fn limit_key(&self) -> Option<String> {
        self.tenant.map(|t| format!("tenant-{t}"))
    }
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let start = jetpack::chrono::Utc::now().timestamp_micros();
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        let end = jetpack::chrono::Utc::now().timestamp_micros();
        let scope = self.limit_key().unwrap_or_default();
        Db::of(cx)
            .record_span(cx.task_id(), &scope, start, end)
            .await?;
        NextStep::none()
    }
}

/// The task of a tick of the `ticks` schedule.
#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    at: String,
}
jetpack::task!(Clock { Tick });

#[jetpack::async_trait]
impl Step<Clock> for Tick {
    const RETRY_LIMIT: i32 = 5;
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx)
            .record_run(cx, &format!("tick {}", self.at))
            .await?;
        NextStep::none()
    }
}

jetpack::scheduler!(Tasks {
    Order,
    Batch,
    Parts,
    Parcel,
    Partner,
    Clock
});

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name);
    let value = |name: &str| {
        flag(name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<u64>())
    };

    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://jetpack.db".into());
    let db = if url.starts_with("sqlite:") {
        Db::Sqlite(jetpack::sqlite::connect(&url).await?)
    } else {
        Db::Postgres(jetpack::sqlx::PgPool::connect(&url).await?)
    };
    match &db {
        Db::Postgres(pool) => jetpack::migrate(pool).await?,
        Db::Sqlite(pool) => jetpack::migrate(pool).await?,
    }
    for table in [
        "CREATE TABLE IF NOT EXISTS runs (task_id bigint, step text, attempt int, at_us bigint)",
        "CREATE TABLE IF NOT EXISTS ledger (task_id bigint, amount bigint)",
        "CREATE TABLE IF NOT EXISTS spans (task_id bigint, scope text, start_us bigint, end_us bigint)",
    ] {
        // Two workers starting at once on a fresh PostgreSQL database may both
        // create it: the loser's statement fails, and once more finds it there.
        if db.try_exec(table, None, None).await.is_err() {
            db.exec(table, None, None).await;
        }
    }
    if let Some(n) = value("--enqueue").transpose()? {
        let ids = db.enqueue_many((0..n).map(|order| Reserve { order })).await;
        tracing::info!(count = ids.len(), "enqueued orders");
    }

    let concurrency = value("--concurrency").transpose()?.unwrap_or(16) as usize;
    let mut builder = db.worker::<Tasks>().concurrency(concurrency);
    if let Some(ms) = value("--lease-ms").transpose()? {
        builder = builder.lease(Duration::from_millis(ms));
    }
    if flag("--every-second").is_some() {
        let ticks = jetpack::Schedule::cron("ticks", "* * * * * *", |tick| Tick {
            at: tick.to_rfc3339(),
        })?;
        builder = builder.schedule(ticks);
    }
    let worker = builder.build()?;
    let stop = worker.shutdown_token();
    tokio::spawn(stop_on_signal(stop.clone()));
    if flag("--until-empty").is_some() {
        let db = db.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let sql = "SELECT count(*) FROM jetpack_tasks
                           WHERE (kind LIKE 'Order.%' OR kind LIKE 'Batch.%' OR kind LIKE 'Parts.%'
                                  OR kind LIKE 'Parcel.%' OR kind LIKE 'Partner.%'
                                  OR kind LIKE 'Clock.%')
                             AND state IN ('ready', 'waiting', 'parked')";
                // A database error (a restart, say) is not "empty": keep watching.
                if matches!(db.try_scalar(sql, None).await, Ok(0)) {
                    stop.cancel();
                    return;
                }
            }
        });
    }
    worker.run().await?;
    Ok(())
}

/// Cancels the token on SIGINT or SIGTERM.
async fn stop_on_signal(stop: jetpack::CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received: stopping gracefully");
    stop.cancel();
}
