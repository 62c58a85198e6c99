//! SQLite: claims and leases ([`Claims`](crate::driver::Claims)).

use super::*;

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
    ", CASE WHEN transitions = 0 THEN created_at END, kind)) FROM (",
    ready_tasks!("id, step, tried, fence, wait_for, signal, awaited, wakeup_at, transitions, created_at, kind"),
    ")"
);

/// Leases the tasks `CLAIM_READ` read (`?1`, a JSON array of ids) to worker
/// `?2` for `?3` µs, in the same transaction.
const CLAIM_LEASE: &str = concat!(
    lease!("?2", "?3"),
    " WHERE id IN (SELECT value FROM json_each(?1))"
);

/// What a claim returns of a task's enqueue: when it was enqueued, if it is
/// still at the step it was enqueued with (see the PostgreSQL backend), and
/// its kind.
macro_rules! enqueue_record {
    () => {
        "CASE WHEN transitions = 0 THEN strftime('%Y-%m-%d %H:%M:%f', created_at) END AS enqueued_at, kind"
    };
}

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
    " AS lag_us, ",
    enqueue_record!()
);

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
    " AS lag_us, ",
    enqueue_record!()
);

/// Records attempts `?1` (a JSON array of `[id, fence, scope]`) as holders.
const HOLD: &str = "INSERT INTO jetpack_holders (task_id, fence, scope)
     SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1) WHERE true
     ON CONFLICT (task_id) DO UPDATE SET fence = excluded.fence, scope = excluded.scope";

/// Gives task `?1` (attempt `?2`) its concurrency scope `?3` and back to the
/// claims, as a release does; its step is stored again as `?4` of kind `?5`
/// (a row under a former name gets the new), a transition of the task.
/// Returns whether it was its first.
const RESCOPE: &str = concat!(
    "UPDATE jetpack_tasks
     SET limit_scope = ?3, step = ?4, kind = ?5, locked_by = NULL, lease_until = NULL, tried = max(tried - 1, 0),
         transitions = min(transitions, 2147483646) + 1, updated_at = ",
    now!(),
    " WHERE id = ?1 AND fence = ?2 RETURNING transitions = 1"
);

/// The record of task `?1`'s enqueue (at `?2`, kind `?3`, step `?4`) into
/// the history: an entry with no transition.
const RECORD_ENQUEUE: &str = "
INSERT INTO jetpack_history_blocks (block, entries)
VALUES (?1 >> 10, json_array(json_array(?1, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                        json_array(?2, nullif(?3, ''),
                                                   CASE WHEN json_valid(?4) THEN json(?4)
                                                        ELSE json_quote(?4) END,
                                                   NULL))))";

/// Takes the concurrency scope from live tasks of the kinds `?1`.
const UNSCOPE: &str = "UPDATE jetpack_tasks SET limit_scope = NULL
     WHERE limit_scope IS NOT NULL AND kind IN (SELECT value FROM json_each(?1))
       AND state IN ('ready', 'waiting', 'parked')";

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
    crate::driver::back_and_slow::<Sqlite>(&mut tx, (BACK, SLOW), id, fence, delay, slow).await?;
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
        Option<String>,
        String,
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
            |(id, step, tried, fence, wait_for, signal, awaited, lag_us, enqueued_at, kind)| {
                Claimed {
                    awaited: awaited != 0,
                    lag_us,
                    scope: None,
                    id,
                    step,
                    tried,
                    fence,
                    wait_for,
                    signal,
                    // A time written by hand that does not read as one
                    // leaves no record.
                    enqueued_at: enqueued_at.and_then(|at| read_time(&at, String::new).ok()),
                    kind,
                }
            },
        )
        .collect())
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

#[async_trait]
impl crate::driver::Claims for Sqlite {
    async fn claim(
        db: &SqliteHandle,
        limit: usize,
        kinds: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        let few = limit < db.few;
        let (limit, kinds, lease) = (
            i64::try_from(limit).unwrap_or(i64::MAX),
            json_list(&kinds)?,
            micros(lease)?,
        );
        let mut writer = db.writer().await?;
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
        db: &SqliteHandle,
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
        let mut writer = db.writer().await?;
        let claimed = claim_limited(&mut writer.db, limit, limits, owner, lease).await;
        writer.done(claimed)
    }

    async fn back(
        db: &SqliteHandle,
        id: i64,
        fence: i64,
        delay: Duration,
        slow: Option<(&str, &Rate)>,
    ) -> Result<(), Error> {
        let delay = micros(delay)?;
        let mut writer = db.writer().await?;
        let done = back(&mut writer.db, id, fence, delay, slow).await;
        writer.done(done)
    }

    async fn rescope(
        db: &SqliteHandle,
        id: i64,
        fence: i64,
        scope: &str,
        step: &str,
        kind: &str,
        enqueued: Option<&EnqueueRecord>,
    ) -> Result<(), Error> {
        let mut writer = db.writer().await?;
        let done = async {
            let mut tx = writer.db.begin_with("BEGIN IMMEDIATE").await?;
            let first: Option<bool> = sqlx::query_scalar(RESCOPE)
                .bind(id)
                .bind(fence)
                .bind(scope)
                .bind(step)
                .bind(kind)
                .fetch_optional(&mut *tx)
                .await?;
            if let (Some(true), Some(e)) = (first, enqueued) {
                sqlx::query(RECORD_ENQUEUE)
                    .bind(id)
                    .bind(time_text(e.at))
                    .bind(&e.kind)
                    .bind(&e.step)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        writer.done(done.map_err(Error::from))
    }

    async fn unscope(db: &SqliteHandle, kinds: &[String]) -> Result<u64, Error> {
        let kinds = json_list(&kinds)?;
        let mut writer = db.writer().await?;
        let done = sqlx::query(UNSCOPE)
            .bind(kinds)
            .execute(&mut writer.db)
            .await;
        writer.done(done.map(|d| d.rows_affected()).map_err(Error::from))
    }

    async fn heartbeat(
        db: &SqliteHandle,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<(i64, i64)>, Error> {
        let (held, lease) = (json_list(&held)?, micros(lease)?);
        let mut writer = db.writer().await?;
        let renewed = sqlx::query_as(HEARTBEAT)
            .bind(held)
            .bind(lease)
            .fetch_all(&mut writer.db)
            .await;
        writer.done(renewed.map_err(Error::from))
    }

    async fn release(db: &SqliteHandle, held: &[(i64, i64)]) -> Result<(), Error> {
        let held = json_list(&held)?;
        let mut writer = db.writer().await?;
        let released = sqlx::query(RELEASE)
            .bind(held)
            .execute(&mut writer.db)
            .await;
        writer.done(released.map(drop).map_err(Error::from))
    }

    async fn next_due(db: &SqliteHandle, kinds: &[String]) -> Result<Option<Duration>, Error> {
        let secs: Option<f64> = sqlx::query_scalar(NEXT_DUE)
            .bind(json_list(&kinds)?)
            .fetch_one(&db.pool)
            .await?;
        Ok(secs.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)))
    }

    async fn listen(_db: &SqliteHandle) -> Result<Box<dyn Listener>, Error> {
        Ok(Box::new(LocalNotices {
            cancels: local_cancels().subscribe(),
        }))
    }
}
