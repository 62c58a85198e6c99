//! SQLite: completions ([`Completes`](crate::driver::Completes)): outcomes written by statements that each write all their items or none.

use super::*;

/// Records the history of a flush: `?1` is a JSON array of `[block, entries]`
/// (the entries of one block, a JSON array as `jetpack_history_blocks` holds
/// them), written by worker `?2`.
const HISTORY: &str = "
INSERT INTO jetpack_history_blocks (block, worker, entries)
SELECT value ->> 0, ?2, value -> 1 FROM json_each(?1)";

/// The history of a flush of one block `?1`: entries `?3` of worker `?2`.
const HISTORY_ONE: &str =
    "INSERT INTO jetpack_history_blocks (block, worker, entries) VALUES (?1, ?2, ?3)";

/// Statement `if_held` of a flush (bound `?1` to `?5`, see
/// [`Statement::write_if_all_held`]) and, if it wrote all its `?3` items, the
/// history's rows (`?6` the blocks, `?7` the worker, as [`HISTORY`] binds
/// them), in one transaction sent at once: one trip to the connection's
/// thread instead of four (begin, write, record, commit). Returns how many
/// rows of history it wrote (SQLite's count of changes is that of the last
/// write, which a `COMMIT` does not reset: the statements' counts cannot be
/// summed).
fn with_history(if_held: &str, one_block: bool) -> String {
    let insert = if one_block {
        // `?6` is the block, `?8` its entries: no JSON to take apart.
        "SELECT ?6, ?7, ?8 WHERE changes() = ?3"
    } else {
        "SELECT value ->> 0, ?7, value -> 1 FROM json_each(?6) WHERE changes() = ?3"
    };
    format!(
        "BEGIN IMMEDIATE;
{if_held};
INSERT INTO jetpack_history_blocks (block, worker, entries) {insert};
SELECT changes();
COMMIT"
    )
}

/// Of the tasks `?1` (a JSON array of ids), those still at the step they
/// were enqueued with, as a JSON array.
const AT_FIRST_STEP: &str = "
SELECT json_group_array(id) FROM jetpack_tasks
WHERE transitions = 0 AND id IN (SELECT value FROM json_each(?1))";

/// Finishes the attempts `?1` (a JSON array of `[id, fence]`), returning
/// those that still held their tasks.
const FINISH_MANY: &str = "DELETE FROM jetpack_tasks WHERE (id, fence) IN (
         SELECT value ->> 0, value ->> 1 FROM json_each(?1))
     RETURNING id, fence";

/// `true` when every attempt still holds its task, for the attempts on the
/// tasks `?2` (a JSON array of ids) whose count is `?3` and whose fences sum to
/// `?4`. A claim raises a task's fence and nothing lowers it, so each task's
/// fence is at least that of any attempt of it: when as many of the tasks
/// exist as there are attempts and their fences sum to the attempts', every
/// fence is the attempt's. (Two attempts of one task are one row: the count
/// differs.) With `?5` (the history is on), also that `?5` of the tasks are
/// still at the step they were enqueued with, as many as were when claimed:
/// nothing moved them since (a count of transitions only grows), so the
/// history can take in their records of enqueue as their claims read them.
/// The subquery does not depend on the row, so SQLite evaluates it once,
/// before the statement writes anything.
macro_rules! all_held {
    () => {
        "(SELECT count(*) = ?3 AND coalesce(sum(fence), 0) = ?4
                 AND (?5 IS NULL OR coalesce(sum(transitions = 0), 0) = ?5)
          FROM jetpack_tasks WHERE id IN (SELECT value FROM json_each(?2)))"
    };
}

/// Counts a transition of the task, in the update that writes it: its first
/// ends the row's being the record of its enqueue.
macro_rules! transition {
    () => {
        "transitions = min(transitions, 2147483646) + 1"
    };
}

/// Finishes the tasks `?2` (a JSON array of ids) if every attempt still holds
/// its task ([`all_held!`]), else nothing. One statement that writes all or
/// nothing needs no transaction around it: one trip to SQLite's connection
/// thread. Plain ids, too: taking `[id, fence]` pairs apart in SQL
/// (`value ->> 0`) cost more than the delete itself (3.6–3.8 µs of CPU per task
/// with pairs, 2.1 with ids and the check).
const FINISH_IF_HELD: &str = concat!(
    "DELETE FROM jetpack_tasks WHERE id IN (SELECT value FROM json_each(?2)) AND ",
    all_held!()
);

