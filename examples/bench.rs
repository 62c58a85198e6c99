//! Benchmark: Jetpack beside the raw-SQL limit, measured in the same run on the
//! same database. Every figure is printed with its ratio to a raw reference.
//!
//! ```text
//! cargo run --release --example bench -- [--backend postgres|sqlite|both] [--runs N]
//!     [--scenario 1,2,…] [--json FILE]
//! ```
//! `BENCH_KEEP=1` runs the drains with `keep_finished` (finished rows kept, not deleted);
//! `BENCH_HISTORY=off` runs everything with the history switched off.
//! PostgreSQL comes from `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`;
//! the bench creates and drops a database of its own); SQLite uses a temporary file.
//!
//! Scenarios (medians over `--runs`, default 3):
//! 1. enqueue one at a time            vs raw single-row INSERT (PostgreSQL: on a table with
//!    a NOTIFY statement trigger, as Jetpack's has)
//! 2. enqueue_many of 10,000           vs raw INSERT … SELECT FROM UNNEST / json_each
//!    RETURNING id; and with the history off, in the same run
//! 3. drain 10,000 no-op tasks, 1 worker vs raw loops on one connection, 100 tasks at a
//!    time, each right after Jetpack's drain on the same database: the fastest form (one
//!    statement deletes what it locks), the common shape (claim with SKIP LOCKED, then
//!    delete, one transaction; PostgreSQL), and one with Jetpack's guarantee that a task
//!    outlives its worker (a lease committed first, then the delete); tuned, each side at
//!    its better batch of two (Jetpack 200 or 500, the raw delete 100 or 500); and with the
//!    history off, in the same run
//! 4. 2,000 three-step chains, 1 worker (steps/s) vs scenario 3, and vs a raw chain (a batch
//!    of 100 a transaction: claim, one UPDATE moving the rows at A or B on, delete those at C)
//! 5. two worker processes draining 10,000 (and 50,000) vs one process
//! 6. pickup latency into an idle worker, from the enqueue call vs a raw INSERT + NOTIFY round
//!    trip (PostgreSQL), and from the commit (the enqueue's return) vs a raw LISTEN loop
//!    (PostgreSQL: a listener that, woken by the insert's notification, leases the row with
//!    the raw loop's lease statement; from the insert's return to the lease's)
//! 7. cost per step vs the raw loop: statements; on PostgreSQL also write transactions,
//!    WAL bytes (also vs the raw loop with Jetpack's guarantee, lease then delete), server
//!    and client CPU, dead tuples after the drain; on SQLite the
//!    process's CPU (the database included)
//! 8. signal round trip into an idle worker: from the `jetpack::signal` call to the start
//!    of the step that receives it, vs scenario 6's pickup from the enqueue call (measured
//!    in the same run)
//! 9. a parent with 10,000 children: from the enqueue of the parent to the end of its
//!    join step, which reads every child's result (children/s), vs scenario 3's drain of
//!    10,000 independent tasks
//! 10. enqueue one at a time with a unique key, half of them taken (`Enqueue::unique_key`,
//!     one transaction each) vs `enqueue` one at a time without, alternated in blocks
//! 11. 800 steps of 20 ms limited to 8 at once (`Step::CONCURRENCY`), two workers of 16
//!     slots: steps/s vs the limit's ideal, 8 / 20 ms (the ratio is how close to 8 at once)
//! 12. 600 steps under a rate of 200 a second (`Step::RATE`, a burst of 10), two workers
//!     of 16 slots: steps/s vs the rate (how close to it the workers keep)
//! 13. (only when named: `--scenario 3,13`) the drain of a backlog of 1,000,000 no-op
//!     tasks, 1 worker, vs scenario 3's drain of 10,000

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jetpack::sqlx::{self, PgPool};
use jetpack::{Context, NextStep, Signal, SignalTo, Step, StepResult, Wait};

/// Spawns `n` children and joins them.
#[derive(Debug, Serialize, Deserialize)]
struct FanOut {
    n: u32,
}
/// Reads every child's result.
#[derive(Debug, Serialize, Deserialize)]
struct Joined {
    n: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct Kid {
    i: u32,
}
use jetpack_suite::{Db, TestDb};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct One {
    n: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct A {
    n: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct B {
    n: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct C {
    n: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    sent_us: i64,
}

/// Waits for `Go`; `Woken` measures the round trip.
#[derive(Debug, Serialize, Deserialize)]
struct Await;
#[derive(Debug, Serialize, Deserialize)]
struct Woken;
#[derive(Debug, Serialize, Deserialize)]
struct Go {
    sent_us: i64,
}
impl Signal for Go {
    const NAME: &'static str = "go";
}

jetpack::task!(Bench { One, A => [B], B => [C], C, Probe });
jetpack::task!(Signals { Await => [wait Woken], Woken });
jetpack::task!(Fan { FanOut => [join Joined], Joined });
jetpack::task!(Kids -> u32 { Kid });
jetpack::task!(Limited { Slow });
jetpack::task!(Rated { Quick });
jetpack::scheduler!(Tasks {
    Bench,
    Signals,
    Fan,
    Kids
});
// Scenario 11's and 12's workers run the limited steps alone, so that the others' drains
// measure the claims of steps without limits.
jetpack::scheduler!(LimitedTasks { Limited, Rated });

static DONE: AtomicUsize = AtomicUsize::new(0);
static LATENCIES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
/// When the last probe step started (µs on the bench's clock).
static STARTED_US: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
/// Scenario 11's step: 20 ms of waiting (a call), 8 at once at most.
#[derive(Debug, Serialize, Deserialize)]
struct Slow;

/// Scenario 11's limit and step time.
const SLOW_LIMIT: u32 = 8;
const SLOW_MS: u64 = 20;

#[jetpack::async_trait]
impl Step<Limited> for Slow {
    const CONCURRENCY: Option<u32> = Some(SLOW_LIMIT);
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        tokio::time::sleep(Duration::from_millis(SLOW_MS)).await;
        NextStep::none()
    }
}

/// Scenario 12's step: nothing, 200 a second at most.
#[derive(Debug, Serialize, Deserialize)]
struct Quick;

/// Scenario 12's rate.
const QUICK_RATE: jetpack::Rate = jetpack::Rate::per_second(200).burst(10);

#[jetpack::async_trait]
impl Step<Rated> for Quick {
    const RATE: Option<jetpack::Rate> = Some(QUICK_RATE);
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

/// Scenarios 11 and 12: steps/s of `tasks`, all of limited steps, drained by
/// two workers.
async fn limited<T: jetpack::IntoTask>(
    db: &Db,
    tasks: impl ExactSizeIterator<Item = T>,
) -> Result<f64, Error> {
    let n = tasks.len() as f64;
    db.enqueue_many(tasks).await;
    let workers: Vec<_> = (0..2)
        .map(|_| db.worker::<LimitedTasks>().concurrency(16).build())
        .collect::<Result<_, _>>()?;
    let stops: Vec<_> = workers.iter().map(|w| w.shutdown_token()).collect();
    let t = Instant::now();
    let running: Vec<_> = workers.into_iter().map(|w| tokio::spawn(w.run())).collect();
    wait_empty(db).await?;
    let rate = n / t.elapsed().as_secs_f64();
    for stop in stops {
        stop.cancel();
    }
    for r in running {
        r.await??;
    }
    Ok(rate)
}

/// Set by scenario 9's join step.
static JOINED: AtomicBool = AtomicBool::new(false);
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_us() -> i64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as i64
}

/// The time from `from` to `to` (µs of [`now_us`]); zero if `to` came first.
fn elapsed_us(from: i64, to: i64) -> Duration {
    Duration::from_micros(u64::try_from(to - from).unwrap_or(0))
}

#[jetpack::async_trait]
impl Step<Bench> for One {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        DONE.fetch_add(1, Ordering::Relaxed);
        NextStep::none()
    }
}
#[jetpack::async_trait]
impl Step<Bench> for A {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        DONE.fetch_add(1, Ordering::Relaxed);
        NextStep::now(B { n: self.n })
    }
}
#[jetpack::async_trait]
impl Step<Bench> for B {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        DONE.fetch_add(1, Ordering::Relaxed);
        NextStep::now(C { n: self.n })
    }
}
#[jetpack::async_trait]
impl Step<Bench> for C {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        DONE.fetch_add(1, Ordering::Relaxed);
        NextStep::none()
    }
}
#[jetpack::async_trait]
impl Step<Bench> for Probe {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        let started = now_us();
        let latency = elapsed_us(self.sent_us, started);
        LATENCIES.lock().unwrap().push(latency);
        STARTED_US.store(started, Ordering::Relaxed);
        DONE.fetch_add(1, Ordering::Relaxed);
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Signals> for Await {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::wait(Woken, Wait::signal::<Go>())
    }
}
#[jetpack::async_trait]
impl Step<Signals> for Woken {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let started = now_us();
        if let Some(go) = cx.signal::<Go>()? {
            LATENCIES
                .lock()
                .unwrap()
                .push(elapsed_us(go.sent_us, started));
        }
        DONE.fetch_add(1, Ordering::Relaxed);
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Fan> for FanOut {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        cx.spawn_all((0..self.n).map(|i| Kid { i })).await?;
        NextStep::join(Joined { n: self.n })
    }
}
#[jetpack::async_trait]
impl Step<Fan> for Joined {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let results = cx.results::<Kids>().await?;
        let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
        if ok != self.n as usize {
            return Err(format!("{ok} of {} children finished", self.n).into());
        }
        JOINED.store(true, Ordering::Relaxed);
        NextStep::none()
    }
}
#[jetpack::async_trait]
impl Step<Kids> for Kid {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::finish(self.i)
    }
}

