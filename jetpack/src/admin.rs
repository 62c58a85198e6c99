//! Operating on tasks in bulk: counts per step and state, lists by filter,
//! resume, redrive, cancel and purge. No operation touches a task a worker
//! holds (a live lease); each says how many tasks it changed, and one that
//! matches nothing is an error that says so and changes nothing.
//!
//! ```no_run
//! # async fn f(pool: sqlx::PgPool) -> Result<(), jetpack::Error> {
//! use jetpack::admin::{self, Filter};
//! for c in admin::counts(&pool).await? {
//!     println!("{:<30} {:?} {}", c.kind, c.state, c.count);
//! }
//! let stuck = Filter::new().step("Greeter.ReadName").parked().error_contains("os error 2");
//! for task in admin::list(&pool, &stuck).await? {
//!     println!("{} {:?}", task.id, task.error);
//! }
//! let resumed = admin::resume(&pool, &stuck).await?;
//! # Ok(()) }
//! ```

// A feature: imports `model`, `driver` and `workflow` (docs/design.md, layers).

use sqlx::{Acquire, Executor};

use crate::driver::Backend;
use crate::driver::{Admin, Histories};
pub use crate::model::{Change, Count, Filter, Related, Tallies, Tally};
use crate::model::{Error, TaskRow};
use crate::workflow::Scheduler;

/// How many tasks there are per step and state (running and scheduled told
/// apart from ready), sorted by step.
pub async fn counts<'e, E>(db: E) -> Result<Vec<Count>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::admin_counts(db).await
}

/// A table whose ids span up to this many is counted row by row: a scan of
/// at most that many rows.
const EXACT_UP_TO: i64 = 100_000;

/// The sample of a bigger table: this many strata of its ids, and the first
/// `SAMPLE_WIDTH` ids of each (20,000 ids in all, read through the primary
/// key). The width is written in the backends' statements (`ADMIN_SAMPLE`).
const SAMPLE_STRATA: i64 = 1000;
const SAMPLE_WIDTH: i64 = 20;

/// Parked and waiting tasks are counted through their partial indexes, row
/// by row, while there are at most this many of each.
const INDEXED_UP_TO: i64 = 100_000;

/// How many tasks there are per step and state, at a cost that does not grow
/// with the table: [`counts`] while the table's ids span at most 100,000;
/// beyond that, parked and waiting tasks are still counted row by row through
/// their partial indexes (up to 100,000 of each), and the others (ready,
/// running, scheduled, and finished or cancelled tasks that are kept) are
/// estimated from a systematic sample of the ids: the first 20 of each of
/// 1,000 equal strata, scaled up. Each estimate says so
/// ([`Count::estimated`]); a step or state too rare to be in the sample is
/// missing from it. This is what `jetpack status` and the dashboard show; at a
/// million tasks it reads about 20,000 rows instead of a million.
pub async fn estimated_counts<'a, A>(db: A) -> Result<Vec<Count>, Error>
where
    A: Acquire<'a>,
    A::Database: Backend,
    for<'c> &'c mut <A::Database as sqlx::Database>::Connection:
        Executor<'c, Database = A::Database>,
{
    let mut conn = db.acquire().await?;
    let Some((lo, hi)) = <A::Database>::admin_id_span(&mut *conn).await? else {
        return Ok(Vec::new());
    };
    if hi - lo < EXACT_UP_TO {
        return <A::Database>::admin_counts(&mut *conn).await;
    }
    let stride = (hi - lo + 1) / SAMPLE_STRATA;
    let sample = Tally::Sample {
        first: lo,
        stride,
        strata: SAMPLE_STRATA,
    };
    let sampled = <A::Database>::admin_tally(&mut *conn, sample).await?;
    let scale = stride as f64 / SAMPLE_WIDTH as f64;
    let rows: i64 = sampled.iter().map(|(_, _, n)| n).sum();
    if rows as f64 * scale <= EXACT_UP_TO as f64 {
        // Few rows over many ids (finished tasks deleted): a scan is cheap.
        return <A::Database>::admin_counts(&mut *conn).await;
    }
    let indexed = Tally::Indexed {
        limit: INDEXED_UP_TO + 1,
    };
    let indexed = <A::Database>::admin_tally(&mut *conn, indexed).await?;
    let mut per_state = std::collections::BTreeMap::<&str, i64>::new();
    for (_, state, n) in &indexed {
        *per_state.entry(state.as_str()).or_default() += n;
    }
    let exact = |state: &str| per_state.get(state).is_none_or(|&n| n <= INDEXED_UP_TO);
    let mut rows: Vec<(String, String, i64, bool)> = (indexed.iter())
        .filter(|(_, state, _)| exact(state))
        .map(|(kind, state, n)| (kind.clone(), state.clone(), *n, false))
        .collect();
    rows.extend(
        (sampled.into_iter())
            .filter(|(_, state, _)| {
                !(matches!(state.as_str(), "parked" | "waiting") && exact(state))
            })
            .map(|(kind, state, n)| (kind, state, (n as f64 * scale).round() as i64, true)),
    );
    rows.sort();
    (rows.into_iter())
        .map(|(kind, state, count, estimated)| Count::read(kind, &state, count, estimated))
        .collect()
}