/// Tasks that begin to wait: `?1` is a JSON array of `[id, fence, step, kind,
/// name, key, timeout µs or null]`; due at the deadline, or never. A task
/// parked by hand meanwhile stays parked; the table's trigger hands a kept
/// signal over at once.
macro_rules! waits {
    ($fence:literal, $check:literal) => {
        concat!(
            "UPDATE jetpack_tasks
             SET step = u.step, kind = u.kind,
                 state = CASE WHEN jetpack_tasks.state = 'parked' THEN 'parked' ELSE 'waiting' END,
                 wait_for = u.name, wait_key = u.key, signal = NULL, tried = 0, children_left = NULL,
                 limit_scope = u.scope, locked_by = NULL, lease_until = NULL, ",
            transition!(),
            ", updated_at = ",
            now!(),
            ", wakeup_at = CASE WHEN u.timeout IS NULL THEN '9999-12-31 00:00:00.000' ELSE ",
            now!("u.timeout"),
            " END FROM (SELECT value ->> 0 AS id, ",
            $fence,
            " value -> 2 AS step, value ->> 3 AS kind, value ->> 4 AS name, value ->> 5 AS key,
                      value ->> 6 AS timeout, value ->> 7 AS scope FROM json_each(?1)) AS u
             WHERE jetpack_tasks.id = u.id",
            $check
        )
    };
}

/// [`waits!`] if every attempt still holds its task, else nothing.
const WAIT_IF_HELD: &str = concat!(waits!("", ""), " AND ", all_held!());

/// [`waits!`] for the attempts that hold their tasks, returning them.
const WAIT_MANY: &str = concat!(
    waits!(
        "value ->> 1 AS fence,",
        " AND jetpack_tasks.fence = u.fence"
    ),
    " RETURNING jetpack_tasks.id, jetpack_tasks.fence"
);

/// Keeps finished tasks (state `finished`) with their results until the
/// workers' cleanup: `?1` is a JSON array of `[id, fence, result]`.
macro_rules! keep {
    ($fence:literal, $check:literal) => {
        concat!(
            "UPDATE jetpack_tasks SET state = 'finished', finished_at = ",
            now!(),
            ", locked_by = NULL, lease_until = NULL, children_left = NULL, result = u.result, ",
            transition!(),
            ", updated_at = ",
            now!(),
            " FROM (SELECT value ->> 0 AS id, ",
            $fence,
            " nullif(value -> 2, 'null') AS result FROM json_each(?1)) AS u
             WHERE jetpack_tasks.id = u.id",
            $check
        )
    };
}

/// [`keep!`] if every attempt still holds its task, else nothing.
const KEEP_IF_HELD: &str = concat!(keep!("", ""), " AND ", all_held!());

/// [`keep!`] for the attempts that still hold their tasks, returning them.
const KEEP_MANY: &str = concat!(
    keep!(
        "value ->> 1 AS fence,",
        " AND jetpack_tasks.fence = u.fence"
    ),
    " RETURNING jetpack_tasks.id, jetpack_tasks.fence"
);

/// Tasks that begin to wait for their children: `?1` is a JSON array of `[id,
/// fence, step, kind]` (see the PostgreSQL backend). SQLite reads the
/// columns' old values in every expression of the update, hence the count
/// three times.
macro_rules! joins {
    ($fence:literal, $check:literal) => {
        concat!(
            "UPDATE jetpack_tasks
             SET step = u.step, kind = u.kind, tried = 0, limit_scope = u.scope, children_left = ",
            children!(),
            ", state = CASE WHEN jetpack_tasks.state = 'parked' THEN 'parked' WHEN ",
            children!(),
            " > 0 THEN 'waiting' ELSE 'ready' END,
                 wait_for = NULL, wait_key = NULL, signal = NULL, ",
            transition!(),
            ", locked_by = NULL, lease_until = NULL, updated_at = ",
            now!(),
            ", wakeup_at = CASE WHEN ",
            children!(),
            " > 0 THEN '9999-12-31 00:00:00.000' ELSE ",
            now!(),
            " END FROM (SELECT value ->> 0 AS id, ",
            $fence,
            " value -> 2 AS step, value ->> 3 AS kind, value ->> 4 AS scope FROM json_each(?1)) AS u
             WHERE jetpack_tasks.id = u.id",
            $check
        )
    };
}

