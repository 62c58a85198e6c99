//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use jetpack::sqlx::{self, PgPool};
use jetpack::{CancellationToken, Scheduler, Worker};
use tokio::task::JoinHandle;

pub use jetpack_suite::{wait_for, TestDb};

/// Long enough for anything a test waits on, short enough to fail fast.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A task's row as a person sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub step: String,
    pub tried: i32,
    pub error: Option<String>,
    pub locked_by: Option<String>,
}

pub async fn row(pool: &PgPool, id: i64) -> Option<Row> {
    let row: Option<(String, i32, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT step::text, tried, error, locked_by FROM jetpack_tasks WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .expect("read task row");
    row.map(|(step, tried, error, locked_by)| Row {
        step,
        tried,
        error,
        locked_by,
    })
}

/// Waits until task `id` is parked (has an error) and returns its row.
pub async fn parked(pool: &PgPool, id: i64) -> Row {
    wait_for(DEADLINE, || async {
        Ok(row(pool, id).await.filter(|r| r.error.is_some()))
    })
    .await
    .unwrap_or_else(|e| panic!("task {id} did not park: {e}"))
}

/// Waits until task `id` has finished (its row is gone).
pub async fn finished(pool: &PgPool, id: i64) {
    wait_for(DEADLINE, || async {
        Ok(row(pool, id).await.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("task {id} did not finish: {e}"));
}

/// A running worker and the means to stop it.
pub struct Running {
    pub stop: CancellationToken,
    pub handle: JoinHandle<Result<(), jetpack::Error>>,
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.handle.await.expect("worker task").expect("worker run");
    }
}

pub fn spawn<T: Scheduler>(worker: Worker<T>) -> Running {
    let stop = worker.shutdown_token();
    Running {
        stop,
        handle: tokio::spawn(worker.run()),
    }
}

/// A fast-polling worker builder for tests.
pub fn builder<T: Scheduler>(pool: &PgPool) -> jetpack::WorkerBuilder<T> {
    Worker::<T>::builder(pool.clone()).poll_interval(Duration::from_millis(200))
}

/// The table steps record their executions in, as an application would.
pub async fn create_runs(pool: &PgPool) {
    sqlx::query("CREATE TABLE runs (task_id bigint, step text, attempt int, at timestamptz DEFAULT clock_timestamp())")
        .execute(pool)
        .await
        .expect("create runs");
}

pub async fn record_run(cx: &jetpack::Context<'_>, step: &str) -> Result<(), jetpack::StepError> {
    let pool: &PgPool = cx.pool()?;
    sqlx::query("INSERT INTO runs (task_id, step, attempt) VALUES ($1, $2, $3)")
        .bind(cx.task_id())
        .bind(step)
        .bind(cx.attempt())
        .execute(pool)
        .await?;
    Ok(())
}

/// Waits until task `id` has recorded at least one run.
pub async fn started(pool: &PgPool, id: i64) {
    wait_for(DEADLINE, || async {
        Ok((!runs(pool, id).await.is_empty()).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("task {id} did not start: {e}"));
}

pub async fn runs(pool: &PgPool, id: i64) -> Vec<(String, i32)> {
    sqlx::query_as("SELECT step, attempt FROM runs WHERE task_id = $1 ORDER BY at")
        .bind(id)
        .fetch_all(pool)
        .await
        .expect("read runs")
}
