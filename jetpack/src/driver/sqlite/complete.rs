//! SQLite: completions ([`Completes`](crate::driver::Completes)): outcomes written by statements that each write all their items or none.

use super::*;

/// Records the history of attempts `?1` (a JSON array of `[id, event, kind
/// run, kind gone to, attempt, duration in µs, error]`) of worker `?2`, with
/// the step each moved to, read from its row as just written.
const HISTORY: &str = "
INSERT INTO jetpack_history (task_id, event, from_kind, to_kind, step, attempt, worker, duration_us, error)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3,
       CASE WHEN value ->> 1 IN ('next', 'wait', 'join')
            THEN (SELECT step FROM jetpack_tasks WHERE id = value ->> 0) END,
       value ->> 4, ?2, value ->> 5, value ->> 6
FROM json_each(?1)";

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
/// differs.) The subquery does not depend on the row, so SQLite evaluates it
/// once, before the statement writes anything.
macro_rules! all_held {
    () => {
        "(SELECT count(*) = ?3 AND coalesce(sum(fence), 0) = ?4 FROM jetpack_tasks
          WHERE id IN (SELECT value FROM json_each(?2)))"
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
                 limit_scope = u.scope, locked_by = NULL, lease_until = NULL, updated_at = ",
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
            ", locked_by = NULL, lease_until = NULL, children_left = NULL, result = u.result,
               updated_at = ",
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
                 wait_for = NULL, wait_key = NULL, signal = NULL,
                 locked_by = NULL, lease_until = NULL, updated_at = ",
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
                 wait_for = NULL, signal = NULL, children_left = NULL, limit_scope = ",
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
                 locked_by = NULL, lease_until = NULL, updated_at = ",
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
        let done = sqlx::query(self.if_held)
            .bind(self.items.as_deref())
            .bind(json_list(&ids)?)
            .bind(count)
            .bind(fences)
            .execute(db)
            .await?;
        Ok(done.rows_affected() == count.unsigned_abs())
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
    pub(super) fn of(done: &[(i64, i64, &Outcome)]) -> Result<Self, Error> {
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
                    let at = at.map(|at| at.format(TIME_FORMAT).to_string());
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
        let statements = [
            Statement {
                if_held: FINISH_IF_HELD,
                returning: FINISH_MANY,
                items: None,
                attempts: finished,
            },
            Statement {
                if_held: WAIT_IF_HELD,
                returning: WAIT_MANY,
                items: Some(format!("[{}]", waits.join(","))),
                attempts: waiting,
            },
            Statement {
                if_held: KEEP_IF_HELD,
                returning: KEEP_MANY,
                items: Some(format!("[{}]", keeps.join(","))),
                attempts: kept,
            },
            Statement {
                if_held: JOIN_IF_HELD,
                returning: JOIN_MANY,
                items: Some(format!("[{}]", joins.join(","))),
                attempts: joining,
            },
            Statement {
                if_held: next_if_held,
                returning: next_returning,
                items: Some(format!("[{}]", items.join(","))),
                attempts: moved,
            },
            Statement {
                if_held: FAIL_IF_HELD,
                returning: FAIL_MANY,
                items: Some(json_list(&failed)?),
                attempts: failed.iter().map(|f| (f.0, f.1)).collect(),
            },
        ]
        .into_iter()
        .filter(|statement| !statement.attempts.is_empty())
        .collect();
        Ok(Batch { statements })
    }

    /// Writes every outcome; the attempts that still held their tasks.
    async fn write(&self, db: &mut SqliteConnection) -> Result<Vec<(i64, i64)>, Error> {
        let mut held = Vec::new();
        for statement in &self.statements {
            held.extend(statement.write_exact(db).await?);
        }
        Ok(held)
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
    if let (true, [statement], None) = (alone, batch.statements.as_slice(), history) {
        if statement.write_if_all_held(db).await? {
            return Ok(crate::driver::which_held(done, statement.attempts.clone()));
        }
    }
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    let mut held = Vec::new();
    for statement in &batch.statements {
        // A statement that wrote nothing alone would write nothing again.
        if (!alone || history.is_some()) && statement.write_if_all_held(&mut tx).await? {
            held.extend_from_slice(&statement.attempts);
        } else {
            held.extend(statement.write_exact(&mut tx).await?);
        }
    }
    let held = crate::driver::which_held(done, held);
    if let Some(history) = history {
        record_history(&mut tx, done, &held, history).await?;
    }
    tx.commit().await?;
    Ok(held)
}

/// Records the history of the attempts of `done` that `held` their tasks
/// (their outcomes just written, in the same transaction).
pub(super) async fn record_history(
    db: &mut SqliteConnection,
    done: &[(i64, i64, &Outcome)],
    held: &[bool],
    history: &History<'_>,
) -> Result<(), Error> {
    let rows: Vec<_> = (done.iter().zip(history.traces).zip(held))
        .filter(|(_, held)| **held)
        .map(|((&(id, _, outcome), trace), _)| {
            let (event, to, error) = outcome.event();
            let to = to.or(match outcome {
                Outcome::Retry { .. } | Outcome::Park { .. } => trace.kind.as_deref(),
                _ => None,
            });
            (
                id,
                event,
                &trace.kind,
                to,
                trace.attempt,
                trace.duration_us,
                error,
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(HISTORY)
        .bind(json_list(&rows)?)
        .bind(history.worker)
        .execute(db)
        .await?;
    Ok(())
}

#[async_trait]
impl crate::driver::Completes for Sqlite {
    async fn complete_many(
        db: &SqliteHandle,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error> {
        let batch = Batch::of(done)?;
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
        let held = !Batch::of(&done)?.write(tx).await?.is_empty();
        if let (true, Some(history)) = (held, history) {
            record_history(tx, &done, &[true], history).await?;
        }
        Ok(held)
    }

    async fn notify_errors(_db: &SqliteHandle, _payloads: &[String]) -> Result<(), Error> {
        // SQLite has no notifications: `Worker::errors` tells this process.
        Ok(())
    }
}