/// The awaited children of the task a [`joins!`] update writes that have not
/// ended.
macro_rules! children {
    () => {
        "(SELECT count(*) FROM jetpack_tasks c
          WHERE c.parent_id = jetpack_tasks.id AND c.awaited IN ('wait', 'fail', 'error'))"
    };
}

/// [`joins!`] if every attempt still holds its task, else nothing.
const JOIN_IF_HELD: &str = concat!(joins!("", ""), " AND ", all_held!());

/// [`joins!`] for the attempts that hold their tasks, returning them.
const JOIN_MANY: &str = concat!(
    joins!(
        "value ->> 1 AS fence,",
        " AND jetpack_tasks.fence = u.fence"
    ),
    " RETURNING jetpack_tasks.id, jetpack_tasks.fence"
);

/// The start of an update that moves tasks to the next steps of `u`, with
/// concurrency scope `$scope`, up to the new `wakeup_at`.
macro_rules! to_next_step {
    ($scope:literal) => {
        concat!(
            "UPDATE jetpack_tasks
             SET step = u.step, kind = u.kind, tried = 0, locked_by = NULL, lease_until = NULL,
                 wait_for = NULL, signal = NULL, children_left = NULL, ",
            transition!(),
            ", limit_scope = ",
            $scope,
            ", updated_at = ",
            now!(),
            ", wakeup_at = "
        )
    };
}

/// Moves to next steps (one or many); a next step due now keeps a passed
/// `wakeup_at`, as on PostgreSQL.
macro_rules! next_many {
    () => {
        concat!(
            to_next_step!("u.scope"),
            "CASE WHEN u.at IS NULL AND u.delay = 0 AND jetpack_tasks.wakeup_at <= ",
            now!(),
            " THEN jetpack_tasks.wakeup_at ELSE coalesce(u.at, ",
            now!("u.delay"),
            ") END FROM (SELECT value ->> 0 AS id, value ->> 1 AS fence, value -> 2 AS step,
                            value ->> 3 AS kind, value ->> 4 AS delay, value ->> 5 AS at,
                            value ->> 6 AS scope
                     FROM json_each(?1)) AS u
             WHERE jetpack_tasks.id = u.id AND jetpack_tasks.fence = u.fence"
        )
    };
}

/// `NEXT_MANY` if every attempt still holds its task ([`all_held!`]), else
/// nothing (see [`FINISH_IF_HELD`]).
const NEXT_IF_HELD: &str = concat!(next_many!(), " AND ", all_held!());

const NEXT_MANY: &str = concat!(
    next_many!(),
    " RETURNING jetpack_tasks.id, jetpack_tasks.fence"
);

/// Moves to next steps due now, of no concurrency limit, the common case:
/// `?1` is a JSON array of `[id, fence, step, kind]`. Every field taken out of an item costs: SQLite
/// parses the item's text again for each `->>`. With the six fields of
/// [`next_many!`] the statement took 35,000 instructions per task (callgrind,
/// 10,000 tasks in batches of 200), with these three 25,000, where a plain
/// update of a task by id takes 6,700. `$fence` is the fence's field and its
/// check, left out where [`all_held!`] checks all fences at once.
macro_rules! next_now {
    ($fence:literal, $check:literal) => {
        concat!(
            to_next_step!("NULL"),
            "CASE WHEN jetpack_tasks.wakeup_at <= ",
            now!(),
            " THEN jetpack_tasks.wakeup_at ELSE ",
            now!(),
            " END FROM (SELECT value ->> 0 AS id, ",
            $fence,
            " value -> 2 AS step, value ->> 3 AS kind FROM json_each(?1)) AS u
             WHERE jetpack_tasks.id = u.id",
            $check
        )
    };
}