/// The tasks `filter` matches, by id, at most its limit (100 by default).
pub async fn list<'e, E>(db: E, filter: &Filter) -> Result<Vec<TaskRow>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    filter.check()?;
    <E::Database>::admin_list(db, filter.clone()).await
}

/// Task `id` and its history; an error when there is no such task.
pub async fn show<'a, A>(db: A, id: i64) -> Result<(TaskRow, Vec<crate::model::Transition>), Error>
where
    A: Acquire<'a>,
    A::Database: Backend,
    for<'c> &'c mut <A::Database as sqlx::Database>::Connection:
        Executor<'c, Database = A::Database>,
{
    let mut conn = db.acquire().await?;
    let Some(task) = <A::Database>::find(&mut *conn, id).await? else {
        return Err(Error::Admin(format!(
            "no task {id}: it never existed, or it ended and was deleted"
        )));
    };
    let history = <A::Database>::history(&mut *conn, id).await?;
    Ok((task, history))
}

/// Machine `name`'s graph as the workers recorded it in `jetpack_machines`,
/// read, and as its JSON ([`Graph::to_json`](crate::Graph::to_json)).
pub async fn recorded_graph<'e, E>(
    db: E,
    name: &str,
) -> Result<Option<(crate::workflow::RecordedGraph, String)>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    match <E::Database>::recorded_graph(db, name.to_string()).await? {
        Some(json) => Ok(Some((crate::workflow::RecordedGraph::parse(&json)?, json))),
        None => Ok(None),
    }
}

/// Every machine's graph the workers recorded in `jetpack_machines`, by name.
pub async fn recorded_graphs<'e, E>(db: E) -> Result<Vec<crate::workflow::RecordedGraph>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    let graphs = <E::Database>::recorded_graphs(db).await?;
    graphs
        .iter()
        .map(|g| crate::workflow::RecordedGraph::parse(g))
        .collect()
}

/// The child tasks task `id` spawned and that still have rows, by id (at
/// most 100).
pub async fn children<'e, E>(db: E, id: i64) -> Result<Vec<TaskRow>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::admin_tasks(db, Related::Children(id)).await
}

/// The tasks that hold `key`, as their unique key or as the key signals are
/// sent to (`wait_key`), by id (at most 100): search by correlation key.
pub async fn by_key<'e, E>(db: E, key: &str) -> Result<Vec<TaskRow>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::admin_tasks(db, Related::Key(key.to_string())).await
}

/// Replaces the step of task `id` by `step` (`{"Machine":{"Step":{..}}}`),
/// checked first by decoding it as `T`: a parked task stays parked (resume
/// it to run the new step), a ready one runs it when due. The history
/// records the edit. A step that does not decode or is of another machine,
/// or a task that is running, waiting, ended or missing, is an error, and
/// nothing changes.
///
/// ```no_run
/// # jetpack::task!(Greeter { ReadName });
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct ReadName { filename: String }
/// # #[jetpack::async_trait] impl jetpack::Step<Greeter> for ReadName { async fn step(self, _: &jetpack::Context<'_>) -> jetpack::StepResult<Self> { jetpack::NextStep::none() } }
/// # jetpack::scheduler!(Tasks { Greeter });
/// # async fn f(pool: sqlx::PgPool) -> Result<(), jetpack::Error> {
/// let fixed = r#"{"Greeter":{"ReadName":{"filename":"name.txt"}}}"#;
/// jetpack::admin::edit::<Tasks, _>(&pool, 42, fixed).await?;
/// jetpack::resume(&pool, 42).await?;
/// # Ok(()) }
/// ```
pub async fn edit<'a, T, A>(db: A, id: i64, step: &str) -> Result<(), Error>
where
    T: Scheduler,
    A: Acquire<'a>,
    A::Database: Backend,
    for<'c> &'c mut <A::Database as sqlx::Database>::Connection:
        Executor<'c, Database = A::Database>,
{
    let value = match serde_json::from_str::<T>(step) {
        Ok(value) => value,
        Err(e) => {
            return Err(Error::Admin(format!(
                "the step does not decode ({e}): write {{\"Machine\":{{\"Step\":{{..fields..}}}}}} with the fields of one of the program's steps; nothing changed"
            )))
        }
    };
    let mut conn = db.acquire().await?;
    let Some(task) = <A::Database>::find(&mut *conn, id).await? else {
        return Err(Error::Admin(format!(
            "no task {id}: it ended, or never existed; nothing changed"
        )));
    };
    // A task stays in its machine: its parent reads its output by that type.
    let machine = serde_json::from_str::<serde_json::Value>(&task.step)
        .ok()
        .and_then(|v| v.as_object()?.keys().next().cloned());
    if let Some(machine) = machine.filter(|m| m != value.machine_name()) {
        return Err(Error::Admin(format!(
            "task {id} is a task of {machine}: its step must stay in that machine, {} is another; nothing changed",
            value.machine_name()
        )));
    }
    match <A::Database>::admin_edit(&mut *conn, id, step.to_string()).await? {
        0 => Err(Error::Admin(format!(
            "task {id} is not ready or parked (or is running): nothing changed"
        ))),
        _ => Ok(()),
    }
}

