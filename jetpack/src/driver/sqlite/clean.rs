//! SQLite: retention ([`Clean`](crate::driver::Clean)).

use super::*;

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

/// Deletes rows of history (a statement's transitions of a block of tasks
/// each) older than `?1` µs among the `?2` oldest.
const CLEAN_HISTORY: &str = "
DELETE FROM jetpack_history_blocks
WHERE id IN (SELECT id FROM jetpack_history_blocks ORDER BY id LIMIT ?2)
  AND at < strftime('%Y-%m-%d %H:%M:%f', 'now', (-?1 / 1000000.0) || ' seconds')";

#[async_trait]
impl crate::driver::Clean for Sqlite {
    async fn clean(db: &SqliteHandle, keep: &Retention, limit: usize) -> Result<u64, Error> {
        let (finished, cancelled) = (
            micros(keep.finished.unwrap_or_default())?,
            micros(keep.cancelled)?,
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut writer = db.writer().await?;
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
}
