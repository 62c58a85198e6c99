//! The PostgreSQL backend.

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, Postgres};
use sqlx::{Executor, PgConnection};

use chrono::{DateTime, Utc};

use super::{
    micros, wakeup_binds, Claimed, History, KeyedStatements, Limit, Listener, Notice, Outcome,
    Retention, Store,
};
use crate::model::{
    one_kind, BoxFuture, Cancel, Delivery, Encoded, Error, NewTask, Rate, SignalTo, TaskRow,
    TaskState, Wakeup, Window,
};

/// The channel Jetpack's triggers notify and its workers listen on.
pub(crate) const CHANNEL: &str = "jetpack";

/// The order in which ready tasks are claimed: `wakeup_at` less the task's
/// head start of `priority` minutes, as the ready index has it.
macro_rules! claim_order {
    () => {
        "timezone('UTC', timezone('UTC', wakeup_at) - priority * interval '1 minute')"
    };
}

/// A claimed task's queue lag: claim time minus due time, in µs.
macro_rules! lag {
    () => {
        "(extract(epoch FROM now() - t.wakeup_at) * 1000000)::int8 AS lag_us"
    };
}

/// Claims up to `$1` ready tasks of the kinds `$2` for worker `$3` with a lease
/// of `$4` µs, in [`claim_order!`]: a due task's order is at most now, which
/// bounds the index scan.
///
/// The inner query locks the rows and returns their physical addresses
/// (`ctid`); the update then reads exactly those row versions (a TID scan), with
/// no second index lookup. That is safe within one statement: the rows are
/// locked by it, so nothing can move them. (Should a row have been changed by a
/// transaction that committed after this statement's snapshot, its new version
/// is locked but not visible here: it is skipped, and the next claim takes it.)
/// Joined to a CTE instead, PostgreSQL planned a hash join over a sequential
/// scan of the whole table for queues of a few thousand rows. The update
/// changes no indexed column, so it can be HOT.
///
/// `tried` and `fence` saturate: a value written by hand at the integer's
/// maximum would otherwise overflow and fail every claim. (The worker parks a
/// task whose `tried` is beyond its attempts, or whose fence is at the maximum.)
pub(super) const CLAIM: &str = concat!(
    "
UPDATE jetpack_tasks t
SET tried = least(t.tried, 2147483646) + 1, fence = least(t.fence, 9223372036854775806) + 1,
    locked_by = $3,
    lease_until = now() + $4 * interval '1 microsecond', updated_at = now()
WHERE t.ctid = ANY(ARRAY(
    SELECT ctid FROM jetpack_tasks
    WHERE state = 'ready' AND limit_scope IS NULL AND error IS NULL AND wakeup_at <= now()
      AND kind = ANY($2) AND (lease_until IS NULL OR lease_until <= now()) AND ",
    claim_order!(),
    " <= now()
    ORDER BY ",
    claim_order!(),
    "
    LIMIT $1
    FOR UPDATE SKIP LOCKED))
RETURNING t.id, t.step::text AS step, t.tried, t.fence, t.wait_for, t.signal::text AS signal,
    coalesce(t.awaited <> 'done', false) AS awaited, ",
    lag!(),
    "
"
);

/// Claims of limited steps take turns, across every process: this lock,
/// held to the end of the claim's transaction, or none when another claim
/// holds it (a worker never waits for it: one frozen mid-claim would stop the
/// claims of every other). The transaction may sit idle for at most 5 s: a
/// worker frozen mid-claim (a pause, a lost network) loses its session and
/// the lock with it.
const LIMITS_LOCK: &str = "
SELECT set_config('idle_in_transaction_session_timeout', '5000', true) IS NOT NULL
   AND pg_try_advisory_xact_lock(hashtext('jetpack limits'))";

/// Forgets the attempts of limited steps that no longer hold their tasks
/// (finished, failed, moved on, released, or whose lease expired).
const DROP_HOLDERS: &str = "
DELETE FROM jetpack_holders h
WHERE NOT EXISTS (
    SELECT 1 FROM jetpack_tasks t
    WHERE t.id = h.task_id AND t.fence = h.fence AND t.locked_by IS NOT NULL
      AND t.lease_until > now())";

