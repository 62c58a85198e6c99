//! SQLite: the statements of the calls on a caller's executor ([`Backend`](crate::driver::Backend)):
//! find, resume, cancel, signals, inserts, keyed enqueues, the admin API's and the history's
//! reads.

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

/// A task's row for `find`, with running and scheduled told apart from ready.
const FIND: &str = concat!(task_columns!(), " FROM jetpack_tasks WHERE id = ?1");

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

/// The graph machine `$1` has recorded.
const RECORDED_GRAPH: &str = "SELECT graph FROM jetpack_machines WHERE name = ?1";

/// Tells this process's workers of a change by hand (SQLite has no
/// notifications: other processes see it at their next poll).
fn wake_local() {
    LOCAL_WAKE.notify_waiters();
}

/// Every recorded graph, by machine name.
const RECORDED_GRAPHS: &str = "SELECT graph FROM jetpack_machines ORDER BY name";

/// The children of task `?1`, by id (at most 100).
const ADMIN_CHILDREN: &str = concat!(
    task_columns!(),
    " FROM jetpack_tasks WHERE parent_id = ?1 ORDER BY id LIMIT 100"
);

/// The live tasks holding key `?1`, unique or for signals, by id (at most
/// 100), each read through its partial index.
const ADMIN_BY_KEY: &str = concat!(
    task_columns!(),
    " FROM jetpack_tasks WHERE unique_key = ?1 AND state IN ('ready', 'waiting', 'parked') UNION ",
    task_columns!(),
    " FROM jetpack_tasks WHERE wait_key = ?1 AND state = 'waiting' ORDER BY 1 LIMIT 100"
);

/// Stores step `?2` for task `?1` when it is ready or parked and no worker
/// holds it (the kind follows by trigger; the history records the edit).
const ADMIN_EDIT: &str = concat!(
    "UPDATE jetpack_tasks SET step = ?2, updated_at = ",
    now!(),
    " WHERE id = ?1 AND state IN ('ready', 'parked') AND (locked_by IS NULL OR lease_until <= ",
    now!(),
    ")"
);

/// The history since `?1`, per minute and edge (see the PostgreSQL
/// backend). The history has no index on `at`: the rows since then are those
/// after the newest one before it, found by reading back from the end.
const ACTIVITY: &str = "
SELECT coalesce(json_group_array(json_array(m, f, t, moved, finished, failed)), '[]')
FROM (SELECT CAST(strftime('%s', substr(at, 1, 16) || ':00') AS INTEGER) AS m,
             CASE WHEN event IN ('next', 'wait', 'join') THEN from_kind END AS f,
             CASE WHEN event IN ('next', 'wait', 'join') THEN to_kind END AS t,
             sum(event IN ('next', 'wait', 'join')) AS moved,
             sum(event = 'finished') AS finished,
             sum(event IN ('retry', 'parked')) AS failed
      FROM jetpack_history
      WHERE id > coalesce((SELECT id FROM jetpack_history WHERE at < ?1 ORDER BY id DESC LIMIT 1), 0)
        AND at >= ?1
      GROUP BY 1, 2, 3 ORDER BY 1, 2, 3)";

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

/// Counts per step and state, of every row.
const ADMIN_COUNTS: &str = counts_of!("jetpack_tasks");

/// The lowest and the highest id, through the primary key (`min` and `max`
/// in one `SELECT` would read the table).
const ADMIN_ID_SPAN: &str =
    "SELECT (SELECT min(id) FROM jetpack_tasks), (SELECT max(id) FROM jetpack_tasks)";

/// Counts per step and state of the tasks with ids in `[?1 + i * ?2, ?1 + i
/// * ?2 + 20)` for `i` in `0..?3`: one range of the rowid per stratum (the
/// `CROSS JOIN` keeps the strata the outer loop).
const ADMIN_SAMPLE: &str = counts_of!(
    "(WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < ?3 - 1)
      SELECT i FROM g) g
     CROSS JOIN jetpack_tasks t ON t.id >= ?1 + g.i * ?2 AND t.id < ?1 + g.i * ?2 + 20"
);