/// [`next_now!`] if every attempt still holds its task, else nothing.
const NEXT_NOW_IF_HELD: &str = concat!(next_now!("", ""), " AND ", all_held!());

/// [`next_now!`] for the attempts that hold their tasks, returning them.
const NEXT_NOW_MANY: &str = concat!(
    next_now!(
        "value ->> 1 AS fence,",
        " AND jetpack_tasks.fence = u.fence"
    ),
    " RETURNING jetpack_tasks.id, jetpack_tasks.fence"
);

/// The start of an update that records failed attempts: `u` has each
/// attempt's `id`, `delay` (µs) and `error` (NULL for a retry). A retry is due
/// after its delay and keeps an `error` set by hand meanwhile; a parked task
/// (an error) is due now.
macro_rules! failed {
    ($fence:literal) => {
        concat!(
            "UPDATE jetpack_tasks
             SET error = coalesce(u.error, jetpack_tasks.error),
                 state = CASE WHEN u.error IS NULL THEN jetpack_tasks.state ELSE 'parked' END,
                 locked_by = NULL, lease_until = NULL, ",
            transition!(),
            ", updated_at = ",
            now!(),
            ", wakeup_at = ",
            now!("u.delay"),
            " FROM (SELECT value ->> 0 AS id, ",
            $fence,
            " value ->> 2 AS delay, value ->> 3 AS error FROM json_each(?1)) AS u
             WHERE jetpack_tasks.id = u.id"
        )
    };
}

/// Records failed attempts (`?1`, a JSON array of `[id, fence, delay, error]`)
/// if every attempt still holds its task, else nothing.
const FAIL_IF_HELD: &str = concat!(failed!(""), " AND ", all_held!());

/// Records the failed attempts that hold their tasks, returning them.
const FAIL_MANY: &str = concat!(
    failed!("value ->> 1 AS fence,"),
    " AND jetpack_tasks.fence = u.fence RETURNING jetpack_tasks.id, jetpack_tasks.fence"
);

/// Outcomes sorted for writing: finishes, next steps and failed attempts as
/// one [`Statement`] each, with their items bound as one JSON list (every
/// statement is a round trip to SQLite's connection thread).
pub(super) struct Batch {
    pub(super) statements: Vec<Statement>,
}

/// One statement of a [`Batch`].
pub(super) struct Statement {
    /// Writes every item if each attempt holds its task, else nothing.
    pub(super) if_held: &'static str,
    /// Writes the items whose attempts hold their tasks, returning each
    /// attempt that did.
    returning: &'static str,
    /// The JSON list of items bound to both as `?1`; `None` when the items are
    /// the attempts themselves (finishes), which only `returning` reads.
    items: Option<String>,
    /// The attempts (id, fence) of the items.
    attempts: Vec<(i64, i64)>,
    /// With the history on: the tasks of the attempts whose claims found them
    /// at the step they were enqueued with.
    firsts: Option<Vec<i64>>,
}