/// Claims up to `$1` ready tasks of the limited kinds `$2` (each allowing
/// `$3` at once, or any number for NULL; starting at most `$6` per second
/// with a bucket of `$7` tokens and a climb of `$8`, or at any rate for
/// NULL) for worker `$4` with a lease of `$5` µs; records the attempts as
/// holders of their scopes, and takes their tokens from the buckets.
///
/// Every scope with ready tasks is found by one index probe each (a loose
/// index scan of `jetpack_tasks_limited`); each gets as many of its due tasks
/// as its limit leaves free and its bucket holds tokens, in claim order; the
/// earliest of all of them are claimed. Run after [`LIMITS_LOCK`] and
/// [`DROP_HOLDERS`], in their transaction, so that the holders it counts are
/// exactly the live ones and no other claim takes tokens meanwhile.
///
/// A bucket (`jetpack_rates`) refills at its current rate since
/// `refilled_at`, up to its size; a new bucket is full. Its rate, lowered by
/// slow-downs, climbs back to the limit by `$8` per second. A bucket whose
/// `refilled_at` is ahead (a slow-down's pause) gives nothing, and is not
/// written by the claim (also when a slow-down committed meanwhile).
pub(super) const CLAIM_LIMITED: &str = concat!(
    "
WITH RECURSIVE scopes AS (
    (SELECT limit_scope AS scope FROM jetpack_tasks
     WHERE state = 'ready' AND limit_scope IS NOT NULL ORDER BY limit_scope LIMIT 1)
    UNION ALL
    SELECT (SELECT limit_scope FROM jetpack_tasks
            WHERE state = 'ready' AND limit_scope > s.scope ORDER BY limit_scope LIMIT 1)
    FROM scopes s WHERE s.scope IS NOT NULL
), limits AS (
    SELECT * FROM unnest($2::text[], $3::integer[], $6::float8[], $7::float8[], $8::float8[])
        AS l(kind, n, rate, burst, climb)
), held AS (
    SELECT scope, count(*)::integer AS n FROM jetpack_holders GROUP BY scope
), buckets AS (
    SELECT s.scope, l.n, l.rate IS NOT NULL AS rated,
        CASE WHEN l.rate IS NULL THEN 2147483647
             WHEN r.scope IS NULL THEN l.burst
             WHEN r.refilled_at > now() THEN 0
             ELSE least(l.burst, r.tokens + least(r.rate, l.rate)
                  * extract(epoch FROM now() - r.refilled_at)::float8) END AS tokens,
        CASE WHEN r.scope IS NULL THEN l.rate
             ELSE least(l.rate, r.rate + l.climb
                  * greatest(extract(epoch FROM now() - r.refilled_at)::float8, 0)) END AS rate
    FROM scopes s
    JOIN limits l ON l.kind = split_part(s.scope, '/', 1)
    LEFT JOIN jetpack_rates r ON r.scope = s.scope AND l.rate IS NOT NULL
), picked AS (
    SELECT c.ctid FROM buckets b
    LEFT JOIN held h ON h.scope = b.scope
    CROSS JOIN LATERAL (
        SELECT t.ctid, ",
    claim_order!(),
    " AS ord FROM jetpack_tasks t
        WHERE t.state = 'ready' AND t.limit_scope = b.scope AND t.error IS NULL
          AND t.wakeup_at <= now() AND (t.lease_until IS NULL OR t.lease_until <= now())
          AND ",
    claim_order!(),
    " <= now()
        ORDER BY ",
    claim_order!(),
    "
        LIMIT greatest(least(coalesce(b.n, 2147483647) - coalesce(h.n, 0),
                             floor(b.tokens)::integer), 0)
    ) c
    ORDER BY c.ord
    LIMIT $1
), claimed AS (
    UPDATE jetpack_tasks t
    SET tried = least(t.tried, 2147483646) + 1, fence = least(t.fence, 9223372036854775806) + 1,
        locked_by = $4,
        lease_until = now() + $5 * interval '1 microsecond', updated_at = now()
    WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM picked))
    RETURNING t.id, t.step::text AS step, t.tried, t.fence, t.wait_for, t.signal::text AS signal,
        coalesce(t.awaited <> 'done', false) AS awaited, t.limit_scope AS scope, ",
    lag!(),
    "
), holding AS (
    INSERT INTO jetpack_holders (task_id, fence, scope)
    SELECT c.id, c.fence, c.scope FROM claimed c JOIN buckets b ON b.scope = c.scope
    WHERE b.n IS NOT NULL
    ON CONFLICT (task_id) DO UPDATE SET fence = EXCLUDED.fence, scope = EXCLUDED.scope
), spent AS (
    INSERT INTO jetpack_rates AS r (scope, tokens, rate, refilled_at)
    SELECT b.scope, greatest(b.tokens - count(*), 0), b.rate, now()
    FROM claimed c JOIN buckets b ON b.scope = c.scope
    WHERE b.rated
    GROUP BY b.scope, b.tokens, b.rate
    ON CONFLICT (scope) DO UPDATE
    SET tokens = EXCLUDED.tokens, rate = EXCLUDED.rate, refilled_at = EXCLUDED.refilled_at
    WHERE r.refilled_at <= now()
)
SELECT * FROM claimed"
);

/// Gives back attempt (`$1`, `$2`) of a rate-limited step: ready after `$3`
/// µs, its attempt not counted.
const BACK: &str = "
UPDATE jetpack_tasks
SET locked_by = NULL, lease_until = NULL, tried = greatest(tried - 1, 0),
    wakeup_at = now() + $3 * interval '1 microsecond', updated_at = now()
WHERE id = $1 AND fence = $2";

/// Slows scope `$1` (limited to `$2` per second, climbing back by `$3`,
/// never below `$4`): its current rate halves, and its bucket, emptied,
/// refills from `$5` µs from now. A scope already pausing is left alone:
/// the other steps of a burst that ran into the limit slow it once.
const SLOW: &str = "
INSERT INTO jetpack_rates AS r (scope, tokens, rate, refilled_at)
VALUES ($1, 0, greatest($2 / 2, $4), now() + $5 * interval '1 microsecond')
ON CONFLICT (scope) DO UPDATE
SET tokens = 0, refilled_at = EXCLUDED.refilled_at,
    rate = greatest(least($2, r.rate + $3 * extract(epoch FROM now() - r.refilled_at)::float8) / 2, $4)
WHERE r.refilled_at <= now()";

/// Gives task `$1` (attempt `$2`), claimed without a concurrency scope,
/// its scope `$3` and back to the claims, as a release does; its step is
/// stored again as `$4` of kind `$5` (a row under a former name gets the new).
const RESCOPE: &str = "
UPDATE jetpack_tasks
SET limit_scope = $3, step = $4::text::jsonb, kind = $5, locked_by = NULL, lease_until = NULL, tried = greatest(tried - 1, 0),
    updated_at = now()
WHERE id = $1 AND fence = $2";

/// Records schedule `$1` with last tick `$2`, unless it has a row.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const SCHEDULE_START: &str = "
INSERT INTO jetpack_schedules (name, last_tick) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

/// The last tick schedule `$1` fired.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const LAST_TICK: &str = "SELECT last_tick FROM jetpack_schedules WHERE name = $1";

