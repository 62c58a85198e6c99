//! PostgreSQL: the statements of the calls on a caller's executor ([`Backend`](crate::driver::Backend)):
//! find, resume, cancel, signals, inserts, keyed enqueues, the admin API's and the history's
//! reads.

use super::*;

/// The columns of a task's row, as [`FoundRow`] reads them: running and
/// scheduled told apart from ready.
macro_rules! task_columns {
    () => {
        "
SELECT id, CASE WHEN state = 'ready' AND locked_by IS NOT NULL AND lease_until > now() THEN 'running'
            WHEN state = 'ready' AND wakeup_at > now() THEN 'scheduled'
            ELSE state END,
       step::text, wakeup_at, tried, error, locked_by, lease_until, finished_at,
       parent_id, result::text, priority, unique_key"
    };
}

/// The tasks an admin filter takes: at step `$1`, of machine `$2`, in state
/// `$3`, with an error containing `$4`, not updated for `$5` µs (each when
/// not NULL).
macro_rules! admin_filter {
    () => {
        "($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR split_part(kind, '.', 1) = $2)
  AND ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR strpos(error, $4) > 0)
  AND ($5::bigint IS NULL OR updated_at < now() - $5 * interval '1 microsecond')
  AND NOT (locked_by IS NOT NULL AND lease_until > now())"
    };
}

/// Task `$1`, for `find`.
const FIND: &str = concat!(task_columns!(), " FROM jetpack_tasks WHERE id = $1");

/// Tells this process's workers of a change by hand: nothing to do on
/// PostgreSQL, whose triggers notify every worker.
fn wake_local() {}

/// The graph machine `$1` has recorded.
const RECORDED_GRAPH: &str = "SELECT graph::text FROM jetpack_machines WHERE name = $1";

/// Every recorded graph, by machine name.
const RECORDED_GRAPHS: &str = "SELECT graph::text FROM jetpack_machines ORDER BY name";

/// The children of task `$1`, by id (at most 100).
const ADMIN_CHILDREN: &str = concat!(
    task_columns!(),
    " FROM jetpack_tasks WHERE parent_id = $1 ORDER BY id LIMIT 100"
);

/// The live tasks holding key `$1`, unique or for signals, by id (at most
/// 100), each read through its partial index.
const ADMIN_BY_KEY: &str = concat!(
    task_columns!(),
    " FROM jetpack_tasks WHERE unique_key = $1 AND state IN ('ready', 'waiting', 'parked')
UNION
",
    task_columns!(),
    " FROM jetpack_tasks WHERE wait_key = $1 AND state = 'waiting'
ORDER BY 1 LIMIT 100"
);

/// Stores step `$2` for task `$1` when it is ready or parked and no worker
/// holds it (the kind follows by trigger; the history records the edit).
const ADMIN_EDIT: &str = "
UPDATE jetpack_tasks SET step = $2::text::jsonb, updated_at = now()
WHERE id = $1 AND state IN ('ready', 'parked') AND (locked_by IS NULL OR lease_until <= now())";

/// The history since `$1`, per minute and edge, `[[unix seconds, from,
/// to, moved, finished, failed], ..]` by minute (`from` and `to` are NULL
/// for what is not a move). Read through the BRIN index on `at`, so that a
/// read of the last minutes costs what those minutes hold.
const ACTIVITY: &str = "
SELECT coalesce(json_agg(json_build_array(extract(epoch FROM m)::int8, f, t, moved, finished, failed)
                ORDER BY m, f, t), '[]')::text
FROM (SELECT date_trunc('minute', at) AS m,
             CASE WHEN event IN ('next', 'wait', 'join') THEN from_kind END AS f,
             CASE WHEN event IN ('next', 'wait', 'join') THEN to_kind END AS t,
             count(*) FILTER (WHERE event IN ('next', 'wait', 'join')) AS moved,
             count(*) FILTER (WHERE event = 'finished') AS finished,
             count(*) FILTER (WHERE event IN ('retry', 'parked')) AS failed
      FROM jetpack_history WHERE at >= $1 GROUP BY 1, 2, 3) per";