/// Parked and waiting tasks per step through their partial indexes, at most
/// `?1` rows of each (the states written out, for SQLite to match the indexes).
const ADMIN_INDEXED: &str = "
SELECT kind, 'parked', count(*) FROM (
    SELECT kind FROM jetpack_tasks WHERE state = 'parked' LIMIT ?1) GROUP BY kind
UNION ALL
SELECT kind, 'waiting', count(*) FROM (
    SELECT kind FROM jetpack_tasks WHERE state = 'waiting' LIMIT ?1) GROUP BY kind";

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

/// Cancels the live tasks a filter takes, with reason `?6`.
const ADMIN_CANCEL: &str = concat!(
    "UPDATE jetpack_tasks SET state = 'cancelled', error = ?6, finished_at = ",
    now!(),
    ", updated_at = ",
    now!(),
    " WHERE state IN ('ready', 'waiting', 'parked') AND ",
    admin_filter!()
);

/// Deletes the finished and cancelled tasks a filter takes.
const ADMIN_PURGE: &str = concat!(
    "DELETE FROM jetpack_tasks WHERE state IN ('finished', 'cancelled') AND ",
    admin_filter!()
);

/// The ready and parked tasks a filter takes: id, fence, step.
const ADMIN_REDRIVABLE: &str = concat!(
    "SELECT id, fence, step FROM jetpack_tasks WHERE state IN ('ready', 'parked') AND ",
    admin_filter!(),
    " ORDER BY id"
);

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

/// Tells the workers of this process which tasks were cancelled here.
pub(super) fn local_cancels() -> &'static tokio::sync::broadcast::Sender<i64> {
    static CANCELS: std::sync::OnceLock<tokio::sync::broadcast::Sender<i64>> =
        std::sync::OnceLock::new();
    CANCELS.get_or_init(|| tokio::sync::broadcast::channel(1024).0)
}

/// The history of task `?1`, oldest first; times as the table's text.
const HISTORY_OF: &str = "
SELECT id, task_id, at, event, from_kind, to_kind, step, attempt, worker, duration_us, error
FROM jetpack_history WHERE task_id = ?1 ORDER BY id";

/// Switches the history to `?1`.
const SET_HISTORY: &str = "
INSERT INTO jetpack_config (singleton, history) VALUES (1, ?1)
ON CONFLICT (singleton) DO UPDATE SET history = excluded.history";

/// A row of [`HISTORY_OF`], its time as the table's text.
type HistoryRow = crate::model::TransitionRow<String>;

/// A time as the tables store it (`YYYY-MM-DD HH:MM:SS.SSS`, UTC); the error
/// names the column `what` says.
pub(super) fn read_time(text: &str, what: impl FnOnce() -> String) -> Result<DateTime<Utc>, Error> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| Error::InvalidTime(format!("{} {text:?}: {e}", what())))
}

impl crate::driver::Backend for Sqlite {
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
                .bind(since.format(TIME_FORMAT).to_string())
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
            Ok(query
                .bind(at.format(TIME_FORMAT).to_string())
                .fetch_all(db)
                .await?)
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
                .bind(at.map(|at| at.format(TIME_FORMAT).to_string()))
                .bind(step.priority)
                .bind(None::<String>)
                .bind(step.scope)
                .fetch_one(db)
                .await?;
            LOCAL_WAKE.notify_waiters();
            Ok(id)
        })
    }

    fn keyed(db: &mut SqliteConnection) -> &mut dyn KeyedStatements {
        db
    }

    fn enqueued() {
        LOCAL_WAKE.notify_waiters();
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

    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            // WAL lets workers read while another process writes; the setting is
            // kept in the file, so pools that did not ask for it get it too.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(pool)
                .await?;
            migrate(pool).await
        })
    }
}

#[async_trait]
impl KeyedStatements for SqliteConnection {
    async fn insert_unless_held(&mut self, task: &NewTask) -> Result<Option<i64>, Error> {
        Ok(sqlx::query_scalar(INSERT)
            .bind(&task.step.json)
            .bind(task.step.kind())
            .bind(task.delay)
            .bind(task.at.map(|at| at.format(TIME_FORMAT).to_string()))
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
            .bind(task.at.map(|at| at.format(TIME_FORMAT).to_string()))
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