/// Moves schedule `$1` from tick `$2` to tick `$3`, if no other worker did.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const MOVE_TICK: &str = "
UPDATE jetpack_schedules SET last_tick = $3, fired_at = now() WHERE name = $1 AND last_tick = $2";

/// Takes the concurrency scope from live tasks of the kinds `$1`, which have
/// no limit (any more).
const UNSCOPE: &str = "
UPDATE jetpack_tasks SET limit_scope = NULL
WHERE limit_scope IS NOT NULL AND kind = ANY($1) AND state IN ('ready', 'waiting', 'parked')";

/// The finished tasks (`$1` ids, `$2` fences) deleted, returning their attempts.
macro_rules! finished {
    () => {
        "finished AS (
    DELETE FROM jetpack_tasks t
    USING unnest($1::bigint[], $2::bigint[]) AS d(id, fence)
    WHERE t.id = d.id AND t.fence = d.fence
    RETURNING t.id, t.fence
)"
    };
}

/// The tasks moved to next steps (`$3`…`$8`, and the scopes of their
/// concurrency limits in `$scopes`, or none), returning their attempts.
///
/// A next step due now keeps the row's `wakeup_at` when that has passed: it is
/// due either way, a workflow under way keeps its place ahead of newer tasks,
/// and with no indexed column changed the update can be HOT (a step of no
/// limit writes `limit_scope` NULL over NULL).
macro_rules! moved {
    () => {
        moved!("NULL::text", "", "", "")
    };
    ($scope:literal, $scopes:literal, $alias:literal, $returning:literal) => {
        concat!(
            "moved AS (
    UPDATE jetpack_tasks t
    SET step = u.step::jsonb, kind = u.kind, tried = 0, locked_by = NULL, lease_until = NULL,
        updated_at = now(), wait_for = NULL, signal = NULL, children_left = NULL,
        limit_scope = ",
            $scope,
            ",
        wakeup_at = CASE WHEN u.at IS NULL AND u.delay = 0 AND t.wakeup_at <= now() THEN t.wakeup_at
                         ELSE coalesce(u.at, now() + u.delay * interval '1 microsecond') END
    FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::timestamptz[], $8::text[]",
            $scopes,
            ")
        AS u(id, fence, step, delay, at, kind",
            $alias,
            ")
    WHERE t.id = u.id AND t.fence = u.fence
    RETURNING t.id, t.fence",
            $returning,
            "
)"
        )
    };
}

/// Records finished tasks (deleted) and moves to next steps in one statement,
/// so that a flush of the completer is one round trip and one commit. Either
/// list may be empty; a single outcome goes the same way.
const FINISH_AND_NEXT: &str = concat!(
    "WITH ",
    finished!(),
    ", ",
    moved!(),
    " SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved"
);

/// The failed attempts (`$9` ids, `$10` fences, `$11` delays in µs, `$12`
/// errors): a retry (no error) is due after its delay, a parked task (an
/// error) is due now, and either gives its lease back. A retry keeps an
/// `error` set by hand meanwhile (the row was parked by that).
macro_rules! failed {
    () => {
        "failed AS (
    UPDATE jetpack_tasks t
    SET error = coalesce(f.error, t.error),
        state = CASE WHEN f.error IS NULL THEN t.state ELSE 'parked' END,
        locked_by = NULL, lease_until = NULL,
        updated_at = now(), wakeup_at = now() + f.delay * interval '1 microsecond'
    FROM unnest($9::bigint[], $10::bigint[], $11::bigint[], $12::text[]) AS f(id, fence, delay, error)
    WHERE t.id = f.id AND t.fence = f.fence
    RETURNING t.id, t.fence
)"
    };
}

/// The finished tasks that are kept (`$13` ids, `$14` fences, `$22`
/// results), when the worker keeps finished tasks for a while or a parent's
/// join waits for them.
///
/// Children a join waits for are counted here, a parent at a time however
/// many of its children the flush finishes: `awaited` (read as the statement
/// began) becomes 'done', and each parent's `children_left` drops by their
/// number; the last one makes it ready and wakes the workers. (One update of
/// the parent per child, by a trigger, made fan-outs a sixth of the drain's
/// speed.) A child that ends any other way is counted by the table's trigger.
macro_rules! kept {
    () => {
        "awaited_before AS MATERIALIZED (
    SELECT t.id, t.parent_id FROM unnest($13::bigint[]) AS k(id) JOIN jetpack_tasks t USING (id)
    WHERE t.awaited IN ('wait', 'fail', 'error')
), kept AS (
    UPDATE jetpack_tasks t
    SET state = 'finished', finished_at = now(), locked_by = NULL, lease_until = NULL,
        updated_at = now(), result = k.result::jsonb, children_left = NULL,
        awaited = CASE WHEN t.awaited IN ('wait', 'fail', 'error') THEN 'done' ELSE t.awaited END
    FROM unnest($13::bigint[], $14::bigint[], $22::text[]) AS k(id, fence, result)
    WHERE t.id = k.id AND t.fence = k.fence
    RETURNING t.id, t.fence
), counted AS (
    UPDATE jetpack_tasks p
    SET children_left = greatest(p.children_left - c.n, 0),
        state = CASE WHEN p.children_left <= c.n AND p.state = 'waiting' THEN 'ready' ELSE p.state END,
        wakeup_at = CASE WHEN p.children_left <= c.n AND p.state = 'waiting' THEN now() ELSE p.wakeup_at END,
        updated_at = now()
    FROM (SELECT b.parent_id, count(*)::integer AS n FROM kept JOIN awaited_before b USING (id)
          GROUP BY b.parent_id) c
    WHERE p.id = c.parent_id AND p.children_left > 0
    RETURNING p.state
), woke AS (
    SELECT pg_notify('jetpack', '') FROM counted WHERE state = 'ready' LIMIT 1
)"
    };
}

