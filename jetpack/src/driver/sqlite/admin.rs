//! SQLite: the admin API's statements ([`AdminStatements`](crate::driver::AdminStatements)).

use super::*;

/// The columns of a task row ([`FoundRow`]), its state as `find` tells it.
macro_rules! task_columns {
    () => {
        concat!(
            "SELECT id, CASE WHEN state = 'ready' AND locked_by IS NOT NULL AND lease_until > ",
            now!(),
            " THEN 'running' WHEN state = 'ready' AND wakeup_at > ",
            now!(),
            " THEN 'scheduled' ELSE state END,
            step, wakeup_at, tried, error, locked_by, lease_until, finished_at, parent_id, result,
            priority, unique_key"
        )
    };
}

/// A task row as [`FIND`] selects it; times as the table's text.
type FoundRow = (
    i64,
    String,
    String,
    String,
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    i64,
    Option<String>,
);

/// A [`TaskRow`] from a [`FoundRow`].
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
    let time = |column: &str, text: &str| read_time(text, || format!("{column} of task {id}"));
    Ok(TaskRow {
        id,
        state: TaskState::parse(&state)?,
        step,
        wakeup_at: time("wakeup_at", &wakeup_at)?,
        tried,
        error,
        locked_by,
        lease_until: lease_until.map(|t| time("lease_until", &t)).transpose()?,
        finished_at: finished_at.map(|t| time("finished_at", &t)).transpose()?,
        parent_id,
        result,
        priority: u8::try_from(priority).unwrap_or(u8::MAX),
        unique_key,
    })
}

