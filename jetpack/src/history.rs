//! The history of tasks: every transition, as the table `jetpack_history`
//! keeps it. Workers write the outcomes of attempts in the statements that
//! write the outcomes; the table's triggers record every other change
//! (enqueues, cancels, resumes, wakes, hand edits). It is kept for
//! [`keep_history`](crate::WorkerBuilder::keep_history) (7 days by default)
//! and switched on and off for every worker with [`set_history`].
//!
//! A feature: imports `model` and `driver` (docs/design.md, layers).

use chrono::{DateTime, Utc};
use sqlx::Executor;

use crate::driver::Backend;
use crate::driver::Histories;
use crate::model::Error;
pub use crate::model::{Activity, Minute, TaskError, Transition, ERRORS_CHANNEL};

/// Every transition of task `id` still kept, oldest first.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> Result<(), jetpack::Error> {
/// for t in jetpack::history(&pool, 42).await? {
///     println!("{} {} {:?} -> {:?} {:?}", t.at, t.event, t.from_kind, t.to_kind, t.error);
/// }
/// # Ok(()) }
/// ```
pub async fn history<'e, E>(db: E, id: i64) -> Result<Vec<Transition>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::history(db, id).await
}

/// What task `id` was doing at `at`: its last transition at or before then,
/// with `step` the step it was at (the last one recorded by then). `None`
/// when its history does not reach back that far.
pub async fn history_at<'e, E>(
    db: E,
    id: i64,
    at: DateTime<Utc>,
) -> Result<Option<Transition>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    let transitions = history(db, id).await?;
    let until: Vec<&Transition> = transitions.iter().take_while(|t| t.at <= at).collect();
    let Some(last) = until.last() else {
        return Ok(None);
    };
    let mut state = (*last).clone();
    state.step = until.iter().rev().find_map(|t| t.step.clone());
    Ok(Some(state))
}

/// How many tasks were at each step (`Machine.Step`) at `at`, from each
/// task's last transition by then (tasks that had ended are not counted),
/// sorted by kind.
pub async fn counts_at<'e, E>(db: E, at: DateTime<Utc>) -> Result<Vec<(String, i64)>, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::counts_at(db, at).await
}

/// What the workers did since `since`, per minute, and how many tasks moved
/// along each edge: throughput and failures for a dashboard.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> Result<(), jetpack::Error> {
/// let hour_ago = jetpack::chrono::Utc::now() - jetpack::chrono::Duration::hours(1);
/// let activity = jetpack::activity(&pool, hour_ago).await?;
/// let failed: i64 = activity.minutes.iter().map(|m| m.failed).sum();
/// # Ok(()) }
/// ```
pub async fn activity<'e, E>(db: E, since: DateTime<Utc>) -> Result<Activity, Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::activity(db, since).await
}

/// Switches the history on or off for every worker and every trigger
/// (`UPDATE jetpack_config SET history = ..`). Workers read it at start and
/// at each cleanup pass (every 2 s by default, at most every 20 s).
pub async fn set_history<'e, E>(db: E, on: bool) -> Result<(), Error>
where
    E: Executor<'e> + 'e,
    E::Database: Backend,
{
    <E::Database>::set_history(db, on).await
}
