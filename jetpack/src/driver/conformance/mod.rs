//! The driver's conformance suite: one test body per concern of [`Driver`],
//! run on both backends (`<set>::sqlite`, `<set>::postgres`), through the
//! driver's own methods: the caller's statements on a pool, the worker's
//! through [`Pooled`] as the worker holds it. What only one backend has (its
//! plans, its connections) is tested in that backend's folder.

use super::*;
use crate::model::{
    Cancel, Change, Delivery, Encoded, Error, Filter, History, Limit, NewTask, Notice, OnConflict,
    Outcome, Related, Retention, SignalTo, Tally, TaskState, Trace, Wakeup, Window,
};
use futures_util::future::LocalBoxFuture;
use sqlx::{Connection, Executor};
use std::time::Duration;

mod caller;
mod worker;

use caller::*;
use worker::*;

pub(crate) type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A driver under test: a fresh database's pool, and the worker's side of it.
pub(crate) struct Under<D: Driver> {
    pub(crate) pool: sqlx::Pool<D>,
    pub(crate) store: Pooled<D>,
}

/// A driver the checks run on: its pool as an executor of the caller's
/// statements (every sqlx pool is one; generic code has to be told).
pub(crate) trait Tested: Driver {
    fn on(pool: &sqlx::Pool<Self>) -> impl Executor<'_, Database = Self>;
}

impl Tested for sqlx::Postgres {
    fn on(pool: &sqlx::PgPool) -> impl Executor<'_, Database = Self> {
        pool
    }
}

impl Tested for sqlx::Sqlite {
    fn on(pool: &sqlx::SqlitePool) -> impl Executor<'_, Database = Self> {
        pool
    }
}

impl<D: Tested> Under<D> {
    /// The caller's executor.
    fn db(&self) -> impl Executor<'_, Database = D> {
        D::on(&self.pool)
    }

    /// Task `id` as `find` reads it.
    async fn task(&self, id: i64) -> TestResult<crate::model::TaskRow> {
        Ok(D::find(self.db(), id)
            .await?
            .ok_or_else(|| format!("task {id} is gone"))?)
    }
}

/// What a check returns: the problems it found.
type Checked<'a> = LocalBoxFuture<'a, TestResult<Vec<String>>>;

/// One check of a driver.
type Check<D> = for<'a> fn(&'a Under<D>) -> Checked<'a>;

/// Step `M.A` with `fields`, encoded as an enqueue encodes it.
fn step_a(fields: &str) -> Encoded {
    Encoded {
        json: format!(r#"{{"M":{{"A":{fields}}}}}"#),
        kind: ("M", "A"),
        priority: 0,
        scope: None,
    }
}

/// Whether two JSON texts are the same document (PostgreSQL's `jsonb`
/// spaces them its own way).
fn same_json(a: &str, b: &str) -> bool {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    parse(a).is_some() && parse(a) == parse(b)
}

/// Claims the one ready task of kind `kind`: `(id, fence)`.
async fn claim_one(store: &dyn Store, kind: &str) -> TestResult<(i64, i64)> {
    let claimed = store
        .claim(1, &[kind.to_string()], "w", Duration::from_secs(30))
        .await?;
    match claimed.as_slice() {
        [c] => Ok((c.id, c.fence)),
        other => Err(format!("claimed {other:?}, not one task of {kind}").into()),
    }
}

/// The traces of attempts of step `M.A` that `claimed` took, as a worker
/// keeps them for the history: with the record of enqueue of each task its
/// claim found at its first step.
fn traces_of(claimed: &[crate::model::Claimed]) -> Vec<Trace> {
    (claimed.iter())
        .map(|c| Trace {
            kind: Some("M.A".into()),
            attempt: 1,
            duration_us: 10,
            labels: None,
            enqueued: c.enqueued_at.map(|at| crate::model::EnqueueRecord {
                at,
                kind: c.kind.clone(),
                step: c.step.clone(),
            }),
        })
        .collect()
}

/// The outcome that moves a task to step `{"M":{"B":null}}`, due at `wakeup`.
fn to_b(wakeup: Wakeup) -> Outcome {
    Outcome::Next {
        step: r#"{"M":{"B":null}}"#.into(),
        kind: "M.B".into(),
        wakeup,
        scope: None,
    }
}

/// A new task of `key` (`None`: no unique key), due now.
fn keyed(step: Encoded, key: Option<&str>) -> NewTask {
    NewTask {
        step,
        delay: 0,
        at: None,
        unique_key: key.map(str::to_string),
        on_conflict: OnConflict::Ignore,
        throttle: None,
    }
}

/// Step `M.B`, as a child.
fn step_b() -> Encoded {
    Encoded {
        json: r#"{"M":{"B":null}}"#.into(),
        kind: ("M", "B"),
        priority: 0,
        scope: None,
    }
}

/// Runs `checks` in turn on `under`; the problems of all of them.
async fn run_checks<D: Tested>(under: &Under<D>, checks: &[Check<D>]) -> TestResult<Vec<String>> {
    let mut problems = Vec::new();
    for check in checks {
        problems.extend(check(under).await?);
    }
    Ok(problems)
}

/// The step of every task the checks start with.
const STEP_A: &str = r#"{"M": {"A": {"text": "a \"quote\", a \\, a ✓ and a\nline"}}}"#;

/// Inserts `tasks` tasks of step [`STEP_A`].
async fn insert_tasks<D: Tested>(pool: &sqlx::Pool<D>, tasks: usize) -> TestResult {
    if tasks > 0 {
        let rows = vec![format!("('{STEP_A}')"); tasks].join(", ");
        let sql = format!("INSERT INTO jetpack_tasks (step) VALUES {rows}");
        D::on(pool).execute(sqlx::AssertSqlSafe(sql)).await?;
    }
    Ok(())
}

/// A fresh SQLite file's directory and URL.
pub(crate) fn sqlite_file(what: &str) -> TestResult<(std::path::PathBuf, String)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "jetpack_unit_{what}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("unit.db").display());
    Ok((dir, url))
}