/// The tasks that begin to wait (`$15` ids, `$16` fences, `$17` steps, `$18`
/// kinds, `$19` signal names, `$20` keys, `$21` timeouts in µs or NULL): due
/// at the deadline, or never. A task parked by hand meanwhile stays parked.
/// The table's trigger hands a kept signal over at once.
macro_rules! waited {
    () => {
        waited!("")
    };
    ($returning:literal) => {
        concat!(
            "waited AS (
    UPDATE jetpack_tasks t
    SET step = w.step::jsonb, kind = w.kind,
        state = CASE WHEN t.state = 'parked' THEN 'parked' ELSE 'waiting' END,
        wait_for = w.name, wait_key = w.key, signal = NULL, tried = 0, children_left = NULL,
        limit_scope = w.scope,
        locked_by = NULL, lease_until = NULL, updated_at = now(),
        wakeup_at = coalesce(now() + w.timeout * interval '1 microsecond', '9999-12-31 00:00:00+00')
    FROM unnest($15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[],
                $21::bigint[], $28::text[]) AS w(id, fence, step, kind, name, key, timeout, scope)
    WHERE t.id = w.id AND t.fence = w.fence
    RETURNING t.id, t.fence",
            $returning,
            "
)"
        )
    };
}

/// The tasks that begin to wait for their children (`$23` ids, `$24` fences,
/// `$25` steps, `$26` kinds): `children_left` counts the awaited children
/// not ended yet, which the step inserted in this same transaction; with
/// none, the join step is due at once. A task parked by hand meanwhile stays
/// parked (and goes back to waiting when resumed). The table's triggers count
/// the children down as they end, and make the task ready after the last.
macro_rules! joined {
    () => {
        joined!("")
    };
    ($returning:literal) => {
        concat!(
            "joined AS (
    UPDATE jetpack_tasks t
    SET step = j.step::jsonb, kind = j.kind, tried = 0, children_left = c.n, limit_scope = j.scope,
        state = CASE WHEN t.state = 'parked' THEN 'parked' WHEN c.n > 0 THEN 'waiting' ELSE 'ready' END,
        wait_for = NULL, wait_key = NULL, signal = NULL,
        locked_by = NULL, lease_until = NULL, updated_at = now(),
        wakeup_at = CASE WHEN c.n > 0 THEN '9999-12-31 00:00:00+00' ELSE now() END
    FROM unnest($23::bigint[], $24::bigint[], $25::text[], $26::text[], $29::text[])
        AS j(id, fence, step, kind, scope)
    CROSS JOIN LATERAL (
        SELECT count(*)::integer AS n FROM jetpack_tasks c
        WHERE c.parent_id = j.id AND c.awaited IN ('wait', 'fail', 'error')
    ) c
    WHERE t.id = j.id AND t.fence = j.fence
    RETURNING t.id, t.fence",
            $returning,
            "
)"
        )
    };
}

/// [`FINISH_AND_NEXT`] with failed attempts, waits and kept finished tasks too. In an
/// outage every step fails: their outcomes are written like any others, many
/// per statement. The common statement above stays as it is.
const EVERY_OUTCOME: &str = concat!(
    "WITH ",
    finished!(),
    ", ",
    moved!("u.scope", ", $27::text[]", ", scope", ""),
    ", ",
    failed!(),
    ", ",
    kept!(),
    ", ",
    waited!(),
    ", ",
    joined!(),
    "
SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved
UNION ALL SELECT id, fence FROM failed UNION ALL SELECT id, fence FROM kept
UNION ALL SELECT id, fence FROM waited UNION ALL SELECT id, fence FROM joined
UNION ALL SELECT NULL, NULL WHERE (SELECT count(*) FROM woke) < 0"
);

