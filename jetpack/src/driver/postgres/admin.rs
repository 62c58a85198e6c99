//! PostgreSQL: the admin API's statements ([`AdminStatements`](crate::driver::AdminStatements)).

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

impl crate::driver::AdminStatements for Postgres {
    /// Task `$1`, for `find`.
    const FIND: &'static str = concat!(task_columns!(), " FROM jetpack_tasks WHERE id = $1");

    const RECORDED_GRAPH: &'static str = "SELECT graph::text FROM jetpack_machines WHERE name = $1";

    /// Every recorded graph, by machine name.
    const RECORDED_GRAPHS: &'static str = "SELECT graph::text FROM jetpack_machines ORDER BY name";

    /// The children of task `$1`, by id (at most 100).
    const ADMIN_CHILDREN: &'static str = concat!(
        task_columns!(),
        " FROM jetpack_tasks WHERE parent_id = $1 ORDER BY id LIMIT 100"
    );

    /// The live tasks holding key `$1`, unique or for signals, by id (at most
    /// 100), each read through its partial index.
    const ADMIN_BY_KEY: &'static str = concat!(
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
    const ADMIN_EDIT: &'static str = "
    UPDATE jetpack_tasks SET step = $2::text::jsonb, updated_at = now()
    WHERE id = $1 AND state IN ('ready', 'parked') AND (locked_by IS NULL OR lease_until <= now())";

    /// Counts per step and state, of every row.
    const ADMIN_COUNTS: &'static str = counts_of!("jetpack_tasks");

    /// The lowest and the highest id, through the primary key.
    const ADMIN_ID_SPAN: &'static str =
        "SELECT (SELECT min(id) FROM jetpack_tasks), (SELECT max(id) FROM jetpack_tasks)";

    /// Counts per step and state of the tasks with ids in
    /// `[$1 + i * $2, $1 + i * $2 + 20)` for `i` in `0..$3`: one range of the
    /// primary key per stratum.
    /// (The `LIMIT` tells the planner how few rows a range holds: without it, it
    /// guessed a tenth of the table per range and compiled the plan with JIT.)
    const ADMIN_SAMPLE: &'static str = counts_of!(
        "generate_series(0, $3 - 1) g, LATERAL (
             SELECT kind, state, locked_by, lease_until, wakeup_at FROM jetpack_tasks t
             WHERE t.id >= $1 + g * $2 AND t.id < $1 + g * $2 + 20
             LIMIT 20) t"
    );

    /// Parked and waiting tasks per step through their partial indexes, at most
    /// `$1` rows of each.
    const ADMIN_INDEXED: &'static str = "
    SELECT kind, 'parked', count(*) FROM (
        SELECT kind FROM jetpack_tasks WHERE state = 'parked' LIMIT $1) p GROUP BY kind
    UNION ALL
    SELECT kind, 'waiting', count(*) FROM (
        SELECT kind FROM jetpack_tasks WHERE state = 'waiting' LIMIT $1) w GROUP BY kind";

    /// The tasks a filter takes.
    const ADMIN_LIST: &'static str = admin_list!("");

    /// [`ADMIN_LIST`] for parked tasks: the condition written out, so that the
    /// planner reads them through their partial index (a bound state it cannot
    /// match with the index's `WHERE`).
    const ADMIN_LIST_PARKED: &'static str = admin_list!("state = 'parked' AND ");

    /// Resumes the parked tasks a filter takes.
    const ADMIN_RESUME: &'static str = concat!(
        "UPDATE jetpack_tasks SET error = NULL WHERE state = 'parked' AND ",
        admin_filter!()
    );

    /// Cancels the live tasks a filter takes, with reason `$6`.
    const ADMIN_CANCEL: &'static str = concat!(
        "UPDATE jetpack_tasks SET state = 'cancelled', error = $6, finished_at = now(), updated_at = now()
    WHERE state IN ('ready', 'waiting', 'parked') AND ",
        admin_filter!()
    );

    /// Deletes the finished and cancelled tasks a filter takes.
    const ADMIN_PURGE: &'static str = concat!(
        "DELETE FROM jetpack_tasks WHERE state IN ('finished', 'cancelled') AND ",
        admin_filter!()
    );

    /// The ready and parked tasks a filter takes: id, fence, step.
    const ADMIN_REDRIVABLE: &'static str = concat!(
        "SELECT id, fence, step::text FROM jetpack_tasks WHERE state IN ('ready', 'parked') AND ",
        admin_filter!(),
        " ORDER BY id"
    );

    type Found = FoundRow;

    fn task_row(row: FoundRow) -> Result<TaskRow, Error> {
        task_row(row)
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
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
}
