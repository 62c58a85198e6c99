//! PostgreSQL: retention ([`Clean`](crate::driver::Clean)).

use super::*;

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

/// Deletes up to `$2` rows of history (a statement's transitions of a block
/// of tasks each) older than `$1` µs, found through the BRIN index on `at`.
const CLEAN_HISTORY: &str = "
DELETE FROM jetpack_history_blocks WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jetpack_history_blocks WHERE at < now() - $1 * interval '1 microsecond'
    LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Deletes up to `$2` kept signals sent more than `$1` µs ago, oldest first.
const CLEAN_SIGNALS: &str = "
DELETE FROM jetpack_signals WHERE id = ANY(ARRAY(
    SELECT id FROM jetpack_signals
    WHERE sent_at < now() - $1 * interval '1 microsecond'
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED))";

#[async_trait]
impl crate::driver::Clean for Postgres {
    async fn clean(db: &PgHandle, keep: &Retention, limit: usize) -> Result<u64, Error> {
        let done = sqlx::query(CLEAN)
            .bind(micros(keep.finished.unwrap_or_default())?)
            .bind(micros(keep.cancelled)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&db.pool)
            .await?;
        let signals = sqlx::query(CLEAN_SIGNALS)
            .bind(micros(keep.signals)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&db.pool)
            .await?;
        let history = sqlx::query(CLEAN_HISTORY)
            .bind(micros(keep.history)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&db.pool)
            .await?;
        Ok(done.rows_affected() + signals.rows_affected() + history.rows_affected())
    }
}
