//! PostgreSQL: the history ([`Histories`](crate::driver::Histories)).

use super::*;

/// The history since `$1`, per minute and edge, `[[unix seconds, from,
/// to, moved, finished, failed], ..]` by minute (`from` and `to` are NULL
/// for what is not a move). Read through the BRIN index on the blocks' `at`,
/// so that a read of the last minutes costs what those minutes hold; the
/// records of enqueue the entries hold (dated earlier) are not counted.
const ACTIVITY: &str = "
SELECT coalesce(json_agg(json_build_array(extract(epoch FROM m)::int8, f, t, moved, finished, failed)
                ORDER BY m, f, t), '[]')::text
FROM (SELECT date_trunc('minute', b.at) AS m,
             CASE WHEN u.event IN ('next', 'wait', 'join') THEN u.from_kind END AS f,
             CASE WHEN u.event IN ('next', 'wait', 'join') THEN u.to_kind END AS t,
             count(*) FILTER (WHERE u.event IN ('next', 'wait', 'join')) AS moved,
             count(*) FILTER (WHERE u.event = 'finished') AS finished,
             count(*) FILTER (WHERE u.event IN ('retry', 'parked')) AS failed
      FROM jetpack_history_blocks b
      CROSS JOIN LATERAL unnest(b.task_ids, b.events, b.from_kinds, b.to_kinds)
          AS u(task_id, event, from_kind, to_kind)
      WHERE b.at >= $1 AND u.task_id IS NOT NULL GROUP BY 1, 2, 3) per";

/// The history of task `$1`, oldest first: the rows of its block, and its
/// own row while it is the record of its enqueue.
const HISTORY_OF: &str = "
SELECT id, task_id, at, event, from_kind, to_kind, step::text, attempt, worker, duration_us, error
FROM jetpack_history WHERE block = $1 >> 10 AND task_id = $1 ORDER BY id";

/// Switches the history to `$1`.
const SET_HISTORY: &str = "
INSERT INTO jetpack_config (history) VALUES ($1)
ON CONFLICT (singleton) DO UPDATE SET history = EXCLUDED.history";

/// Whether the history is on.
const HISTORY_ON: &str = "SELECT jetpack_history_on()";

#[async_trait]
impl crate::driver::Histories for Postgres {
    fn activity<'e, E>(
        db: E,
        since: DateTime<Utc>,
    ) -> BoxFuture<'e, Result<crate::model::Activity, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let rows: String = sqlx::query_scalar(ACTIVITY)
                .bind(since)
                .fetch_one(db)
                .await?;
            crate::model::Activity::read(&rows)
        })
    }

    fn history<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<Vec<crate::model::Transition>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let rows = sqlx::query_as(HISTORY_OF).bind(id).fetch_all(db).await?;
            Ok(rows.into_iter().map(crate::model::transition).collect())
        })
    }

    fn counts_at<'e, E>(
        db: E,
        at: DateTime<Utc>,
    ) -> BoxFuture<'e, Result<Vec<(String, i64)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let query = sqlx::query_as(crate::driver::COUNTS_AT);
            Ok(query.bind(at).fetch_all(db).await?)
        })
    }

    fn set_history<'e, E>(db: E, on: bool) -> BoxFuture<'e, Result<(), Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            sqlx::query(SET_HISTORY).bind(on).execute(db).await?;
            Ok(())
        })
    }

    async fn history_on(db: &PgHandle) -> Result<bool, Error> {
        Ok(sqlx::query_scalar(HISTORY_ON).fetch_one(&db.pool).await?)
    }
}
