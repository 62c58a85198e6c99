//! The SQLite backend: one file, no server.
//!
//! A claim reads and leases its tasks under SQLite's write lock (one statement
//! for a few tasks, a `BEGIN IMMEDIATE` transaction for a batch), so two
//! processes on one file never claim the same attempt. Outcomes are written
//! by statements that each write all their items or none, checked against the
//! attempts' fences (see [`flush`]). There is no LISTEN/NOTIFY: enqueues from
//! this process wake its workers at once through an in-process signal, changes
//! from other processes are seen at the next poll (250 ms by default).

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Executor, Sqlite, SqliteConnection};
use tokio::sync::Notify;

use super::{
    micros, wakeup_binds, Claimed, History, KeyedStatements, Limit, Listener, Notice, Outcome,
    Retention, Store,
};
use crate::model::{
    one_kind, BoxFuture, Cancel, Delivery, Encoded, Error, NewTask, Rate, SignalTo, TaskRow,
    TaskState, Wakeup, Window,
};

/// Wakes the workers of this process when a task is enqueued or resumed here.
pub(crate) static LOCAL_WAKE: Notify = Notify::const_new();

macro_rules! now {
    () => {
        "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    };
    ($micros:literal) => {
        concat!(
            "strftime('%Y-%m-%d %H:%M:%f', 'now', (",
            $micros,
            " / 1000000.0) || ' seconds')"
        )
    };
}

/// The order in which ready tasks are claimed: `wakeup_at` less the task's
/// head start of `priority` minutes, as the ready index has it (a task of
/// priority 0 by `wakeup_at` itself, with no date arithmetic).
macro_rules! claim_order {
    () => {
        "CASE WHEN priority = 0 THEN wakeup_at
         ELSE strftime('%Y-%m-%d %H:%M:%f', wakeup_at, -priority || ' minutes') END"
    };
}

/// `columns` of the ready tasks a claim takes: up to `?1` of the kinds `?2`
/// (a JSON array), in [`claim_order!`]. A due task's order is at most now,
/// which bounds the index scan.
macro_rules! ready_tasks {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM jetpack_tasks
             WHERE state = 'ready' AND limit_scope IS NULL AND error IS NULL AND wakeup_at <= ",
            now!(),
            " AND (lease_until IS NULL OR lease_until <= ",
            now!(),
            ") AND kind IN (SELECT value FROM json_each(?2)) AND ",
            claim_order!(),
            " <= ",
            now!(),
            " ORDER BY ",
            claim_order!(),
            " LIMIT ?1"
        )
    };
}

/// A claim's new `tried` and `fence`, saturating at the largest values the
/// table allows (its checks): a value written by hand at the maximum would
/// otherwise overflow and fail every claim. The worker parks such a task.
/// The cast: a real number written by hand passes the table's range check,
/// and would not decode as an integer.
macro_rules! next_attempt {
    () => {
        "CAST(min(tried, 2147483646) AS INTEGER) + 1"
    };
}
macro_rules! next_fence {
    () => {
        "CAST(min(fence, 9007199254740990) AS INTEGER) + 1"
    };
}

/// The update that leases a task to worker `$owner` for `$lease` µs, as a new
/// attempt.
macro_rules! lease {
    ($owner:literal, $lease:literal) => {
        concat!(
            "UPDATE jetpack_tasks
             SET tried = ",
            next_attempt!(),
            ", fence = ",
            next_fence!(),
            ", locked_by = ",
            $owner,
            ", lease_until = ",
            now!($lease),
            ", updated_at = ",
            now!()
        )
    };
}

/// Whether a parent's join waits for the task (`Claimed::awaited`).
/// A claimed task's queue lag: claim time minus due time, in µs (0 when a
/// hand-written `wakeup_at` does not read as a time).
macro_rules! lag {
    () => {
        "coalesce(CAST((julianday('now') - julianday(wakeup_at)) * 86400000000.0 AS INTEGER), 0)"
    };
}

macro_rules! awaited {
    () => {
        "coalesce(awaited <> 'done', 0)"
    };
}

/// The tasks a claim takes, read in the claim's write transaction as one JSON
/// array of `[id, step, tried, fence]` with the attempt and fence the claim
/// gives them. Every row a statement returns is a hand-off from the
/// connection's thread: one value for the whole batch took 3.9 µs per task where
/// `UPDATE … RETURNING`, a row per task, took 6.3 µs (claims of 200 one after
/// the other from a file of 10,000 tasks, medians of 7 runs).
const CLAIM_READ: &str = concat!(
    "SELECT json_group_array(json_array(id, step, ",
    next_attempt!(),
    ", ",
    next_fence!(),
    ", wait_for, signal, ",
    awaited!(),
    ", ",
    lag!(),
    ")) FROM (",
    ready_tasks!("id, step, tried, fence, wait_for, signal, awaited, wakeup_at"),
    ")"
);

/// Leases the tasks `CLAIM_READ` read (`?1`, a JSON array of ids) to worker
/// `?2` for `?3` µs, in the same transaction.
const CLAIM_LEASE: &str = concat!(
    lease!("?2", "?3"),
    " WHERE id IN (SELECT value FROM json_each(?1))"
);

/// Claims and leases in one statement, returning a row per task: for claims of
/// fewer than [`FEW`] tasks. `?3` is the worker, `?4` the lease in µs.
const CLAIM_FEW: &str = concat!(
    lease!("?3", "?4"),
    " WHERE id IN (",
    ready_tasks!("id"),
    ") RETURNING id, step, tried, fence, wait_for, signal, ",
    awaited!(),
    " AS awaited, ",
    lag!(),
    " AS lag_us"
);

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

/// Forgets the attempts of limited steps that no longer hold their tasks (see
/// the PostgreSQL backend).
const DROP_HOLDERS: &str = concat!(
    "DELETE FROM jetpack_holders WHERE NOT EXISTS (
         SELECT 1 FROM jetpack_tasks t
         WHERE t.id = jetpack_holders.task_id AND t.fence = jetpack_holders.fence
           AND t.locked_by IS NOT NULL AND t.lease_until > ",
    now!(),
    ")"
);

