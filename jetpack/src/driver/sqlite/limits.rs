//! SQLite: the upkeep of limits ([`Limits`](crate::driver::Limits)).

use super::*;

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

#[async_trait]
impl crate::driver::Limits for Sqlite {
    async fn clean_limits(db: &SqliteHandle, limit: usize) -> Result<u64, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let idle = micros(crate::driver::IDLE_BUCKET)?;
        let mut writer = db.writer().await?;
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
}
