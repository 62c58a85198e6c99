//! Helpers shared by the integration tests.
#![allow(dead_code, unused_macros, unused_imports)]

use std::time::Duration;

use jetpack::{CancellationToken, Scheduler, TaskRow, Worker};
use tokio::task::JoinHandle;

pub use jetpack_suite::{wait_for, Db, TestDb};

/// Long enough for anything a test waits on, short enough to fail fast.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Runs each listed `async fn name(db: TestDb)` once per backend, as
/// `postgres::name` and `sqlite::name`: one conformance suite, not two copies.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(jetpack_suite::TestDb::postgres().await).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(jetpack_suite::TestDb::sqlite().await).await
                }
            )*
        }
    };
}
pub(crate) use conformance;

/// The step document of a row, parsed (PostgreSQL normalizes spacing).
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("stored step is JSON")
}

/// Waits until task `id` is parked (has an error) and returns its row.
pub async fn parked(db: &Db, id: i64) -> TaskRow {
    wait_for(DEADLINE, || async {
        Ok(db.find(id).await.filter(|r| r.error.is_some()))
    })
    .await
    .unwrap_or_else(|e| panic!("task {id} did not park: {e}"))
}

/// Waits until task `id` has finished (its row is gone).
pub async fn finished(db: &Db, id: i64) {
    wait_for(DEADLINE, || async {
        Ok(db.find(id).await.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("task {id} did not finish: {e}"));
}

/// Waits until task `id` has recorded at least one run.
pub async fn started(db: &Db, id: i64) {
    wait_for(DEADLINE, || async {
        Ok((!db.runs(id).await.is_empty()).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("task {id} did not start: {e}"));
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