/// The history of the attempts the statement wrote: for each of the ids in
/// `$a` (with the events `$b`, the kinds they ran `$c`, the kinds they went
/// to `$d`, their attempts `$e`, durations in µs `$f` and errors `$g`) that
/// `$written` returns (as `id, step`), a row with the step it moved to, by
/// worker `$w`. In the statement that writes the outcomes: the history never
/// disagrees with the rows.
macro_rules! history {
    ($written:literal, $a:literal, $b:literal, $c:literal, $d:literal, $e:literal, $f:literal, $g:literal, $w:literal) => {
        concat!(
            "history AS (
    INSERT INTO jetpack_history (task_id, event, from_kind, to_kind, step, attempt, worker, duration_us, error)
    SELECT h.id, h.event, h.from_kind, h.to_kind, w.step, h.attempt, ",
            $w,
            ", h.duration, h.error
    FROM unnest(",
            $a,
            "::bigint[], ",
            $b,
            "::text[], ",
            $c,
            "::text[], ",
            $d,
            "::text[], ",
            $e,
            "::integer[], ",
            $f,
            "::bigint[], ",
            $g,
            "::text[]) AS h(id, event, from_kind, to_kind, attempt, duration, error)
    JOIN (",
            $written,
            ") w ON w.id = h.id
)"
        )
    };
}

/// [`FINISH_AND_NEXT`], recording the history (`$9`…`$16`).
const FINISH_AND_NEXT_HISTORY: &str = concat!(
    "WITH ",
    finished!(),
    ", ",
    moved!("NULL::text", "", "", ", t.step"),
    ", ",
    history!(
        "SELECT id, NULL::jsonb AS step FROM finished UNION ALL SELECT id, step FROM moved",
        "$9",
        "$10",
        "$11",
        "$12",
        "$13",
        "$14",
        "$15",
        "$16"
    ),
    " SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved"
);

/// [`EVERY_OUTCOME`], recording the history (`$30`…`$37`).
const EVERY_OUTCOME_HISTORY: &str = concat!(
    "WITH ",
    finished!(),
    ", ",
    moved!("u.scope", ", $27::text[]", ", scope", ", t.step"),
    ", ",
    failed!(),
    ", ",
    kept!(),
    ", ",
    waited!(", t.step"),
    ", ",
    joined!(", t.step"),
    ", ",
    history!(
        "SELECT id, NULL::jsonb AS step FROM finished UNION ALL SELECT id, step FROM moved
         UNION ALL SELECT id, NULL FROM failed UNION ALL SELECT id, NULL FROM kept
         UNION ALL SELECT id, step FROM waited UNION ALL SELECT id, step FROM joined",
        "$30",
        "$31",
        "$32",
        "$33",
        "$34",
        "$35",
        "$36",
        "$37"
    ),
    "
SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved
UNION ALL SELECT id, fence FROM failed UNION ALL SELECT id, fence FROM kept
UNION ALL SELECT id, fence FROM waited UNION ALL SELECT id, fence FROM joined
UNION ALL SELECT NULL, NULL WHERE (SELECT count(*) FROM woke) < 0"
);

/// Renews leases. It also moves `wakeup_at` to the lease expiry, out of the way
/// of the claim's index scan: a step that runs long stops being stepped over.
/// An expired lease of a limited step is not renewed: its share may have
/// passed to another attempt, so the worker is told it lost the task.
const HEARTBEAT: &str = "
UPDATE jetpack_tasks t
SET lease_until = now() + $3 * interval '1 microsecond',
    wakeup_at = now() + $3 * interval '1 microsecond'
FROM unnest($1::bigint[], $2::bigint[]) AS h(id, fence)
WHERE t.id = h.id AND t.fence = h.fence AND t.locked_by IS NOT NULL
  AND (t.limit_scope IS NULL OR t.lease_until > now())
RETURNING t.id, t.fence";

const RELEASE: &str = "
UPDATE jetpack_tasks t
SET locked_by = NULL, lease_until = NULL, wakeup_at = now(), tried = greatest(t.tried - 1, 0),
    updated_at = now()
FROM unnest($1::bigint[], $2::bigint[]) AS h(id, fence)
WHERE t.id = h.id AND t.fence = h.fence AND t.locked_by IS NOT NULL";

/// When the next task becomes due. Leases that have not expired yet are left
/// out (finding their minimum would read every held row); the worker's poll
/// interval bounds how late an expiring lease is noticed.
///
/// The ready index is in [`claim_order!`], which is at most `wakeup_at`: the
/// first task in that order is due at some time `w`, and the task due first
/// is among those whose order is at most `w` (the subquery), a range of at
/// most ten minutes of prioritized tasks.
const NEXT_DUE: &str = concat!(
    "
SELECT extract(epoch FROM min(wakeup_at) - now())::float8
FROM jetpack_tasks
WHERE state = 'ready' AND limit_scope IS NULL AND error IS NULL AND kind = ANY($1)
  AND (lease_until IS NULL OR lease_until <= now())
  AND ",
    claim_order!(),
    " <= (
    SELECT wakeup_at FROM jetpack_tasks
    WHERE state = 'ready' AND limit_scope IS NULL AND error IS NULL AND kind = ANY($1)
      AND (lease_until IS NULL OR lease_until <= now())
    ORDER BY ",
    claim_order!(),
    " LIMIT 1)"
);

/// Makes up to `$1` waiting tasks whose deadline passed ready, with no
/// signal. A signal sent meanwhile waits for the row and then finds the task
/// no longer waiting (it is kept for a later wait): one of them wins.
const EXPIRE_WAITS: &str = "
UPDATE jetpack_tasks SET state = 'ready', signal = NULL, updated_at = now()
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jetpack_tasks
    WHERE state = 'waiting' AND wakeup_at <= now()
    ORDER BY wakeup_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED))";

/// Deletes up to `$3` tasks that finished more than `$1` µs ago (0 when this
/// worker does not keep finished tasks: those another worker kept, or this one
/// before a restart, go at once) or were cancelled more than `$2` µs ago,
/// oldest first. A child a parent's join counted stays until that join step
/// has moved on (its parent's `children_left` is NULL again).
const CLEAN: &str = "
DELETE FROM jetpack_tasks WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jetpack_tasks t
    WHERE state IN ('finished', 'cancelled')
      AND finished_at < now() - CASE state WHEN 'finished' THEN $1 ELSE $2 END * interval '1 microsecond'
      AND NOT (awaited IS NOT DISTINCT FROM 'done' AND EXISTS (
          SELECT 1 FROM jetpack_tasks p WHERE p.id = t.parent_id AND p.children_left IS NOT NULL))
    ORDER BY finished_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED))";

/// Deletes up to `$2` rows of history older than `$1` µs (found through the
/// BRIN index on `at`).
const CLEAN_HISTORY: &str = "
DELETE FROM jetpack_history WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jetpack_history WHERE at < now() - $1 * interval '1 microsecond'
    LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Deletes up to `$2` kept signals sent more than `$1` µs ago, oldest first.
const CLEAN_SIGNALS: &str = "
DELETE FROM jetpack_signals WHERE id = ANY(ARRAY(
    SELECT id FROM jetpack_signals
    WHERE sent_at < now() - $1 * interval '1 microsecond'
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED))";

/// Whether the history is on.
const HISTORY_ON: &str = "SELECT jetpack_history_on()";

