//! PostgreSQL: the upkeep of limits ([`Limits`](crate::driver::Limits)).

use super::*;

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

#[async_trait]
impl crate::driver::Limits for Postgres {
    async fn clean_limits(db: &PgHandle, limit: usize) -> Result<u64, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let throttles = sqlx::query(CLEAN_THROTTLES)
            .bind(limit)
            .execute(&db.pool)
            .await?;
        let buckets = sqlx::query(CLEAN_BUCKETS)
            .bind(limit)
            .bind(micros(crate::driver::IDLE_BUCKET)?)
            .execute(&db.pool)
            .await?;
        Ok(throttles.rows_affected() + buckets.rows_affected())
    }
}