impl Statement {
    /// The list bound to `returning`.
    fn list(&self) -> Result<std::borrow::Cow<'_, str>, Error> {
        Ok(match &self.items {
            Some(items) => items.as_str().into(),
            None => json_list(&self.attempts)?.into(),
        })
    }

    /// Writes every item if each attempt still holds its task; whether it did.
    pub(super) async fn write_if_all_held(&self, db: &mut SqliteConnection) -> Result<bool, Error> {
        let ids: Vec<i64> = self.attempts.iter().map(|a| a.0).collect();
        let fences = self
            .attempts
            .iter()
            .map(|a| a.1)
            .fold(0i64, i64::saturating_add);
        let count = i64::try_from(self.attempts.len()).unwrap_or(i64::MAX);
        let firsts = (self.firsts.as_ref()).map(|f| i64::try_from(f.len()).unwrap_or(i64::MAX));
        let done = sqlx::query(self.if_held)
            .bind(self.items.as_deref())
            .bind(json_list(&ids)?)
            .bind(count)
            .bind(fences)
            .bind(firsts)
            .execute(db)
            .await?;
        Ok(done.rows_affected() == count.unsigned_abs())
    }

    /// Writes every item and the history `blocks` (`rows` of them) by `worker` if each
    /// attempt still holds its task (and each task its claim found at its
    /// first step is still there), in one transaction; whether it did.
    async fn write_with_history_if_all_held(
        &self,
        db: &mut SqliteConnection,
        blocks: &Blocks,
        worker: &str,
    ) -> Result<bool, Error> {
        let ids: Vec<i64> = self.attempts.iter().map(|a| a.0).collect();
        let fences = (self.attempts.iter())
            .map(|a| a.1)
            .fold(0i64, i64::saturating_add);
        let count = i64::try_from(self.attempts.len()).unwrap_or(i64::MAX);
        let firsts = (self.firsts.as_ref()).map(|f| i64::try_from(f.len()).unwrap_or(i64::MAX));
        // All of it, to the commit (fetching one row would stop before).
        let (one, rows) = match blocks {
            Blocks::One(..) => (true, 1),
            Blocks::Many(_, rows) => (false, *rows),
        };
        let query = sqlx::query_scalar(sqlx::AssertSqlSafe(with_history(self.if_held, one)))
            .bind(self.items.as_deref())
            .bind(json_list(&ids)?)
            .bind(count)
            .bind(fences)
            .bind(firsts);
        let query = match blocks {
            Blocks::One(block, entries) => query.bind(*block).bind(worker).bind(entries.as_str()),
            Blocks::Many(list, _) => query.bind(list.as_str()).bind(worker),
        };
        let recorded: Vec<i64> = query.fetch_all(db).await?;
        Ok(recorded.iter().map(|r| r.unsigned_abs()).sum::<u64>() == rows)
    }

    /// Of the tasks whose claims found them at the step they were enqueued
    /// with, those still there (read before the statement writes).
    async fn still_first(&self, db: &mut SqliteConnection) -> Result<Vec<i64>, Error> {
        let Some(firsts) = self.firsts.as_ref().filter(|f| !f.is_empty()) else {
            return Ok(Vec::new());
        };
        let read: String = sqlx::query_scalar(AT_FIRST_STEP)
            .bind(json_list(firsts)?)
            .fetch_one(db)
            .await?;
        Ok(serde_json::from_str(&read).map_err(|e| sqlx::Error::Decode(Box::new(e)))?)
    }

    /// Writes the items whose attempts still hold their tasks; those attempts.
    async fn write_exact(&self, db: &mut SqliteConnection) -> Result<Vec<(i64, i64)>, Error> {
        Ok(sqlx::query_as(self.returning)
            .bind(self.list()?)
            .fetch_all(db)
            .await?)
    }
}

