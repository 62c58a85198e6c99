//! The tutorial: a greeter task that fails until the world is fixed.
//!
//! `cargo run --example tutorial` runs it on an SQLite file (`jetpack.db`), with
//! nothing to install; `DATABASE_URL=postgres://… cargo run --example tutorial`
//! runs the same program on PostgreSQL.
//!
//! 1. `ReadName` reads `name.txt`, which does not exist: it fails, is retried
//!    `RETRY_LIMIT` times with backoff, and the task parks with the error on its row
//!    (about a second after the enqueue).
//! 2. We fix the world (write the file) and clear the error with plain SQL.
//! 3. The task resumes where it stopped and `SayHello` greets.
//!
//! With `--pause` the tutorial stops after step 1 and waits for you to do step 2
//! yourself, with `sqlite3` or `psql`, as the README shows: `name.txt` is then in
//! the current folder. Without it, the tutorial does step 2 itself (in a temporary
//! folder), which is how CI runs it.

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
    let pause = std::env::args().any(|arg| arg == "--pause");

    let dir = if pause {
        std::path::PathBuf::from(".")
    } else {
        std::env::temp_dir().join(format!("jetpack-tutorial-{}", std::process::id()))
    };
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("name.txt");
    if pause && file.exists() {
        std::fs::remove_file(&file)?;
        println!("removed the name.txt of an earlier run, so that the task fails");
    }
    let filename = if pause {
        "name.txt".to_string()
    } else {
        file.display().to_string()
    };
    let id = jetpack::enqueue(&pool, ReadName { filename }).await?;
    println!("enqueued task {id}");

    let worker = Worker::<Tasks>::new(pool.clone());
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());

    // 1. The file is missing: after its retries the task parks with the error.
    let row = wait_for(Duration::from_secs(30), || async {
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
    if pause {
        let (show, resume) = if DB::NAME == "SQLite" {
            ("sqlite3 -line jetpack.db", "sqlite3 jetpack.db")
        } else {
            ("psql \"$DATABASE_URL\" -x -c", "psql \"$DATABASE_URL\" -c")
        };
        println!(
            "\nThe task is parked. In another terminal, in this folder:\n\
             \n  {show} 'SELECT id, step, tried, error, locked_by FROM jetpack_tasks WHERE id = {id}'\
             \n  echo 'Fixed World' > name.txt\
             \n  {resume} 'UPDATE jetpack_tasks SET error = NULL WHERE id = {id}'\n\
             \nThis program waits for the task to finish (Ctrl-C to give up)."
        );
    } else {
        std::fs::write(&file, "Fixed World\n")?;
        jetpack::resume(&pool, id).await?;
        println!("cleared the error: the task resumes");
    }

    // 3. The task finishes: its row is gone.
    let patience = if pause {
        Duration::from_secs(24 * 3600)
    } else {
        Duration::from_secs(30)
    };
    wait_for(patience, || async {
        Ok(jetpack::find(&pool, id).await?.is_none().then_some(()))
    })
    .await?;
    println!("task {id} finished");

    stop.cancel();
    running.await??;
    if !pause {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Polls `check` until it returns `Some`, for at most `patience`.
async fn wait_for<T, F, Fut>(
    patience: Duration,
    mut check: F,
) -> Result<T, Box<dyn std::error::Error>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, jetpack::Error>>,
{
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if std::time::Instant::now() > deadline {
            return Err(
                format!("the tutorial's task did not get there within {patience:?}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
