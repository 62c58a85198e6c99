//! The tutorial: a greeter task that fails until the world is fixed.
//!
//! `cargo run --example tutorial` runs it on an SQLite file (`jetpack.db`), with
//! nothing to install; `DATABASE_URL=postgres://… cargo run --example tutorial`
//! runs the same program on PostgreSQL.
//!
//! 1. `ReadName` reads `name.txt`, which does not exist: it fails, is retried
//!    `RETRY_LIMIT` times with backoff, and the task parks with the error on its row.
//! 2. We fix the world (write the file) and clear the error with plain SQL.
//! 3. The task resumes where it stopped and `SayHello` greets.

use std::time::Duration;

use jetpack::{sqlx, Context, NextStep, Step, StepResult, Worker};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ReadName {
    filename: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SayHello {
    name: String,
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Greeter {
    #[next(SayHello)]
    ReadName(ReadName),
    SayHello(SayHello),
}

#[jetpack::async_trait]
impl Step<Greeter> for ReadName {
    const RETRY_LIMIT: i32 = 3;
    const RETRY_DELAY: Duration = Duration::from_millis(100);

    async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
        let name = std::fs::read_to_string(&self.filename)?;
        NextStep::now(SayHello {
            name: name.trim().to_string(),
        })
    }
}

#[jetpack::async_trait]
impl Step<Greeter> for SayHello {
    async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
        println!("Hello, {}!", self.name);
        NextStep::none()
    }
}

jetpack::scheduler!(Tasks { Greeter });

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    // The embedded SQLite file by default; DATABASE_URL=postgres://… for PostgreSQL.
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://jetpack.db".into());
    if url.starts_with("sqlite:") {
        println!("running on SQLite: {url}");
        tutorial(jetpack::sqlite::connect(&url).await?).await
    } else {
        println!("running on PostgreSQL: {url}");
        tutorial(sqlx::PgPool::connect(&url).await?).await
    }
}

async fn tutorial<DB: jetpack::Backend>(
    pool: sqlx::Pool<DB>,
) -> Result<(), Box<dyn std::error::Error>>
where
    for<'e> &'e sqlx::Pool<DB>: sqlx::Executor<'e, Database = DB>,
{
    jetpack::migrate(&pool).await?;

    let dir = std::env::temp_dir().join(format!("jetpack-tutorial-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("name.txt");
    let id = jetpack::enqueue(
        &pool,
        ReadName {
            filename: file.display().to_string(),
        },
    )
    .await?;
    println!("enqueued task {id}");

    let worker = Worker::<Tasks>::new(pool.clone());
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());

    // 1. The file is missing: after its retries the task parks with the error.
    let row = wait_for(|| async {
        Ok(jetpack::find(&pool, id)
            .await?
            .filter(|row| row.error.is_some()))
    })
    .await?;
    println!(
        "parked: step = {}, tried = {}, error = {:?}",
        row.step, row.tried, row.error
    );

    // 2. Fix the world, then resume: `UPDATE jetpack_tasks SET error = NULL WHERE id = …`
    //    in psql or sqlite3 does the same as `jetpack::resume`.
    std::fs::write(&file, "Fixed World\n")?;
    jetpack::resume(&pool, id).await?;
    println!("cleared the error: the task resumes");

    // 3. The task finishes: its row is gone.
    wait_for(|| async { Ok(jetpack::find(&pool, id).await?.is_none().then_some(())) }).await?;
    println!("task {id} finished");

    stop.cancel();
    running.await??;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Polls `check` until it returns `Some`, for at most 30 seconds.
async fn wait_for<T, F, Fut>(mut check: F) -> Result<T, Box<dyn std::error::Error>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, jetpack::Error>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if std::time::Instant::now() > deadline {
            return Err("the tutorial's task did not get there within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