impl Batch {
    /// The statements that write `done`; with `traces` (the history is on),
    /// each knows which of its tasks the claims found at their first step.
    pub(super) fn of(
        done: &[(i64, i64, &Outcome)],
        traces: Option<&[&Trace]>,
    ) -> Result<Self, Error> {
        let (mut finished, mut kept, mut next, mut failed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut waits, mut waiting) = (Vec::new(), Vec::new());
        let (mut joins, mut joining) = (Vec::new(), Vec::new());
        let mut keeps = Vec::new();
        let mut all_now = true;
        for &(id, fence, outcome) in done {
            match outcome {
                Outcome::Finish => finished.push((id, fence)),
                Outcome::Keep { result } => {
                    // The result is a JSON document already: spliced in as it is.
                    let result = result.as_deref().unwrap_or("null");
                    keeps.push(format!("[{id},{fence},{result}]"));
                    kept.push((id, fence));
                }
                Outcome::Join { step, kind, scope } => {
                    let kind = serde_json::Value::from(kind.as_str());
                    let scope = serde_json::Value::from(scope.as_deref());
                    joins.push(format!("[{id},{fence},{step},{kind},{scope}]"));
                    joining.push((id, fence));
                }
                Outcome::Wait {
                    step,
                    kind,
                    name,
                    key,
                    timeout,
                    scope,
                } => {
                    let timeout = timeout.map(micros).transpose()?;
                    let fields = serde_json::json!([kind, name, key, timeout, scope]);
                    // The step is a JSON document already: spliced in as it is.
                    let [kind, name, key, timeout, scope] =
                        [&fields[0], &fields[1], &fields[2], &fields[3], &fields[4]];
                    waits.push(format!(
                        "[{id},{fence},{step},{kind},{name},{key},{timeout},{scope}]"
                    ));
                    waiting.push((id, fence));
                }
                Outcome::Next {
                    step,
                    kind,
                    wakeup,
                    scope,
                } => {
                    let (delay, at) = wakeup_binds(wakeup)?;
                    let at = at.map(time_text);
                    all_now &= delay == 0 && at.is_none() && scope.is_none();
                    next.push((
                        id,
                        fence,
                        step,
                        serde_json::Value::from(kind.as_str()),
                        delay,
                        at,
                        serde_json::Value::from(scope.as_deref()),
                    ));
                }
                Outcome::Retry { delay, .. } => {
                    failed.push((id, fence, micros(*delay)?, None));
                }
                Outcome::Park { error } => failed.push((id, fence, 0, Some(error.as_str()))),
            }
        }
        let moved = next.iter().map(|n| (n.0, n.1)).collect();
        let items: Vec<String> = if all_now {
            next.iter()
                .map(|(id, fence, step, kind, _, _, _)| format!("[{id},{fence},{step},{kind}]"))
                .collect()
        } else {
            next.iter()
                .map(|(id, fence, step, kind, delay, at, scope)| {
                    let at = serde_json::Value::from(at.as_deref());
                    format!("[{id},{fence},{step},{kind},{delay},{at},{scope}]")
                })
                .collect()
        };
        let (next_if_held, next_returning) = if all_now {
            (NEXT_NOW_IF_HELD, NEXT_NOW_MANY)
        } else {
            (NEXT_IF_HELD, NEXT_MANY)
        };
        let firsts: Option<std::collections::HashSet<i64>> = traces.map(|traces| {
            (done.iter().zip(traces))
                .filter(|(_, t)| t.enqueued.is_some())
                .map(|(d, _)| d.0)
                .collect()
        });
        let statements = [
            Statement {
                if_held: FINISH_IF_HELD,
                returning: FINISH_MANY,
                items: None,
                attempts: finished,
                firsts: None,
            },
            Statement {
                if_held: WAIT_IF_HELD,
                returning: WAIT_MANY,
                items: Some(format!("[{}]", waits.join(","))),
                attempts: waiting,
                firsts: None,
            },
            Statement {
                if_held: KEEP_IF_HELD,
                returning: KEEP_MANY,
                items: Some(format!("[{}]", keeps.join(","))),
                attempts: kept,
                firsts: None,
            },
            Statement {
                if_held: JOIN_IF_HELD,
                returning: JOIN_MANY,
                items: Some(format!("[{}]", joins.join(","))),
                attempts: joining,
                firsts: None,
            },
            Statement {
                if_held: next_if_held,
                returning: next_returning,
                items: Some(format!("[{}]", items.join(","))),
                attempts: moved,
                firsts: None,
            },
            Statement {
                if_held: FAIL_IF_HELD,
                returning: FAIL_MANY,
                items: Some(json_list(&failed)?),
                attempts: failed.iter().map(|f| (f.0, f.1)).collect(),
                firsts: None,
            },
        ]
        .into_iter()
        .filter(|statement| !statement.attempts.is_empty())
        .map(|mut statement| {
            if let Some(firsts) = &firsts {
                statement.firsts = Some(
                    (statement.attempts.iter())
                        .map(|a| a.0)
                        .filter(|id| firsts.contains(id))
                        .collect(),
                );
            }
            statement
        })
        .collect();
        Ok(Batch { statements })
    }
}

