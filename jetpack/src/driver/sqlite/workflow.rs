//! SQLite: workflows ([`Workflows`](crate::driver::Workflows)): children, signals, waits.

use super::*;

/// Makes up to `?1` waiting tasks whose deadline passed ready, with no signal.
const EXPIRE_WAITS: &str = concat!(
    "UPDATE jetpack_tasks SET state = 'ready', signal = NULL, updated_at = ",
    now!(),
    " WHERE id IN (SELECT id FROM jetpack_tasks WHERE state = 'waiting' AND wakeup_at <= ",
    now!(),
    " ORDER BY wakeup_at LIMIT ?1)"
);

/// Sends signal `?3` with payload `?4` to task `?1` or key `?2`, in one
/// statement (so that it runs on any executor): the row it inserts records
/// what it found, and the table's trigger delivers it to the waiting tasks
/// and deletes it, unless it is to be kept. SQLite has one writer at a time:
/// nothing changes between the look and the trigger.
const SIGNAL: &str = "
INSERT INTO jetpack_signals (task_id, key, name, payload, verdict)
SELECT ?1, ?2, ?3, ?4,
       CASE WHEN EXISTS (SELECT 1 FROM jetpack_tasks
                         WHERE state = 'waiting' AND wait_for = ?3
                           AND (id = ?1 OR wait_key = ?2))
                THEN 'delivered'
            WHEN ?1 IS NULL THEN 'kept'
            ELSE coalesce((SELECT CASE WHEN state IN ('finished', 'cancelled') THEN state
                                       ELSE 'kept' END
                           FROM jetpack_tasks WHERE id = ?1), 'not found')
       END
RETURNING verdict";

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

#[async_trait]
impl crate::driver::Workflows for Sqlite {
    /// Inserts children of task `parent` in the step's transaction.
    async fn insert_children(
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

    async fn detach_children(db: &mut SqliteConnection, parent: i64) -> Result<(), Error> {
        crate::driver::detach_children::<Sqlite>(db, DETACH_CHILDREN, parent).await
    }

    async fn child_results(
        db: &SqliteHandle,
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
            let verdict: String = sqlx::query_scalar(SIGNAL)
                .bind(task)
                .bind(key)
                .bind(name)
                .bind(payload)
                .fetch_one(db)
                .await?;
            let delivery = Delivery::of(&verdict)?;
            if delivery == Delivery::Delivered {
                LOCAL_WAKE.notify_waiters();
            }
            Ok(delivery)
        })
    }

    async fn expire_waits(db: &SqliteHandle, limit: usize) -> Result<u64, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut writer = db.writer().await?;
        let done = sqlx::query(EXPIRE_WAITS)
            .bind(limit)
            .execute(&mut writer.db)
            .await;
        writer.done(done.map(|d| d.rows_affected()).map_err(Error::from))
    }

    async fn states(db: &SqliteHandle, ids: &[i64]) -> Result<Vec<(i64, String)>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, state FROM jetpack_tasks WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(&ids)?)
        .fetch_all(&db.pool)
        .await?)
    }
}
