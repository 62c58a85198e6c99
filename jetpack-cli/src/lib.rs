//! `jetpack`: Jetpack's tasks from a shell, on PostgreSQL or SQLite by URL.
//!
//! The `jetpack` binary works from the database alone. A program can also
//! build its own, with its types ([`run`]): then `verify` decodes every live
//! row with them, `redrive` checks that each moved task's fields decode as the
//! step it goes to, and `graph` draws a machine without a database.
//!
//! ```text
//! jetpack --url sqlite://jetpack.db status
//! jetpack list --state parked --error "os error 2"
//! jetpack show 42
//! jetpack resume --step Greeter.ReadName
//! jetpack redrive --from Greeter.ReadName --to Greeter.SayHello --state parked
//! jetpack graph Greeter --format dot
//! jetpack --json history 42
//! jetpack watch
//! ```
//!
//! Every command prints JSON with `--json`. Errors are one line on stderr
//! (exit status 1); a bad command line exits with 2.
//!
//! A binary of the program's own, `src/bin/jetpack.rs`:
//!
//! ```no_run
//! # use jetpack_suite::readme::Tasks;
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     jetpack_cli::run::<Tasks>().await
//! }
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use jetpack::admin::{self, Filter};
use jetpack::chrono::{DateTime, NaiveDateTime, Utc};
use jetpack::sqlx::postgres::PgPoolOptions;
use jetpack::sqlx::{Connection, PgPool, SqlitePool};
use jetpack::{Scheduler, TaskRow, Transition, VerifyReport};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "jetpack",
    version,
    about = "Operate on Jetpack's tasks, by database URL"
)]
struct Cli {
    /// The database: postgres://… or sqlite://FILE.
    #[arg(long, env = "DATABASE_URL", global = true)]
    url: Option<String>,
    /// Print JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tasks per step and state. On a big table most counts are estimates
    /// from a sample (marked ~); --exact counts every row (a scan).
    Status {
        /// Count every row, however big the table.
        #[arg(long)]
        exact: bool,
    },
    /// The tasks a filter takes (100 by default).
    List(FilterArgs),
    /// One task's row and history.
    Show {
        /// The task's id.
        id: i64,
    },
    /// One task's transitions, or with --at alone the tasks per step at a moment.
    History {
        /// The task's id.
        id: Option<i64>,
        /// A moment (UTC), `2026-12-03 10:15:00` or RFC 3339.
        #[arg(long)]
        at: Option<String>,
    },
    /// Resumes parked tasks: one by id, or those a filter takes.
    Resume {
        /// The task's id.
        id: Option<i64>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Cancels tasks not running: one by id, or those a filter takes.
    Cancel {
        /// The task's id.
        id: Option<i64>,
        /// Why, kept in the task's `error`.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Deletes finished and cancelled tasks a filter takes.
    Purge(FilterArgs),
    /// Moves ready or parked tasks from one step to another of the same machine.
    Redrive {
        /// The step they are at, Machine.Step.
        #[arg(long)]
        from: String,
        /// The step they go to, Machine.Step.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Decodes every live task with the program's types, listing those at
    /// unknown steps and those that do not decode; exit status 1 when there
    /// are any (a binary built with `jetpack_cli::run` only).
    Verify,
    /// A machine's graph: from the program's types, or as the workers recorded it.
    Graph {
        /// The machine's name.
        machine: String,
        /// Mermaid or Graphviz.
        #[arg(long, value_enum, default_value = "mermaid")]
        format: Format,
    },
    /// Applies Jetpack's migrations (creating an SQLite file if missing).
    Migrate,
    /// Serves the dashboard (read-only unless --actions) until Ctrl-C.
    Serve {
        /// Where to listen; only this machine by default.
        #[arg(long, default_value = "127.0.0.1:3000")]
        bind: std::net::SocketAddr,
        /// Turn on resume, cancel, redrive and edits (each asks for confirmation).
        #[arg(long)]
        actions: bool,
        /// A host name the dashboard answers for besides localhost and IP
        /// addresses (the name a proxy or DNS gives it); repeat for more.
        /// Requests naming other hosts are refused (DNS rebinding).
        #[arg(long = "allowed-host", value_name = "NAME")]
        allowed_hosts: Vec<String>,
    },
    /// Live counts per step, with a bar of how much of each step's backlog has
    /// drained since the watch began (Ctrl-C ends it). Without a terminal, or
    /// with --json, one report per refresh.
    Watch {
        /// Between refreshes: 1s, 5s, 1m.
        #[arg(long, value_parser = age, default_value = "1s")]
        every: Duration,
        /// Stop after this many refreshes.
        #[arg(long)]
        times: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Mermaid,
    Dot,
}

/// Which tasks: every condition given must hold.
#[derive(Args, Default)]
struct FilterArgs {
    /// At this step (Machine.Step).
    #[arg(long)]
    step: Option<String>,
    /// Of this machine.
    #[arg(long)]
    machine: Option<String>,
    /// In this state: ready, waiting, parked, cancelled or finished.
    #[arg(long)]
    state: Option<String>,
    /// Whose error contains this text.
    #[arg(long)]
    error: Option<String>,
    /// Not updated for this long: 30s, 5m, 2h, 7d.
    #[arg(long, value_parser = age)]
    older_than: Option<Duration>,
    /// With an id above this (lists).
    #[arg(long)]
    after: Option<i64>,
    /// At most this many (lists).
    #[arg(long)]
    limit: Option<u32>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        let mut f = Filter::new();
        f.step.clone_from(&self.step);
        f.machine.clone_from(&self.machine);
        f.state.clone_from(&self.state);
        f.error_contains.clone_from(&self.error);
        f.older_than = self.older_than;
        f.after_id = self.after;
        f.limit = self.limit;
        f
    }
}

/// `30s`, `5m`, `2h` or `7d`.
fn age(text: &str) -> Result<Duration, String> {
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not an age: write 30s, 5m, 2h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?} is not an age: write 30s, 5m, 2h or 7d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// A moment, UTC.
fn moment(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").map(|t| t.and_utc()))
        .map_err(|_| {
            format!("{text:?} is not a moment: write 2026-12-03 10:15:00 (UTC) or RFC 3339")
        })
}

/// The database, by URL.
enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$e` with `$p` the pool of either backend.
macro_rules! on {
    ($db:expr, $p:ident => $e:expr) => {
        match $db {
            Db::Postgres($p) => $e,
            Db::Sqlite($p) => $e,
        }
    };
}

async fn connect(url: &str, create: bool) -> Result<Db, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // One connection first: a pool would only say that it timed out.
        let probe = jetpack::sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        return Ok(Db::Postgres(pool));
    }
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let file = rest.split('?').next().unwrap_or(rest);
        if !create && !Path::new(file).exists() {
            return Err(format!(
                "no database file at {file}: check the URL, or create it with `jetpack migrate`"
            ));
        }
        let pool = jetpack::sqlite::connect(url)
            .await
            .map_err(|e| format!("cannot open {url}: {e}"))?;
        return Ok(Db::Sqlite(pool));
    }
    Err(format!(
        "unsupported database URL {url:?}: use postgres://… or sqlite://FILE"
    ))
}

/// A one-line message for `e`, saying what to do when the tables are missing.
fn explain(e: jetpack::Error) -> String {
    let text = e.to_string();
    if text.contains("jetpack_")
        && (text.contains("does not exist") || text.contains("no such table"))
    {
        return format!("the database has no Jetpack tables ({text}): run `jetpack migrate` first");
    }
    text
}

fn task_json(t: &TaskRow) -> Value {
    json!({
        "id": t.id,
        "state": format!("{:?}", t.state).to_lowercase(),
        "step": serde_json::from_str::<Value>(&t.step).unwrap_or(Value::String(t.step.clone())),
        "wakeup_at": t.wakeup_at.to_rfc3339(),
        "tried": t.tried,
        "error": t.error,
        "locked_by": t.locked_by,
        "lease_until": t.lease_until.map(|x| x.to_rfc3339()),
        "finished_at": t.finished_at.map(|x| x.to_rfc3339()),
        "parent_id": t.parent_id,
        "priority": t.priority,
        "unique_key": t.unique_key,
    })
}

fn transition_json(t: &Transition) -> Value {
    json!({
        "at": t.at.to_rfc3339(),
        "event": t.event,
        "from": t.from_kind,
        "to": t.to_kind,
        "step": t.step.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()),
        "attempt": t.attempt,
        "worker": t.worker,
        "duration_ms": t.duration.map(|d| d.as_secs_f64() * 1000.0),
        "error": t.error,
    })
}

fn transition_line(t: &Transition) -> String {
    let mut line = format!(
        "{}  {:<9} {} -> {}",
        t.at.format("%Y-%m-%d %H:%M:%S%.3f"),
        t.event,
        t.from_kind.as_deref().unwrap_or("-"),
        t.to_kind.as_deref().unwrap_or("-"),
    );
    if let Some(a) = t.attempt {
        line.push_str(&format!("  attempt {a}"));
    }
    if let Some(d) = t.duration {
        line.push_str(&format!(" in {:.1} ms", d.as_secs_f64() * 1000.0));
    }
    if let Some(w) = &t.worker {
        line.push_str(&format!(" by {w}"));
    }
    if let Some(e) = &t.error {
        line.push_str(&format!("  error: {e}"));
    }
    line
}

/// Prints what a change did.
fn changed(json: bool, what: &str, n: u64) {
    if json {
        println!("{}", json!({ what: n }));
    } else {
        println!("{what} {n} task{}", if n == 1 { "" } else { "s" });
    }
}

/// How a command ended, when it did not fail.
enum Outcome {
    /// It did what was asked.
    Done,
    /// It ran, and reported what must be fixed (`verify`): exit status 1.
    Found,
}

/// What the program's types add to the commands: nothing ([`Untyped`]), or
/// decoding with them ([`Typed`]).
trait Types {
    /// The machines' graphs, when there are types.
    fn graphs() -> Option<Vec<jetpack::Graph>>;
    /// Every live row decoded with the types.
    async fn verify(db: &Db) -> Result<VerifyReport, String>;
    /// Moves tasks from step `from` to step `to`, checked as well as the types allow.
    async fn redrive(db: &Db, from: &str, to: &str, filter: &Filter) -> Result<u64, String>;
    /// The dashboard of `db`, with the types when there are any.
    fn dashboard(db: jetpack_web::Database) -> jetpack_web::Dashboard;
}

/// The `jetpack` binary's commands: the database alone.
struct Untyped;

impl Types for Untyped {
    fn graphs() -> Option<Vec<jetpack::Graph>> {
        None
    }

    async fn verify(_: &Db) -> Result<VerifyReport, String> {
        Err(
            "verify decodes rows with your program's types: run it from a binary of \
             your program that calls `jetpack_cli::run::<Tasks>()`"
                .into(),
        )
    }

    async fn redrive(db: &Db, from: &str, to: &str, filter: &Filter) -> Result<u64, String> {
        on!(db, p => admin::redrive_recorded(p, from, to, filter).await).map_err(explain)
    }

    fn dashboard(db: jetpack_web::Database) -> jetpack_web::Dashboard {
        jetpack_web::Dashboard::new(db)
    }
}

/// A program's own command line, with its scheduler `T`.
struct Typed<T>(std::marker::PhantomData<T>);

impl<T: Scheduler> Types for Typed<T> {
    fn graphs() -> Option<Vec<jetpack::Graph>> {
        Some(T::graphs())
    }

    async fn verify(db: &Db) -> Result<VerifyReport, String> {
        on!(db, p => jetpack::verify::<T, _>(p).await).map_err(explain)
    }

    async fn redrive(db: &Db, from: &str, to: &str, filter: &Filter) -> Result<u64, String> {
        on!(db, p => admin::redrive::<T, _>(p, from, to, filter).await).map_err(explain)
    }

    fn dashboard(db: jetpack_web::Database) -> jetpack_web::Dashboard {
        jetpack_web::Dashboard::new(db).typed::<T>()
    }
}

async fn execute<Y: Types>(cli: Cli) -> Result<Outcome, String> {
    let json = cli.json;
    // A machine of the program's own is drawn without a database.
    if let Command::Graph { machine, format } = &cli.command {
        let graphs = Y::graphs().unwrap_or_default();
        if let Some(graph) = graphs.iter().find(|g| g.machine == machine) {
            match (json, format) {
                (true, _) => println!("{}", graph.to_json()),
                (false, Format::Mermaid) => print!("{}", graph.to_mermaid()),
                (false, Format::Dot) => print!("{}", graph.to_dot()),
            }
            return Ok(Outcome::Done);
        }
    }
    let url = cli
        .url
        .ok_or("no database: give --url postgres://… or sqlite://FILE, or set DATABASE_URL")?;
    let db = connect(&url, matches!(cli.command, Command::Migrate)).await?;
    match cli.command {
        Command::Verify => {
            let report = Y::verify(&db).await?;
            if json {
                let unknown: Vec<Value> = (report.unknown.iter())
                    .map(|(kind, (n, ids))| json!({ "step": kind, "count": n, "examples": ids }))
                    .collect();
                let undecodable: Vec<Value> = (report.undecodable_examples.iter())
                    .map(|(id, kind, error)| json!({ "id": id, "step": kind, "error": error }))
                    .collect();
                println!(
                    "{}",
                    json!({
                        "ok": report.is_ok(),
                        "checked": report.checked,
                        "unknown": unknown,
                        "undecodable": report.undecodable,
                        "undecodable_examples": undecodable,
                    })
                );
            } else {
                print!("{report}");
            }
            if !report.is_ok() {
                return Ok(Outcome::Found);
            }
        }
        Command::Migrate => {
            on!(&db, p => jetpack::migrate(p).await).map_err(explain)?;
            if json {
                println!("{}", json!({ "migrated": true }));
            } else {
                println!("migrated {url}");
            }
        }
        Command::Status { exact } => {
            let counts = if exact {
                on!(&db, p => admin::counts(p).await)
            } else {
                on!(&db, p => admin::estimated_counts(p).await)
            };
            let counts = counts.map_err(explain)?;
            if json {
                let rows: Vec<Value> = (counts.iter())
                    .map(|c| json!({ "step": c.kind, "state": format!("{:?}", c.state).to_lowercase(), "count": c.count, "estimated": c.estimated }))
                    .collect();
                println!("{}", Value::Array(rows));
            } else if counts.is_empty() {
                println!("no tasks");
            } else {
                let about = |estimated: bool| if estimated { "~" } else { "" };
                println!("{:<40} {:<10} {:>9}", "STEP", "STATE", "TASKS");
                for c in &counts {
                    let state = format!("{:?}", c.state).to_lowercase();
                    let n = format!("{}{}", about(c.estimated), c.count);
                    println!("{:<40} {:<10} {:>9}", c.kind, state, n);
                }
                let total: i64 = counts.iter().map(|c| c.count).sum();
                let estimated = counts.iter().any(|c| c.estimated);
                let n = format!("{}{total}", about(estimated));
                println!("{:<40} {:<10} {:>9}", "", "total", n);
                if estimated {
                    println!("~ estimated from a sample of the table (parked and waiting tasks are counted); --exact counts every row");
                }
            }
        }
        Command::List(filter) => {
            let tasks = on!(&db, p => admin::list(p, &filter.filter()).await).map_err(explain)?;
            if json {
                println!("{}", Value::Array(tasks.iter().map(task_json).collect()));
            } else {
                println!(
                    "{:>8}  {:<10} {:>5}  {:<40} ERROR",
                    "ID", "STATE", "TRIED", "STEP"
                );
                for t in &tasks {
                    let kind = (serde_json::from_str::<Value>(&t.step).ok())
                        .and_then(|v| {
                            let (m, inner) = v.as_object()?.iter().next()?;
                            let step = match inner {
                                Value::String(s) => s.clone(),
                                Value::Object(o) => o.keys().next()?.clone(),
                                _ => return None,
                            };
                            Some(format!("{m}.{step}"))
                        })
                        .unwrap_or_else(|| "?".into());
                    let state = format!("{:?}", t.state).to_lowercase();
                    let error: String = t.error.as_deref().unwrap_or("").chars().take(60).collect();
                    println!(
                        "{:>8}  {:<10} {:>5}  {:<40} {}",
                        t.id, state, t.tried, kind, error
                    );
                }
            }
        }
        Command::Show { id } => {
            let (task, history) = on!(&db, p => admin::show(p, id).await).map_err(explain)?;
            if json {
                let mut v = task_json(&task);
                v["history"] = Value::Array(history.iter().map(transition_json).collect());
                println!("{v}");
            } else {
                let state = format!("{:?}", task.state).to_lowercase();
                println!("task {}  {state}", task.id);
                println!("step       {}", task.step);
                println!("wakeup_at  {}", task.wakeup_at);
                println!("tried      {}", task.tried);
                if let Some(e) = &task.error {
                    println!("error      {e}");
                }
                if let Some(w) = &task.locked_by {
                    println!("locked_by  {w}");
                }
                if let Some(p) = task.parent_id {
                    println!("parent     {p}");
                }
                println!("history:");
                for t in &history {
                    println!("  {}", transition_line(t));
                }
            }
        }
        Command::History { id, at } => {
            let at = at.as_deref().map(moment).transpose()?;
            match (id, at) {
                (Some(id), None) => {
                    let history = on!(&db, p => jetpack::history(p, id).await).map_err(explain)?;
                    if history.is_empty() {
                        return Err(format!("no history of task {id}: check the id, or the history is off or past its retention"));
                    }
                    if json {
                        println!(
                            "{}",
                            Value::Array(history.iter().map(transition_json).collect())
                        );
                    } else {
                        for t in &history {
                            println!("{}", transition_line(t));
                        }
                    }
                }
                (Some(id), Some(at)) => {
                    let then =
                        on!(&db, p => jetpack::history_at(p, id, at).await).map_err(explain)?;
                    let then = then.ok_or(format!("task {id} has no history at or before {at}"))?;
                    if json {
                        println!("{}", transition_json(&then));
                    } else {
                        println!("{}", transition_line(&then));
                        if let Some(step) = &then.step {
                            println!("step {step}");
                        }
                    }
                }
                (None, Some(at)) => {
                    let counts = on!(&db, p => jetpack::counts_at(p, at).await).map_err(explain)?;
                    if json {
                        let rows: Vec<Value> = (counts.iter())
                            .map(|(k, n)| json!({ "step": k, "count": n }))
                            .collect();
                        println!("{}", Value::Array(rows));
                    } else {
                        for (kind, n) in &counts {
                            println!("{kind:<40} {n:>8}");
                        }
                    }
                }
                (None, None) => return Err("give a task's id, --at a moment, or both".into()),
            }
        }
        Command::Resume { id, filter } => {
            let n = match id {
                Some(id) => {
                    let done = on!(&db, p => jetpack::resume(p, id).await).map_err(explain)?;
                    if !done {
                        return Err(format!(
                            "task {id} is not parked (or does not exist): nothing changed"
                        ));
                    }
                    1
                }
                None => on!(&db, p => admin::resume(p, &filter.filter()).await).map_err(explain)?,
            };
            changed(json, "resumed", n);
        }
        Command::Cancel { id, reason, filter } => {
            let n = match id {
                Some(id) => {
                    let done =
                        on!(&db, p => jetpack::cancel(p, id, &reason).await).map_err(explain)?;
                    match done {
                        jetpack::Cancel::Cancelled => 1,
                        jetpack::Cancel::Finished => {
                            return Err(format!("task {id} has finished: nothing changed"))
                        }
                        _ => return Err(format!("no task {id}: nothing changed")),
                    }
                }
                None => on!(&db, p => admin::cancel(p, &filter.filter(), &reason).await)
                    .map_err(explain)?,
            };
            changed(json, "cancelled", n);
        }
        Command::Purge(filter) => {
            let n = on!(&db, p => admin::purge(p, &filter.filter()).await).map_err(explain)?;
            changed(json, "purged", n);
        }
        Command::Redrive { from, to, filter } => {
            let n = Y::redrive(&db, &from, &to, &filter.filter()).await?;
            changed(json, "redrove", n);
        }
        Command::Watch { every, times } => watch(&db, json, every, times).await?,
        Command::Serve {
            bind,
            actions,
            allowed_hosts,
        } => {
            // A missing table is said now, not on the first page.
            on!(&db, p => admin::estimated_counts(p).await).map_err(explain)?;
            let pool = match &db {
                Db::Postgres(p) => jetpack_web::Database::from(p.clone()),
                Db::Sqlite(p) => jetpack_web::Database::from(p.clone()),
            };
            let dashboard = Y::dashboard(pool)
                .actions(actions)
                .allowed_hosts(allowed_hosts);
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
            let mode = if actions { "actions on" } else { "read-only" };
            eprintln!("the dashboard of {url} is at http://{bind}/ ({mode}); Ctrl-C stops it");
            jetpack_web::axum::serve(listener, dashboard.router())
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .map_err(|e| format!("the dashboard stopped: {e}"))?;
        }
        Command::Graph { machine, format } => {
            let graph = on!(&db, p => admin::recorded_graph(p, &machine).await).map_err(explain)?;
            let (graph, recorded) = graph.ok_or(format!(
                "no machine {machine} is recorded: a worker running it records it when it starts"
            ))?;
            if json {
                println!("{recorded}");
            } else {
                match format {
                    Format::Mermaid => print!("{}", graph.to_mermaid()),
                    Format::Dot => print!("{}", graph.to_dot()),
                }
            }
        }
    }
    Ok(Outcome::Done)
}

/// Per step, the live tasks (not finished or cancelled) by state; on a big
/// table, estimated states are named with a `~` ([`admin::estimated_counts`]).
type Live = std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>;

async fn live(db: &Db) -> Result<Live, String> {
    let counts = on!(db, p => admin::estimated_counts(p).await).map_err(explain)?;
    let mut live = Live::new();
    for c in counts {
        let state = format!("{:?}", c.state).to_lowercase();
        let state = if c.estimated {
            format!("~{state}")
        } else {
            state
        };
        if !state.ends_with("finished") && !state.ends_with("cancelled") {
            *live.entry(c.kind).or_default().entry(state).or_default() += c.count;
        }
    }
    Ok(live)
}

/// `jetpack watch`: progress bars on a terminal, one report per refresh
/// otherwise.
async fn watch(db: &Db, json: bool, every: Duration, times: Option<u64>) -> Result<(), String> {
    use std::io::IsTerminal;
    let bars = (!json && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:<40} [{bar:30}] {pos}/{len} drained  {msg}",
    )
    .map_err(|e| e.to_string())?
    .progress_chars("=> ");
    let mut shown: std::collections::BTreeMap<String, (indicatif::ProgressBar, i64)> =
        Default::default();
    let mut refresh = 0;
    loop {
        let now = live(db).await?;
        if json {
            println!("{}", serde_json::to_value(&now).map_err(|e| e.to_string())?);
        } else if let Some(bars) = &bars {
            for (kind, states) in &now {
                let total: i64 = states.values().sum();
                let (bar, most) = shown.entry(kind.clone()).or_insert_with(|| {
                    let bar = bars.add(indicatif::ProgressBar::new(0).with_style(style.clone()));
                    bar.set_prefix(kind.clone());
                    (bar, 0)
                });
                *most = (*most).max(total);
                bar.set_length(u64::try_from(*most).unwrap_or(0));
                bar.set_position(u64::try_from(*most - total).unwrap_or(0));
                let parts: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
                bar.set_message(parts.join(", "));
            }
            for (kind, (bar, most)) in &shown {
                if !now.contains_key(kind) {
                    bar.set_position(u64::try_from(*most).unwrap_or(0));
                    bar.set_message("none left");
                }
            }
        } else {
            let total: i64 = now.values().flat_map(|s| s.values()).sum();
            println!("{total} live tasks");
            for (kind, states) in &now {
                let parts: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
                println!("  {kind:<40} {}", parts.join(", "));
            }
        }
        refresh += 1;
        if times.is_some_and(|t| refresh >= t) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Runs the command line on the process's arguments with the program's
/// types `T`: as the `jetpack` binary, plus `verify` (every live row decoded
/// with `T`; exit status 1 when one does not), `redrive` checked by decoding
/// each moved task as the step it goes to, and `graph` from the types. Returns
/// the exit status; errors are printed as one line on stderr.
pub async fn run<T: Scheduler>() -> ExitCode {
    finish(execute::<Typed<T>>(Cli::parse()).await)
}

/// Runs the command line on the process's arguments from the database alone,
/// as the `jetpack` binary does (`verify` needs [`run`]).
pub async fn run_untyped() -> ExitCode {
    finish(execute::<Untyped>(Cli::parse()).await)
}

fn finish(done: Result<Outcome, String>) -> ExitCode {
    match done {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Found) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("jetpack: {e}");
            ExitCode::FAILURE
        }
    }
}