/// Resumes the parked tasks `filter` matches (clears their errors: each runs
/// again with a full retry budget); how many.
pub async fn resume<'e, E>(db: E, filter: &Filter) -> Result<u64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    change(db, filter, Change::Resume, "parked tasks").await
}

/// Cancels the live tasks (ready, waiting or parked) `filter` matches, with
/// `reason`; how many. A running task is not touched: cancel it with
/// [`cancel`](crate::cancel), which tells its step.
pub async fn cancel<'e, E>(db: E, filter: &Filter, reason: &str) -> Result<u64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    change(
        db,
        filter,
        Change::Cancel(reason.to_string()),
        "live tasks not running",
    )
    .await
}

/// Deletes the finished and cancelled tasks `filter` matches; how many.
pub async fn purge<'e, E>(db: E, filter: &Filter) -> Result<u64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    change(db, filter, Change::Purge, "finished or cancelled tasks").await
}

async fn change<'e, E>(db: E, filter: &Filter, change: Change, which: &str) -> Result<u64, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    filter.check()?;
    let n = <E::Database>::admin_change(db, filter.clone(), change).await?;
    if n == 0 {
        return Err(Error::Admin(format!(
            "no {which} match ({}): nothing changed",
            filter.describe()
        )));
    }
    Ok(n)
}

/// Moves every ready or parked task at step `from` that `filter` matches to
/// step `to` of the same machine, with the same fields, due now, with a full
/// retry budget and no error; how many. Both steps must be steps of one
/// machine of `T`, and every task's fields must decode as step `to`: else
/// nothing changes, and the error says which task does not fit.
///
/// ```no_run
/// # jetpack::task!(Mail { Send, SendV2 });
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Send { to: String }
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct SendV2 { to: String }
/// # #[jetpack::async_trait] impl jetpack::Step<Mail> for Send { async fn step(self, _: &jetpack::Context<'_>) -> jetpack::StepResult<Self> { jetpack::NextStep::none() } }
/// # #[jetpack::async_trait] impl jetpack::Step<Mail> for SendV2 { async fn step(self, _: &jetpack::Context<'_>) -> jetpack::StepResult<Self> { jetpack::NextStep::none() } }
/// # jetpack::scheduler!(Tasks { Mail });
/// # async fn f(pool: sqlx::PgPool) -> Result<(), jetpack::Error> {
/// use jetpack::admin::{self, Filter};
/// let moved = admin::redrive::<Tasks, _>(&pool, "Mail.Send", "Mail.SendV2", &Filter::new().parked()).await?;
/// # Ok(()) }
/// ```
pub async fn redrive<'a, T, A>(db: A, from: &str, to: &str, filter: &Filter) -> Result<u64, Error>
where
    T: Scheduler,
    A: Acquire<'a>,
    A::Database: Backend,
    for<'c> &'c mut <A::Database as sqlx::Database>::Connection:
        Executor<'c, Database = A::Database>,
{
    let steps = steps_of(&T::graphs(), from, to)?;
    let fits = |moved: serde_json::Value| {
        serde_json::from_value::<T>(moved)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let mut conn = db.acquire().await?;
    move_tasks::<A::Database>(&mut conn, steps, from, to, filter, fits).await
}

/// [`redrive`] for a program that does not have the machine's types (the
/// `jetpack` command line): the steps are checked against the graphs the
/// workers recorded in `jetpack_machines`, the fields are not (a task whose
/// fields do not fit step `to` parks when a worker claims it, saying why).
pub async fn redrive_recorded<'a, A>(
    db: A,
    from: &str,
    to: &str,
    filter: &Filter,
) -> Result<u64, Error>
where
    A: Acquire<'a>,
    A::Database: Backend,
    for<'c> &'c mut <A::Database as sqlx::Database>::Connection:
        Executor<'c, Database = A::Database>,
{
    let mut conn = db.acquire().await?;
    let machine = from.split_once('.').map_or(from, |(m, _)| m);
    let graphs = match <A::Database>::recorded_graph(&mut *conn, machine.to_string()).await? {
        Some(graph) => vec![crate::workflow::RecordedGraph::parse(&graph)?],
        None => Vec::new(),
    };
    let steps = steps_of(&graphs, from, to)?;
    move_tasks::<A::Database>(&mut conn, steps, from, to, filter, |_| Ok(())).await
}