/// Scenario 9: children per second from the enqueue of a parent of `n`
/// children to the end of its join step.
async fn fan_out(db: &Db, n: u32) -> Result<f64, Error> {
    JOINED.store(false, Ordering::Relaxed);
    let worker = db.worker::<Tasks>().build()?;
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());
    warm_pool(db).await?;
    let t = Instant::now();
    db.enqueue(FanOut { n }).await;
    while !JOINED.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = f64::from(n) / t.elapsed().as_secs_f64();
    stop.cancel();
    running.await??;
    Ok(rate)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Serialize)]
struct Row {
    backend: &'static str,
    scenario: &'static str,
    unit: &'static str,
    jetpack: f64,
    reference: f64,
    reference_name: &'static str,
    /// jetpack / reference, oriented so that higher is better for jetpack.
    ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A fresh, migrated database for one measurement, with the raw reference's
/// table beside Jetpack's; dropped with the value.
async fn fresh(backend: &str) -> Result<TestDb, Error> {
    let f = if backend == "postgres" {
        TestDb::postgres().await
    } else {
        TestDb::sqlite().await
    };
    let (table, index) = match &f.db {
        Db::Postgres(_) => (
            "CREATE TABLE raw_tasks (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
             step jsonb NOT NULL, wakeup_at timestamptz NOT NULL DEFAULT now(), \
             lease_until timestamptz)",
            "CREATE INDEX raw_ready ON raw_tasks (wakeup_at)",
        ),
        Db::Sqlite(_) => (
            "CREATE TABLE raw_tasks (id INTEGER PRIMARY KEY, step TEXT NOT NULL, \
             wakeup_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')), \
             lease_until TEXT)",
            "CREATE INDEX raw_ready ON raw_tasks (wakeup_at)",
        ),
    };
    f.exec(table, None, None).await;
    f.exec(index, None, None).await;
    for sql in raw_chain_schema(&f.db) {
        f.exec(sql, None, None).await;
    }
    if let Db::Postgres(_) = &f.db {
        // An insert wakes listeners, as Jetpack's table's statement trigger does.
        f.exec(
            "CREATE FUNCTION raw_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('raw', ''); RETURN NULL; END $$",
            None,
            None,
        )
        .await;
        f.exec(
            "CREATE TRIGGER raw_inserted AFTER INSERT ON raw_tasks
             FOR EACH STATEMENT EXECUTE FUNCTION raw_notify()",
            None,
            None,
        )
        .await;
    }
    if std::env::var("BENCH_HISTORY").is_ok_and(|v| v == "off") {
        f.set_history(false).await;
    }
    Ok(f)
}

const PAYLOAD: &str = r#"{"Bench":{"One":{"n":1}}}"#;

/// Scenario 1: rows/s of single enqueues, and of raw single-row inserts.
async fn single_inserts(db: &Db, n: u32) -> Result<(f64, f64), Error> {
    // In alternating blocks, so that a drift of the machine's speed during the
    // run weighs on both sides alike.
    const BLOCK: u32 = 100;
    let (mut jet, mut raw) = (Duration::ZERO, Duration::ZERO);
    for block in 0..n.div_ceil(BLOCK) {
        let rows = BLOCK.min(n - block * BLOCK);
        let t = Instant::now();
        for i in 0..rows {
            db.enqueue(One { n: i }).await;
        }
        jet += t.elapsed();
        let t = Instant::now();
        for _ in 0..rows {
            match db {
                Db::Postgres(p) => {
                    sqlx::query(
                        "INSERT INTO raw_tasks (step) VALUES ($1::text::jsonb) RETURNING id",
                    )
                    .bind(PAYLOAD)
                    .fetch_one(p)
                    .await?;
                }
                Db::Sqlite(p) => {
                    sqlx::query("INSERT INTO raw_tasks (step) VALUES ($1) RETURNING id")
                        .bind(PAYLOAD)
                        .fetch_one(p)
                        .await?;
                }
            }
        }
        raw += t.elapsed();
    }
    Ok((n as f64 / jet.as_secs_f64(), n as f64 / raw.as_secs_f64()))
}

/// Scenario 10: rows/s of keyed enqueues, one at a time (the second half finds
/// the keys of the first taken), and of plain enqueues, in alternating blocks.
async fn keyed_inserts(db: &Db, n: u32) -> Result<(f64, f64), Error> {
    const BLOCK: u32 = 100;
    let (mut keyed, mut plain) = (Duration::ZERO, Duration::ZERO);
    let mut created = 0;
    for block in 0..n.div_ceil(BLOCK) {
        let rows = BLOCK.min(n - block * BLOCK);
        let t = Instant::now();
        for i in block * BLOCK..block * BLOCK + rows {
            let key = format!("key-{}", i % (n / 2));
            let e = jetpack::Enqueue::new(One { n: i }).unique_key(key);
            created += usize::from(db.run(e).await?.is_created());
        }
        keyed += t.elapsed();
        let t = Instant::now();
        for i in 0..rows {
            db.enqueue(One { n: i }).await;
        }
        plain += t.elapsed();
    }
    assert_eq!(created, (n / 2) as usize, "half the keys were taken");
    Ok((
        n as f64 / keyed.as_secs_f64(),
        n as f64 / plain.as_secs_f64(),
    ))
}