/// Writes the outcomes `done`, sorted into `batch`; which attempts still held
/// their tasks.
///
/// Each statement of the batch writes all its items if every attempt still
/// holds its task, else nothing; only a statement that wrote nothing goes the
/// exact way, returning which attempts held. A flush of one statement (say,
/// only finishes) needs no transaction: one trip to the connection's thread.
/// Anything more goes in one `BEGIN IMMEDIATE` transaction, so that the flush
/// takes SQLite's write lock once: with two processes on the file, two commits
/// in a row made two chances to meet the other process in SQLite's busy
/// handler (the soak, two processes at concurrency 16, ran 5–7% slower).
pub(super) async fn flush(
    db: &mut SqliteConnection,
    done: &[(i64, i64, &Outcome)],
    batch: &Batch,
    history: Option<&History<'_>>,
) -> Result<Vec<bool>, Error> {
    let alone = batch.statements.len() == 1;
    if let (true, [statement]) = (alone, batch.statements.as_slice()) {
        // All held, and every first still first: the history as built now.
        let all = match history {
            None => statement.write_if_all_held(db).await?,
            Some(h) => {
                let held = vec![true; done.len()];
                let firsts = statement.firsts.iter().flatten().copied().collect();
                match history_blocks(done, &held, &firsts, h)? {
                    Some(blocks) => {
                        let written =
                            statement.write_with_history_if_all_held(db, &blocks, h.worker);
                        written.await?
                    }
                    None => statement.write_if_all_held(db).await?,
                }
            }
        };
        if all {
            return Ok(crate::driver::which_held(done, statement.attempts.clone()));
        }
    }
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    // A statement alone that wrote nothing would write nothing again.
    let held = write(&mut tx, batch, !alone, history.is_some()).await?;
    let (held, firsts) = (crate::driver::which_held(done, held.0), held.1);
    if let Some(history) = history {
        record_history(&mut tx, done, &held, &firsts, history).await?;
    }
    tx.commit().await?;
    Ok(held)
}

/// Writes every statement of `batch` (first all or nothing if `try_all`),
/// in a transaction; the attempts that held their tasks and, when
/// `firsts`, the tasks of those whose transitions are their first.
async fn write(
    tx: &mut SqliteConnection,
    batch: &Batch,
    try_all: bool,
    firsts: bool,
) -> Result<(Vec<(i64, i64)>, std::collections::HashSet<i64>), Error> {
    let (mut held, mut first) = (Vec::new(), std::collections::HashSet::new());
    for statement in &batch.statements {
        // A statement that wrote nothing alone would write nothing again.
        if try_all && statement.write_if_all_held(&mut *tx).await? {
            held.extend_from_slice(&statement.attempts);
            // Its check found them all still at their first steps.
            first.extend(statement.firsts.iter().flatten().copied());
        } else {
            if firsts {
                first.extend(statement.still_first(&mut *tx).await?);
            }
            held.extend(statement.write_exact(&mut *tx).await?);
        }
    }
    Ok((held, first))
}

/// Records the history of the attempts of `done` that `held` their tasks
/// (their outcomes just written, in the same transaction), with the records
/// of enqueue of the tasks `firsts`, whose transitions were their first: a row
/// of `jetpack_history_blocks` per block of task ids.
pub(super) async fn record_history(
    db: &mut SqliteConnection,
    done: &[(i64, i64, &Outcome)],
    held: &[bool],
    firsts: &std::collections::HashSet<i64>,
    history: &History<'_>,
) -> Result<(), Error> {
    match history_blocks(done, held, firsts, history)? {
        None => {}
        Some(Blocks::One(block, entries)) => {
            sqlx::query(HISTORY_ONE)
                .bind(block)
                .bind(history.worker)
                .bind(entries)
                .execute(db)
                .await?;
        }
        Some(Blocks::Many(blocks, _)) => {
            sqlx::query(HISTORY)
                .bind(blocks)
                .bind(history.worker)
                .execute(db)
                .await?;
        }
    }
    Ok(())
}

