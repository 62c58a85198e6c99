//! PostgreSQL: workflows ([`Workflows`](crate::driver::Workflows)): children, signals, waits.

use super::*;

/// Makes up to `$1` waiting tasks whose deadline passed ready, with no
/// signal. A signal sent meanwhile waits for the row and then finds the task
/// no longer waiting (it is kept for a later wait): one of them wins.
const EXPIRE_WAITS: &str = "
UPDATE jetpack_tasks SET state = 'ready', signal = NULL, updated_at = now()
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jetpack_tasks
    WHERE state = 'waiting' AND wakeup_at <= now()
    ORDER BY wakeup_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED))";

/// Inserts child tasks of `$3` (`$1` steps, `$2` kinds, `$5` priorities, `$6`
/// concurrency scopes), awaited by its join as `$4` says (NULL: detached),
/// returning their ids in order.
const INSERT_CHILDREN: &str = "
INSERT INTO jetpack_tasks (step, kind, parent_id, awaited, priority, limit_scope)
SELECT s::jsonb, k, $3, $4, p, c FROM unnest($1::text[], $2::text[], $5::smallint[], $6::text[])
    WITH ORDINALITY AS u(s, k, p, c, n) ORDER BY n
RETURNING id";

/// Children of `$1` its step spawned awaited but will not join: detached.
const DETACH_CHILDREN: &str = "
UPDATE jetpack_tasks SET awaited = NULL
WHERE parent_id = $1 AND awaited IN ('wait', 'fail', 'error')";

/// The children of `$1` its join counted, of machine `$2` (every machine
/// when NULL) or only child `$3`: id, state, result, error.
const CHILD_RESULTS: &str = "
SELECT id, state, result::text, error FROM jetpack_tasks
WHERE parent_id = $1 AND awaited = 'done'
  AND ($2::text IS NULL OR left(kind, length($2) + 1) = $2 || '.')
  AND ($3::bigint IS NULL OR id = $3)
ORDER BY id";

#[async_trait]
impl crate::driver::Workflows for Postgres {
    /// Inserts children of task `parent` in the step's transaction.
    async fn insert_children(
        db: &mut PgConnection,
        parent: i64,
        awaited: Option<&str>,
        steps: Vec<Encoded>,
    ) -> Result<Vec<i64>, Error> {
        let kinds: Vec<String> = steps.iter().map(Encoded::kind).collect();
        let priorities: Vec<i16> = steps.iter().map(|s| i16::from(s.priority)).collect();
        let scopes: Vec<Option<&str>> = steps.iter().map(|s| s.scope.as_deref()).collect();
        let json: Vec<&str> = steps.iter().map(|s| s.json.as_str()).collect();
        Ok(sqlx::query_scalar(INSERT_CHILDREN)
            .bind(json)
            .bind(kinds)
            .bind(parent)
            .bind(awaited)
            .bind(priorities)
            .bind(scopes)
            .fetch_all(db)
            .await?)
    }

    async fn detach_children(db: &mut PgConnection, parent: i64) -> Result<(), Error> {
        crate::driver::detach_children::<Postgres>(db, DETACH_CHILDREN, parent).await
    }

    async fn child_results(
        db: &PgHandle,
        parent: i64,
        machine: Option<&str>,
        child: Option<i64>,
    ) -> Result<Vec<ChildRow>, Error> {
        crate::driver::child_results(&db.pool, CHILD_RESULTS, parent, machine, child).await
    }

    fn signal<'e, E>(
        db: E,
        to: SignalTo,
        name: &'static str,
        payload: String,
    ) -> BoxFuture<'e, Result<Delivery, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let (task, key) = to.parts();
            let verdict: String =
                sqlx::query_scalar("SELECT jetpack_signal($1, $2, $3, $4::text::jsonb)")
                    .bind(task)
                    .bind(key)
                    .bind(name)
                    .bind(payload)
                    .fetch_one(db)
                    .await?;
            Delivery::of(&verdict)
        })
    }

    async fn expire_waits(db: &PgHandle, limit: usize) -> Result<u64, Error> {
        let done = sqlx::query(EXPIRE_WAITS)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&db.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn states(db: &PgHandle, ids: &[i64]) -> Result<Vec<(i64, String)>, Error> {
        Ok(
            sqlx::query_as("SELECT id, state FROM jetpack_tasks WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&db.pool)
                .await?,
        )
    }
}