/// The raw reference's batch insert of `steps`.
async fn raw_insert_many(db: &Db, steps: &[String]) -> Result<(), Error> {
    match db {
        Db::Postgres(p) => {
            let ids: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO raw_tasks (step) SELECT s::jsonb FROM unnest($1::text[]) s RETURNING id",
            )
            .bind(steps)
            .fetch_all(p)
            .await?;
            assert_eq!(ids.len(), steps.len());
        }
        Db::Sqlite(p) => {
            let ids: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO raw_tasks (step) SELECT value FROM json_each($1) RETURNING id",
            )
            .bind(format!("[{}]", steps.join(",")))
            .fetch_all(p)
            .await?;
            assert_eq!(ids.len(), steps.len());
        }
    }
    Ok(())
}

/// Scenario 2: rows/s of one enqueue_many, and of the raw batch insert. Both
/// start from the same numbers: the raw insert writes its JSON by hand inside
/// the timer, as Jetpack serialises its steps inside it.
async fn batch_insert(db: &Db, n: u32) -> Result<(f64, f64), Error> {
    let t = Instant::now();
    db.enqueue_many((0..n).map(|i| One { n: i })).await;
    let jet = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let steps: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"Bench":{{"One":{{"n":{i}}}}}}}"#))
        .collect();
    raw_insert_many(db, &steps).await?;
    Ok((jet, n as f64 / t.elapsed().as_secs_f64()))
}

/// 1 while any task is left, else 0. Cheap however many are left: the drains
/// poll it every few milliseconds, and a `count(*)` over the queue cost the
/// server enough to weigh on the measurement (twice as much with two processes).
const ANY_LEFT: &str =
    "SELECT count(*) FROM (SELECT 1 FROM jetpack_tasks WHERE state <> 'finished' LIMIT 1) AS one";

async fn wait_empty(db: &Db) -> Result<(), Error> {
    while {
        OWN.fetch_add(1, Ordering::Relaxed);
        db.try_scalar(ANY_LEFT, None).await? > 0
    } {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Counts the statements sqlx sends (its `sqlx::query` events) while `COUNTING`
/// is set; at other times its filter disables the event and sqlx does no work
/// for it.
struct Statements;

static COUNTING: AtomicBool = AtomicBool::new(false);
static STATEMENTS: AtomicUsize = AtomicUsize::new(0);
/// Statements the bench itself sent while counting (its polls), to subtract.
static OWN: AtomicUsize = AtomicUsize::new(0);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Statements {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Statements per step of `run` (draining `steps`), the bench's own left out.
async fn statements_per_step<T, F: std::future::Future<Output = Result<T, Error>>>(
    steps: usize,
    run: F,
) -> Result<f64, Error> {
    STATEMENTS.store(0, Ordering::Relaxed);
    OWN.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let done = run.await;
    COUNTING.store(false, Ordering::Relaxed);
    done?;
    let sent = STATEMENTS.load(Ordering::Relaxed) - OWN.load(Ordering::Relaxed);
    Ok(sent as f64 / steps as f64)
}

/// With `BENCH_PERF_CTL=<fifo>`, switches a `perf record --control fifo:<fifo>
/// -D -1` on and off around the drains, to profile them alone.
fn perf_control(command: &str) {
    if let Ok(fifo) = std::env::var("BENCH_PERF_CTL") {
        let _ = std::fs::write(fifo, format!("{command}\n"));
    }
}

/// Opens the pool's connections before a timed drain, as a worker that has
/// been running a while has them: the raw loop runs on a connection already
/// open, and a new connection costs milliseconds on PostgreSQL (a forked
/// backend) and a thread on SQLite. The worker's LISTEN connection is still
/// opened inside the timer.
async fn warm_pool(db: &Db) -> Result<(), Error> {
    async fn hold<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.acquire().await?);
        }
        Ok(())
    }
    match db {
        Db::Postgres(p) => hold(p).await,
        Db::Sqlite(p) => hold(p).await,
    }
}

/// A timed drain: steps/s, and CPU µs per step of the whole bench process (on
/// SQLite that includes the database); on PostgreSQL, Jetpack's, the counters
/// read as it ended, while the worker's own connections were still open.
struct Drained {
    rate: f64,
    cpu_us: f64,
    counters: Option<Counters>,
}

/// CPU time (ns) of this process's live threads. Read while the threads of a
/// drain are alive: the worker's SQLite connection thread ends with it.
fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| t.ok())
                .map(|t| cpu_ns(&t.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Runs one worker until `steps` steps ran and the table is empty.
async fn drain(db: &Db, steps: usize) -> Result<Drained, Error> {
    let batch = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .map(|n| n.parse())
        .transpose()?;
    drain_by(db, steps, batch).await
}

/// [`drain`] by a worker of `batch` slots claiming `batch` at a time (its
/// defaults when `None`).
async fn drain_by(db: &Db, steps: usize, batch: Option<usize>) -> Result<Drained, Error> {
    DONE.store(0, Ordering::Relaxed);
    let mut builder = db.worker::<Tasks>();
    if let Some(n) = batch {
        builder = builder.concurrency(n).batch_size(n);
    }
    if std::env::var_os("BENCH_KEEP").is_some() {
        builder = builder.keep_finished(Duration::from_secs(3600));
    }
    let worker = builder.build()?;
    let stop = worker.shutdown_token();
    warm_pool(db).await?;
    perf_control("enable");
    let cpu = process_cpu_ns();
    let t = Instant::now();
    let running = tokio::spawn(worker.run());
    while DONE.load(Ordering::Relaxed) < steps {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_empty(db).await?;
    let rate = steps as f64 / t.elapsed().as_secs_f64();
    let cpu_us = process_cpu_ns().saturating_sub(cpu) as f64 / 1000.0 / steps as f64;
    perf_control("disable");
    let counters = match db {
        Db::Postgres(p) => Some(pg_counters(p).await?),
        Db::Sqlite(_) => None,
    };
    stop.cancel();
    running.await??;
    Ok(Drained {
        rate,
        cpu_us,
        counters,
    })
}

/// A raw reference loop for the drain (scenario 3), each taking 100 tasks at a
/// time on one connection, as Jetpack's worker writes on one.
#[derive(Clone, Copy, PartialEq)]
enum Raw {
    /// The fastest: one statement deletes what it locks (PostgreSQL:
    /// `DELETE … WHERE id = ANY(ARRAY(SELECT … FOR UPDATE SKIP LOCKED))`;
    /// SQLite: `DELETE … RETURNING`).
    Delete,
    /// PostgreSQL: claim with `SELECT … FOR UPDATE SKIP LOCKED`, delete by id,
    /// in one transaction (the shape most queues have).
    ClaimThenDelete,
    /// With Jetpack's guarantee that a task outlives a crash of its worker: a
    /// lease committed on its own, then the delete, in a second commit.
    LeaseThenDelete,
}

impl Raw {
    fn scenario(self) -> &'static str {
        match self {
            Raw::Delete => "3 drain 10,000 no-op, 1 worker",
            Raw::ClaimThenDelete => "3 drain, vs the common shape",
            Raw::LeaseThenDelete => "3 drain, vs Jetpack's guarantee",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Raw::Delete => "raw one-statement delete",
            Raw::ClaimThenDelete => "raw claim + delete, one tx",
            Raw::LeaseThenDelete => "raw lease, then delete",
        }
    }
}

const RAW_DELETE_PG: &str = "DELETE FROM raw_tasks WHERE id = ANY(ARRAY(
    SELECT id FROM raw_tasks WHERE wakeup_at <= now() ORDER BY wakeup_at LIMIT 100
    FOR UPDATE SKIP LOCKED)) RETURNING id";
