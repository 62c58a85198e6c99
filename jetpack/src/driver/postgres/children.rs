//! PostgreSQL: a step's children, inserted in its transaction, detached, and read by its join.

use super::*;

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

/// Inserts children of task `parent` in the step's transaction.
pub(crate) async fn insert_children(
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

/// Detaches the awaited children of `parent` (its step did not join them).
pub(crate) async fn detach_children(db: &mut PgConnection, parent: i64) -> Result<(), Error> {
    sqlx::query(DETACH_CHILDREN)
        .bind(parent)
        .execute(db)
        .await?;
    Ok(())
}

/// The results of the children of `parent` its join counted.
pub(crate) async fn child_results(
    pool: &PgPool,
    parent: i64,
    machine: Option<&str>,
    child: Option<i64>,
) -> Result<Vec<crate::driver::ChildRow>, Error> {
    Ok(sqlx::query_as(CHILD_RESULTS)
        .bind(parent)
        .bind(machine)
        .bind(child)
        .fetch_all(pool)
        .await?)
}