/// The rows of `jetpack_history_blocks` that record the attempts of `done`
/// that `held` their tasks, with the records of enqueue of the tasks
/// `firsts` (`None` when there is nothing to record).
fn history_blocks(
    done: &[(i64, i64, &Outcome)],
    held: &[bool],
    firsts: &std::collections::HashSet<i64>,
    history: &History<'_>,
) -> Result<Option<Blocks>, Error> {
    use std::io::Write;
    // Each block's entries, comma-separated JSON, written as bytes (serde_json
    // writes UTF-8) and read as text once at the end.
    let mut blocks: std::collections::BTreeMap<i64, Vec<u8>> = std::collections::BTreeMap::new();
    for ((&(id, _, outcome), trace), _) in
        (done.iter().zip(history.traces).zip(held)).filter(|(_, held)| **held)
    {
        let out = blocks.entry(id >> 10).or_default();
        if !out.is_empty() {
            out.push(b',');
        }
        let (event, to, error) = outcome.event();
        let to = to.or(match outcome {
            Outcome::Retry { .. } | Outcome::Park { .. } => trace.kind.as_deref(),
            _ => None,
        });
        // The step it moved to is JSON already: it goes in as it is.
        let step = match outcome {
            Outcome::Next { step, .. }
            | Outcome::Wait { step, .. }
            | Outcome::Join { step, .. } => step.as_str(),
            _ => "null",
        };
        let _ = write!(out, "[{id},");
        json(out, &event)?;
        out.push(b',');
        json(out, &trace.kind.as_deref())?;
        out.push(b',');
        json(out, &to)?;
        let _ = write!(out, ",{step},{},{},", trace.attempt, trace.duration_us);
        json(out, &error)?;
        out.push(b',');
        match (&trace.enqueued, firsts.contains(&id)) {
            (Some(e), true) => {
                let _ = write!(out, "[\"{}\",", time_text(e.at));
                json(out, &Some(e.kind.as_str()).filter(|k| !k.is_empty()))?;
                out.push(b',');
                // A step that ran decoded, so it is JSON; one that did not
                // (written by hand) goes in as a JSON string unless it is.
                let valid = trace.kind.is_some()
                    || serde_json::from_str::<serde::de::IgnoredAny>(&e.step).is_ok();
                if valid {
                    out.extend_from_slice(e.step.as_bytes());
                } else {
                    json(out, &e.step.as_str())?;
                }
                out.extend_from_slice(b",null]");
            }
            _ => out.extend_from_slice(b"null"),
        }
        out.push(b']');
    }
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|e| Error::Serialize(serde::ser::Error::custom(e)))
    };
    if blocks.len() == 1 {
        if let Some((block, entries)) = blocks.pop_first() {
            let mut array = Vec::with_capacity(entries.len() + 2);
            array.push(b'[');
            array.extend_from_slice(&entries);
            array.push(b']');
            return Ok(Some(Blocks::One(block, text(array)?)));
        }
    }
    if blocks.is_empty() {
        return Ok(None);
    }
    let rows = blocks.len() as u64;
    let mut list = Vec::new();
    list.push(b'[');
    for (block, entries) in blocks {
        if list.len() > 1 {
            list.push(b',');
        }
        let _ = write!(list, "[{block},[");
        list.extend_from_slice(&entries);
        list.extend_from_slice(b"]]");
    }
    list.push(b']');
    Ok(Some(Blocks::Many(text(list)?, rows)))
}

/// The rows of history of a flush: one block's (its id and its entries), or
/// a JSON array of `[block, entries]` and how many.
enum Blocks {
    One(i64, String),
    Many(String, u64),
}

/// Writes `value` as JSON into an entry of the history.
fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    serde_json::to_writer(out, value).map_err(Error::Serialize)
}

#[async_trait]
impl crate::driver::Completes for Sqlite {
    async fn complete_many(
        db: &SqliteHandle,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error> {
        let batch = Batch::of(done, history.map(|h| h.traces))?;
        let mut writer = db.writer().await?;
        let held = flush(&mut writer.db, done, &batch, history).await;
        writer.done(held)
    }

    async fn complete_in_tx(
        tx: &mut SqliteConnection,
        id: i64,
        fence: i64,
        outcome: &Outcome,
        history: Option<&History<'_>>,
    ) -> Result<bool, Error> {
        let done = [(id, fence, outcome)];
        let batch = Batch::of(&done, history.map(|h| h.traces))?;
        let (held, firsts) = write(tx, &batch, false, history.is_some()).await?;
        let held = !held.is_empty();
        if let (true, Some(history)) = (held, history) {
            record_history(tx, &done, &[true], &firsts, history).await?;
        }
        Ok(held)
    }

    async fn notify_errors(_db: &SqliteHandle, _payloads: &[String]) -> Result<(), Error> {
        // SQLite has no notifications: `Worker::errors` tells this process.
        Ok(())
    }
}