/// Records machines `$1` with graphs `$2`, those that changed.
const REGISTER: &str = "
INSERT INTO jetpack_machines AS m (name, graph)
SELECT * FROM unnest($1::text[], $2::jsonb[])
ON CONFLICT (name) DO UPDATE SET graph = EXCLUDED.graph, updated_at = now()
WHERE m.graph IS DISTINCT FROM EXCLUDED.graph";

/// Deletes up to `$1` throttle windows that have passed, oldest first.
const CLEAN_THROTTLES: &str = "
DELETE FROM jetpack_throttles WHERE key = ANY(ARRAY(
    SELECT key FROM jetpack_throttles WHERE until < now()
    ORDER BY until LIMIT $1
    FOR UPDATE SKIP LOCKED))";

/// Deletes up to `$1` rate buckets not taken from for `$2` µs.
const CLEAN_BUCKETS: &str = "
DELETE FROM jetpack_rates WHERE scope = ANY(ARRAY(
    SELECT scope FROM jetpack_rates WHERE refilled_at < now() - $2 * interval '1 microsecond'
    LIMIT $1
    FOR UPDATE SKIP LOCKED))";

/// Inserts step `$1` of kind `$2`, priority `$5` and concurrency scope `$7`,
/// due after `$3` µs or at `$4`; with unique key `$6`, only if no live task
/// holds it.
const INSERT: &str = "
INSERT INTO jetpack_tasks (step, kind, wakeup_at, priority, unique_key, limit_scope)
VALUES ($1::text::jsonb, $2, coalesce($4, now() + $3 * interval '1 microsecond'), $5, $6, $7)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('ready', 'waiting', 'parked')
DO NOTHING
RETURNING id";

const INSERT_MANY: &str = "
INSERT INTO jetpack_tasks (step, kind, priority, limit_scope)
SELECT s::jsonb, k, p, c FROM unnest($1::text[], $2::text[], $3::smallint[], $4::text[])
    WITH ORDINALITY AS u(s, k, p, c, n)
ORDER BY n
RETURNING id";

/// `INSERT_MANY` when every step is of kind `$2` (so of priority `$3`), with
/// no concurrency scope.
const INSERT_MANY_OF_KIND: &str = "
INSERT INTO jetpack_tasks (step, kind, priority)
SELECT s::jsonb, $2, $3 FROM unnest($1::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n
RETURNING id";

pub(crate) struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        PgStore { pool }
    }
}

/// Outcomes sorted for writing, as the bind arrays of [`FINISH_AND_NEXT`] or,
/// when any attempt failed or a finished task is kept, [`EVERY_OUTCOME`].
#[derive(Default)]
struct Batch<'a> {
    finish: (Vec<i64>, Vec<i64>),
    #[allow(clippy::type_complexity)]
    next: (
        Vec<i64>,
        Vec<i64>,
        Vec<&'a str>,
        Vec<i64>,
        Vec<Option<DateTime<Utc>>>,
        Vec<&'a str>,
    ),
    #[allow(clippy::type_complexity)]
    /// The concurrency scopes of the next steps, and whether any has one.
    next_scopes: (Vec<Option<&'a str>>, bool),
    #[allow(clippy::type_complexity)]
    failed: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<Option<&'a str>>),
    kept: (Vec<i64>, Vec<i64>, Vec<Option<&'a str>>),
    #[allow(clippy::type_complexity)]
    joined: (
        Vec<i64>,
        Vec<i64>,
        Vec<&'a str>,
        Vec<&'a str>,
        Vec<Option<&'a str>>,
    ),
    #[allow(clippy::type_complexity)]
    waited: (
        Vec<i64>,
        Vec<i64>,
        Vec<&'a str>,
        Vec<&'a str>,
        Vec<&'a str>,
        Vec<Option<&'a str>>,
        Vec<Option<i64>>,
        Vec<Option<&'a str>>,
    ),
    /// The worker and the history's arrays, when it is on.
    history: Option<(&'a str, HistoryRows<'a>)>,
}

/// The history of a batch, as the statements bind it: ids, events, kinds
/// run, kinds gone to, attempts, durations, errors.
#[derive(Default)]
#[allow(clippy::type_complexity)]
struct HistoryRows<'a>(
    Vec<i64>,
    Vec<&'static str>,
    Vec<Option<&'a str>>,
    Vec<Option<&'a str>>,
    Vec<i32>,
    Vec<i64>,
    Vec<Option<&'a str>>,
);

