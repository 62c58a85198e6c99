//! The PostgreSQL backend.

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, Postgres};
use sqlx::Executor;

use super::{micros, wakeup_binds, Claimed, Listener, Notice, Outcome, Store};
use crate::Error;

/// The channel Jetpack's triggers notify and its workers listen on.
pub(crate) const CHANNEL: &str = "jetpack";

/// Claims up to `$1` ready tasks of the kinds `$2` for worker `$3` with a lease
/// of `$4` µs.
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
pub(super) const CLAIM: &str = "
UPDATE jetpack_tasks t
SET tried = t.tried + 1, fence = t.fence + 1, locked_by = $3,
    lease_until = now() + $4 * interval '1 microsecond', updated_at = now()
WHERE t.ctid = ANY(ARRAY(
    SELECT ctid FROM jetpack_tasks
    WHERE error IS NULL AND wakeup_at <= now() AND kind = ANY($2)
      AND (lease_until IS NULL OR lease_until <= now())
    ORDER BY wakeup_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED))
RETURNING t.id, t.step::text, t.tried, t.fence";

const NEXT: &str = "
UPDATE jetpack_tasks
SET step = $3::text::jsonb, kind = $6, tried = 0, locked_by = NULL, lease_until = NULL,
    updated_at = now(),
    wakeup_at = CASE WHEN $5 IS NULL AND $4 = 0 AND wakeup_at <= now() THEN wakeup_at
                     ELSE coalesce($5, now() + $4 * interval '1 microsecond') END
WHERE id = $1 AND fence = $2";

const FINISH: &str = "DELETE FROM jetpack_tasks WHERE id = $1 AND fence = $2";

/// Records finished tasks (`$1` ids, `$2` fences: deleted) and moves to next
/// steps (`$3`…`$8`) in one statement, so that a flush of the completer is one
/// round trip and one commit. Either list may be empty.
///
/// A next step due now keeps the row's `wakeup_at` when that has passed: it is
/// due either way, a workflow under way keeps its place ahead of newer tasks,
/// and with no indexed column changed the update can be HOT.
const FINISH_AND_NEXT: &str = "
WITH finished AS (
    DELETE FROM jetpack_tasks t
    USING unnest($1::bigint[], $2::bigint[]) AS d(id, fence)
    WHERE t.id = d.id AND t.fence = d.fence
    RETURNING t.id
), moved AS (
    UPDATE jetpack_tasks t
    SET step = u.step::jsonb, kind = u.kind, tried = 0, locked_by = NULL, lease_until = NULL,
        updated_at = now(),
        wakeup_at = CASE WHEN u.at IS NULL AND u.delay = 0 AND t.wakeup_at <= now() THEN t.wakeup_at
                         ELSE coalesce(u.at, now() + u.delay * interval '1 microsecond') END
    FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::timestamptz[], $8::text[])
        AS u(id, fence, step, delay, at, kind)
    WHERE t.id = u.id AND t.fence = u.fence
    RETURNING t.id
)
SELECT id FROM finished UNION ALL SELECT id FROM moved";

const RETRY: &str = "
UPDATE jetpack_tasks
SET locked_by = NULL, lease_until = NULL, updated_at = now(),
    wakeup_at = now() + $3 * interval '1 microsecond'
WHERE id = $1 AND fence = $2";

const PARK: &str = "
UPDATE jetpack_tasks
SET error = $3, locked_by = NULL, lease_until = NULL, updated_at = now(), wakeup_at = now()
WHERE id = $1 AND fence = $2";

/// Renews leases. It also moves `wakeup_at` to the lease expiry, out of the way
/// of the claim's index scan: a step that runs long stops being stepped over.
const HEARTBEAT: &str = "
UPDATE jetpack_tasks t
SET lease_until = now() + $3 * interval '1 microsecond',
    wakeup_at = now() + $3 * interval '1 microsecond'
FROM unnest($1::bigint[], $2::bigint[]) AS h(id, fence)
WHERE t.id = h.id AND t.fence = h.fence AND t.locked_by IS NOT NULL
RETURNING t.id";

const RELEASE: &str = "
UPDATE jetpack_tasks t
SET locked_by = NULL, lease_until = NULL, wakeup_at = now(), tried = greatest(t.tried - 1, 0),
    updated_at = now()
FROM unnest($1::bigint[], $2::bigint[]) AS h(id, fence)
WHERE t.id = h.id AND t.fence = h.fence AND t.locked_by IS NOT NULL";

/// When the next task becomes due. Leases that have not expired yet are left
/// out (finding their minimum would read every held row); the worker's poll
/// interval bounds how late an expiring lease is noticed.
const NEXT_DUE: &str = "
SELECT extract(epoch FROM min(wakeup_at) - now())::float8
FROM jetpack_tasks
WHERE error IS NULL AND kind = ANY($1) AND (lease_until IS NULL OR lease_until <= now())";