const RAW_CLAIM_PG: &str = "SELECT id FROM raw_tasks WHERE wakeup_at <= now()
    ORDER BY wakeup_at LIMIT 100 FOR UPDATE SKIP LOCKED";
const RAW_LEASE_PG: &str = "UPDATE raw_tasks SET lease_until = now() + interval '30 seconds'
    WHERE id = ANY(ARRAY(SELECT id FROM raw_tasks
        WHERE wakeup_at <= now() AND (lease_until IS NULL OR lease_until <= now())
        ORDER BY wakeup_at LIMIT 100 FOR UPDATE SKIP LOCKED)) RETURNING id";
const RAW_DELETE_LITE: &str = "DELETE FROM raw_tasks WHERE id IN (SELECT id FROM raw_tasks
    WHERE wakeup_at <= strftime('%Y-%m-%d %H:%M:%f', 'now') ORDER BY wakeup_at LIMIT 100)
    RETURNING id";
const RAW_LEASE_LITE: &str = "UPDATE raw_tasks
    SET lease_until = strftime('%Y-%m-%d %H:%M:%f', 'now', '30 seconds')
    WHERE id IN (SELECT id FROM raw_tasks
        WHERE wakeup_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
          AND (lease_until IS NULL OR lease_until <= strftime('%Y-%m-%d %H:%M:%f', 'now'))
        ORDER BY wakeup_at LIMIT 100) RETURNING id";

/// A raw reference drain of `n` tasks; rows/s.
async fn raw_drain(db: &Db, n: usize, how: Raw) -> Result<Drained, Error> {
    raw_drain_by(db, n, how, 100).await
}

/// [`raw_drain`] taking `batch` tasks at a time.
async fn raw_drain_by(db: &Db, n: usize, how: Raw, batch: usize) -> Result<Drained, Error> {
    let limit =
        |sql: &str| sqlx::AssertSqlSafe(sql.replace("LIMIT 100", &format!("LIMIT {batch}")));
    // One connection, opened before the timer, for the whole loop.
    enum Conn {
        Pg(sqlx::pool::PoolConnection<sqlx::Postgres>),
        Lite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    }
    let mut conn = match db {
        Db::Postgres(p) => Conn::Pg(p.acquire().await?),
        Db::Sqlite(p) => Conn::Lite(p.acquire().await?),
    };
    let cpu = process_cpu_ns();
    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let ids: Vec<i64> = match (&mut conn, how) {
            (Conn::Pg(c), Raw::Delete) => {
                sqlx::query_scalar(limit(RAW_DELETE_PG))
                    .fetch_all(&mut **c)
                    .await?
            }
            (Conn::Pg(c), Raw::ClaimThenDelete) => {
                use sqlx::Connection;
                let mut tx = c.begin().await?;
                let ids: Vec<i64> = sqlx::query_scalar(limit(RAW_CLAIM_PG))
                    .fetch_all(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM raw_tasks WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                ids
            }
            (Conn::Pg(c), Raw::LeaseThenDelete) => {
                let ids: Vec<i64> = sqlx::query_scalar(limit(RAW_LEASE_PG))
                    .fetch_all(&mut **c)
                    .await?;
                sqlx::query("DELETE FROM raw_tasks WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut **c)
                    .await?;
                ids
            }
            (Conn::Lite(c), Raw::LeaseThenDelete) => {
                let ids: Vec<i64> = sqlx::query_scalar(limit(RAW_LEASE_LITE))
                    .fetch_all(&mut **c)
                    .await?;
                let list = format!(
                    "[{}]",
                    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
                );
                sqlx::query("DELETE FROM raw_tasks WHERE id IN (SELECT value FROM json_each(?1))")
                    .bind(list)
                    .execute(&mut **c)
                    .await?;
                ids
            }
            (Conn::Lite(c), _) => {
                sqlx::query_scalar(limit(RAW_DELETE_LITE))
                    .fetch_all(&mut **c)
                    .await?
            }
        };
        if ids.is_empty() {
            break;
        }
        left -= ids.len().min(left);
    }
    Ok(Drained {
        rate: n as f64 / t.elapsed().as_secs_f64(),
        cpu_us: process_cpu_ns().saturating_sub(cpu) as f64 / 1000.0 / n as f64,
        counters: None,
    })
}

/// The raw loops of scenario 3 on `backend`, the reference of the table first.
fn raw_loops(backend: &str) -> &'static [Raw] {
    if backend == "postgres" {
        &[Raw::Delete, Raw::ClaimThenDelete, Raw::LeaseThenDelete]
    } else {
        &[Raw::Delete, Raw::LeaseThenDelete]
    }
}

/// The raw chain's table (scenario 4): a task moves A → B → C by `stage`.
fn raw_chain_schema(db: &Db) -> [&'static str; 2] {
    match db {
        Db::Postgres(_) => [
            "CREATE TABLE raw_chain (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
             stage smallint NOT NULL DEFAULT 0, step jsonb NOT NULL, \
             wakeup_at timestamptz NOT NULL DEFAULT now())",
            "CREATE INDEX raw_chain_ready ON raw_chain (wakeup_at)",
        ],
        Db::Sqlite(_) => [
            "CREATE TABLE raw_chain (id INTEGER PRIMARY KEY, stage INTEGER NOT NULL DEFAULT 0, \
             step TEXT NOT NULL, \
             wakeup_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))",
            "CREATE INDEX raw_chain_ready ON raw_chain (wakeup_at)",
        ],
    }
}