/// The tasks an admin filter takes (see the PostgreSQL backend): at step
/// `?1`, of machine `?2`, in state `?3`, with an error containing `?4`, not
/// updated for `?5` µs (each when not NULL), not running.
macro_rules! admin_filter {
    () => {
        concat!(
            "(?1 IS NULL OR kind = ?1)
  AND (?2 IS NULL OR substr(kind, 1, instr(kind, '.') - 1) = ?2)
  AND (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR instr(error, ?4) > 0)
  AND (?5 IS NULL OR updated_at < strftime('%Y-%m-%d %H:%M:%f', 'now', (-?5 / 1000000.0) || ' seconds'))
  AND NOT (locked_by IS NOT NULL AND lease_until > ",
            now!(),
            ")"
        )
    };
}

/// Counts per step and state of the rows `FROM $from`.
macro_rules! counts_of {
    ($from:literal) => {
        concat!(
            "SELECT kind, CASE WHEN state = 'ready' AND locked_by IS NOT NULL AND lease_until > ",
            now!(),
            " THEN 'running' WHEN state = 'ready' AND wakeup_at > ",
            now!(),
            " THEN 'scheduled' ELSE state END AS s, count(*) FROM ",
            $from,
            " GROUP BY 1, 2 ORDER BY 1, 2"
        )
    };
}

/// The tasks a filter takes, after id `?6`, at most `?7`, with
/// `$also` ANDed first (running tasks are listed too: the filter's last
/// condition is for changes).
macro_rules! admin_list {
    ($also:literal) => {
        concat!(
            task_columns!(),
            " FROM jetpack_tasks
     WHERE ",
            $also,
            "(?1 IS NULL OR kind = ?1)
       AND (?2 IS NULL OR substr(kind, 1, instr(kind, '.') - 1) = ?2)
       AND (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR instr(error, ?4) > 0)
       AND (?5 IS NULL OR updated_at < strftime('%Y-%m-%d %H:%M:%f', 'now', (-?5 / 1000000.0) || ' seconds'))
       AND (?6 IS NULL OR id > ?6)
     ORDER BY id LIMIT ?7"
        )
    };
}

/// Moves tasks `?1` (a JSON array of `[id, fence, step]`) to their steps,
/// of kind `?2` (see the PostgreSQL backend).
const ADMIN_REDRIVE: &str = concat!(
    "UPDATE jetpack_tasks
     SET step = json(r.value ->> 2), kind = ?2, tried = 0, error = NULL, state = 'ready',
         wakeup_at = ",
    now!(),
    ", locked_by = NULL, lease_until = NULL, limit_scope = NULL, updated_at = ",
    now!(),
    ", fence = min(fence, 9007199254740990) + 1
     FROM json_each(?1) r
     WHERE jetpack_tasks.id = r.value ->> 0 AND jetpack_tasks.fence = r.value ->> 1
       AND jetpack_tasks.state IN ('ready', 'parked')
       AND NOT (jetpack_tasks.locked_by IS NOT NULL AND jetpack_tasks.lease_until > ",
    now!(),
    ")"
);

/// Resumes a parked task (the table's triggers do the rest).
const RESUME: &str = "UPDATE jetpack_tasks SET error = NULL WHERE id = ?1 AND state = 'parked'";

/// Cancels task `?1` with reason `?2` when it is live, and, when `?3`, its
/// live descendants; returns the state of each task written, in one statement
/// (so that it runs on any executor): task `?1` is written unchanged when it
/// has ended. The table's trigger releases the leases and raises the fences.
const CANCEL: &str = "
WITH RECURSIVE family(id) AS (
    SELECT ?1
    UNION
    SELECT c.id FROM jetpack_tasks c JOIN family f ON c.parent_id = f.id WHERE ?3
)
UPDATE jetpack_tasks
SET state = CASE WHEN state IN ('ready', 'waiting', 'parked') THEN 'cancelled' ELSE state END,
    error = CASE WHEN state NOT IN ('ready', 'waiting', 'parked') THEN error
                 WHEN id = ?1 THEN ?2
                 ELSE 'an ancestor (task ' || ?1 || ') was cancelled: ' || ?2 END
WHERE id IN family AND (id = ?1 OR state IN ('ready', 'waiting', 'parked'))
RETURNING id, state";

impl crate::driver::AdminStatements for Sqlite {
    /// A task's row for `find`, with running and scheduled told apart from ready.
    const FIND: &'static str = concat!(task_columns!(), " FROM jetpack_tasks WHERE id = ?1");

    /// The graph machine `$1` has recorded.
    const RECORDED_GRAPH: &'static str = "SELECT graph FROM jetpack_machines WHERE name = ?1";

    /// Every recorded graph, by machine name.
    const RECORDED_GRAPHS: &'static str = "SELECT graph FROM jetpack_machines ORDER BY name";

    /// The children of task `?1`, by id (at most 100).
    const ADMIN_CHILDREN: &'static str = concat!(
        task_columns!(),
        " FROM jetpack_tasks WHERE parent_id = ?1 ORDER BY id LIMIT 100"
    );

    /// The live tasks holding key `?1`, unique or for signals, by id (at most
    /// 100), each read through its partial index.
    const ADMIN_BY_KEY: &'static str = concat!(
        task_columns!(),
        " FROM jetpack_tasks WHERE unique_key = ?1 AND state IN ('ready', 'waiting', 'parked') UNION ",
        task_columns!(),
        " FROM jetpack_tasks WHERE wait_key = ?1 AND state = 'waiting' ORDER BY 1 LIMIT 100"
    );

    /// Stores step `?2` for task `?1` when it is ready or parked and no worker
    /// holds it (the kind follows by trigger; the history records the edit).
    const ADMIN_EDIT: &'static str = concat!(
        "UPDATE jetpack_tasks SET step = ?2, updated_at = ",
        now!(),
        " WHERE id = ?1 AND state IN ('ready', 'parked') AND (locked_by IS NULL OR lease_until <= ",
        now!(),
        ")"
    );

    /// Counts per step and state, of every row.
    const ADMIN_COUNTS: &'static str = counts_of!("jetpack_tasks");

    /// The lowest and the highest id, through the primary key (`min` and `max`
    /// in one `SELECT` would read the table).
    const ADMIN_ID_SPAN: &'static str =
        "SELECT (SELECT min(id) FROM jetpack_tasks), (SELECT max(id) FROM jetpack_tasks)";

    /// Counts per step and state of the tasks with ids in `[?1 + i * ?2, ?1 + i
    /// * ?2 + 20)` for `i` in `0..?3`: one range of the rowid per stratum (the
    /// `CROSS JOIN` keeps the strata the outer loop).
    const ADMIN_SAMPLE: &'static str = counts_of!(
        "(WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < ?3 - 1)
          SELECT i FROM g) g
         CROSS JOIN jetpack_tasks t ON t.id >= ?1 + g.i * ?2 AND t.id < ?1 + g.i * ?2 + 20"
    );

    /// Parked and waiting tasks per step through their partial indexes, at most
    /// `?1` rows of each (the states written out, for SQLite to match the indexes).
    const ADMIN_INDEXED: &'static str = "
    SELECT kind, 'parked', count(*) FROM (
        SELECT kind FROM jetpack_tasks WHERE state = 'parked' LIMIT ?1) GROUP BY kind
    UNION ALL
    SELECT kind, 'waiting', count(*) FROM (
        SELECT kind FROM jetpack_tasks WHERE state = 'waiting' LIMIT ?1) GROUP BY kind";

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

    /// Cancels the live tasks a filter takes, with reason `?6`.
    const ADMIN_CANCEL: &'static str = concat!(
        "UPDATE jetpack_tasks SET state = 'cancelled', error = ?6, finished_at = ",
        now!(),
        ", updated_at = ",
        now!(),
        " WHERE state IN ('ready', 'waiting', 'parked') AND ",
        admin_filter!()
    );

    /// Deletes the finished and cancelled tasks a filter takes.
    const ADMIN_PURGE: &'static str = concat!(
        "DELETE FROM jetpack_tasks WHERE state IN ('finished', 'cancelled') AND ",
        admin_filter!()
    );

    /// The ready and parked tasks a filter takes: id, fence, step.
    const ADMIN_REDRIVABLE: &'static str = concat!(
        "SELECT id, fence, step FROM jetpack_tasks WHERE state IN ('ready', 'parked') AND ",
        admin_filter!(),
        " ORDER BY id"
    );

    type Found = FoundRow;

    fn task_row(row: FoundRow) -> Result<TaskRow, Error> {
        task_row(row)
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn changed() {
        LOCAL_WAKE.notify_waiters();
    }

    fn resume<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<bool, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let done = sqlx::query(RESUME).bind(id).execute(db).await?;
            LOCAL_WAKE.notify_waiters();
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
            let written: Vec<(i64, String)> = sqlx::query_as(CANCEL)
                .bind(id)
                .bind(reason)
                .bind(descendants)
                .fetch_all(db)
                .await?;
            let state = written.iter().find(|(task, _)| *task == id);
            let answer = Cancel::of(state.map(|(_, state)| state.as_str()));
            for (task, state) in &written {
                if state == "cancelled" && (*task != id || answer == Cancel::Cancelled) {
                    // A worker of this process may run it; workers of others
                    // find out at their next heartbeat.
                    let _ = local_cancels().send(*task);
                }
            }
            Ok(answer)
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
            let moves: Vec<(i64, i64, serde_json::Value)> = (moves.into_iter())
                .map(|(id, fence, step)| {
                    let step = serde_json::from_str(&step).map_err(Error::Serialize)?;
                    Ok((id, fence, step))
                })
                .collect::<Result<_, Error>>()?;
            let done = sqlx::query(ADMIN_REDRIVE)
                .bind(json_list(&moves)?)
                .bind(kind)
                .execute(db)
                .await?;
            LOCAL_WAKE.notify_waiters();
            Ok(done.rows_affected())
        })
    }
}