/// Counts per step and state of the rows `FROM $from`, running and scheduled
/// told apart from ready. Grouped by the plain columns, so that PostgreSQL
/// hashes the groups: a `CASE` in the `GROUP BY` made it sort the whole table
/// instead (a million tasks: 185 ms against 385).
macro_rules! counts_of {
    ($from:literal) => {
        concat!(
            "SELECT kind, s, n FROM (
    SELECT kind, state,
           count(*) FILTER (WHERE state = 'ready'
                              AND coalesce(locked_by IS NOT NULL AND lease_until > now(), false)) AS running,
           count(*) FILTER (WHERE state = 'ready' AND wakeup_at > now()
                              AND NOT coalesce(locked_by IS NOT NULL AND lease_until > now(), false)) AS scheduled,
           count(*) AS total
    FROM ",
            $from,
            " GROUP BY kind, state
) g, LATERAL (VALUES ('running', running), ('scheduled', scheduled),
                     (state, total - running - scheduled)) v(s, n)
WHERE n > 0 ORDER BY 1, 2"
        )
    };
}

/// Counts per step and state, of every row.
const ADMIN_COUNTS: &str = counts_of!("jetpack_tasks");

/// The lowest and the highest id, through the primary key.
const ADMIN_ID_SPAN: &str =
    "SELECT (SELECT min(id) FROM jetpack_tasks), (SELECT max(id) FROM jetpack_tasks)";

/// Counts per step and state of the tasks with ids in
/// `[$1 + i * $2, $1 + i * $2 + 20)` for `i` in `0..$3`: one range of the
/// primary key per stratum.
/// (The `LIMIT` tells the planner how few rows a range holds: without it, it
/// guessed a tenth of the table per range and compiled the plan with JIT.)
const ADMIN_SAMPLE: &str = counts_of!(
    "generate_series(0, $3 - 1) g, LATERAL (
         SELECT kind, state, locked_by, lease_until, wakeup_at FROM jetpack_tasks t
         WHERE t.id >= $1 + g * $2 AND t.id < $1 + g * $2 + 20
         LIMIT 20) t"
);

/// Parked and waiting tasks per step through their partial indexes, at most
/// `$1` rows of each.
const ADMIN_INDEXED: &str = "
SELECT kind, 'parked', count(*) FROM (
    SELECT kind FROM jetpack_tasks WHERE state = 'parked' LIMIT $1) p GROUP BY kind
UNION ALL
SELECT kind, 'waiting', count(*) FROM (
    SELECT kind FROM jetpack_tasks WHERE state = 'waiting' LIMIT $1) w GROUP BY kind";

/// The tasks a filter takes, after id `$6`, at most `$7`, with
/// `$also` ANDed first (running tasks are listed too: the filter's last
/// condition is for changes).
macro_rules! admin_list {
    ($also:literal) => {
        concat!(
            task_columns!(),
            " FROM jetpack_tasks
WHERE ",
            $also,
            "($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR split_part(kind, '.', 1) = $2)
  AND ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR strpos(error, $4) > 0)
  AND ($5::bigint IS NULL OR updated_at < now() - $5 * interval '1 microsecond')
  AND ($6::bigint IS NULL OR id > $6)
ORDER BY id LIMIT $7"
        )
    };
}

/// The tasks a filter takes.
const ADMIN_LIST: &str = admin_list!("");

/// [`ADMIN_LIST`] for parked tasks: the condition written out, so that the
/// planner reads them through their partial index (a bound state it cannot
/// match with the index's `WHERE`).
const ADMIN_LIST_PARKED: &str = admin_list!("state = 'parked' AND ");

/// Resumes the parked tasks a filter takes.
const ADMIN_RESUME: &str = concat!(
    "UPDATE jetpack_tasks SET error = NULL WHERE state = 'parked' AND ",
    admin_filter!()
);

/// Cancels the live tasks a filter takes, with reason `$6`.
const ADMIN_CANCEL: &str = concat!(
    "UPDATE jetpack_tasks SET state = 'cancelled', error = $6, finished_at = now(), updated_at = now()
WHERE state IN ('ready', 'waiting', 'parked') AND ",
    admin_filter!()
);

/// Deletes the finished and cancelled tasks a filter takes.
const ADMIN_PURGE: &str = concat!(
    "DELETE FROM jetpack_tasks WHERE state IN ('finished', 'cancelled') AND ",
    admin_filter!()
);

/// The ready and parked tasks a filter takes: id, fence, step.
const ADMIN_REDRIVABLE: &str = concat!(
    "SELECT id, fence, step::text FROM jetpack_tasks WHERE state IN ('ready', 'parked') AND ",
    admin_filter!(),
    " ORDER BY id"
);