/// Runs `checks` on a fresh SQLite file holding `tasks` ready tasks of step
/// [`STEP_A`], once on the worker's statements for a few tasks and once on
/// those for batches; fails with every problem they found.
async fn on_sqlite(tasks: usize, checks: &[Check<sqlx::Sqlite>]) -> TestResult {
    let mut problems = Vec::new();
    for (paths, few) in [("few-task statements", usize::MAX), ("batch statements", 0)] {
        let (dir, url) = sqlite_file("conformance")?;
        let pool = sqlite::connect(&url).await?;
        let found = async {
            <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
            insert_tasks(&pool, tasks).await?;
            let under = Under {
                store: Pooled::with(
                    pool.clone(),
                    sqlite::SqliteHandle::with_few(pool.clone(), few),
                ),
                pool: pool.clone(),
            };
            run_checks(&under, checks).await
        }
        .await;
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        problems.extend(found?.into_iter().map(|p| format!("({paths}) {p}")));
    }
    assert!(problems.is_empty(), "{problems:?}");
    Ok(())
}

/// [`on_sqlite`] on a fresh PostgreSQL database.
async fn on_postgres(tasks: usize, checks: &[Check<sqlx::Postgres>]) -> TestResult {
    let (admin, name, pool) = pg_database().await?;
    let problems = async {
        insert_tasks(&pool, tasks).await?;
        let under = Under {
            store: Pooled::new(pool.clone()),
            pool: pool.clone(),
        };
        run_checks(&under, checks).await
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    let problems = problems?;
    assert!(problems.is_empty(), "{problems:?}");
    Ok(())
}

/// Runs each set of checks on both backends, as the tests `<set>::sqlite`
/// and `<set>::postgres`, on a fresh database holding `tasks` ready tasks.
macro_rules! on_both {
    ($($(#[$meta:meta])* $set:ident($tasks:expr) = [$($check:ident),+ $(,)?];)+) => {$(
        $(#[$meta])*
        mod $set {
            use super::*;

            #[tokio::test]
            async fn sqlite() -> TestResult {
                on_sqlite($tasks, &[$($check::<sqlx::Sqlite>),+]).await
            }

            #[tokio::test]
            async fn postgres() -> TestResult {
                on_postgres($tasks, &[$($check::<sqlx::Postgres>),+]).await
            }
        }
    )+};
}

on_both! {
    /// Claims and completions, by the worker's statements.
    claims_and_batches(4) = [
        a_claim_returns_the_step_as_stored,
        a_batch_writes_only_what_attempts_held,
    ];
    completed_attempt(1) = [completed_attempt_is_inert];
    retention(2) = [kept_tasks_are_cleaned_after_their_period];
    failures_in_one_flush(4) = [every_kind_of_outcome_in_one_flush];
    stale_and_live_attempts(1) = [a_stale_and_a_live_attempt_in_one_flush];
    /// Two tasks for the next-step check (which finishes them), one for the lease.
    leases_and_next_steps(3) = [
        a_next_step_due_now_is_claimable_at_once,
        a_lease_holds_until_it_expires,
    ];
    limited_leases(2) = [a_limited_lease_is_not_revived];
    given_back(0) = [attempts_given_back_and_rescoped];
    wakeups(0) = [listeners_hear_enqueues_and_cancels];
    /// The caller's statements, from an empty table.
    enqueues(0) = [inserts_read_back_as_stored, keys_and_windows];
    admin(0) = [admin_reads_and_changes, one_task_resumed_cancelled_and_redriven];
    children(0) = [children_live_and_die_with_the_step];
    joins(0) = [a_join_reads_its_ended_children];
    signals(0) = [signals_end_waits];
    history(0) = [
        history_records_outcomes,
        history_of_tasks_moved_meanwhile,
        history_of_a_flush_of_finishes,
    ];
    registry(0) = [the_registry_keeps_graphs];
    schedules(0) = [a_tick_fires_once];
    limits(0) = [passed_windows_are_cleaned];
    migrations(0) = [migrating_again_changes_nothing];
}

/// The first migration of the explicit lifecycle.
const LIFECYCLE: i64 = 20261202000000;

/// Only the migrations before the lifecycle.
fn before_lifecycle(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let before: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < LIFECYCLE)
        .cloned()
        .collect();
    migrator.migrations = before.into();
    migrator
}

/// Two tasks written before the lifecycle, one of them parked.
const OLD_ROWS: &str = r#"INSERT INTO jetpack_tasks (step, kind, error)
    VALUES ('{"M":{"A":null}}', 'M.A', NULL), ('{"M":{"A":null}}', 'M.A', 'broken')"#;

/// After the lifecycle migration the parked row is 'parked', the other
/// 'ready' and claimed as before.
async fn lifecycle_states_after_migrating(store: &dyn Store) -> TestResult {
    let states = store.states(&[1, 2]).await?;
    let mut states: Vec<(i64, &str)> = states.iter().map(|(i, s)| (*i, s.as_str())).collect();
    states.sort();
    assert_eq!(states, [(1, "ready"), (2, "parked")]);
    let claimed = store
        .claim(10, &["M.A".to_string()], "w", Duration::from_secs(30))
        .await?;
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, [1], "only the ready task is claimed");
    Ok(())
}

/// A database migrated before the lifecycle migrates in place, with no
/// task lost or changed in meaning.
#[tokio::test]
async fn postgres_migrates_to_the_lifecycle_in_place() -> TestResult {
    let (admin, name, pool) = pg_empty_database().await?;
    let result = async {
        let mut old = sqlx::migrate!("../migrations/postgres");
        old.dangerous_set_table_name("_jetpack_migrations");
        before_lifecycle(old).run(&pool).await?;
        sqlx::query(OLD_ROWS).execute(&pool).await?;
        <sqlx::Postgres as Migrations>::migrate(&pool).await?;
        lifecycle_states_after_migrating(&Pooled::<sqlx::Postgres>::new(pool.clone())).await
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    result
}

/// [`postgres_migrates_to_the_lifecycle_in_place`] on SQLite.
#[tokio::test]
async fn sqlite_migrates_to_the_lifecycle_in_place() -> TestResult {
    let dir = std::env::temp_dir().join(format!("jetpack_unit_life_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("unit.db").display());
    let pool = sqlite::connect(&url).await?;
    let result = async {
        before_lifecycle(sqlite::migrator()).run(&pool).await?;
        sqlx::query(OLD_ROWS).execute(&pool).await?;
        <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
        lifecycle_states_after_migrating(&Pooled::<sqlx::Sqlite>::new(pool.clone())).await
    }
    .await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A fresh PostgreSQL database with Jetpack's tables, dropped by `drop_pg`.
pub(crate) async fn pg_database() -> TestResult<(sqlx::PgConnection, String, sqlx::PgPool)> {
    let (admin, name, pool) = pg_empty_database().await?;
    <sqlx::Postgres as Migrations>::migrate(&pool).await?;
    Ok((admin, name, pool))
}

/// A fresh, empty PostgreSQL database, dropped by `drop_pg`.
pub(crate) async fn pg_empty_database() -> TestResult<(sqlx::PgConnection, String, sqlx::PgPool)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let admin_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {admin_url}: {e}; start it or set DATABASE_URL")
        });
    let name = format!(
        "jetpack_unit_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let create = format!("CREATE DATABASE {name}");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut admin)
        .await?;
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("DATABASE_URL has no database part"),
    };
    let pool = sqlx::PgPool::connect(&url).await?;
    Ok((admin, name, pool))
}

pub(crate) async fn drop_pg(
    mut admin: sqlx::PgConnection,
    name: &str,
    pool: sqlx::PgPool,
) -> TestResult {
    pool.close().await;
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&mut admin)
        .await?;
    Ok(())
}