pub(crate) const INSERT: &str = "
INSERT INTO jetpack_tasks (step, kind, wakeup_at)
VALUES ($1::text::jsonb, $2, coalesce($4, now() + $3 * interval '1 microsecond'))
RETURNING id";

pub(crate) const INSERT_MANY: &str = "
INSERT INTO jetpack_tasks (step, kind)
SELECT s::jsonb, k FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(s, k, n) ORDER BY n
RETURNING id";

/// `INSERT_MANY` when every step is of kind `$2`.
pub(crate) const INSERT_MANY_OF_KIND: &str = "
INSERT INTO jetpack_tasks (step, kind)
SELECT s::jsonb, $2 FROM unnest($1::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n
RETURNING id";

pub(crate) struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        PgStore { pool }
    }
}

/// Runs the statement that records `outcome` on any executor.
async fn record<'e, E: Executor<'e, Database = Postgres>>(
    db: E,
    id: i64,
    fence: i64,
    outcome: &Outcome,
) -> Result<bool, Error> {
    let done = match outcome {
        Outcome::Next { step, kind, wakeup } => {
            let (delay, at) = wakeup_binds(wakeup)?;
            sqlx::query(NEXT)
                .bind(id)
                .bind(fence)
                .bind(step)
                .bind(delay)
                .bind(at)
                .bind(kind)
                .execute(db)
                .await?
        }
        Outcome::Finish => sqlx::query(FINISH).bind(id).bind(fence).execute(db).await?,
        Outcome::Retry { delay } => {
            sqlx::query(RETRY)
                .bind(id)
                .bind(fence)
                .bind(micros(*delay)?)
                .execute(db)
                .await?
        }
        Outcome::Park { error } => {
            sqlx::query(PARK)
                .bind(id)
                .bind(fence)
                .bind(error)
                .execute(db)
                .await?
        }
    };
    Ok(done.rows_affected() == 1)
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
        let rows: Vec<(i64, String, i32, i64)> = sqlx::query_as(CLAIM)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(kinds)
            .bind(owner)
            .bind(micros(lease)?)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, step, tried, fence)| Claimed {
                id,
                step,
                tried,
                fence,
            })
            .collect())
    }

    async fn complete_many(&self, done: &[(i64, i64, &Outcome)]) -> Result<Vec<bool>, Error> {
        // Finishes and moves to a next step, the common outcomes, go in one
        // statement; retries and parking are rare and go one by one in the
        // same transaction. All of it commits once.
        let mut finish = (Vec::new(), Vec::new());
        let mut next = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut others = Vec::new();
        for &(id, fence, outcome) in done {
            match outcome {
                Outcome::Finish => {
                    finish.0.push(id);
                    finish.1.push(fence);
                }
                Outcome::Next { step, kind, wakeup } => {
                    let (delay, at) = wakeup_binds(wakeup)?;
                    next.5.push(kind.as_str());
                    next.0.push(id);
                    next.1.push(fence);
                    next.2.push(step.as_str());
                    next.3.push(delay);
                    next.4.push(at);
                }
                _ => others.push((id, fence, outcome)),
            }
        }
        let both = sqlx::query_scalar(FINISH_AND_NEXT)
            .bind(&finish.0)
            .bind(&finish.1)
            .bind(&next.0)
            .bind(&next.1)
            .bind(&next.2)
            .bind(&next.3)
            .bind(&next.4)
            .bind(&next.5);
        let held: Vec<i64> = if others.is_empty() {
            // One statement commits on its own.
            both.fetch_all(&self.pool).await?
        } else {
            let mut tx = self.pool.begin().await?;
            let mut held: Vec<i64> = both.fetch_all(&mut *tx).await?;
            for (id, fence, outcome) in others {
                if record(&mut *tx, id, fence, outcome).await? {
                    held.push(id);
                }
            }
            tx.commit().await?;
            held
        };
        Ok(super::which_held(done, held))
    }

    async fn complete_in_tx(
        &self,
        tx: Box<dyn Any + Send>,
        id: i64,
        fence: i64,
        outcome: &Outcome,
    ) -> Result<bool, Error> {
        let mut tx = super::downcast_tx::<Postgres>(tx)?;
        let held = record(&mut **tx, id, fence, outcome).await?;
        super::end_tx(tx, held).await
    }

    async fn heartbeat(&self, held: &[(i64, i64)], lease: Duration) -> Result<Vec<i64>, Error> {
        let (ids, fences) = split(held);
        Ok(sqlx::query_scalar(HEARTBEAT)
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
            Some(n) if n.payload() == "stop" => Notice::Stop,
            _ => Notice::Wake,
        })
    }
}
