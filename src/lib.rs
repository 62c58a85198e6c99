//! Shared helpers of Jetpack's examples and integration tests (not published).
//!
//! Tests run against both backends. PostgreSQL tests need a server:
//! `DATABASE_URL` names it, by default `postgres://postgres@127.0.0.1:5432/postgres`.
//! Each test gets a database of its own (a fresh PostgreSQL database, or a fresh
//! SQLite file), removed when the test ends, so tests run in parallel and never
//! see each other's rows.

use std::future::Future;
use std::time::{Duration, Instant};

use jetpack::chrono::{DateTime, Utc};
use jetpack::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use jetpack::sqlx::{self, ConnectOptions, Connection, PgPool, SqlitePool};
use jetpack::{Context, IntoTask, Scheduler, StepError, TaskRow, Worker, WorkerBuilder};

/// The PostgreSQL server the examples and tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| url.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Connects to [`database_url`], with an error that says how to get a server.
pub async fn connect() -> Result<PgPool, Box<dyn std::error::Error>> {
    let url = database_url();
    PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .map_err(|e| unreachable_server(&url, e).into())
}

fn unreachable_server(url: &str, e: sqlx::Error) -> String {
    format!(
        "cannot reach PostgreSQL at {url}: {e}\n\
         Start it (`pg_ctlcluster --skip-systemctl-redirect 15 main start`) or set \
         DATABASE_URL to a server where this user may create databases."
    )
}

/// Polls `check` until it returns `Some`, failing after `deadline`.
pub async fn wait_for<T, F, Fut>(
    deadline: Duration,
    mut check: F,
) -> Result<T, Box<dyn std::error::Error>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            return Err(format!("condition not met within {deadline:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pool of either backend, with the few operations tests need written once.
#[derive(Clone, Debug)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

macro_rules! both {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Postgres($pool) => $body,
            Db::Sqlite($pool) => $body,
        }
    };
}

impl Db {
    /// The pool of the worker running this step.
    pub fn of(cx: &Context<'_>) -> Db {
        match cx.pool::<sqlx::Postgres>() {
            Ok(pool) => Db::Postgres(pool.clone()),
            Err(_) => Db::Sqlite(
                cx.pool::<sqlx::Sqlite>()
                    .expect("a worker runs on PostgreSQL or SQLite")
                    .clone(),
            ),
        }
    }

    /// "postgres" or "sqlite".
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// A worker builder on this database, polling fast.
    pub fn worker<T: Scheduler>(&self) -> WorkerBuilder<T> {
        let builder = both!(self, p => Worker::<T>::builder(p.clone()));
        builder.poll_interval(Duration::from_millis(200))
    }

    /// `jetpack::enqueue`.
    pub async fn enqueue(&self, task: impl IntoTask) -> i64 {
        both!(self, p => jetpack::enqueue(p, task).await).expect("enqueue")
    }

    /// `jetpack::enqueue_many`.
    pub async fn enqueue_many<T: IntoTask>(&self, tasks: impl IntoIterator<Item = T>) -> Vec<i64> {
        both!(self, p => jetpack::enqueue_many(p, tasks).await).expect("enqueue_many")
    }

    /// `Enqueue::run`.
    pub async fn run(&self, e: jetpack::Enqueue) -> Result<jetpack::Enqueued, jetpack::Error> {
        both!(self, p => e.run(p).await)
    }

    /// `jetpack::enqueue_all`.
    pub async fn enqueue_all(
        &self,
        items: Vec<jetpack::Enqueue>,
    ) -> Result<Vec<jetpack::Enqueued>, jetpack::Error> {
        both!(self, p => jetpack::enqueue_all(p, items).await)
    }

    /// `jetpack::delay`.
    pub async fn delay(&self, task: impl IntoTask, delay: Duration) -> Result<i64, jetpack::Error> {
        both!(self, p => jetpack::delay(p, task, delay).await)
    }

    /// `jetpack::schedule`.
    pub async fn schedule(
        &self,
        task: impl IntoTask,
        at: DateTime<Utc>,
    ) -> Result<i64, jetpack::Error> {
        both!(self, p => jetpack::schedule(p, task, at).await)
    }

    /// `jetpack::find`.
    pub async fn find(&self, id: i64) -> Option<TaskRow> {
        both!(self, p => jetpack::find(p, id).await).expect("find")
    }