/// The step a raw chain's task moves to from `stage` (A, then B), as JSON.
fn raw_next_step(stage: i64, n: i64) -> String {
    let to = if stage == 0 { "B" } else { "C" };
    format!(r#"{{"Bench":{{"{to}":{{"n":{n}}}}}}}"#)
}

/// Scenario 4's reference: `n` three-step chains, on one connection, a batch
/// of 100 at a time in one transaction each: claim (PostgreSQL: `FOR UPDATE
/// SKIP LOCKED`; SQLite: under `BEGIN IMMEDIATE`), move the rows at A or B to
/// their next step with one `UPDATE`, delete the rows at C; steps/s.
async fn raw_chains(db: &Db, n: u32) -> Result<f64, Error> {
    use sqlx::Connection;
    let steps: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"Bench":{{"A":{{"n":{i}}}}}}}"#))
        .collect();
    let steps_done = 3 * n as usize;
    let mut done = 0;
    match db {
        Db::Postgres(p) => {
            sqlx::query("INSERT INTO raw_chain (step) SELECT s::jsonb FROM unnest($1::text[]) s")
                .bind(&steps)
                .execute(p)
                .await?;
            sqlx::query("ANALYZE raw_chain").execute(p).await?;
            let mut c = p.acquire().await?;
            let t = Instant::now();
            while done < steps_done {
                let mut tx = c.begin().await?;
                let claimed: Vec<(i64, i16)> = sqlx::query_as(
                    "SELECT id, stage FROM raw_chain WHERE wakeup_at <= now()
                     ORDER BY wakeup_at LIMIT 100 FOR UPDATE SKIP LOCKED",
                )
                .fetch_all(&mut *tx)
                .await?;
                let (mut ids, mut next, mut gone) = (vec![], vec![], vec![]);
                for &(id, stage) in &claimed {
                    if stage < 2 {
                        ids.push(id);
                        next.push(raw_next_step(stage.into(), id));
                    } else {
                        gone.push(id);
                    }
                }
                sqlx::query(
                    "UPDATE raw_chain r SET stage = r.stage + 1, step = u.step::jsonb
                     FROM unnest($1::bigint[], $2::text[]) AS u(id, step) WHERE r.id = u.id",
                )
                .bind(&ids)
                .bind(&next)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM raw_chain WHERE id = ANY($1)")
                    .bind(&gone)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                if claimed.is_empty() {
                    break;
                }
                done += claimed.len();
            }
            Ok(done as f64 / t.elapsed().as_secs_f64())
        }
        Db::Sqlite(p) => {
            sqlx::query("INSERT INTO raw_chain (step) SELECT value FROM json_each($1)")
                .bind(format!("[{}]", steps.join(",")))
                .execute(p)
                .await?;
            let mut c = p.acquire().await?;
            let t = Instant::now();
            while done < steps_done {
                let mut tx = c.begin_with("BEGIN IMMEDIATE").await?;
                let claimed: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT id, stage FROM raw_chain
                     WHERE wakeup_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
                     ORDER BY wakeup_at LIMIT 100",
                )
                .fetch_all(&mut *tx)
                .await?;
                let (mut moves, mut gone) = (vec![], vec![]);
                for &(id, stage) in &claimed {
                    if stage < 2 {
                        moves.push(format!("[{id},{}]", raw_next_step(stage, id)));
                    } else {
                        gone.push(id.to_string());
                    }
                }
                sqlx::query(
                    "UPDATE raw_chain SET stage = stage + 1, step = json(m.value -> 1)
                     FROM json_each(?1) AS m WHERE raw_chain.id = m.value ->> 0",
                )
                .bind(format!("[{}]", moves.join(",")))
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM raw_chain WHERE id IN (SELECT value FROM json_each(?1))")
                    .bind(format!("[{}]", gone.join(",")))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                if claimed.is_empty() {
                    break;
                }
                done += claimed.len();
            }
            Ok(done as f64 / t.elapsed().as_secs_f64())
        }
    }
}

/// Fills the raw reference's table with `n` tasks for its drain.
async fn fill_raw(db: &Db, n: u32) -> Result<(), Error> {
    let steps: Vec<String> = (0..n).map(|_| PAYLOAD.to_string()).collect();
    raw_insert_many(db, &steps).await?;
    if let Db::Postgres(p) = db {
        sqlx::query("ANALYZE raw_tasks").execute(p).await?;
    }
    Ok(())
}

async fn analyze(db: &Db) -> Result<(), Error> {
    if let Db::Postgres(p) = db {
        sqlx::query("ANALYZE jetpack_tasks").execute(p).await?;
    }
    Ok(())
}

/// CPU time (ns) a process or thread has used, from `/proc/<id>/schedstat`.
fn cpu_ns(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The counters the cost of a drain is read from.
struct Counters {
    xacts: i64,
    lsn: String,
    /// CPU time of each server process serving this database, by pid.
    server: std::collections::HashMap<i32, u64>,
    /// CPU time of all this process's threads.
    client: u64,
}

/// What a drain cost per step: write transactions, WAL bytes, server and client
/// CPU microseconds.
#[derive(Clone, Copy)]
struct Cost {
    xacts: f64,
    wal: f64,
    server_us: f64,
    client_us: f64,
}

async fn pg_counters(p: &PgPool) -> Result<Counters, Error> {
    // Every write transaction takes a transaction id: the difference counts
    // them exactly (pg_stat_database's counters lag behind other sessions).
    let xacts: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(p)
        .await?;
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(p)
        .await?;
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(p)
            .await?;
    let server = pids
        .into_iter()
        .map(|pid| {
            (
                pid,
                cpu_ns(&std::path::Path::new("/proc").join(pid.to_string())),
            )
        })
        .collect();
    let client = process_cpu_ns();
    Ok(Counters {
        xacts,
        lsn,
        server,
        client,
    })
}

/// The cost per step of what ran since `before`, until `after` (or now): the
/// CPU of the database's processes alive at `after`, and of this process.
async fn cost_since(
    p: &PgPool,
    before: &Counters,
    after: Option<Counters>,
    steps: f64,
) -> Result<Cost, Error> {
    let after = match after {
        Some(after) => after,
        None => pg_counters(p).await?,
    };
    let wal: f64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8")
        .bind(&after.lsn)
        .bind(&before.lsn)
        .fetch_one(p)
        .await?;
    let server: u64 = after
        .server
        .iter()
        .map(|(pid, ns)| ns.saturating_sub(before.server.get(pid).copied().unwrap_or(0)))
        .sum();
    Ok(Cost {
        xacts: (after.xacts - before.xacts - 1) as f64 / steps,
        wal: wal / steps,
        server_us: server as f64 / 1000.0 / steps,
        client_us: after.client.saturating_sub(before.client) as f64 / 1000.0 / steps,
    })
}

/// Dead row versions still taking space in `table`, counted exactly by
/// `pgstattuple` (the statistics views lag behind).
async fn dead_tuples(p: &PgPool, table: &str) -> Result<i64, Error> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .execute(p)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT dead_tuple_count FROM pgstattuple($1::regclass)")
            .bind(table)
            .fetch_one(p)
            .await?,
    )
}

