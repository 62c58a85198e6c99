//! The tutorial: a greeter task that fails until the world is fixed.
//!
//! `cargo run --example tutorial` (set `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`).
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
    let pool = jetpack_suite::connect().await?;
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
    let row = jetpack_suite::wait_for(Duration::from_secs(30), || async {
        let row: Option<(String, i32, Option<String>)> =
            sqlx::query_as("SELECT step::text, tried, error FROM jetpack_tasks WHERE id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await?;
        Ok(row.filter(|(_, _, error)| error.is_some()))
    })
    .await?;
    println!(
        "parked: step = {}, tried = {}, error = {:?}",
        row.0, row.1, row.2
    );

    // 2. Fix the world, then resume with plain SQL.
    std::fs::write(&file, "Fixed World\n")?;
    sqlx::query("UPDATE jetpack_tasks SET error = NULL WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await?;
    println!("cleared the error: the task resumes");

    // 3. The task finishes: its row is gone.
    jetpack_suite::wait_for(Duration::from_secs(30), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jetpack_tasks WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await?;
        Ok((left == 0).then_some(()))
    })
    .await?;
    println!("task {id} finished");

    stop.cancel();
    running.await??;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