    /// `jetpack::signal`.
    pub async fn signal(
        &self,
        to: jetpack::SignalTo,
        signal: &impl jetpack::Signal,
    ) -> jetpack::Delivery {
        both!(self, p => jetpack::signal(p, to, signal).await).expect("signal")
    }

    /// `jetpack::history`.
    pub async fn history(&self, id: i64) -> Vec<jetpack::Transition> {
        both!(self, p => jetpack::history(p, id).await).expect("history")
    }

    /// `jetpack::history_at`.
    pub async fn history_at(&self, id: i64, at: DateTime<Utc>) -> Option<jetpack::Transition> {
        both!(self, p => jetpack::history_at(p, id, at).await).expect("history_at")
    }

    /// `jetpack::counts_at`.
    pub async fn counts_at(&self, at: DateTime<Utc>) -> Vec<(String, i64)> {
        both!(self, p => jetpack::counts_at(p, at).await).expect("counts_at")
    }

    /// `jetpack::set_history`.
    pub async fn set_history(&self, on: bool) {
        both!(self, p => jetpack::set_history(p, on).await).expect("set_history")
    }

    /// `jetpack::cancel`.
    pub async fn cancel(&self, id: i64, reason: &str) -> jetpack::Cancel {
        both!(self, p => jetpack::cancel(p, id, reason).await).expect("cancel")
    }

    /// `jetpack::cancel_with_descendants`.
    pub async fn cancel_with_descendants(&self, id: i64, reason: &str) -> jetpack::Cancel {
        both!(self, p => jetpack::cancel_with_descendants(p, id, reason).await)
            .expect("cancel with descendants")
    }

    /// `jetpack::resume`.
    pub async fn resume(&self, id: i64) -> bool {
        both!(self, p => jetpack::resume(p, id).await).expect("resume")
    }

