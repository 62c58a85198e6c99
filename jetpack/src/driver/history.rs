//! History: a task's transitions, the counts at a moment, the activity by
//! minute, switching the history on and off.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Executor;

use super::Base;
use crate::model::{Activity, BoxFuture, Error, Transition};

/// How many tasks were at each step at `$1`: the query of
/// [`counts_at`](Histories::counts_at), the same on both backends. (A task
/// still at its first step has one transition, its row, of id 0.)
pub(crate) const COUNTS_AT: &str = "
SELECT h.to_kind, count(*) FROM jetpack_history h
JOIN (SELECT task_id, max(id) AS id FROM jetpack_history WHERE at <= $1 GROUP BY task_id) last
  ON last.task_id = h.task_id AND last.id = h.id
WHERE h.event NOT IN ('finished', 'cancelled', 'deleted') AND h.to_kind IS NOT NULL
GROUP BY h.to_kind ORDER BY h.to_kind";

/// The statements of the history.
#[async_trait]
pub trait Histories: Base {
    /// The transitions of task `id`, oldest first.
    fn history<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<Vec<Transition>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// How many tasks were at each step at `at`.
    fn counts_at<'e, E>(
        db: E,
        at: DateTime<Utc>,
    ) -> BoxFuture<'e, Result<Vec<(String, i64)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Switches the history on or off.
    fn set_history<'e, E>(db: E, on: bool) -> BoxFuture<'e, Result<(), Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The transitions and errors per minute since `since`.
    fn activity<'e, E>(db: E, since: DateTime<Utc>) -> BoxFuture<'e, Result<Activity, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Whether the history is on (`jetpack_config.history`).
    async fn history_on(db: &Self::Handle) -> Result<bool, Error>;
}
