//! The PostgreSQL backend.

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, Postgres};
use sqlx::PgConnection;

use chrono::{DateTime, Utc};

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
RETURNING t.id, t.step::text AS step, t.tried, t.fence";

/// Records finished tasks (`$1` ids, `$2` fences: deleted) and moves to next
/// steps (`$3`…`$8`) in one statement, so that a flush of the completer is one
/// round trip and one commit. Either list may be empty; a single outcome goes
/// the same way.
///
/// A next step due now keeps the row's `wakeup_at` when that has passed: it is
/// due either way, a workflow under way keeps its place ahead of newer tasks,
/// and with no indexed column changed the update can be HOT.
const FINISH_AND_NEXT: &str = "
WITH finished AS (
    DELETE FROM jetpack_tasks t
    USING unnest($1::bigint[], $2::bigint[]) AS d(id, fence)
    WHERE t.id = d.id AND t.fence = d.fence
    RETURNING t.id, t.fence
), moved AS (
    UPDATE jetpack_tasks t
    SET step = u.step::jsonb, kind = u.kind, tried = 0, locked_by = NULL, lease_until = NULL,
        updated_at = now(),
        wakeup_at = CASE WHEN u.at IS NULL AND u.delay = 0 AND t.wakeup_at <= now() THEN t.wakeup_at
                         ELSE coalesce(u.at, now() + u.delay * interval '1 microsecond') END
    FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::timestamptz[], $8::text[])
        AS u(id, fence, step, delay, at, kind)
    WHERE t.id = u.id AND t.fence = u.fence
    RETURNING t.id, t.fence
)
SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved";

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

/// Outcomes sorted for writing: finishes and next steps as the bind arrays of
/// `FINISH_AND_NEXT`, the rare retries and parkings apart.
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
    others: Vec<(i64, i64, &'a Outcome)>,
}

impl<'a> Batch<'a> {
    fn of(done: &[(i64, i64, &'a Outcome)]) -> Result<Self, Error> {
        let mut batch = Batch::default();
        for &(id, fence, outcome) in done {
            match outcome {
                Outcome::Finish => {
                    batch.finish.0.push(id);
                    batch.finish.1.push(fence);
                }
                Outcome::Next { step, kind, wakeup } => {
                    let (delay, at) = wakeup_binds(wakeup)?;
                    let next = &mut batch.next;
                    next.0.push(id);
                    next.1.push(fence);
                    next.2.push(step);
                    next.3.push(delay);
                    next.4.push(at);
                    next.5.push(kind);
                }
                _ => batch.others.push((id, fence, outcome)),
            }
        }
        Ok(batch)
    }

    /// Writes the finishes and next steps; the attempts (id, fence) that still
    /// held their tasks.
    async fn write(&self, db: &mut PgConnection) -> Result<Vec<(i64, i64)>, Error> {
        let (finish, next) = (&self.finish, &self.next);
        Ok(sqlx::query_as(FINISH_AND_NEXT)
            .bind(&finish.0)
            .bind(&finish.1)
            .bind(&next.0)
            .bind(&next.1)
            .bind(&next.2)
            .bind(&next.3)
            .bind(&next.4)
            .bind(&next.5)
            .fetch_all(db)
            .await?)
    }
}

/// Records one outcome; whether its attempt still held the task.
async fn record(
    db: &mut PgConnection,
    id: i64,
    fence: i64,
    outcome: &Outcome,
) -> Result<bool, Error> {
    let done = match outcome {
        Outcome::Finish | Outcome::Next { .. } => {
            let held = Batch::of(&[(id, fence, outcome)])?.write(db).await?;
            return Ok(!held.is_empty());
        }
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
        Ok(sqlx::query_as(CLAIM)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(kinds)
            .bind(owner)
            .bind(micros(lease)?)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn complete_many(&self, done: &[(i64, i64, &Outcome)]) -> Result<Vec<bool>, Error> {
        // Finishes and moves to a next step, the common outcomes, go in one
        // statement, which commits on its own; retries and parkings are rare
        // and join it in a transaction, one by one.
        let batch = Batch::of(done)?;
        let held = if batch.others.is_empty() {
            batch.write(&mut *self.pool.acquire().await?).await?
        } else {
            let mut tx = self.pool.begin().await?;
            let mut held = batch.write(&mut tx).await?;
            for &(id, fence, outcome) in &batch.others {
                if record(&mut tx, id, fence, outcome).await? {
                    held.push((id, fence));
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
        let held = record(&mut tx, id, fence, outcome).await?;
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