    /// Runs portable SQL with optional `$1` (an id) and `$2` (a text).
    pub async fn exec(&self, sql: &'static str, id: Option<i64>, text: Option<&str>) -> u64 {
        self.try_exec(sql, id, text)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// [`exec`](Self::exec) that returns database errors instead of panicking;
    /// the rows changed.
    pub async fn try_exec(
        &self,
        sql: &'static str,
        id: Option<i64>,
        text: Option<&str>,
    ) -> Result<u64, sqlx::Error> {
        both!(self, p => {
            let mut q = sqlx::query(sql);
            if let Some(id) = id {
                q = q.bind(id);
            }
            if let Some(text) = text {
                q = q.bind(text.to_string());
            }
            Ok(q.execute(p).await?.rows_affected())
        })
    }

    /// Runs portable SQL that returns one integer, with an optional `$1` id.
    pub async fn scalar(&self, sql: &'static str, id: Option<i64>) -> i64 {
        self.try_scalar(sql, id)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs portable SQL that returns one text, or none.
    pub async fn text(&self, sql: &'static str) -> Option<String> {
        both!(self, p => sqlx::query_scalar::<_, String>(sql).fetch_optional(p).await)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// [`scalar`](Self::scalar) that returns database errors instead of panicking.
    pub async fn try_scalar(&self, sql: &'static str, id: Option<i64>) -> Result<i64, sqlx::Error> {
        both!(self, p => {
            let mut q = sqlx::query_scalar::<_, i64>(sql);
            if let Some(id) = id {
                q = q.bind(id);
            }
            q.fetch_one(p).await
        })
    }

    /// Inserts a step document by hand, as a person would; returns the id.
    pub async fn insert_raw(&self, json: &str) -> Result<i64, sqlx::Error> {
        match self {
            Db::Postgres(p) => {
                sqlx::query_scalar(
                    "INSERT INTO jetpack_tasks (step) VALUES ($1::jsonb) RETURNING id",
                )
                .bind(json)
                .fetch_one(p)
                .await
            }
            Db::Sqlite(p) => {
                sqlx::query_scalar("INSERT INTO jetpack_tasks (step) VALUES ($1) RETURNING id")
                    .bind(json)
                    .fetch_one(p)
                    .await
            }
        }
    }

    /// The application tables the test steps use: `runs` (every execution of a
    /// step, in order), `world` and `ledger`.
    pub async fn create_app_tables(&self) {
        let runs = match self {
            Db::Postgres(_) => {
                "CREATE TABLE runs (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 task_id bigint, step text, attempt int, at_us bigint)"
            }
            Db::Sqlite(_) => {
                "CREATE TABLE runs (seq INTEGER PRIMARY KEY, task_id bigint, step text, \
                 attempt int, at_us bigint)"
            }
        };
        for sql in [
            runs,
            "CREATE TABLE spans (task_id bigint, scope text, start_us bigint, end_us bigint)",
            "CREATE TABLE world (key text PRIMARY KEY)",
            "CREATE TABLE ledger (task_id bigint, amount bigint)",
        ] {
            self.exec(sql, None, None).await;
        }
    }

    /// Records an execution of `step` by the running attempt in `runs`.
    pub async fn record_run(&self, cx: &Context<'_>, step: &str) -> Result<(), StepError> {
        let now = Utc::now().timestamp_micros();
        let sql = "INSERT INTO runs (task_id, step, attempt, at_us) VALUES ($1, $2, $3, $4)";
        both!(self, p => sqlx::query(sql)
            .bind(cx.task_id())
            .bind(step)
            .bind(cx.attempt())
            .bind(now)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// The recorded executions of task `id`: (step, attempt), in order.
    pub async fn runs(&self, id: i64) -> Vec<(String, i32)> {
        let sql = "SELECT step, attempt FROM runs WHERE task_id = $1 ORDER BY seq";
        both!(self, p => sqlx::query_as(sql).bind(id).fetch_all(p).await).expect("read runs")
    }

    /// Microseconds between the first and the last recorded run of task `id`.
    pub async fn run_span_us(&self, id: i64) -> i64 {
        self.scalar(
            "SELECT max(at_us) - min(at_us) FROM runs WHERE task_id = $1",
            Some(id),
        )
        .await
    }

    /// The amounts task `id` wrote to the ledger.
    pub async fn ledger(&self, id: i64) -> Vec<i64> {
        let sql = "SELECT amount FROM ledger WHERE task_id = $1";
        both!(self, p => sqlx::query_scalar(sql).bind(id).fetch_all(p).await).expect("read ledger")
    }

    /// Records that task `id` ran under concurrency `scope` from `start_us`
    /// to `end_us` (wall clock) in the `spans` table.
    pub async fn record_span(
        &self,
        id: i64,
        scope: &str,
        start_us: i64,
        end_us: i64,
    ) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO spans (task_id, scope, start_us, end_us) VALUES ($1, $2, $3, $4)";
        both!(self, p => sqlx::query(sql)
            .bind(id)
            .bind(scope)
            .bind(start_us)
            .bind(end_us)
            .execute(p)
            .await
            .map(|_| ()))
    }

    /// Every recorded span: (task id, scope, start µs, end µs).
    pub async fn spans(&self) -> Vec<(i64, String, i64, i64)> {
        let sql = "SELECT task_id, scope, start_us, end_us FROM spans ORDER BY start_us";
        both!(self, p => sqlx::query_as(sql).fetch_all(p).await).expect("read spans")
    }

    /// Whether `key` is in the world table.
    pub async fn world_has(&self, key: &str) -> Result<bool, sqlx::Error> {
        let sql = "SELECT count(*) FROM world WHERE key = $1";
        let n: i64 = both!(self, p => sqlx::query_scalar(sql).bind(key).fetch_one(p).await)?;
        Ok(n > 0)
    }
}

/// Writes to the ledger inside the step's own transaction.
pub async fn ledger_in_tx(cx: &Context<'_>, amount: i64) -> Result<(), StepError> {
    let sql = "INSERT INTO ledger (task_id, amount) VALUES ($1, $2)";
    match Db::of(cx) {
        Db::Postgres(_) => {
            let mut tx = cx.tx::<sqlx::Postgres>().await?;
            sqlx::query(sql)
                .bind(cx.task_id())
                .bind(amount)
                .execute(&mut **tx)
                .await?;
        }
        Db::Sqlite(_) => {
            let mut tx = cx.tx::<sqlx::Sqlite>().await?;
            sqlx::query(sql)
                .bind(cx.task_id())
                .bind(amount)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// A database of one test's own, migrated; removed with the value.
pub struct TestDb {
    /// The pool.
    pub db: Db,
    /// The database's URL, for child processes.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { name: String, admin_url: String },
    Sqlite { dir: std::path::PathBuf },
}

impl std::ops::Deref for TestDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

impl TestDb {
    /// Creates and migrates a fresh PostgreSQL database. Panics with instructions
    /// when no server is reachable: tests never skip silently.
    pub async fn postgres() -> TestDb {
        let admin_url = database_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable_server(&admin_url, e)));
        let name = format!("jetpack_test_{}", unique());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let options: PgConnectOptions = admin_url.parse().expect("DATABASE_URL is a valid URL");
        let options = options.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        jetpack::migrate(&pool)
            .await
            .expect("migrate the test database");
        TestDb {
            db: Db::Postgres(pool),
            url,
            cleanup: Cleanup::Postgres { name, admin_url },
        }
    }

    /// Creates and migrates a fresh SQLite file in a temporary folder.
    pub async fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("jetpack_test_{}", unique()));
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        let url = format!("sqlite://{}", dir.join("test.db").display());
        let pool = jetpack::sqlite::connect(&url)
            .await
            .expect("open the SQLite file");
        jetpack::migrate(&pool)
            .await
            .expect("migrate the test database");
        TestDb {
            db: Db::Sqlite(pool),
            url,
            cleanup: Cleanup::Sqlite { dir },
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { name, admin_url } => {
                // The pool's connections belong to the test's runtime, which this
                // blocks, so they are not closed politely: FORCE ends them.
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = run_sql_blocking(admin_url, vec![drop]);
            }
        }
    }
}

/// Runs `statements` on a connection of its own, from a thread of its own: for
/// `Drop` impls, which may run inside a runtime or while unwinding.
pub fn run_sql_blocking(url: &str, statements: Vec<String>) -> Result<(), String> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            for sql in statements {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await?;
            }
            conn.close().await
        })
        .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the cleanup thread panicked".to_string())?
}

