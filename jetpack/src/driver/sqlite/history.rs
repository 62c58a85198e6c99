//! SQLite: the history ([`Histories`](crate::driver::Histories)).

use super::*;

/// The history since `?1`, per minute and edge (see the PostgreSQL
/// backend). The blocks have no index on `at`: the rows since then are those
/// after the newest one before it, found by reading back from the end. The
/// records of enqueue the entries hold (dated earlier) are not counted.
const ACTIVITY: &str = "
SELECT coalesce(json_group_array(json_array(m, f, t, moved, finished, failed)), '[]')
FROM (SELECT CAST(strftime('%s', substr(b.at, 1, 16) || ':00') AS INTEGER) AS m,
             CASE WHEN e.value ->> 1 IN ('next', 'wait', 'join') THEN e.value ->> 2 END AS f,
             CASE WHEN e.value ->> 1 IN ('next', 'wait', 'join') THEN e.value ->> 3 END AS t,
             sum(e.value ->> 1 IN ('next', 'wait', 'join')) AS moved,
             sum(e.value ->> 1 = 'finished') AS finished,
             sum(e.value ->> 1 IN ('retry', 'parked')) AS failed
      FROM jetpack_history_blocks b,
           json_each(CASE WHEN json_valid(b.entries) THEN b.entries ELSE '[]' END) e
      WHERE b.id > coalesce((SELECT id FROM jetpack_history_blocks WHERE at < ?1
                             ORDER BY id DESC LIMIT 1), 0)
        AND b.at >= ?1 AND e.type = 'array'
      GROUP BY 1, 2, 3 ORDER BY 1, 2, 3)";

/// The history of task `?1`, oldest first; times as the table's text. The
/// rows of its block, and its own row while it is the record of its enqueue.
const HISTORY_OF: &str = "
SELECT id, task_id, at, event, from_kind, to_kind, step, attempt, worker, duration_us, error
FROM jetpack_history WHERE block = ?1 >> 10 AND task_id = ?1 ORDER BY id";

/// Switches the history to `?1`.
const SET_HISTORY: &str = "
INSERT INTO jetpack_config (singleton, history) VALUES (1, ?1)
ON CONFLICT (singleton) DO UPDATE SET history = excluded.history";

/// A row of [`HISTORY_OF`], its time as the table's text.
type HistoryRow = crate::model::TransitionRow<String>;

/// Whether the history is on.
const HISTORY_ON: &str = "SELECT coalesce((SELECT history FROM jetpack_config), 1) <> 0";

#[async_trait]
impl crate::driver::Histories for Sqlite {
    fn activity<'e, E>(
        db: E,
        since: DateTime<Utc>,
    ) -> BoxFuture<'e, Result<crate::model::Activity, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let rows: String = sqlx::query_scalar(ACTIVITY)
                .bind(time_text(since))
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
            let rows: Vec<HistoryRow> = sqlx::query_as(HISTORY_OF).bind(id).fetch_all(db).await?;
            rows.into_iter()
                .map(
                    |(row_id, task, at, event, from, to, step, attempt, worker, us, error)| {
                        let at = read_time(&at, || format!("at of history row {row_id}"))?;
                        Ok(crate::model::transition((
                            row_id, task, at, event, from, to, step, attempt, worker, us, error,
                        )))
                    },
                )
                .collect()
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
            Ok(query.bind(time_text(at)).fetch_all(db).await?)
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

    async fn history_on(db: &SqliteHandle) -> Result<bool, Error> {
        let on: bool = sqlx::query_scalar(HISTORY_ON).fetch_one(&db.pool).await?;
        Ok(on)
    }
}