/// Moves the tasks at `from` that `filter` takes to `to`, each checked by
/// `fits` first.
async fn move_tasks<DB>(
    conn: &mut DB::Connection,
    (machine, from_step, to_step): (String, String, String),
    from: &str,
    to: &str,
    filter: &Filter,
    fits: impl Fn(serde_json::Value) -> Result<(), String>,
) -> Result<u64, Error>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    filter.check()?;
    let mut filter = filter.clone();
    filter.step = Some(from.to_string());
    let found = DB::admin_redrivable(&mut *conn, filter.clone()).await?;
    if found.is_empty() {
        return Err(Error::Admin(format!(
            "no ready or parked task not running matches ({}): nothing changed",
            filter.describe()
        )));
    }
    let mut moves = Vec::with_capacity(found.len());
    for (id, fence, step) in found {
        let fields = serde_json::from_str::<serde_json::Value>(&step)
            .ok()
            .and_then(|mut v| {
                v.get_mut(&machine)?
                    .get_mut(&from_step)
                    .map(serde_json::Value::take)
            })
            .ok_or_else(|| {
                Error::Admin(format!(
                    "task {id}'s step {step} is not a {from} step: nothing changed"
                ))
            })?;
        let moved = serde_json::json!({ machine.clone(): { to_step.clone(): fields } });
        if let Err(e) = fits(moved.clone()) {
            return Err(Error::Admin(format!(
                "task {id}'s fields do not fit step {to} ({e}): nothing changed"
            )));
        }
        moves.push((id, fence, moved.to_string()));
    }
    DB::admin_redrive(&mut *conn, moves, to.to_string()).await
}

/// The machine and the two steps named by kinds `from` and `to`, checked to
/// be steps of one machine among `graphs`.
fn steps_of<G: Steps>(
    graphs: &[G],
    from: &str,
    to: &str,
) -> Result<(String, String, String), Error> {
    let split = |kind: &str| {
        kind.split_once('.')
            .map(|(m, s)| (m.to_string(), s.to_string()))
            .ok_or_else(|| Error::Admin(format!("{kind:?} is not a step: write Machine.Step")))
    };
    let ((m_from, s_from), (m_to, s_to)) = (split(from)?, split(to)?);
    if m_from != m_to {
        return Err(Error::Admin(format!(
            "{to} is a step of another machine than {from}: a task stays in its machine; nothing changed"
        )));
    }
    let Some(graph) = graphs.iter().find(|g| g.machine() == m_from) else {
        return Err(Error::Admin(format!(
            "no machine {m_from} is known: nothing changed"
        )));
    };
    // `from` may be a step the machine no longer has: moving its stranded
    // rows on is what a redrive is for.
    if !graph.has_step(&s_to) {
        return Err(Error::Admin(format!(
            "machine {m_from} has no step {s_to}: nothing changed"
        )));
    }
    Ok((m_from, s_from, s_to))
}

/// A machine's name and steps, from its types or as recorded.
trait Steps {
    fn machine(&self) -> &str;
    fn has_step(&self, step: &str) -> bool;
}

impl Steps for crate::workflow::Graph {
    fn machine(&self) -> &str {
        self.machine
    }
    fn has_step(&self, step: &str) -> bool {
        self.steps.iter().any(|s| s.name == step)
    }
}

impl Steps for crate::workflow::RecordedGraph {
    fn machine(&self) -> &str {
        &self.machine
    }
    fn has_step(&self, step: &str) -> bool {
        self.steps.iter().any(|s| s.name == step)
    }
}