/// A name part unique to this process and call.
fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The machines the README's snippets use, so that each snippet compiles (the
/// README is a doctest of this crate: see [`ReadmeDoctests`]) with one hidden
/// line, `# use jetpack_suite::readme::*;`, instead of its whole context.
pub mod readme {
    use std::time::Duration;

    use jetpack::{Context, NextStep, Step, StepResult};
    use serde::{Deserialize, Serialize};

    /// Reads a name from a file.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct ReadName {
        /// The file.
        pub filename: String,
    }

    /// Says hello.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct SayHello {
        /// Whom to greet.
        pub name: String,
    }

    jetpack::task!(pub Greeter { ReadName => [SayHello], SayHello });

    #[jetpack::async_trait]
    impl Step<Greeter> for ReadName {
        const RETRY_LIMIT: i32 = 3;
        const RETRY_DELAY: Duration = Duration::from_millis(100);

        async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
            let name = std::fs::read_to_string(&self.filename)?;
            NextStep::now(SayHello { name })
        }
    }

    #[jetpack::async_trait]
    impl Step<Greeter> for SayHello {
        async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
            tracing::info!("Hello, {}!", self.name);
            NextStep::none()
        }
    }

    /// Charges an account.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Charge {
        /// The account.
        pub account: i64,
        /// The amount, in cents.
        pub amount: i64,
    }

    /// Tells the account's owner.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Notify {
        /// The account.
        pub account: i64,
    }

    jetpack::task!(pub Billing { Charge => [Notify], Notify });

    #[jetpack::async_trait]
    impl Step<Billing> for Charge {
        async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
            NextStep::now(Notify {
                account: self.account,
            })
        }
    }

    #[jetpack::async_trait]
    impl Step<Billing> for Notify {
        async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
            NextStep::none()
        }
    }

    jetpack::scheduler!(pub Tasks { Greeter, Billing });
}

/// Every `rust` block of the README, compiled (and run, unless `no_run`) by
/// `cargo test --doc`, so that the README cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The most spans of `spans` (start, end) that overlap at any instant, and
/// their mean overlap over the time from the first start to the last end.
pub fn overlap(spans: &[(i64, i64)]) -> (usize, f64) {
    let mut events: Vec<(i64, i32)> = spans
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // An end before a start at the same instant: touching spans do not overlap.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        most = most.max(now);
    }
    let busy: i64 = spans.iter().map(|&(start, end)| end - start).sum();
    let first = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let last = spans.iter().map(|s| s.1).max().unwrap_or(0);
    let mean = if last > first {
        busy as f64 / (last - first) as f64
    } else {
        0.0
    };
    (usize::try_from(most).unwrap_or(0), mean)
}

/// The most of `starts` (µs) that fall within any window of `window_us`
/// (`[start, start + window)`).
pub fn most_in_window(starts: &[i64], window_us: i64) -> usize {
    let mut sorted = starts.to_vec();
    sorted.sort_unstable();
    let mut most = 0;
    let mut first = 0;
    for (last, &t) in sorted.iter().enumerate() {
        while sorted[first] + window_us <= t {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}
