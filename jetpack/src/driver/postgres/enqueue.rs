//! PostgreSQL: enqueues ([`Enqueues`](crate::driver::Enqueues)) and the keyed statements.

use super::*;

/// Inserts step `$1` of kind `$2`, priority `$5` and concurrency scope `$7`,
/// due after `$3` µs or at `$4`; with unique key `$6`, only if no live task
/// holds it.
pub(super) const INSERT: &str = "
INSERT INTO jetpack_tasks (step, kind, wakeup_at, priority, unique_key, limit_scope)
VALUES ($1::text::jsonb, $2, coalesce($4, now() + $3 * interval '1 microsecond'), $5, $6, $7)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('ready', 'waiting', 'parked')
DO NOTHING
RETURNING id";

pub(super) const INSERT_MANY: &str = "
INSERT INTO jetpack_tasks (step, kind, priority, limit_scope)
SELECT s::jsonb, k, p, c FROM unnest($1::text[], $2::text[], $3::smallint[], $4::text[])
    WITH ORDINALITY AS u(s, k, p, c, n)
ORDER BY n
RETURNING id";

/// `INSERT_MANY` when every step is of kind `$2` (so of priority `$3`), with
/// no concurrency scope.
pub(super) const INSERT_MANY_OF_KIND: &str = "
INSERT INTO jetpack_tasks (step, kind, priority)
SELECT s::jsonb, $2, $3 FROM unnest($1::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n
RETURNING id";

/// The live task holding unique key `$1`, locked, and whether it has not
/// started.
const HOLDER: &str = "
SELECT id, state = 'ready' AND (lease_until IS NULL OR lease_until <= now())
FROM jetpack_tasks
WHERE unique_key = $1 AND state IN ('ready', 'waiting', 'parked')
FOR UPDATE";

/// Replaces the step of task `$1` (`$2`, of kind `$3`, concurrency scope
/// `$7`), due after `$4` µs or at `$5`, with priority `$6`: a new attempt count, and a new fence, so that
/// an attempt whose lease expired cannot write over it. Wakes the workers
/// (the task may be due sooner).
const REPLACE: &str = "
WITH replaced AS (
    UPDATE jetpack_tasks
    SET step = $2::text::jsonb, kind = $3, priority = $6, tried = 0, limit_scope = $7,
        wakeup_at = coalesce($5, now() + $4 * interval '1 microsecond'),
        fence = least(fence, 9223372036854775806) + 1, locked_by = NULL, lease_until = NULL,
        updated_at = now()
    WHERE id = $1
    RETURNING id
)
SELECT count(*) FROM replaced, LATERAL (SELECT pg_notify('jetpack', '')) n";

/// Takes the unique key from task `$1`.
const DETACH: &str = "UPDATE jetpack_tasks SET unique_key = NULL WHERE id = $1";

/// Takes throttle `$1`'s window for `$2` µs if it is free; a row if it was.
const TAKE_WINDOW: &str = "
INSERT INTO jetpack_throttles AS w (key, until) VALUES ($1, now() + $2 * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until, task_id = NULL WHERE w.until <= now()
RETURNING key";

/// The task that took throttle `$1`'s window.
const WINDOW_TASK: &str = "SELECT task_id FROM jetpack_throttles WHERE key = $1";

/// Records task `$2` as the one that took throttle `$1`'s window.
const SET_WINDOW_TASK: &str = "UPDATE jetpack_throttles SET task_id = $2 WHERE key = $1";

#[async_trait]
impl KeyedStatements for PgConnection {
    async fn insert_unless_held(&mut self, task: &NewTask) -> Result<Option<i64>, Error> {
        Ok(sqlx::query_scalar(INSERT)
            .bind(&task.step.json)
            .bind(task.step.kind())
            .bind(task.delay)
            .bind(task.at)
            .bind(i16::from(task.step.priority))
            .bind(&task.unique_key)
            .bind(&task.step.scope)
            .fetch_optional(self)
            .await?)
    }

    async fn holder(&mut self, key: &str) -> Result<Option<(i64, bool)>, Error> {
        Ok(sqlx::query_as(HOLDER)
            .bind(key)
            .fetch_optional(self)
            .await?)
    }

    async fn replace(&mut self, id: i64, task: &NewTask) -> Result<(), Error> {
        sqlx::query(REPLACE)
            .bind(id)
            .bind(&task.step.json)
            .bind(task.step.kind())
            .bind(task.delay)
            .bind(task.at)
            .bind(i16::from(task.step.priority))
            .bind(&task.step.scope)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn detach(&mut self, id: i64) -> Result<(), Error> {
        sqlx::query(DETACH).bind(id).execute(self).await?;
        Ok(())
    }

    async fn take_window(&mut self, key: &str, window: i64) -> Result<Window, Error> {
        crate::driver::take_window::<Postgres>(self, &WINDOW, key, window).await
    }

    async fn set_window_task(&mut self, key: &str, id: i64) -> Result<(), Error> {
        crate::driver::set_window_task::<Postgres>(self, &WINDOW, key, id).await
    }
}

impl crate::driver::Enqueues for Postgres {
    fn insert<'e, E>(db: E, step: Encoded, wakeup: Wakeup) -> BoxFuture<'e, Result<i64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let (delay, at) = wakeup_binds(&wakeup)?;
            let kind = step.kind();
            Ok(sqlx::query_scalar(INSERT)
                .bind(step.json)
                .bind(kind)
                .bind(delay)
                .bind(at)
                .bind(i16::from(step.priority))
                .bind(None::<String>)
                .bind(step.scope)
                .fetch_one(db)
                .await?)
        })
    }

    fn insert_many<'e, E>(db: E, steps: Vec<Encoded>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            // Usually all steps are of one kind: bound once, not once per row.
            let query = if one_kind(&steps) {
                let kind = steps.first().map(Encoded::kind).unwrap_or_default();
                let priority = steps.first().map_or(0, |s| i16::from(s.priority));
                let json: Vec<String> = steps.into_iter().map(|s| s.json).collect();
                sqlx::query_scalar(INSERT_MANY_OF_KIND)
                    .bind(json)
                    .bind(kind)
                    .bind(priority)
            } else {
                let kinds: Vec<String> = steps.iter().map(Encoded::kind).collect();
                let priorities: Vec<i16> = steps.iter().map(|s| i16::from(s.priority)).collect();
                let scopes: Vec<Option<String>> = steps.iter().map(|s| s.scope.clone()).collect();
                let json: Vec<String> = steps.into_iter().map(|s| s.json).collect();
                sqlx::query_scalar(INSERT_MANY)
                    .bind(json)
                    .bind(kinds)
                    .bind(priorities)
                    .bind(scopes)
            };
            Ok(query.fetch_all(db).await?)
        })
    }

    fn keyed(db: &mut PgConnection) -> &mut dyn KeyedStatements {
        db
    }
}

/// The statements of a throttle's window.
const WINDOW: crate::driver::WindowStatements = crate::driver::WindowStatements {
    take: TAKE_WINDOW,
    task: WINDOW_TASK,
    set: SET_WINDOW_TASK,
};