/// Scenario 6 into an idle worker: pickup latencies from the enqueue call (the
/// INSERT's own round trip included) and from its return (the commit seen by
/// the client; 0 when the step started first); and the raw INSERT + NOTIFY →
/// LISTEN round trip on PostgreSQL.
async fn pickup(db: &Db, samples: usize) -> Result<[Vec<Duration>; 4], Error> {
    LATENCIES.lock().unwrap().clear();
    DONE.store(0, Ordering::Relaxed);
    let worker = db.worker::<Tasks>().build()?;
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut from_commit = Vec::with_capacity(samples);
    for _ in 0..samples {
        let before = DONE.load(Ordering::Relaxed);
        let sent = now_us();
        db.enqueue(Probe { sent_us: sent }).await;
        let committed = now_us();
        while DONE.load(Ordering::Relaxed) == before {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let started = STARTED_US.load(Ordering::Relaxed);
        from_commit.push(elapsed_us(committed, started));
        tokio::time::sleep(Duration::from_millis(5)).await; // idle again
    }
    from_commit.sort();
    stop.cancel();
    running.await??;
    let mut jet = std::mem::take(&mut *LATENCIES.lock().unwrap());
    jet.sort();
    let mut raw = Vec::new();
    let mut raw_from_commit = Vec::new();
    if let Db::Postgres(p) = db {
        raw_from_commit = raw_listen_loop(p, samples).await?;
        let mut listener = sqlx::postgres::PgListener::connect_with(p).await?;
        listener.listen("raw_bench").await?;
        for _ in 0..samples {
            let t = Instant::now();
            sqlx::query("WITH i AS (INSERT INTO raw_tasks (step) VALUES ($1::text::jsonb) RETURNING id) SELECT pg_notify('raw_bench', id::text) FROM i").bind(PAYLOAD).execute(p).await?;
            listener.recv().await?;
            raw.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await; // idle again, as above
        }
        raw.sort();
    }
    Ok([jet, from_commit, raw, raw_from_commit])
}

/// Scenario 6's raw reference from the commit: a LISTEN loop that leases the
/// row an insert's notification announces, with the raw drain's lease
/// statement, on a connection of its own; from the insert's return to the
/// lease's (0 when the lease returned first).
async fn raw_listen_loop(p: &PgPool, samples: usize) -> Result<Vec<Duration>, Error> {
    static LEASED_US: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let mut listener = sqlx::postgres::PgListener::connect_with(p).await?;
    listener.listen("raw").await?;
    let mut conn = p.acquire().await?.detach();
    let lease = RAW_LEASE_PG.replace("LIMIT 100", "LIMIT 1");
    let looping = tokio::spawn(async move {
        loop {
            listener.recv().await?;
            let leased: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(lease.clone()))
                .fetch_all(&mut conn)
                .await?;
            if !leased.is_empty() {
                LEASED_US.store(now_us(), Ordering::Relaxed);
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), sqlx::Error>(())
    });
    let mut from_commit = Vec::with_capacity(samples);
    for _ in 0..samples {
        LEASED_US.store(0, Ordering::Relaxed);
        sqlx::query("INSERT INTO raw_tasks (step) VALUES ($1::text::jsonb)")
            .bind(PAYLOAD)
            .execute(p)
            .await?;
        let committed = now_us();
        while LEASED_US.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        from_commit.push(elapsed_us(committed, LEASED_US.load(Ordering::Relaxed)));
        tokio::time::sleep(Duration::from_millis(5)).await; // idle again, as Jetpack's
    }
    looping.abort();
    from_commit.sort();
    Ok(from_commit)
}

/// Scenario 8 into an idle worker: from the `jetpack::signal` call to the start
/// of the step that receives it, for tasks already waiting.
async fn signal_round_trip(db: &Db, samples: usize) -> Result<Vec<Duration>, Error> {
    LATENCIES.lock().unwrap().clear();
    let worker = db.worker::<Tasks>().build()?;
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());
    let ids = db.enqueue_many((0..samples).map(|_| Await)).await;
    let waiting = || async {
        let sql = "SELECT count(*) FROM jetpack_tasks WHERE state = 'waiting'";
        db.scalar(sql, None).await
    };
    while waiting().await < samples as i64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in ids {
        let before = DONE.load(Ordering::Relaxed);
        let go = Go { sent_us: now_us() };
        db.signal(SignalTo::Task(id), &go).await;
        while DONE.load(Ordering::Relaxed) == before {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await; // idle again
    }
    stop.cancel();
    running.await??;
    let mut latencies = std::mem::take(&mut *LATENCIES.lock().unwrap());
    latencies.sort();
    Ok(latencies)
}

/// Scenario 5: wall time for `procs` child processes to drain `n` tasks.
async fn processes(fresh: &TestDb, n: u32, procs: usize) -> Result<f64, Error> {
    fresh.db.enqueue_many((0..n).map(|i| One { n: i })).await;
    analyze(&fresh.db).await?;
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let children: Vec<_> = (0..procs)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args(["--child-drain", &fresh.url])
                .kill_on_drop(true)
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for child in children {
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            return Err(format!("child drain failed: {}", out.status).into());
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

async fn child_drain(url: &str) -> Result<(), Error> {
    let db = if url.starts_with("sqlite:") {
        Db::Sqlite(jetpack::sqlite::connect(url).await?)
    } else {
        Db::Postgres(PgPool::connect(url).await?)
    };
    let worker = db.worker::<Tasks>().build()?;
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());
    wait_empty(&db).await?;
    stop.cancel();
    running.await??;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn row(
    backend: &'static str,
    scenario: &'static str,
    unit: &'static str,
    jetpack: f64,
    reference: f64,
    reference_name: &'static str,
    higher_is_better: bool,
) -> Row {
    let ratio = if higher_is_better {
        jetpack / reference
    } else {
        reference / jetpack
    };
    Row {
        backend,
        scenario,
        unit,
        jetpack,
        reference,
        reference_name,
        ratio,
    }
}

/// Reads one figure off a run's cost and dead tuples.
type Figure = dyn Fn(&(Cost, i64)) -> f64;

/// Which scenarios to run (`--scenario 1,3,6`; all by default).
#[derive(Clone)]
struct Want(Option<Vec<u32>>);

impl Want {
    fn has(&self, n: u32) -> bool {
        self.0.as_ref().is_none_or(|v| v.contains(&n))
    }

    /// Named on the command line (the long scenarios run only when asked).
    fn asked(&self, n: u32) -> bool {
        self.0.as_ref().is_some_and(|v| v.contains(&n))
    }
}

async fn bench(
    backend: &'static str,
    runs: usize,
    want: &Want,
    rows: &mut Vec<Row>,
) -> Result<(), Error> {
    let (mut s1, mut s2, mut s3, mut s4) = (vec![], vec![], vec![], vec![]);
    let mut r4 = vec![];
    // With the history switched off, in the same runs (unless all are).
    let history_on = !std::env::var("BENCH_HISTORY").is_ok_and(|v| v == "off");
    let (mut s2_off, mut s3_off) = (vec![], vec![]);
    // Scenario 3 again at a batch of 500, each side: the tuned drain.
    let (mut s3_big, mut r3_big) = (vec![], vec![]);
    let mut s9 = vec![];
    let (mut s10, mut r10) = (vec![], vec![]);
    let (mut s11, mut r11) = (vec![], vec![]);
    let (mut s12, mut r12) = (vec![], vec![]);
    let (mut r1, mut r2) = (vec![], vec![]);
    let mut r3: Vec<Vec<f64>> = vec![vec![]; raw_loops(backend).len()];
    let (mut two, mut one) = (vec![], vec![]);
    let (mut two50, mut one50) = (vec![], vec![]);
    let mut costs = Vec::new();
    // WAL per step of the raw loop with Jetpack's guarantee (lease, then delete).
    let mut lease_wal = Vec::new();
    let (mut cpu3, mut raw_cpu3) = (vec![], vec![]);
    // Scenarios 4 and 7 are read against scenario 3.
    let run3 = want.has(3) || want.has(4) || want.has(7) || want.has(9) || want.asked(13);
    for run in 0..runs {
        eprintln!("[{backend}] run {}/{runs}", run + 1);
        if want.has(1) {
            let f = fresh(backend).await?;
            let (j, r) = single_inserts(&f.db, 2000).await?;
            s1.push(j);
            r1.push(r);
        }
        if want.has(2) {
            let f = fresh(backend).await?;
            let (j, r) = batch_insert(&f.db, 10_000).await?;
            s2.push(j);
            r2.push(r);
            if history_on {
                let f = fresh(backend).await?;
                f.set_history(false).await;
                s2_off.push(batch_insert(&f.db, 10_000).await?.0);
            }
        }
        if run3 {
            let f = fresh(backend).await?;
            f.db.enqueue_many((0..10_000).map(|i| One { n: i })).await;
            analyze(&f.db).await?;
            let before = match &f.db {
                Db::Postgres(p) => Some(pg_counters(p).await?),
                Db::Sqlite(_) => None,
            };
            let drained = drain(&f.db, 10_000).await?;
            s3.push(drained.rate);
            cpu3.push(drained.cpu_us);
            let jet_cost = match (&f.db, &before) {
                (Db::Postgres(p), Some(before)) => Some((
                    cost_since(p, before, drained.counters, 10_000.0).await?,
                    dead_tuples(p, "jetpack_tasks").await?,
                )),
                _ => None,
            };
            // Each raw loop right after Jetpack's drain, on the same database,
            // so that a drift of the machine weighs on all alike.
            for (i, &how) in raw_loops(backend).iter().enumerate() {
                fill_raw(&f.db, 10_000).await?;
                let before = match &f.db {
                    Db::Postgres(p) => Some(pg_counters(p).await?),
                    Db::Sqlite(_) => None,
                };
                let drained = raw_drain(&f.db, 10_000, how).await?;
                r3[i].push(drained.rate);
                if how == Raw::Delete {
                    raw_cpu3.push(drained.cpu_us);
                    if let (Db::Postgres(p), Some(before), Some(j)) = (&f.db, &before, jet_cost) {
                        let raw = cost_since(p, before, None, 10_000.0).await?;
                        costs.push((j, (raw, dead_tuples(p, "raw_tasks").await?)));
                    }
                }
                if how == Raw::LeaseThenDelete {
                    if let (Db::Postgres(p), Some(before)) = (&f.db, &before) {
                        lease_wal.push(cost_since(p, before, None, 10_000.0).await?.wal);
                    }
                }
            }
            if want.has(3) {
                f.db.enqueue_many((0..10_000).map(|i| One { n: i })).await;
                analyze(&f.db).await?;
                s3_big.push(drain_by(&f.db, 10_000, Some(500)).await?.rate);
                fill_raw(&f.db, 10_000).await?;
                r3_big.push(raw_drain_by(&f.db, 10_000, Raw::Delete, 500).await?.rate);
            }
        }
        if want.has(3) && history_on {
            let f = fresh(backend).await?;
            f.set_history(false).await;
            f.db.enqueue_many((0..10_000).map(|i| One { n: i })).await;
            analyze(&f.db).await?;
            s3_off.push(drain(&f.db, 10_000).await?.rate);
        }
        if want.has(4) {
            let f = fresh(backend).await?;
            f.db.enqueue_many((0..2000).map(|i| A { n: i })).await;
            analyze(&f.db).await?;
            s4.push(drain(&f.db, 6000).await?.rate);
            r4.push(raw_chains(&f.db, 2000).await?);
        }
        if want.has(9) {
            s9.push(fan_out(&fresh(backend).await?.db, 10_000).await?);
        }
        if want.has(11) {
            let f = fresh(backend).await?;
            s11.push(limited(&f.db, (0..800).map(|_| Slow)).await?);
            r11.push(f64::from(SLOW_LIMIT) / Duration::from_millis(SLOW_MS).as_secs_f64());
        }
        if want.has(12) {
            let f = fresh(backend).await?;
            s12.push(limited(&f.db, (0..600).map(|_| Quick)).await?);
            r12.push(QUICK_RATE.steps_per_second());
        }
        if want.has(10) {
            let f = fresh(backend).await?;
            let (j, r) = keyed_inserts(&f.db, 2000).await?;
            s10.push(j);
            r10.push(r);
        }
        if want.has(5) {
            // Also with 50,000 tasks: at 10,000 each process's start-up
            // (exec, connections, first statements) weighs on the ratio.
            for (n, one, two) in [
                (10_000, &mut one, &mut two),
                (50_000, &mut one50, &mut two50),
            ] {
                one.push(processes(&fresh(backend).await?, n, 1).await?);
                two.push(processes(&fresh(backend).await?, n, 2).await?);
            }
        }
    }
    // Scenario 13, once (a million tasks): the drain of a big backlog.
    let mut s13 = None;
    if want.asked(13) {
        let f = fresh(backend).await?;
        for block in 0..100 {
            f.db.enqueue_many((0..10_000).map(|i| One {
                n: block * 10_000 + i,
            }))
            .await;
        }
        analyze(&f.db).await?;
        s13 = Some(drain(&f.db, 1_000_000).await?.rate);
    }
    // Statements are counted in a run of their own: sqlx's query events cost
    // time when enabled.
    let mut statements = None;
    if want.has(7) {
        let f = fresh(backend).await?;
        f.db.enqueue_many((0..10_000).map(|i| One { n: i })).await;
        analyze(&f.db).await?;
        let jet = statements_per_step(10_000, drain(&f.db, 10_000)).await?;
        fill_raw(&f.db, 10_000).await?;
        let raw = statements_per_step(10_000, raw_drain(&f.db, 10_000, Raw::Delete)).await?;
        statements = Some((jet, raw));
    }
    if want.has(1) {
        rows.push(row(
            backend,
            "1 enqueue one at a time",
            "rows/s",
            median(s1),
            median(r1),
            if backend == "postgres" {
                "raw INSERT, NOTIFY trigger"
            } else {
                "raw single-row INSERT"
            },
            true,
        ));
    }
    if want.has(11) {
        rows.push(row(
            backend,
            "11 800 steps limited to 8 at once",
            "steps/s",
            median(s11),
            median(r11),
            "8 at once, all the time",
            true,
        ));
    }
    if want.has(12) {
        rows.push(row(
            backend,
            "12 600 steps under a rate of 200/s",
            "steps/s",
            median(s12),
            median(r12),
            "the rate, 200/s",
            true,
        ));
    }
    if want.has(10) {
        rows.push(row(
            backend,
            "10 enqueue with a unique key",
            "rows/s",
            median(s10),
            median(r10),
            "enqueue without a key",
            true,
        ));
    }
    if want.has(2) {
        rows.push(row(
            backend,
            "2 enqueue_many 10,000",
            "rows/s",
            median(s2.clone()),
            median(r2),
            "raw INSERT … RETURNING id",
            true,
        ));
    }
    let drain3 = if run3 { median(s3.clone()) } else { f64::NAN };
    if want.has(3) {
        // Each side at its better batch: Jetpack's default (200) or 500; the
        // raw one-statement delete's 100 or 500.
        let raw100 = median(r3[0].clone());
        rows.push(row(
            backend,
            "3 tuned drain, each side's best batch",
            "steps/s",
            drain3.max(median(s3_big)),
            raw100.max(median(r3_big)),
            "raw one-statement delete, best",
            true,
        ));
        for (&how, rates) in raw_loops(backend).iter().zip(r3) {
            rows.push(row(
                backend,
                how.scenario(),
                "steps/s",
                drain3,
                median(rates),
                how.name(),
                true,
            ));
        }
    }
    if history_on && want.has(2) {
        rows.push(row(
            backend,
            "2 enqueue_many, history on vs off",
            "rows/s",
            median(s2.clone()),
            median(s2_off),
            "history off",
            true,
        ));
    }
    if history_on && want.has(3) {
        rows.push(row(
            backend,
            "3 drain, history on vs off",
            "steps/s",
            drain3,
            median(s3_off),
            "history off",
            true,
        ));
    }
    if want.has(4) {
        rows.push(row(
            backend,
            "4 2,000 three-step chains",
            "steps/s",
            median(s4.clone()),
            drain3,
            "scenario 3",
            true,
        ));
        rows.push(row(
            backend,
            "4 chains, vs a raw chain",
            "steps/s",
            median(s4),
            median(r4),
            "raw chain, a batch per tx",
            true,
        ));
    }
    if want.has(5) {
        rows.push(row(
            backend,
            "5 two processes drain 10,000",
            "tasks/s",
            median(two),
            median(one),
            "one process",
            true,
        ));
        rows.push(row(
            backend,
            "5 two processes drain 50,000",
            "tasks/s",
            median(two50),
            median(one50),
            "one process",
            true,
        ));
    }

    if want.has(6) {
        let [jet, from_commit, raw, raw_from_commit] =
            pickup(&fresh(backend).await?.db, 200).await?;
        for (name, p) in [
            ("6 pickup latency p50", 0.5),
            ("6 pickup latency p90", 0.9),
            ("6 pickup latency p99", 0.99),
        ] {
            let j = percentile(&jet, p);
            let (r, rname) = if raw.is_empty() {
                (f64::NAN, "none on SQLite")
            } else {
                (percentile(&raw, p), "raw INSERT+NOTIFY round trip")
            };
            rows.push(row(backend, name, "ms", j, r, rname, false));
        }
        // The issue's measure, from the commit: the enqueue's own round trip
        // left out; against a raw LISTEN loop that leases the row.
        for (name, p) in [
            ("6 pickup from commit p50", 0.5),
            ("6 pickup from commit p99", 0.99),
        ] {
            let j = percentile(&from_commit, p);
            let (r, rname) = if raw_from_commit.is_empty() {
                (f64::NAN, "none on SQLite")
            } else {
                (percentile(&raw_from_commit, p), "raw LISTEN loop, lease")
            };
            rows.push(row(backend, name, "ms", j, r, rname, false));
        }
    }
    if let Some(rate) = s13 {
        rows.push(row(
            backend,
            "13 drain of a 1,000,000 backlog",
            "steps/s",
            rate,
            drain3,
            "scenario 3 (10,000)",
            true,
        ));
    }
    if want.has(9) {
        rows.push(row(
            backend,
            "9 10,000 children, enqueue to join",
            "children/s",
            median(s9),
            drain3,
            "scenario 3",
            true,
        ));
    }
    if want.has(8) {
        let [pickup_from_call, ..] = pickup(&fresh(backend).await?.db, 200).await?;
        let signal = signal_round_trip(&fresh(backend).await?.db, 200).await?;
        for (name, p) in [
            ("8 signal round trip p50", 0.5),
            ("8 signal round trip p99", 0.99),
        ] {
            let (j, r) = (percentile(&signal, p), percentile(&pickup_from_call, p));
            rows.push(row(backend, name, "ms", j, r, "enqueue pickup (6)", false));
        }
    }
    if let Some((jet, raw)) = statements {
        rows.push(row(
            backend,
            "7 statements per step",
            "stmts",
            jet,
            raw,
            "raw loop",
            false,
        ));
    }
    if want.has(7) && backend == "sqlite" {
        // The database runs inside the process: its CPU is the whole cost.
        rows.push(row(
            backend,
            "7 CPU per step (process)",
            "µs",
            median(cpu3),
            median(raw_cpu3),
            "raw loop",
            false,
        ));
    }
    if want.has(7) && !costs.is_empty() {
        // Medians of each figure over the runs, for Jetpack and the raw loop.
        let jet = |f: &Figure| median(costs.iter().map(|(j, _)| f(j)).collect());
        let raw = |f: &Figure| median(costs.iter().map(|(_, r)| f(r)).collect());
        let figures: [(&str, &str, &Figure); 5] = [
            ("7 write transactions per step", "xacts", &|c| c.0.xacts),
            ("7 WAL bytes per step", "bytes", &|c| c.0.wal),
            ("7 server CPU per step", "µs", &|c| c.0.server_us),
            ("7 client CPU per step", "µs", &|c| c.0.client_us),
            ("7 dead tuples after 10,000", "tuples", &|c| c.1 as f64),
        ];
        for (name, unit, f) in figures {
            rows.push(row(backend, name, unit, jet(f), raw(f), "raw loop", false));
        }
        if !lease_wal.is_empty() {
            rows.push(row(
                backend,
                "7 WAL bytes per step, vs the lease shape",
                "bytes",
                jet(&|c| c.0.wal),
                median(lease_wal),
                "raw lease, then delete",
                false,
            ));
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    {
        use tracing_subscriber::filter::{dynamic_filter_fn, filter_fn, FilterExt};
        use tracing_subscriber::prelude::*;
        // Never asked about other callsites, so steps' spans and events cost
        // what they cost without a subscriber; asked per statement only for
        // sqlx's, and only while counting.
        let statements = Statements.with_filter(
            filter_fn(|meta| meta.target() == "sqlx::query")
                .and(dynamic_filter_fn(|_, _| COUNTING.load(Ordering::Relaxed))),
        );
        let registry = tracing_subscriber::registry().with(statements);
        if std::env::var_os("RUST_LOG").is_some() {
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_filter(tracing_subscriber::EnvFilter::from_default_env()),
                )
                .init();
        } else {
            registry.init();
        }
    }
    if let Some(url) = arg("--child-drain") {
        return child_drain(&url).await;
    }
    let backend = arg("--backend").unwrap_or_else(|| "both".into());
    let runs: usize = arg("--runs").map(|r| r.parse()).transpose()?.unwrap_or(3);
    let want = Want(
        arg("--scenario")
            .map(|list| {
                list.split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<u32>, _>>()
            })
            .transpose()?,
    );
    let mut rows = Vec::new();
    for b in ["postgres", "sqlite"] {
        if backend == b || backend == "both" {
            bench(b, runs, &want, &mut rows).await?;
        }
    }
    println!(
        "{:<9} {:<34} {:>12} {:>12}  {:<30} {:>7}",
        "backend", "scenario", "jetpack", "reference", "reference is", "ratio"
    );
    for r in &rows {
        println!(
            "{:<9} {:<34} {:>12.3} {:>12.3}  {:<30} {:>7.2}   {}",
            r.backend, r.scenario, r.jetpack, r.reference, r.reference_name, r.ratio, r.unit
        );
    }
    let json = serde_json::to_string_pretty(&rows)?;
    let path = arg("--json").unwrap_or_else(|| "target/bench.json".into());
    std::fs::write(&path, json)?;
    eprintln!("wrote {path}");
    Ok(())
}
