//! SQLite: enqueues ([`Enqueues`](crate::driver::Enqueues)) and the keyed statements.

use super::*;

/// Inserts step `?1` of kind `?2`, priority `?5` and concurrency scope `?7`,
/// due after `?3` µs or at `?4`; with unique key `?6`, only if no live task
/// holds it.
pub(super) const INSERT: &str = concat!(
    "INSERT INTO jetpack_tasks (step, kind, wakeup_at, priority, unique_key, limit_scope)
     VALUES (?1, ?2, coalesce(?4, ",
    now!("?3"),
    "), ?5, ?6, ?7)
     ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('ready', 'waiting', 'parked')
     DO NOTHING
     RETURNING id"
);

/// The live task holding unique key `?1`, and whether it has not started.
/// (The enqueue's transaction holds the write lock since its insert.)
const HOLDER: &str = concat!(
    "SELECT id, state = 'ready' AND (lease_until IS NULL OR lease_until <= ",
    now!(),
    ") FROM jetpack_tasks
     WHERE unique_key = ?1 AND state IN ('ready', 'waiting', 'parked')"
);

/// Replaces the step of task `?1` (`?2`, of kind `?3`), due after `?4` µs or
/// at `?5`, with priority `?6`, as on PostgreSQL.
const REPLACE: &str = concat!(
    "UPDATE jetpack_tasks
     SET step = ?2, kind = ?3, priority = ?6, limit_scope = ?7, tried = 0, wakeup_at = coalesce(?5, ",
    now!("?4"),
    "), fence = min(fence, 9007199254740990) + 1, locked_by = NULL, lease_until = NULL,
         updated_at = ",
    now!(),
    " WHERE id = ?1"
);

/// Takes the unique key from task `?1`.
const DETACH: &str = "UPDATE jetpack_tasks SET unique_key = NULL WHERE id = ?1";

/// Takes throttle `?1`'s window for `?2` µs if it is free; a row if it was.
const TAKE_WINDOW: &str = concat!(
    "INSERT INTO jetpack_throttles (key, until) VALUES (?1, ",
    now!("?2"),
    ") ON CONFLICT (key) DO UPDATE SET until = excluded.until, task_id = NULL
     WHERE jetpack_throttles.until <= ",
    now!(),
    " RETURNING key"
);

/// The task that took throttle `?1`'s window.
const WINDOW_TASK: &str = "SELECT task_id FROM jetpack_throttles WHERE key = ?1";

/// Records task `?2` as the one that took throttle `?1`'s window.
const SET_WINDOW_TASK: &str = "UPDATE jetpack_throttles SET task_id = ?2 WHERE key = ?1";

/// Inserts `?1`, an array of `[kind, step]` pairs, in array order.
///
/// `ORDER BY rowid`, not `key`: json_each's rowid follows the document order
/// and json_each reports that order as its own, so SQLite sorts nothing
/// (ordered by `key`, it sorted every batch: 1.6 ms of 19 for 10,000 rows).
pub(super) const INSERT_MANY: &str = "INSERT INTO jetpack_tasks (kind, step, priority, limit_scope)
     SELECT value ->> 0, value -> 1, value ->> 2, value ->> 3 FROM json_each(?1) ORDER BY rowid";

/// `INSERT_MANY` when every step is of kind `?2` (so of priority `?3`), with
/// no concurrency scope: `?1` is an array of steps.
pub(super) const INSERT_MANY_OF_KIND: &str = "INSERT INTO jetpack_tasks (kind, step, priority)
     SELECT ?2, value, ?3 FROM json_each(?1) ORDER BY rowid";

#[async_trait]
impl KeyedStatements for SqliteConnection {
    async fn insert_unless_held(&mut self, task: &NewTask) -> Result<Option<i64>, Error> {
        Ok(sqlx::query_scalar(INSERT)
            .bind(&task.step.json)
            .bind(task.step.kind())
            .bind(task.delay)
            .bind(task.at.map(time_text))
            .bind(task.step.priority)
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
            .bind(task.at.map(time_text))
            .bind(task.step.priority)
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
        crate::driver::take_window::<Sqlite>(self, &WINDOW, key, window).await
    }

    async fn set_window_task(&mut self, key: &str, id: i64) -> Result<(), Error> {
        crate::driver::set_window_task::<Sqlite>(self, &WINDOW, key, id).await
    }
}

impl crate::driver::Enqueues for Sqlite {
    fn insert<'e, E>(db: E, step: Encoded, wakeup: Wakeup) -> BoxFuture<'e, Result<i64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let (delay, at) = wakeup_binds(&wakeup)?;
            let kind = step.kind();
            let id = sqlx::query_scalar(INSERT)
                .bind(step.json)
                .bind(kind)
                .bind(delay)
                .bind(at.map(time_text))
                .bind(step.priority)
                .bind(None::<String>)
                .bind(step.scope)
                .fetch_one(db)
                .await?;
            LOCAL_WAKE.notify_waiters();
            Ok(id)
        })
    }

    fn insert_many<'e, E>(db: E, steps: Vec<Encoded>) -> BoxFuture<'e, Result<Vec<i64>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            // Each step is a JSON document already: joined, they are a JSON
            // array. Usually all are of one kind, bound once; otherwise each
            // goes as a [kind, step] pair.
            let query = if one_kind(&steps) {
                let json: Vec<&str> = steps.iter().map(|s| s.json.as_str()).collect();
                let array = format!("[{}]", json.join(","));
                let kind = steps.first().map(Encoded::kind).unwrap_or_default();
                let priority = steps.first().map_or(0, |s| s.priority);
                sqlx::query(INSERT_MANY_OF_KIND)
                    .bind(array)
                    .bind(kind)
                    .bind(priority)
            } else {
                sqlx::query(INSERT_MANY).bind(rows(&steps))
            };
            let done = query.execute(db).await?;
            // One statement holds SQLite's write lock throughout, and AUTOINCREMENT
            // gives its rows consecutive ids in insertion order, ending at the
            // last one: no need to stream every id back (each row returned is a
            // hand-off from the connection's thread).
            let last = done.last_insert_rowid();
            let n = i64::try_from(done.rows_affected()).unwrap_or(i64::MAX);
            LOCAL_WAKE.notify_waiters();
            Ok((last - n + 1..=last).collect())
        })
    }

    fn keyed(db: &mut SqliteConnection) -> &mut dyn KeyedStatements {
        db
    }

    fn enqueued() {
        LOCAL_WAKE.notify_waiters();
    }
}

/// The statements of a throttle's window.
const WINDOW: crate::driver::WindowStatements = crate::driver::WindowStatements {
    take: TAKE_WINDOW,
    task: WINDOW_TASK,
    set: SET_WINDOW_TASK,
};