/// Moves tasks `$1` (still at fences `$2`, ready or parked, not running) to
/// steps `$3` of kind `$4`: due now, a full retry budget, no error, a new
/// fence. Their concurrency scope is given again by the first claim.
const ADMIN_REDRIVE: &str = "
UPDATE jetpack_tasks t
SET step = r.step::jsonb, kind = $4, tried = 0, error = NULL, state = 'ready', wakeup_at = now(),
    locked_by = NULL, lease_until = NULL, limit_scope = NULL, updated_at = now(),
    fence = least(t.fence, 9223372036854775806) + 1
FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS r(id, fence, step)
WHERE t.id = r.id AND t.fence = r.fence AND t.state IN ('ready', 'parked')
  AND NOT (t.locked_by IS NOT NULL AND t.lease_until > now())";

/// Resumes a parked task (the state trigger does the rest).
const RESUME: &str = "UPDATE jetpack_tasks SET error = NULL WHERE id = $1 AND state = 'parked'";

/// A task row as [`FIND`] selects it.
type FoundRow = (
    i64,
    String,
    String,
    DateTime<Utc>,
    i32,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<String>,
    i16,
    Option<String>,
);

/// The history of task `$1`, oldest first.
const HISTORY_OF: &str = "
SELECT id, task_id, at, event, from_kind, to_kind, step::text, attempt, worker, duration_us, error
FROM jetpack_history WHERE task_id = $1 ORDER BY id";

/// Switches the history to `$1`.
const SET_HISTORY: &str = "
INSERT INTO jetpack_config (history) VALUES ($1)
ON CONFLICT (singleton) DO UPDATE SET history = EXCLUDED.history";

/// A [`TaskRow`] from the columns of [`task_columns`].
fn task_row(row: FoundRow) -> Result<TaskRow, Error> {
    let (
        id,
        state,
        step,
        wakeup_at,
        tried,
        error,
        locked_by,
        lease_until,
        finished_at,
        parent_id,
        result,
        priority,
        unique_key,
    ) = row;
    Ok(TaskRow {
        parent_id,
        result,
        priority: u8::try_from(priority).unwrap_or(u8::MAX),
        unique_key,
        id,
        state: TaskState::parse(&state)?,
        step,
        wakeup_at,
        tried,
        error,
        locked_by,
        lease_until,
        finished_at,
    })
}

impl crate::driver::Backend for Postgres {
    admin_shared!();

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

    fn admin_redrive<'e, E>(
        db: E,
        moves: Vec<(i64, i64, String)>,
        kind: String,
    ) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let (mut ids, mut fences, mut steps) = (Vec::new(), Vec::new(), Vec::new());
            for (id, fence, step) in moves {
                ids.push(id);
                fences.push(fence);
                steps.push(step);
            }
            let done = sqlx::query(ADMIN_REDRIVE)
                .bind(ids)
                .bind(fences)
                .bind(steps)
                .bind(kind)
                .execute(db)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn resume<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<bool, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let done = sqlx::query(RESUME).bind(id).execute(db).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn cancel<'e, E>(
        db: E,
        id: i64,
        reason: String,
        descendants: bool,
    ) -> BoxFuture<'e, Result<Cancel, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let state: Option<Option<String>> =
                sqlx::query_scalar("SELECT jetpack_cancel($1, $2, $3)")
                    .bind(id)
                    .bind(reason)
                    .bind(descendants)
                    .fetch_optional(db)
                    .await?;
            Ok(Cancel::of(state.flatten().as_deref()))
        })
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

    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut migrator = sqlx::migrate!("../migrations/postgres");
            migrator.dangerous_set_table_name("_jetpack_migrations");
            migrator.run(pool).await?;
            Ok(())
        })
    }

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

    fn keyed(db: &mut PgConnection) -> &mut dyn KeyedStatements {
        db
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
}

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
        let taken: Option<String> = sqlx::query_scalar(TAKE_WINDOW)
            .bind(key)
            .bind(window)
            .fetch_optional(&mut *self)
            .await?;
        if taken.is_some() {
            return Ok(Window::Taken);
        }
        let task: Option<Option<i64>> = sqlx::query_scalar(WINDOW_TASK)
            .bind(key)
            .fetch_optional(self)
            .await?;
        Ok(Window::Held(task.flatten()))
    }

    async fn set_window_task(&mut self, key: &str, id: i64) -> Result<(), Error> {
        sqlx::query(SET_WINDOW_TASK)
            .bind(key)
            .bind(id)
            .execute(self)
            .await?;
        Ok(())
    }
}