impl<'a> Batch<'a> {
    fn of(
        done: &[(i64, i64, &'a Outcome)],
        history: Option<&'a History<'a>>,
    ) -> Result<Self, Error> {
        let mut batch = Batch::default();
        if let Some(h) = history {
            let mut rows = HistoryRows::default();
            for (&(id, _, outcome), trace) in done.iter().zip(h.traces) {
                let (event, to, error) = outcome.event();
                rows.0.push(id);
                rows.1.push(event);
                rows.2.push(trace.kind.as_deref());
                rows.3.push(to.or(match outcome {
                    Outcome::Retry { .. } | Outcome::Park { .. } => trace.kind.as_deref(),
                    _ => None,
                }));
                rows.4.push(trace.attempt);
                rows.5.push(trace.duration_us);
                rows.6.push(error);
            }
            batch.history = Some((h.worker, rows));
        }
        for &(id, fence, outcome) in done {
            match outcome {
                Outcome::Finish => {
                    batch.finish.0.push(id);
                    batch.finish.1.push(fence);
                }
                Outcome::Keep { result } => {
                    batch.kept.0.push(id);
                    batch.kept.1.push(fence);
                    batch.kept.2.push(result.as_deref());
                }
                Outcome::Join { step, kind, scope } => {
                    let j = &mut batch.joined;
                    j.0.push(id);
                    j.1.push(fence);
                    j.2.push(step);
                    j.3.push(kind);
                    j.4.push(scope.as_deref());
                }
                Outcome::Wait {
                    step,
                    kind,
                    name,
                    key,
                    timeout,
                    scope,
                } => {
                    let w = &mut batch.waited;
                    w.0.push(id);
                    w.1.push(fence);
                    w.2.push(step);
                    w.3.push(kind);
                    w.4.push(name);
                    w.5.push(key.as_deref());
                    w.6.push(timeout.map(micros).transpose()?);
                    w.7.push(scope.as_deref());
                }
                Outcome::Next {
                    step,
                    kind,
                    wakeup,
                    scope,
                } => {
                    let (delay, at) = wakeup_binds(wakeup)?;
                    let next = &mut batch.next;
                    next.0.push(id);
                    next.1.push(fence);
                    next.2.push(step);
                    next.3.push(delay);
                    next.4.push(at);
                    next.5.push(kind);
                    batch.next_scopes.0.push(scope.as_deref());
                    batch.next_scopes.1 |= scope.is_some();
                }
                Outcome::Retry { delay, .. } => batch.fail(id, fence, micros(*delay)?, None),
                Outcome::Park { error } => batch.fail(id, fence, 0, Some(error)),
            }
        }
        Ok(batch)
    }

    fn fail(&mut self, id: i64, fence: i64, delay: i64, error: Option<&'a str>) {
        let failed = &mut self.failed;
        failed.0.push(id);
        failed.1.push(fence);
        failed.2.push(delay);
        failed.3.push(error);
    }

    /// Writes the batch in one statement; the attempts (id, fence) that still
    /// held their tasks.
    async fn write(&self, db: &mut PgConnection) -> Result<Vec<(i64, i64)>, Error> {
        let (finish, next, failed, kept) = (&self.finish, &self.next, &self.failed, &self.kept);
        let (waited, joined) = (&self.waited, &self.joined);
        // The common statement writes no concurrency scope (NULL): the
        // others carry them.
        let common = failed.0.is_empty()
            && kept.0.is_empty()
            && waited.0.is_empty()
            && joined.0.is_empty()
            && !self.next_scopes.1;
        let sql = match (common, &self.history) {
            (true, None) => FINISH_AND_NEXT,
            (false, None) => EVERY_OUTCOME,
            (true, Some(_)) => FINISH_AND_NEXT_HISTORY,
            (false, Some(_)) => EVERY_OUTCOME_HISTORY,
        };
        let mut query = sqlx::query_as(sql)
            .bind(&finish.0)
            .bind(&finish.1)
            .bind(&next.0)
            .bind(&next.1)
            .bind(&next.2)
            .bind(&next.3)
            .bind(&next.4)
            .bind(&next.5);
        if !common {
            query = query
                .bind(&failed.0)
                .bind(&failed.1)
                .bind(&failed.2)
                .bind(&failed.3)
                .bind(&kept.0)
                .bind(&kept.1)
                .bind(&waited.0)
                .bind(&waited.1)
                .bind(&waited.2)
                .bind(&waited.3)
                .bind(&waited.4)
                .bind(&waited.5)
                .bind(&waited.6)
                .bind(&kept.2)
                .bind(&joined.0)
                .bind(&joined.1)
                .bind(&joined.2)
                .bind(&joined.3)
                .bind(&self.next_scopes.0)
                .bind(&waited.7)
                .bind(&joined.4);
        }
        if let Some((worker, h)) = &self.history {
            query = query
                .bind(&h.0)
                .bind(&h.1)
                .bind(&h.2)
                .bind(&h.3)
                .bind(&h.4)
                .bind(&h.5)
                .bind(&h.6)
                .bind(*worker);
        }
        Ok(query.fetch_all(db).await?)
    }
}

/// Records outcomes, and their history when it is on; the attempts that
/// still held their tasks.
async fn record(
    db: &mut PgConnection,
    done: &[(i64, i64, &Outcome)],
    history: Option<&History<'_>>,
) -> Result<Vec<(i64, i64)>, Error> {
    Batch::of(done, history)?.write(db).await
}

fn split(held: &[(i64, i64)]) -> (Vec<i64>, Vec<i64>) {
    held.iter().copied().unzip()
}

#[async_trait]
impl Store for PgStore {
    fn database(&self) -> &'static str {
        "PostgreSQL"
    }

    async fn claim(
        &self,
        limit: usize,
        kinds: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        Ok(sqlx::query_as(CLAIM)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(kinds)
            .bind(owner)
            .bind(micros(lease)?)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn claim_limited(
        &self,
        limit: usize,
        limits: &[Limit],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        let kinds: Vec<&str> = limits.iter().map(|l| l.kind.as_str()).collect();
        let ns: Vec<Option<i32>> = (limits.iter())
            .map(|l| l.concurrency.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
            .collect();
        let buckets: Vec<_> = limits.iter().map(Limit::bucket).collect();
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar(LIMITS_LOCK).fetch_one(&mut *tx).await?;
        if !locked {
            // Another worker claims limited steps now: this one's turn comes.
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        sqlx::query(DROP_HOLDERS).execute(&mut *tx).await?;
        let claimed = sqlx::query_as(CLAIM_LIMITED)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(kinds)
            .bind(ns)
            .bind(owner)
            .bind(micros(lease)?)
            .bind(buckets.iter().map(|b| b.0).collect::<Vec<_>>())
            .bind(buckets.iter().map(|b| b.1).collect::<Vec<_>>())
            .bind(buckets.iter().map(|b| b.2).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn back(
        &self,
        id: i64,
        fence: i64,
        delay: Duration,
        slow: Option<(&str, &Rate)>,
    ) -> Result<(), Error> {
        let delay = micros(delay)?;
        let mut tx = self.pool.begin().await?;
        back_and_slow!(tx, id, fence, delay, slow);
        tx.commit().await?;
        Ok(())
    }

    async fn rescope(
        &self,
        id: i64,
        fence: i64,
        scope: &str,
        step: &str,
        kind: &str,
    ) -> Result<(), Error> {
        sqlx::query(RESCOPE)
            .bind(id)
            .bind(fence)
            .bind(scope)
            .bind(step)
            .bind(kind)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn last_tick(&self, name: &str, start: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
        sqlx::query(SCHEDULE_START)
            .bind(name)
            .bind(start)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar(LAST_TICK)
            .bind(name)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn fire(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tasks: Vec<Encoded>,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(MOVE_TICK)
            .bind(name)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        for task in &tasks {
            sqlx::query(INSERT)
                .bind(&task.json)
                .bind(task.kind())
                .bind(0_i64)
                .bind(None::<DateTime<Utc>>)
                .bind(i16::from(task.priority))
                .bind(None::<String>)
                .bind(&task.scope)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn unscope(&self, kinds: &[String]) -> Result<u64, Error> {
        let done = sqlx::query(UNSCOPE).bind(kinds).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn complete_many(
        &self,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error> {
        // One statement, which commits on its own.
        let held = record(&mut *self.pool.acquire().await?, done, history).await?;
        Ok(super::which_held(done, held))
    }

    async fn complete_in_tx(
        &self,
        tx: Box<dyn Any + Send>,
        id: i64,
        fence: i64,
        outcome: &Outcome,
        history: Option<&History<'_>>,
    ) -> Result<bool, Error> {
        let mut tx = super::downcast_tx::<Postgres>(tx)?;
        let held = !record(&mut tx, &[(id, fence, outcome)], history)
            .await?
            .is_empty();
        super::end_tx(tx, held).await
    }

    async fn heartbeat(
        &self,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<(i64, i64)>, Error> {
        let (ids, fences) = split(held);
        Ok(sqlx::query_as(HEARTBEAT)
            .bind(ids)
            .bind(fences)
            .bind(micros(lease)?)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn release(&self, held: &[(i64, i64)]) -> Result<(), Error> {
        let (ids, fences) = split(held);
        sqlx::query(RELEASE)
            .bind(ids)
            .bind(fences)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn next_due(&self, kinds: &[String]) -> Result<Option<Duration>, Error> {
        let secs: Option<f64> = sqlx::query_scalar(NEXT_DUE)
            .bind(kinds)
            .fetch_one(&self.pool)
            .await?;
        Ok(secs.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)))
    }

    async fn listen(&self) -> Result<Box<dyn Listener>, Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Box::new(PgNotices { listener }))
    }

    async fn other_kinds(&self, kinds: &[String]) -> Result<Vec<(String, i64)>, Error> {
        Ok(sqlx::query_as(
            "SELECT kind, count(*) FROM jetpack_tasks
             WHERE kind <> ALL($1) AND state IN ('ready', 'waiting', 'parked')
             GROUP BY kind ORDER BY kind",
        )
        .bind(kinds)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn expire_waits(&self, limit: usize) -> Result<u64, Error> {
        let done = sqlx::query(EXPIRE_WAITS)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn states(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, Error> {
        Ok(
            sqlx::query_as("SELECT id, state FROM jetpack_tasks WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn clean(&self, keep: &Retention, limit: usize) -> Result<u64, Error> {
        let done = sqlx::query(CLEAN)
            .bind(micros(keep.finished.unwrap_or_default())?)
            .bind(micros(keep.cancelled)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        let signals = sqlx::query(CLEAN_SIGNALS)
            .bind(micros(keep.signals)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        let history = sqlx::query(CLEAN_HISTORY)
            .bind(micros(keep.history)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() + signals.rows_affected() + history.rows_affected())
    }

    async fn history_on(&self) -> Result<bool, Error> {
        Ok(sqlx::query_scalar(HISTORY_ON).fetch_one(&self.pool).await?)
    }

    async fn notify_errors(&self, payloads: &[String]) -> Result<(), Error> {
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(crate::model::ERRORS_CHANNEL)
            .bind(payloads)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn register(&self, machines: &[(String, String)]) -> Result<(), Error> {
        let (names, graphs): (Vec<&str>, Vec<&str>) = (machines.iter())
            .map(|(n, g)| (n.as_str(), g.as_str()))
            .unzip();
        sqlx::query(REGISTER)
            .bind(names)
            .bind(graphs)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn clean_limits(&self, limit: usize) -> Result<u64, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let throttles = sqlx::query(CLEAN_THROTTLES)
            .bind(limit)
            .execute(&self.pool)
            .await?;
        let buckets = sqlx::query(CLEAN_BUCKETS)
            .bind(limit)
            .bind(micros(super::IDLE_BUCKET)?)
            .execute(&self.pool)
            .await?;
        Ok(throttles.rows_affected() + buckets.rows_affected())
    }

    fn connections(&self) -> (u32, u32) {
        // The listener holds one for good; claims and flushes need another.
        (2, self.pool.options().get_max_connections())
    }
}

struct PgNotices {
    listener: PgListener,
}

#[async_trait]
impl Listener for PgNotices {
    async fn recv(&mut self) -> Result<Notice, Error> {
        // `None` means the connection dropped and notifications may have been
        // lost meanwhile: report a wakeup so the worker looks for work.
        Ok(match self.listener.try_recv().await? {
            Some(n) => Notice::parse(n.payload()),
            None => Notice::Wake,
        })
    }
}

mod backend;
mod children;
pub(crate) use children::{child_results, detach_children, insert_children};
