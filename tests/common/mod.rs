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

/// Waits until task `id` is parked and returns its row.
pub async fn parked(db: &Db, id: i64) -> TaskRow {
    wait_for(DEADLINE, || async {
        Ok(db
            .find(id)
            .await
            .filter(|r| r.state == jetpack::TaskState::Parked))
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

/// Waits until task `id` is in state `want` (as `find` tells it).
pub async fn reaches(db: &Db, id: i64, want: jetpack::TaskState) {
    wait_for(DEADLINE, || async {
        Ok((db.find(id).await.map(|r| r.state) == Some(want)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("task {id} did not become {want:?}: {e}"));
}

/// What task `id`'s steps recorded in `runs`, once it finished.
pub async fn recorded(db: &Db, id: i64) -> Vec<String> {
    finished(db, id).await;
    db.runs(id)
        .await
        .into_iter()
        .map(|(what, _)| what)
        .collect()
}

/// Waits until the queue is empty: every task finished.
pub async fn drained(db: &Db, within: Duration) {
    wait_for(within, || async {
        Ok((db.scalar("SELECT count(*) FROM jetpack_tasks", None).await == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("the queue did not drain: {e}"));
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

/// Two workers of 8 slots each in this process.
pub fn two_workers<T: Scheduler>(db: &Db) -> [Running; 2] {
    [(); 2].map(|()| spawn(db.worker::<T>().concurrency(8).build().expect("worker")))
}

/// Runs tasks `ids` to their end on [`two_workers`].
pub async fn run_to_the_end<T: Scheduler>(db: &Db, ids: &[i64]) {
    let workers = two_workers::<T>(db);
    for &id in ids {
        finished(db, id).await;
    }
    for w in workers {
        w.shutdown().await;
    }
}

/// Builds the `worker` example (a no-op when it is up to date) and returns its path.
///
/// With `--workspace`, so that its features are those `cargo test --workspace`
/// builds with: the example is then the one built beside these tests, where a
/// build of this package alone would compile Jetpack a second time with other
/// features (a minute and a half of each crash test on 2 cores).
pub fn worker_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe().expect("test binary path");
    let target = deps
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    // Build the example in the profile these tests were built in (`--release`
    // for the soak), where the path below looks for it.
    let mut args = vec!["build", "-q", "--workspace", "--example", "worker"];
    if target.ends_with("release") {
        args.push("--release");
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(&args)
        .status()
        .expect("run cargo build --example worker");
    assert!(status.success(), "building the worker example failed");
    target.join("examples").join("worker")
}

/// Enqueues `n` orders of the `worker` example's `Order` machine in one statement
/// and creates the `runs` table its steps record into.
pub async fn enqueue_orders(db: &Db, n: i64) {
    enqueue_steps(db, n, "Reserve").await
}

/// Enqueues `n` tasks of the `worker` example, starting at step `step`.
pub async fn enqueue_steps(db: &Db, n: i64, step: &str) {
    db.exec(
        "CREATE TABLE IF NOT EXISTS runs (task_id bigint, step text, attempt int, at_us bigint)",
        None,
        None,
    )
    .await;
    let sql = match db {
        Db::Postgres(_) => {
            "INSERT INTO jetpack_tasks (step)
             SELECT jsonb_build_object('Order', jsonb_build_object($2, jsonb_build_object('order', i)))
             FROM generate_series(1, $1) i"
        }
        Db::Sqlite(_) => {
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $1)
             INSERT INTO jetpack_tasks (step)
             SELECT json_object('Order', json_object($2, json_object('order', i))) FROM s"
        }
    };
    assert_eq!(db.exec(sql, Some(n), Some(step)).await, n as u64);
}

/// Starts a worker process of the `worker` example on `url`.
pub fn start_worker(binary: &std::path::Path, url: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(binary)
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start a worker process")
}

/// (all executions, distinct (task, step) pairs) in the `runs` table.
pub async fn run_counts(db: &Db) -> (i64, i64) {
    let total = db.scalar("SELECT count(*) FROM runs", None).await;
    let distinct = db
        .scalar(
            "SELECT count(*) FROM (SELECT DISTINCT task_id, step FROM runs) d",
            None,
        )
        .await;
    (total, distinct)
}

/// How many (task, step, attempt) triples of `runs` ran more than once: a step
/// may run again after a lost attempt, but never as the same attempt.
pub async fn attempts_run_twice(db: &Db) -> i64 {
    db.scalar(
        "SELECT count(*) FROM (SELECT task_id, step, attempt FROM runs
         GROUP BY task_id, step, attempt HAVING count(*) > 1) d",
        None,
    )
    .await
}

/// Waits for a worker process to exit, failing unless it exits cleanly within
/// `within`; `what` says what the test expected it to do meanwhile.
pub async fn exits_cleanly(worker: &mut tokio::process::Child, within: Duration, what: &str) {
    let status = tokio::time::timeout(within, worker.wait())
        .await
        .unwrap_or_else(|_| panic!("the worker did not exit within {within:?}: {what}"))
        .expect("wait for the worker process");
    assert!(status.success(), "the worker exited with {status}: {what}");
}

/// Log lines written while a [`capture_logs`] guard lives, on this thread
/// (a `#[tokio::test]` runs its spawned tasks on the test's thread).
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the warnings and errors logged on this thread until the guard drops.
pub fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// The value of type `T` shared by the steps and the test that use `key`:
/// steps reach what their test set up (a gate, counters) through a key in
/// their JSON, and tests running in parallel never share one.
pub fn keyed<T: Default + Send + Sync + 'static>(key: u64) -> std::sync::Arc<T> {
    use std::any::{Any, TypeId};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Shared = Arc<dyn Any + Send + Sync>;
    static VALUES: OnceLock<Mutex<HashMap<(TypeId, u64), Shared>>> = OnceLock::new();
    let values = VALUES.get_or_init(Default::default);
    let value = values
        .lock()
        .unwrap()
        .entry((TypeId::of::<T>(), key))
        .or_insert_with(|| Arc::new(T::default()))
        .clone();
    value
        .downcast()
        .expect("keyed values are stored by their type")
}

/// A key no other test uses, for [`keyed`].
pub fn new_key() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Runs `$e` with `$p` the pool of `$db`'s backend.
#[allow(unused_macros)]
macro_rules! on {
    ($db:expr, $p:ident => $e:expr) => {
        match &*$db {
            $crate::common::Db::Postgres($p) => $e,
            $crate::common::Db::Sqlite($p) => $e,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on;