/// Every scope with ready tasks of the limited kinds `?1` (a JSON array of
/// `[kind, concurrency, rate, burst, climb]`, NULL for no such limit), with
/// how many more attempts its concurrency allows, the tokens its bucket holds
/// and its current rate (NULL without a rate), and whether it counts
/// holders; one index probe per scope (a loose index scan of
/// `jetpack_tasks_limited`). The buckets refill as on PostgreSQL (see
/// `CLAIM_LIMITED` there); a bucket whose `refilled_at` does not read as a
/// time is taken as new.
const FREE_SCOPES: &str = concat!(
    "
WITH RECURSIVE scopes(scope) AS (
    SELECT (SELECT limit_scope FROM jetpack_tasks
            WHERE state = 'ready' AND limit_scope IS NOT NULL ORDER BY limit_scope LIMIT 1)
    UNION ALL
    SELECT (SELECT limit_scope FROM jetpack_tasks
            WHERE state = 'ready' AND limit_scope IS NOT NULL AND limit_scope > s.scope
            ORDER BY limit_scope LIMIT 1)
    FROM scopes s WHERE s.scope IS NOT NULL
), limits AS (
    SELECT value ->> 0 AS kind, value ->> 1 AS n, value ->> 2 AS rate, value ->> 3 AS burst,
           value ->> 4 AS climb
    FROM json_each(?1)
), found AS (
    SELECT s.scope, l.n, l.rate, l.burst, l.climb, r.tokens AS had, r.rate AS was,
           (julianday(",
    now!(),
    ") - julianday(r.refilled_at)) * 86400.0 AS elapsed
    FROM scopes s
    JOIN limits l ON l.kind = substr(s.scope, 1, instr(s.scope || '/', '/') - 1)
    LEFT JOIN jetpack_rates r ON r.scope = s.scope AND l.rate IS NOT NULL
)
SELECT scope, free, CAST(tokens AS REAL), CAST(rate AS REAL), counted FROM (
    SELECT scope, CAST(n IS NOT NULL AS INTEGER) AS counted,
        coalesce(n, 2147483647)
            - (SELECT count(*) FROM jetpack_holders h WHERE h.scope = f.scope) AS free,
        CASE WHEN rate IS NULL THEN 2147483647.0
             WHEN had IS NULL OR elapsed IS NULL THEN burst
             WHEN elapsed < 0 THEN 0.0
             ELSE min(burst, had + min(was, rate) * elapsed) END AS tokens,
        CASE WHEN rate IS NULL THEN NULL
             WHEN had IS NULL OR elapsed IS NULL THEN rate
             ELSE min(rate, was + climb * max(elapsed, 0)) END AS rate
    FROM found f
) WHERE free > 0 AND tokens >= 1.0"
);

/// Takes the tokens of the claims from the buckets `?1` (a JSON array of
/// `[scope, tokens left, rate]`), refilled now.
const SPEND: &str = concat!(
    "INSERT INTO jetpack_rates (scope, tokens, rate, refilled_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, ",
    now!(),
    " FROM json_each(?1) WHERE true
     ON CONFLICT (scope) DO UPDATE
     SET tokens = excluded.tokens, rate = excluded.rate, refilled_at = excluded.refilled_at"
);

/// Gives back attempt (`?1`, `?2`) of a rate-limited step: ready after `?3`
/// µs, its attempt not counted.
const BACK: &str = concat!(
    "UPDATE jetpack_tasks
     SET locked_by = NULL, lease_until = NULL, tried = max(tried - 1, 0), wakeup_at = ",
    now!("?3"),
    ", updated_at = ",
    now!(),
    " WHERE id = ?1 AND fence = ?2"
);

/// Slows scope `?1` (see the PostgreSQL backend): limited to `?2` per
/// second, climbing back by `?3`, never below `?4`, paused for `?5` µs.
const SLOW: &str = concat!(
    "INSERT INTO jetpack_rates (scope, tokens, rate, refilled_at)
     VALUES (?1, 0.0, max(?2 / 2, ?4), ",
    now!("?5"),
    ")
     ON CONFLICT (scope) DO UPDATE
     SET tokens = 0.0, refilled_at = excluded.refilled_at,
         rate = max(min(?2, rate + ?3 * max(coalesce((julianday(",
    now!(),
    ") - julianday(refilled_at)) * 86400.0, 0), 0)) / 2, ?4)
     WHERE refilled_at <= ",
    now!()
);

/// Up to `?2` due tasks of scope `?1`, in claim order: id and order.
const SCOPE_DUE: &str = concat!(
    "SELECT id, ",
    claim_order!(),
    " FROM jetpack_tasks
     WHERE state = 'ready' AND limit_scope = ?1 AND error IS NULL AND wakeup_at <= ",
    now!(),
    " AND (lease_until IS NULL OR lease_until <= ",
    now!(),
    ") AND ",
    claim_order!(),
    " <= ",
    now!(),
    " ORDER BY ",
    claim_order!(),
    " LIMIT ?2"
);

/// Leases the tasks `?1` (a JSON array of ids) of limited steps to worker `?2`
/// for `?3` µs, returning them.
const CLAIM_LIMITED: &str = concat!(
    lease!("?2", "?3"),
    " WHERE id IN (SELECT value FROM json_each(?1))
     RETURNING id, step, tried, fence, wait_for, signal, ",
    awaited!(),
    " AS awaited, limit_scope AS scope, ",
    lag!(),
    " AS lag_us"
);

/// Records attempts `?1` (a JSON array of `[id, fence, scope]`) as holders.
const HOLD: &str = "INSERT INTO jetpack_holders (task_id, fence, scope)
     SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1) WHERE true
     ON CONFLICT (task_id) DO UPDATE SET fence = excluded.fence, scope = excluded.scope";

/// Gives task `?1` (attempt `?2`) its concurrency scope `?3` and back to the
/// claims, as a release does; its step is stored again as `?4` of kind `?5`
/// (a row under a former name gets the new).
const RESCOPE: &str = concat!(
    "UPDATE jetpack_tasks
     SET limit_scope = ?3, step = ?4, kind = ?5, locked_by = NULL, lease_until = NULL, tried = max(tried - 1, 0),
         updated_at = ",
    now!(),
    " WHERE id = ?1 AND fence = ?2"
);

/// Records schedule `?1` with last tick `?2`, unless it has a row.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const SCHEDULE_START: &str = "INSERT INTO jetpack_schedules (name, last_tick) VALUES (?1, ?2)
     ON CONFLICT (name) DO NOTHING";

/// The last tick schedule `?1` fired, in the table's format.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const LAST_TICK: &str =
    "SELECT strftime('%Y-%m-%d %H:%M:%f', last_tick) FROM jetpack_schedules WHERE name = ?1";

/// Moves schedule `?1` from tick `?2` to tick `?3`, if no other worker did
/// (the tick compared in one format, whatever a person wrote).
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const MOVE_TICK: &str = concat!(
    "UPDATE jetpack_schedules SET last_tick = ?3, fired_at = ",
    now!(),
    " WHERE name = ?1 AND strftime('%Y-%m-%d %H:%M:%f', last_tick) = ?2"
);

/// Takes the concurrency scope from live tasks of the kinds `?1`.
const UNSCOPE: &str = "UPDATE jetpack_tasks SET limit_scope = NULL
     WHERE limit_scope IS NOT NULL AND kind IN (SELECT value FROM json_each(?1))
       AND state IN ('ready', 'waiting', 'parked')";

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

/// Makes up to `?1` waiting tasks whose deadline passed ready, with no signal.
const EXPIRE_WAITS: &str = concat!(
    "UPDATE jetpack_tasks SET state = 'ready', signal = NULL, updated_at = ",
    now!(),
    " WHERE id IN (SELECT id FROM jetpack_tasks WHERE state = 'waiting' AND wakeup_at <= ",
    now!(),
    " ORDER BY wakeup_at LIMIT ?1)"
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

/// Renews leases, and moves `wakeup_at` along (see the PostgreSQL backend).
const HEARTBEAT: &str = concat!(
    "UPDATE jetpack_tasks SET lease_until = ",
    now!("?2"),
    ", wakeup_at = ",
    now!("?2"),
    " WHERE locked_by IS NOT NULL AND (limit_scope IS NULL OR lease_until > ",
    now!(),
    ") AND (id, fence) IN (
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1))
     RETURNING id, fence"
);

const RELEASE: &str = concat!(
    "UPDATE jetpack_tasks
     SET locked_by = NULL, lease_until = NULL, tried = max(tried - 1, 0), wakeup_at = ",
    now!(),
    ", updated_at = ",
    now!(),
    " WHERE locked_by IS NOT NULL AND (id, fence) IN (
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1))"
);

/// When the next task becomes due, leaving out leases that have not expired
/// (see the PostgreSQL backend).
const NEXT_DUE: &str = concat!(
    "SELECT (julianday(min(wakeup_at)) - julianday('now')) * 86400.0
     FROM jetpack_tasks
     WHERE state = 'ready' AND limit_scope IS NULL AND error IS NULL
       AND kind IN (SELECT value FROM json_each(?1))
       AND (lease_until IS NULL OR lease_until <= ",
    now!(),
    ") AND ",
    claim_order!(),
    " <= (SELECT wakeup_at FROM jetpack_tasks
          WHERE state = 'ready' AND limit_scope IS NULL AND error IS NULL
            AND kind IN (SELECT value FROM json_each(?1))
            AND (lease_until IS NULL OR lease_until <= ",
    now!(),
    ") ORDER BY ",
    claim_order!(),
    " LIMIT 1)"
);

/// Deletes up to `?3` tasks that finished more than `?1` µs ago (0 when this
/// worker does not keep finished tasks) or were cancelled more than `?2` µs
/// ago, oldest first; a child a parent's join counted stays until that join
/// step has moved on (see the PostgreSQL backend).
const CLEAN: &str = "DELETE FROM jetpack_tasks WHERE id IN (
         SELECT id FROM jetpack_tasks t
         WHERE state IN ('finished', 'cancelled')
           AND finished_at < strftime('%Y-%m-%d %H:%M:%f', 'now',
               (-(CASE state WHEN 'finished' THEN ?1 ELSE ?2 END) / 1000000.0) || ' seconds')
           AND NOT (awaited IS 'done' AND EXISTS (
               SELECT 1 FROM jetpack_tasks p WHERE p.id = t.parent_id AND p.children_left IS NOT NULL))
         ORDER BY finished_at
         LIMIT ?3)";

/// Deletes up to `?2` kept signals sent more than `?1` µs ago, oldest first.
const CLEAN_SIGNALS: &str = "DELETE FROM jetpack_signals WHERE id IN (
         SELECT id FROM jetpack_signals
         WHERE sent_at < strftime('%Y-%m-%d %H:%M:%f', 'now', (-?1 / 1000000.0) || ' seconds')
         ORDER BY id LIMIT ?2)";

/// Records machines `?1` (a JSON array of `[name, graph]`), those that changed.
const REGISTER: &str = "
INSERT INTO jetpack_machines (name, graph)
SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
ON CONFLICT (name) DO UPDATE
SET graph = excluded.graph, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE graph IS NOT excluded.graph";

/// Whether the history is on.
const HISTORY_ON: &str = "SELECT coalesce((SELECT history FROM jetpack_config), 1) <> 0";

/// Deletes rows of history older than `?1` µs among the `?2` oldest.
const CLEAN_HISTORY: &str = "
DELETE FROM jetpack_history
WHERE id IN (SELECT id FROM jetpack_history ORDER BY id LIMIT ?2)
  AND at < strftime('%Y-%m-%d %H:%M:%f', 'now', (-?1 / 1000000.0) || ' seconds')";

/// Deletes up to `?1` throttle windows that have passed, oldest first.
const CLEAN_THROTTLES: &str = concat!(
    "DELETE FROM jetpack_throttles WHERE key IN (
         SELECT key FROM jetpack_throttles WHERE until < ",
    now!(),
    " ORDER BY until LIMIT ?1)"
);

/// Deletes up to `?1` rate buckets not taken from for `?2` µs.
const CLEAN_BUCKETS: &str = "DELETE FROM jetpack_rates WHERE scope IN (
     SELECT scope FROM jetpack_rates
     WHERE refilled_at < strftime('%Y-%m-%d %H:%M:%f', 'now', (-?2 / 1000000.0) || ' seconds')
     LIMIT ?1)";

/// Inserts step `?1` of kind `?2`, priority `?5` and concurrency scope `?7`,
/// due after `?3` µs or at `?4`; with unique key `?6`, only if no live task
/// holds it.
const INSERT: &str = concat!(
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
const INSERT_MANY: &str = "INSERT INTO jetpack_tasks (kind, step, priority, limit_scope)
     SELECT value ->> 0, value -> 1, value ->> 2, value ->> 3 FROM json_each(?1) ORDER BY rowid";

/// `INSERT_MANY` when every step is of kind `?2` (so of priority `?3`), with
/// no concurrency scope: `?1` is an array of steps.
const INSERT_MANY_OF_KIND: &str = "INSERT INTO jetpack_tasks (kind, step, priority)
     SELECT ?2, value, ?3 FROM json_each(?1) ORDER BY rowid";

/// The time format of the table, for binding absolute times.
pub(crate) const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

pub(crate) struct SqliteStore {
    pool: SqlitePool,
    /// This worker's own connection for its writes (claims, flushes,
    /// heartbeats, releases), opened with the pool's options but outside it,
    /// so the worker never waits for, or starves, the pool its steps and the
    /// application use. `None` until first used, and again after an error.
    ///
    /// One connection, because SQLite empties a connection's page cache
    /// whenever another connection changed the file since it last read: writes
    /// spread over the pool's connections re-read their pages from the file on
    /// every claim and flush.
    ///
    /// The lock queues the worker's writes. SQLite has one writer at a time, and
    /// a connection that finds the file locked waits in SQLite's busy handler,
    /// which sleeps in steps of milliseconds: a claim and a flush of the same
    /// worker colliding there left the worker idle half the time. Queued here
    /// instead, the next write starts the moment the last one commits.
    writer: tokio::sync::Mutex<Option<SqliteConnection>>,
    /// Claims of fewer tasks than this are one statement returning a row per
    /// task (see [`FEW`]).
    few: usize,
}

/// Below this many tasks, one statement that returns a row per task beats a
/// transaction that returns them as one value: the transaction's three more
/// trips to the connection's thread also hold SQLite's write lock longer, and
/// other processes wait for it in SQLite's busy handler, which sleeps in
/// milliseconds. Measured with the soak (2 processes, concurrency 16): 100,000
/// tasks in 16.6–17.5 s with one statement, 20.9–25.3 s with transactions.
const FEW: usize = 32;

impl SqliteStore {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        SqliteStore {
            pool,
            writer: tokio::sync::Mutex::new(None),
            few: FEW,
        }
    }

    /// A store that takes its batched paths from `few` tasks on.
    #[cfg(all(test, feature = "postgres"))]
    pub(crate) fn with_few(pool: SqlitePool, few: usize) -> Self {
        SqliteStore {
            few,
            ..SqliteStore::new(pool)
        }
    }
}

fn json_list<T: serde::Serialize>(items: &T) -> Result<String, Error> {
    serde_json::to_string(items).map_err(Error::Serialize)
}

/// Outcomes sorted for writing: finishes, next steps and failed attempts as
/// one [`Statement`] each, with their items bound as one JSON list (every
/// statement is a round trip to SQLite's connection thread).
struct Batch {
    statements: Vec<Statement>,
}

/// One statement of a [`Batch`].
struct Statement {
    /// Writes every item if each attempt holds its task, else nothing.
    if_held: &'static str,
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
    async fn write_if_all_held(&self, db: &mut SqliteConnection) -> Result<bool, Error> {
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
    fn of(done: &[(i64, i64, &Outcome)]) -> Result<Self, Error> {
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

/// This worker's connection, taken for one write.
struct Writer<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<SqliteConnection>>,
    db: SqliteConnection,
}

impl Writer<'_> {
    /// Ends the write: the connection goes back for the next one, unless the
    /// write failed. Then it is closed (rolling back what it had begun) and the
    /// next write opens a new one.
    fn done<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_ok() {
            *self.slot = Some(self.db);
        }
        result
    }
}

impl SqliteStore {
    /// Waits for this worker's earlier writes, then takes its connection.
    async fn writer(&self) -> Result<Writer<'_>, Error> {
        let mut slot = self.writer.lock().await;
        let db = match slot.take() {
            Some(db) => db,
            None => self.pool.connect_options().connect().await?,
        };
        Ok(Writer { slot, db })
    }
}

/// Claims up to `limit` tasks in one transaction (see [`CLAIM_READ`]).
/// Moves schedule `name` from tick `from` to `to` and inserts `tasks`, in one
/// `BEGIN IMMEDIATE` transaction, if no other worker moved it.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
async fn fire_schedule(
    db: &mut SqliteConnection,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tasks: &[Encoded],
) -> Result<bool, Error> {
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    let moved = sqlx::query(MOVE_TICK)
        .bind(name)
        .bind(from.format(TIME_FORMAT).to_string())
        .bind(to.format(TIME_FORMAT).to_string())
        .execute(&mut *tx)
        .await?;
    if moved.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    for task in tasks {
        sqlx::query(INSERT)
            .bind(&task.json)
            .bind(task.kind())
            .bind(0_i64)
            .bind(None::<String>)
            .bind(task.priority)
            .bind(None::<String>)
            .bind(&task.scope)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    LOCAL_WAKE.notify_waiters();
    Ok(true)
}

/// Claims up to `limit` tasks of limited steps under SQLite's write lock (see
/// the PostgreSQL backend): the scopes with room, then each scope's due tasks
/// up to its room, the earliest of them all leased and recorded as holders.
async fn claim_limited(
    db: &mut SqliteConnection,
    limit: usize,
    limits: String,
    owner: &str,
    lease: i64,
) -> Result<Vec<Claimed>, Error> {
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(DROP_HOLDERS).execute(&mut *tx).await?;
    let scopes: Vec<(String, i64, f64, Option<f64>, i64)> = sqlx::query_as(FREE_SCOPES)
        .bind(limits)
        .fetch_all(&mut *tx)
        .await?;
    let mut due: Vec<(String, i64)> = Vec::new();
    for (scope, free, tokens, _, _) in &scopes {
        // `as` saturates: the tokens are at least 1 and finite.
        let room = (*free).min(tokens.floor() as i64);
        let rows: Vec<(i64, String)> = sqlx::query_as(SCOPE_DUE)
            .bind(scope)
            .bind(room.min(i64::try_from(limit).unwrap_or(i64::MAX)))
            .fetch_all(&mut *tx)
            .await?;
        due.extend(rows.into_iter().map(|(id, order)| (order, id)));
    }
    if due.is_empty() {
        // The holders it forgot stay forgotten.
        tx.commit().await?;
        return Ok(Vec::new());
    }
    due.sort();
    due.truncate(limit);
    let ids: Vec<i64> = due.into_iter().map(|(_, id)| id).collect();
    let claimed: Vec<Claimed> = sqlx::query_as(CLAIM_LIMITED)
        .bind(json_list(&ids)?)
        .bind(owner)
        .bind(lease)
        .fetch_all(&mut *tx)
        .await?;
    let of = |c: &Claimed| (scopes.iter()).find(|s| Some(s.0.as_str()) == c.scope.as_deref());
    let holders: Vec<(i64, i64, Option<&str>)> = (claimed.iter())
        .filter(|c| of(c).is_some_and(|s| s.4 != 0))
        .map(|c| (c.id, c.fence, c.scope.as_deref()))
        .collect();
    if !holders.is_empty() {
        sqlx::query(HOLD)
            .bind(json_list(&holders)?)
            .execute(&mut *tx)
            .await?;
    }
    let spent: Vec<(&str, f64, f64)> = (scopes.iter())
        .filter_map(|(scope, _, tokens, rate, _)| {
            let taken = claimed
                .iter()
                .filter(|c| c.scope.as_deref() == Some(scope))
                .count();
            let rate = (*rate)?;
            (taken > 0).then(|| (scope.as_str(), (tokens - taken as f64).max(0.0), rate))
        })
        .collect();
    if !spent.is_empty() {
        sqlx::query(SPEND)
            .bind(json_list(&spent)?)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// The task goes back and the scope slows, in one transaction.
async fn back(
    db: &mut SqliteConnection,
    id: i64,
    fence: i64,
    delay: i64,
    slow: Option<(&str, &Rate)>,
) -> Result<(), Error> {
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    back_and_slow!(tx, id, fence, delay, slow);
    tx.commit().await?;
    Ok(())
}

async fn claim_batch(
    db: &mut SqliteConnection,
    limit: i64,
    kinds: String,
    owner: &str,
    lease: i64,
) -> Result<Vec<Claimed>, Error> {
    // BEGIN IMMEDIATE takes the write lock first: no other process can claim or
    // change these tasks between reading and leasing them.
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    let read: String = sqlx::query_scalar(CLAIM_READ)
        .bind(limit)
        .bind(kinds)
        .fetch_one(&mut *tx)
        .await?;
    #[allow(clippy::type_complexity)]
    let claimed: Vec<(
        i64,
        String,
        i32,
        i64,
        Option<String>,
        Option<String>,
        u8,
        i64,
    )> = serde_json::from_str(&read).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    if claimed.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
    sqlx::query(CLAIM_LEASE)
        .bind(json_list(&ids)?)
        .bind(owner)
        .bind(lease)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(claimed
        .into_iter()
        .map(
            |(id, step, tried, fence, wait_for, signal, awaited, lag_us)| Claimed {
                awaited: awaited != 0,
                lag_us,
                scope: None,
                id,
                step,
                tried,
                fence,
                wait_for,
                signal,
            },
        )
        .collect())
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
async fn flush(
    db: &mut SqliteConnection,
    done: &[(i64, i64, &Outcome)],
    batch: &Batch,
    history: Option<&History<'_>>,
) -> Result<Vec<bool>, Error> {
    let alone = batch.statements.len() == 1;
    if let (true, [statement], None) = (alone, batch.statements.as_slice(), history) {
        if statement.write_if_all_held(db).await? {
            return Ok(super::which_held(done, statement.attempts.clone()));
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
    let held = super::which_held(done, held);
    if let Some(history) = history {
        record_history(&mut tx, done, &held, history).await?;
    }
    tx.commit().await?;
    Ok(held)
}

/// Records the history of the attempts of `done` that `held` their tasks
/// (their outcomes just written, in the same transaction).
async fn record_history(
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
impl Store for SqliteStore {
    fn database(&self) -> &'static str {
        "SQLite"
    }

    fn default_poll_interval(&self) -> Duration {
        Duration::from_millis(250)
    }

    async fn claim(
        &self,
        limit: usize,
        kinds: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        let few = limit < self.few;
        let (limit, kinds, lease) = (
            i64::try_from(limit).unwrap_or(i64::MAX),
            json_list(&kinds)?,
            micros(lease)?,
        );
        let mut writer = self.writer().await?;
        let claimed = if few {
            sqlx::query_as(CLAIM_FEW)
                .bind(limit)
                .bind(kinds)
                .bind(owner)
                .bind(lease)
                .fetch_all(&mut writer.db)
                .await
                .map_err(Error::from)
        } else {
            claim_batch(&mut writer.db, limit, kinds, owner, lease).await
        };
        writer.done(claimed)
    }

    async fn claim_limited(
        &self,
        limit: usize,
        limits: &[Limit],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        let limits: Vec<_> = (limits.iter())
            .map(|l| {
                let (rate, burst, climb) = l.bucket();
                (&l.kind, l.concurrency, rate, burst, climb)
            })
            .collect();
        let (limits, lease) = (json_list(&limits)?, micros(lease)?);
        let mut writer = self.writer().await?;
        let claimed = claim_limited(&mut writer.db, limit, limits, owner, lease).await;
        writer.done(claimed)
    }

    async fn back(
        &self,
        id: i64,
        fence: i64,
        delay: Duration,
        slow: Option<(&str, &Rate)>,
    ) -> Result<(), Error> {
        let delay = micros(delay)?;
        let mut writer = self.writer().await?;
        let done = back(&mut writer.db, id, fence, delay, slow).await;
        writer.done(done)
    }

    async fn rescope(
        &self,
        id: i64,
        fence: i64,
        scope: &str,
        step: &str,
        kind: &str,
    ) -> Result<(), Error> {
        let mut writer = self.writer().await?;
        let done = sqlx::query(RESCOPE)
            .bind(id)
            .bind(fence)
            .bind(scope)
            .bind(step)
            .bind(kind)
            .execute(&mut writer.db)
            .await;
        writer.done(done.map(drop).map_err(Error::from))
    }

    async fn last_tick(&self, name: &str, start: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
        let mut writer = self.writer().await?;
        let started = sqlx::query(SCHEDULE_START)
            .bind(name)
            .bind(start.format(TIME_FORMAT).to_string())
            .execute(&mut writer.db)
            .await;
        writer.done(started.map(drop).map_err(Error::from))?;
        let last: Option<String> = sqlx::query_scalar(LAST_TICK)
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        let last = last.unwrap_or_default();
        read_time(&last, || format!("last_tick of schedule {name:?}"))
    }

    async fn fire(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tasks: Vec<Encoded>,
    ) -> Result<bool, Error> {
        let mut writer = self.writer().await?;
        let fired = fire_schedule(&mut writer.db, name, from, to, &tasks).await;
        writer.done(fired)
    }

    async fn unscope(&self, kinds: &[String]) -> Result<u64, Error> {
        let kinds = json_list(&kinds)?;
        let mut writer = self.writer().await?;
        let done = sqlx::query(UNSCOPE)
            .bind(kinds)
            .execute(&mut writer.db)
            .await;
        writer.done(done.map(|d| d.rows_affected()).map_err(Error::from))
    }

    async fn complete_many(
        &self,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error> {
        let batch = Batch::of(done)?;
        let mut writer = self.writer().await?;
        let held = flush(&mut writer.db, done, &batch, history).await;
        writer.done(held)
    }

    async fn complete_in_tx(
        &self,
        tx: Box<dyn Any + Send>,
        id: i64,
        fence: i64,
        outcome: &Outcome,
        history: Option<&History<'_>>,
    ) -> Result<bool, Error> {
        let mut tx = super::downcast_tx::<Sqlite>(tx)?;
        let done = [(id, fence, outcome)];
        let held = !Batch::of(&done)?.write(&mut tx).await?.is_empty();
        if let (true, Some(history)) = (held, history) {
            record_history(&mut tx, &done, &[true], history).await?;
        }
        super::end_tx(tx, held).await
    }

    async fn heartbeat(
        &self,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<(i64, i64)>, Error> {
        let (held, lease) = (json_list(&held)?, micros(lease)?);
        let mut writer = self.writer().await?;
        let renewed = sqlx::query_as(HEARTBEAT)
            .bind(held)
            .bind(lease)
            .fetch_all(&mut writer.db)
            .await;
        writer.done(renewed.map_err(Error::from))
    }

    async fn release(&self, held: &[(i64, i64)]) -> Result<(), Error> {
        let held = json_list(&held)?;
        let mut writer = self.writer().await?;
        let released = sqlx::query(RELEASE)
            .bind(held)
            .execute(&mut writer.db)
            .await;
        writer.done(released.map(drop).map_err(Error::from))
    }

    async fn next_due(&self, kinds: &[String]) -> Result<Option<Duration>, Error> {
        let secs: Option<f64> = sqlx::query_scalar(NEXT_DUE)
            .bind(json_list(&kinds)?)
            .fetch_one(&self.pool)
            .await?;
        Ok(secs.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)))
    }

    async fn listen(&self) -> Result<Box<dyn Listener>, Error> {
        Ok(Box::new(LocalNotices {
            cancels: local_cancels().subscribe(),
        }))
    }

    async fn expire_waits(&self, limit: usize) -> Result<u64, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut writer = self.writer().await?;
        let done = sqlx::query(EXPIRE_WAITS)
            .bind(limit)
            .execute(&mut writer.db)
            .await;
        writer.done(done.map(|d| d.rows_affected()).map_err(Error::from))
    }

    async fn states(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, state FROM jetpack_tasks WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(&ids)?)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn clean(&self, keep: &Retention, limit: usize) -> Result<u64, Error> {
        let (finished, cancelled) = (
            micros(keep.finished.unwrap_or_default())?,
            micros(keep.cancelled)?,
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut writer = self.writer().await?;
        let signals = micros(keep.signals)?;
        let history = micros(keep.history)?;
        let done = async {
            let tasks = sqlx::query(CLEAN)
                .bind(finished)
                .bind(cancelled)
                .bind(limit)
                .execute(&mut writer.db)
                .await?;
            let kept = sqlx::query(CLEAN_SIGNALS)
                .bind(signals)
                .bind(limit)
                .execute(&mut writer.db)
                .await?;
            let history = sqlx::query(CLEAN_HISTORY)
                .bind(history)
                .bind(limit)
                .execute(&mut writer.db)
                .await?;
            Ok::<_, sqlx::Error>(
                tasks.rows_affected() + kept.rows_affected() + history.rows_affected(),
            )
        }
        .await;
        writer.done(done.map_err(Error::from))
    }

    async fn clean_limits(&self, limit: usize) -> Result<u64, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let idle = micros(super::IDLE_BUCKET)?;
        let mut writer = self.writer().await?;
        let done = async {
            let throttles = sqlx::query(CLEAN_THROTTLES)
                .bind(limit)
                .execute(&mut writer.db)
                .await?;
            let buckets = sqlx::query(CLEAN_BUCKETS)
                .bind(limit)
                .bind(idle)
                .execute(&mut writer.db)
                .await?;
            Ok::<_, sqlx::Error>(throttles.rows_affected() + buckets.rows_affected())
        }
        .await;
        writer.done(done.map_err(Error::from))
    }

    async fn notify_errors(&self, _payloads: &[String]) -> Result<(), Error> {
        // SQLite has no notifications: `Worker::errors` tells this process.
        Ok(())
    }

    async fn register(&self, machines: &[(String, String)]) -> Result<(), Error> {
        let machines = json_list(&machines)?;
        let mut writer = self.writer().await?;
        let done = sqlx::query(REGISTER)
            .bind(machines)
            .execute(&mut writer.db)
            .await;
        writer.done(done.map(drop).map_err(Error::from))
    }

    async fn history_on(&self) -> Result<bool, Error> {
        let on: bool = sqlx::query_scalar(HISTORY_ON).fetch_one(&self.pool).await?;
        Ok(on)
    }

    async fn other_kinds(&self, kinds: &[String]) -> Result<Vec<(String, i64)>, Error> {
        Ok(sqlx::query_as(
            "SELECT kind, count(*) FROM jetpack_tasks
             WHERE kind NOT IN (SELECT value FROM json_each(?1))
               AND state IN ('ready', 'waiting', 'parked')
             GROUP BY kind ORDER BY kind",
        )
        .bind(json_list(&kinds)?)
        .fetch_all(&self.pool)
        .await?)
    }

    fn connections(&self) -> (u32, u32) {
        // The worker writes on a connection of its own; steps use the pool.
        (1, self.pool.options().get_max_connections())
    }
}

/// Wakeups and cancels from this process.
struct LocalNotices {
    cancels: tokio::sync::broadcast::Receiver<i64>,
}

#[async_trait]
impl Listener for LocalNotices {
    async fn recv(&mut self) -> Result<Notice, Error> {
        use tokio::sync::broadcast::error::RecvError;
        tokio::select! {
            _ = LOCAL_WAKE.notified() => Ok(Notice::Wake),
            cancel = self.cancels.recv() => Ok(match cancel {
                Ok(id) => Notice::Cancel(id),
                // Missed cancels are found by the heartbeat.
                Err(RecvError::Lagged(_) | RecvError::Closed) => Notice::Wake,
            }),
        }
    }
}

mod backend;
mod children;
mod migrate;
use backend::{local_cancels, read_time};
use children::rows;
pub(crate) use children::{child_results, detach_children, insert_children};
pub use migrate::connect;
pub(crate) use migrate::migrate;
#[cfg(test)]
pub(crate) use migrate::migrator;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::FENCE_MAX;
    use crate::workflow::Wakeup;

    /// The all-or-nothing statements write every item of a batch whose
    /// attempts all hold their tasks, in one statement: SQLite evaluates their
    /// check once, before the first row changes (were it evaluated per row,
    /// the first write would fail it for the rest, and every flush would go
    /// the exact way).
    #[tokio::test]
    async fn a_batch_of_held_attempts_is_written_by_one_statement_each(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let pool = connect("sqlite::memory:").await?;
        <Sqlite as crate::Backend>::migrate(&pool).await?;
        sqlx::query(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
             INSERT INTO jetpack_tasks (step) SELECT '{\"M\":{\"A\":null}}' FROM s",
        )
        .execute(&pool)
        .await?;
        let store = SqliteStore::new(pool.clone());
        let claimed = store
            .claim(50, &["M.A".to_string()], "w", Duration::from_secs(60))
            .await?;
        assert_eq!(claimed.len(), 50);
        let next = Outcome::Next {
            step: r#"{"M":{"B":null}}"#.into(),
            kind: "M.B".into(),
            wakeup: Wakeup::Now,
            scope: None,
        };
        let retry = Outcome::Retry {
            delay: Duration::from_secs(60),
            error: "again".into(),
        };
        let park = Outcome::park("boom".into());
        let done: Vec<(i64, i64, &Outcome)> = claimed
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let outcome = match i {
                    0..20 => &Outcome::Finish,
                    20..40 => &next,
                    40..45 => &retry,
                    _ => &park,
                };
                (t.id, t.fence, outcome)
            })
            .collect();
        let batch = Batch::of(&done)?;
        assert_eq!(batch.statements.len(), 3);
        let mut db = pool.acquire().await?;
        for statement in &batch.statements {
            assert!(
                statement.write_if_all_held(&mut db).await?,
                "{} wrote less than all its items",
                statement.if_held
            );
        }
        let left: Vec<(String, Option<String>, bool, i64)> = sqlx::query_as(
            "SELECT kind, error, locked_by IS NULL AND lease_until IS NULL, count(*)
             FROM jetpack_tasks GROUP BY 1, 2, 3 ORDER BY 1, 2",
        )
        .fetch_all(&mut *db)
        .await?;
        assert_eq!(
            left,
            [
                ("M.A".to_string(), None, true, 5),
                ("M.A".to_string(), Some("boom".to_string()), true, 5),
                ("M.B".to_string(), None, true, 20),
            ]
        );
        Ok(())
    }

    /// Migration 0018 refuses rows that would stall; those already written
    /// are parked saying what was wrong (a negative join count first set to
    /// the awaited children still live), and clearing `error` resumes each.
    #[tokio::test]
    async fn rows_that_would_stall_are_parked_by_the_migration(
    ) -> Result<(), Box<dyn std::error::Error>> {
        const CHECKED: i64 = 20261207000018;
        let pool = connect("sqlite::memory:").await?;
        let migrator = migrator();
        migrator.run_to(CHECKED - 1, &pool).await?;
        sqlx::raw_sql(
            r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"A":1}}'), ('{"M":{"B":2}}'),
                   ('{"M":{"C":3}}'), ('{"M":{"D":4}}');
               UPDATE jetpack_tasks SET state = 'parked' WHERE id = 1;
               UPDATE jetpack_tasks SET state = 'waiting' WHERE id = 2;
               UPDATE jetpack_tasks SET state = 'waiting', children_left = -1 WHERE id = 3;
               UPDATE jetpack_tasks SET parent_id = 3, awaited = 'wait' WHERE id = 4;"#,
        )
        .execute(&pool)
        .await?;
        migrator.run_to(CHECKED, &pool).await?;
        const ROWS: &str = "SELECT id, state, children_left, error FROM jetpack_tasks
                            WHERE id < 4 ORDER BY id";
        let rows: Vec<(i64, String, Option<i64>, Option<String>)> =
            sqlx::query_as(ROWS).fetch_all(&pool).await?;
        let said: Vec<_> = rows
            .iter()
            .map(|r| r.3.clone().unwrap_or_default())
            .collect();
        assert!(said[0].contains("parked without an error"), "{said:?}");
        assert!(
            said[1].contains("neither a signal nor children"),
            "{said:?}"
        );
        assert!(said[2].contains("children_left was -1"), "{said:?}");
        assert!(rows.iter().all(|r| r.1 == "parked"), "{rows:?}");
        assert_eq!(rows[2].2, Some(1), "the child still awaited");

        sqlx::query("UPDATE jetpack_tasks SET error = NULL WHERE id < 4")
            .execute(&pool)
            .await?;
        let rows: Vec<(i64, String, Option<i64>, Option<String>)> =
            sqlx::query_as(ROWS).fetch_all(&pool).await?;
        assert_eq!(
            rows,
            [
                (1, "ready".into(), None, None),
                (2, "ready".into(), None, None),
                (3, "waiting".into(), Some(1), None),
            ],
            "resumed: the parent waits for its child again"
        );
        Ok(())
    }

    /// Migration 0004 rebuilds the table to relax its check: every row, the id
    /// sequence (a finished task's id is never given again) and the triggers
    /// survive it, and text that is not JSON written by hand is still refused.
    #[tokio::test]
    async fn the_table_rebuild_keeps_rows_ids_and_triggers(
    ) -> Result<(), Box<dyn std::error::Error>> {
        const REBUILD: i64 = 20261126000004;
        let pool = connect("sqlite::memory:").await?;
        let migrator = migrator();
        migrator.run_to(REBUILD - 1, &pool).await?;
        // A parked task, a leased one, and the newest one finished: its id
        // must not come back.
        sqlx::raw_sql(
            r#"INSERT INTO jetpack_tasks (step)
                   VALUES ('{"M":{"A":1}}'), ('{"M":{"B":2}}'), ('{"M":{"C":3}}');
               UPDATE jetpack_tasks SET error = 'boom', tried = 3 WHERE id = 1;
               UPDATE jetpack_tasks SET locked_by = 'w', fence = 7, tried = 1,
                   lease_until = '2999-01-01 00:00:00.000' WHERE id = 2;
               DELETE FROM jetpack_tasks WHERE id = 3;"#,
        )
        .execute(&pool)
        .await?;
        const ROWS: &str = "SELECT json_group_array(json_array(id, step, wakeup_at, tried, error,
             locked_by, fence, created_at, updated_at, kind, lease_until)) FROM jetpack_tasks";
        let before: String = sqlx::query_scalar(ROWS).fetch_one(&pool).await?;

        migrator.run_to(REBUILD, &pool).await?;
        let after: String = sqlx::query_scalar(ROWS).fetch_one(&pool).await?;
        assert_eq!(after, before);
        assert!(
            after.contains(r#""M.A""#) && after.contains(r#""boom""#),
            "{after}"
        );

        let id: i64 = sqlx::query_scalar(
            r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"D":4}}') RETURNING id"#,
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(id, 4, "the id sequence went on from the highest id given");
        let kind: String = sqlx::query_scalar("SELECT kind FROM jetpack_tasks WHERE id = 4")
            .fetch_one(&pool)
            .await?;
        assert_eq!(kind, "M.D", "the insert trigger derives kind");

        let refused = sqlx::query("INSERT INTO jetpack_tasks (step) VALUES ('{oops')")
            .execute(&pool)
            .await;
        assert!(refused.is_err(), "a hand insert of text that is not JSON");
        let refused = sqlx::query("UPDATE jetpack_tasks SET step = '{oops' WHERE id = 2")
            .execute(&pool)
            .await;
        assert!(
            refused.is_err(),
            "a hand update of step to text that is not JSON"
        );
        sqlx::query(r#"UPDATE jetpack_tasks SET step = '{"M":{"E":5}}' WHERE id = 2"#)
            .execute(&pool)
            .await?;
        sqlx::query("UPDATE jetpack_tasks SET error = NULL WHERE id = 1")
            .execute(&pool)
            .await?;
        let rows: Vec<(i64, String, i32, Option<String>)> = sqlx::query_as(
            "SELECT id, kind, tried, error FROM jetpack_tasks WHERE id < 3 ORDER BY id",
        )
        .fetch_all(&pool)
        .await?;
        assert_eq!(
            rows,
            [(1, "M.A".into(), 0, None), (2, "M.E".into(), 1, None)],
            "the resume trigger resets a resumed task; the update trigger derives kind"
        );
        let indexed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE name = 'jetpack_tasks_ready'",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(indexed, 1);
        Ok(())
    }

    /// Migration 0005 adds checks for values written by hand: rows that break
    /// them already are kept, parked with what was wrong, with valid values;
    /// good rows, the id sequence, the index and the triggers stay.
    #[tokio::test]
    async fn the_checks_migration_parks_bad_rows_and_keeps_the_rest(
    ) -> Result<(), Box<dyn std::error::Error>> {
        const CHECKS: i64 = 20261130000005;
        let pool = connect("sqlite::memory:").await?;
        let migrator = migrator();
        migrator.run_to(CHECKS - 1, &pool).await?;
        sqlx::raw_sql(
            r#"INSERT INTO jetpack_tasks (step, wakeup_at, tried, fence) VALUES
                   ('{"M":{"A":1}}', '2026-11-30 10:00:00.000', 2, 5),
                   ('{"M":{"B":2}}', 'tomorrow', 0, 0),
                   ('{"M":{"C":3}}', '2026-11-30T10:00:00Z', 2147483647, 9223372036854775807),
                   ('{"M":{"D":4}}', '2026-11-30 10:00:00.000', 'abc', -3),
                   ('{"M":{"E":5}}', '2026-11-30 10:00:00.000', 0, 0);
               DELETE FROM jetpack_tasks WHERE id = 5;"#,
        )
        .execute(&pool)
        .await?;
        migrator.run(&pool).await?;
        let rows: Vec<(i64, String, i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, wakeup_at, tried, fence, error FROM jetpack_tasks ORDER BY id",
        )
        .fetch_all(&pool)
        .await?;
        assert_eq!(
            rows[0],
            (1, "2026-11-30 10:00:00.000".into(), 2, 5, None),
            "a good row is unchanged"
        );
        let error = |i: usize| rows[i].4.clone().unwrap_or_default();
        assert!(error(1).contains("wakeup_at was 'tomorrow'"), "{rows:?}");
        assert!(
            rows[1].1.len() == 23 && rows[1].1.as_str() > "2026",
            "{rows:?}"
        );
        assert_eq!(
            rows[2].1, "2026-11-30 10:00:00.000",
            "an ISO time is rewritten"
        );
        assert_eq!((rows[2].2, rows[2].3), (2147483647, FENCE_MAX), "{rows:?}");
        assert!(
            error(2).contains("fence was 9223372036854775807"),
            "{rows:?}"
        );
        assert_eq!((rows[3].2, rows[3].3), (0, 0), "{rows:?}");
        assert!(
            error(3).contains("tried was 'abc'") && error(3).contains("fence was -3"),
            "{rows:?}"
        );
        let id: i64 = sqlx::query_scalar(
            r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"F":6}}') RETURNING id"#,
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(id, 6, "the id sequence went on from the highest id given");
        for bad in [
            "UPDATE jetpack_tasks SET wakeup_at = 'tomorrow' WHERE id = 1",
            "UPDATE jetpack_tasks SET wakeup_at = '2026-11-30T10:00:00Z' WHERE id = 1",
            "UPDATE jetpack_tasks SET tried = -1 WHERE id = 1",
            "UPDATE jetpack_tasks SET fence = 9007199254740992 WHERE id = 1",
            "UPDATE jetpack_tasks SET id = 9223372036854775807 WHERE id = 1",
        ] {
            let refused = sqlx::query(bad).execute(&pool).await;
            assert!(refused.is_err(), "{bad} was not refused");
        }
        sqlx::query("UPDATE jetpack_tasks SET wakeup_at = datetime('now', '+1 hour') WHERE id = 1")
            .execute(&pool)
            .await?;
        let kind: String = sqlx::query_scalar("SELECT kind FROM jetpack_tasks WHERE id = 6")
            .fetch_one(&pool)
            .await?;
        assert_eq!(kind, "M.F", "the insert trigger derives kind");
        Ok(())
    }
}
