//! SQLite: a step's children, inserted in its transaction, detached, and read by its join.

use super::*;

/// Inserts children of task `?2`, awaited by its join as `?3` says (NULL:
/// detached): `?1` is an array of `[kind, step, priority, scope]`, in array
/// order.
const INSERT_CHILDREN: &str = "INSERT INTO jetpack_tasks (kind, step, priority, limit_scope, parent_id, awaited)
     SELECT value ->> 0, value -> 1, value ->> 2, value ->> 3, ?2, ?3 FROM json_each(?1) ORDER BY rowid";

/// Children of `?1` its step spawned awaited but will not join: detached.
const DETACH_CHILDREN: &str = "UPDATE jetpack_tasks SET awaited = NULL
     WHERE parent_id = ?1 AND awaited IN ('wait', 'fail', 'error')";

/// The children of `?1` its join counted, of machine `?2` (every machine when
/// NULL) or only child `?3`: id, state, result, error.
const CHILD_RESULTS: &str = "SELECT id, state, result, error FROM jetpack_tasks
     WHERE parent_id = ?1 AND awaited = 'done'
       AND (?2 IS NULL OR substr(kind, 1, length(?2) + 1) = ?2 || '.')
       AND (?3 IS NULL OR id = ?3)
     ORDER BY id";

/// `steps` as one JSON array of `[kind, step, priority, scope]`: each step is
/// a JSON document already.
pub(super) fn rows(steps: &[Encoded]) -> String {
    let rows: Vec<String> = steps
        .iter()
        .map(|s| {
            let kind = serde_json::Value::from(s.kind());
            let scope = serde_json::Value::from(s.scope.as_deref());
            format!("[{kind},{},{},{scope}]", s.json, s.priority)
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// Inserts children of task `parent` in the step's transaction.
pub(crate) async fn insert_children(
    db: &mut SqliteConnection,
    parent: i64,
    awaited: Option<&str>,
    steps: Vec<Encoded>,
) -> Result<Vec<i64>, Error> {
    let done = sqlx::query(INSERT_CHILDREN)
        .bind(rows(&steps))
        .bind(parent)
        .bind(awaited)
        .execute(db)
        .await?;
    // Consecutive ids, as in `insert_many`.
    let last = done.last_insert_rowid();
    let n = i64::try_from(done.rows_affected()).unwrap_or(i64::MAX);
    Ok((last - n + 1..=last).collect())
}

/// Detaches the awaited children of `parent` (its step did not join them).
pub(crate) async fn detach_children(db: &mut SqliteConnection, parent: i64) -> Result<(), Error> {
    sqlx::query(DETACH_CHILDREN)
        .bind(parent)
        .execute(db)
        .await?;
    Ok(())
}

/// The results of the children of `parent` its join counted.
pub(crate) async fn child_results(
    pool: &SqlitePool,
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
