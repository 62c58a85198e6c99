//! PostgreSQL: claims and leases ([`Claims`](crate::driver::Claims)).

use super::*;

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

/// What a claim returns of a task's enqueue: when it was enqueued, if it is
/// still at the step it was enqueued with (its row is the record of that
/// enqueue, which the history takes in with its first transition), and its
/// kind.
macro_rules! enqueue_record {
    () => {
        "CASE WHEN t.transitions = 0 THEN t.created_at END AS enqueued_at, t.kind"
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
pub(crate) const CLAIM: &str = concat!(
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
    enqueue_record!(),
    ", ",
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
pub(crate) const CLAIM_LIMITED: &str = concat!(
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
    enqueue_record!(),
    ", ",
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
/// stored again as `$4` of kind `$5` (a row under a former name gets the
/// new), a transition of the task.
macro_rules! rescope {
    () => {
        "UPDATE jetpack_tasks
SET limit_scope = $3, step = $4::text::jsonb, kind = $5, locked_by = NULL, lease_until = NULL,
    tried = greatest(tried - 1, 0), transitions = least(transitions, 2147483646) + 1,
    updated_at = now()
WHERE id = $1 AND fence = $2"
    };
}

const RESCOPE: &str = rescope!();

/// [`RESCOPE`], and if it was the task's first transition the record of its
/// enqueue (at `$6`, kind `$7`, step `$8`) into the history.
const RESCOPE_RECORDING: &str = concat!(
    "WITH r AS (",
    rescope!(),
    " RETURNING id, transitions = 1 AS first)
INSERT INTO jetpack_history_blocks (block, task_ids, events, from_kinds, to_kinds, steps,
                                    attempts, durations, errors, enqueued_ats, enqueued_kinds,
                                    enqueued_steps, enqueued_errors)
SELECT id >> 10, ARRAY[id], ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::text],
       ARRAY[NULL::json], ARRAY[NULL::integer], ARRAY[NULL::bigint], ARRAY[NULL::text],
       ARRAY[$6::timestamptz], ARRAY[nullif($7, '')], ARRAY[$8::text::json], ARRAY[NULL::text]
FROM r WHERE first"
);

/// Takes the concurrency scope from live tasks of the kinds `$1`, which have
/// no limit (any more).
const UNSCOPE: &str = "
UPDATE jetpack_tasks SET limit_scope = NULL
WHERE limit_scope IS NOT NULL AND kind = ANY($1) AND state IN ('ready', 'waiting', 'parked')";

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

/// The claim of limited steps ([`CLAIM_LIMITED`]), in a transaction of its
/// own on `db`.
async fn claim_limited(
    db: &mut PgConnection,
    limit: usize,
    limits: &[Limit],
    owner: &str,
    lease: i64,
) -> Result<Vec<Claimed>, Error> {
    use sqlx::Connection;
    let kinds: Vec<&str> = limits.iter().map(|l| l.kind.as_str()).collect();
    let ns: Vec<Option<i32>> = (limits.iter())
        .map(|l| l.concurrency.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
        .collect();
    let buckets: Vec<_> = limits.iter().map(Limit::bucket).collect();
    let mut tx = db.begin().await?;
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
        .bind(lease)
        .bind(buckets.iter().map(|b| b.0).collect::<Vec<_>>())
        .bind(buckets.iter().map(|b| b.1).collect::<Vec<_>>())
        .bind(buckets.iter().map(|b| b.2).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(claimed)
}

#[async_trait]
impl crate::driver::Claims for Postgres {
    async fn claim(
        db: &PgHandle,
        limit: usize,
        kinds: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        let lease = micros(lease)?;
        let mut own = db.claims.take(db.connect()).await?;
        let claimed = sqlx::query_as(CLAIM)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(kinds)
            .bind(owner)
            .bind(lease)
            .fetch_all(&mut own.db)
            .await;
        own.done(claimed.map_err(Error::from))
    }

    async fn claim_limited(
        db: &PgHandle,
        limit: usize,
        limits: &[Limit],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        let lease = micros(lease)?;
        let mut own = db.claims.take(db.connect()).await?;
        let claimed = claim_limited(&mut own.db, limit, limits, owner, lease).await;
        own.done(claimed)
    }

    async fn back(
        db: &PgHandle,
        id: i64,
        fence: i64,
        delay: Duration,
        slow: Option<(&str, &Rate)>,
    ) -> Result<(), Error> {
        let delay = micros(delay)?;
        let mut tx = db.pool.begin().await?;
        crate::driver::back_and_slow::<Postgres>(&mut tx, (BACK, SLOW), id, fence, delay, slow)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rescope(
        db: &PgHandle,
        id: i64,
        fence: i64,
        scope: &str,
        step: &str,
        kind: &str,
        enqueued: Option<&EnqueueRecord>,
    ) -> Result<(), Error> {
        let query = sqlx::query(if enqueued.is_some() {
            RESCOPE_RECORDING
        } else {
            RESCOPE
        });
        let mut query = query.bind(id).bind(fence).bind(scope).bind(step).bind(kind);
        if let Some(e) = enqueued {
            query = query.bind(e.at).bind(&e.kind).bind(&e.step);
        }
        query.execute(&db.pool).await?;
        Ok(())
    }

    async fn unscope(db: &PgHandle, kinds: &[String]) -> Result<u64, Error> {
        let done = sqlx::query(UNSCOPE).bind(kinds).execute(&db.pool).await?;
        Ok(done.rows_affected())
    }

    async fn heartbeat(
        db: &PgHandle,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<(i64, i64)>, Error> {
        let (ids, fences) = split(held);
        let lease = micros(lease)?;
        let mut own = db.outcomes.take(db.connect()).await?;
        let renewed = sqlx::query_as(HEARTBEAT)
            .bind(ids)
            .bind(fences)
            .bind(lease)
            .fetch_all(&mut own.db)
            .await;
        own.done(renewed.map_err(Error::from))
    }

    async fn release(db: &PgHandle, held: &[(i64, i64)]) -> Result<(), Error> {
        let (ids, fences) = split(held);
        let mut own = db.outcomes.take(db.connect()).await?;
        let released = sqlx::query(RELEASE)
            .bind(ids)
            .bind(fences)
            .execute(&mut own.db)
            .await;
        own.done(released.map(drop).map_err(Error::from))
    }

    async fn next_due(db: &PgHandle, kinds: &[String]) -> Result<Option<Duration>, Error> {
        let mut own = db.claims.take(db.connect()).await?;
        let due = sqlx::query_scalar(NEXT_DUE)
            .bind(kinds)
            .fetch_one(&mut own.db)
            .await;
        let secs: Option<f64> = own.done(due.map_err(Error::from))?;
        Ok(secs.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)))
    }

    async fn listen(db: &PgHandle) -> Result<Box<dyn Listener>, Error> {
        let mut listener = PgListener::connect_with(&db.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Box::new(PgNotices { listener }))
    }
}
