//! PostgreSQL: schedules ([`Schedules`](crate::driver::Schedules)).

use super::*;

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

#[async_trait]
impl crate::driver::Schedules for Postgres {
    async fn last_tick(
        db: &PgHandle,
        name: &str,
        start: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, Error> {
        sqlx::query(SCHEDULE_START)
            .bind(name)
            .bind(start)
            .execute(&db.pool)
            .await?;
        Ok(sqlx::query_scalar(LAST_TICK)
            .bind(name)
            .fetch_one(&db.pool)
            .await?)
    }

    async fn fire(
        db: &PgHandle,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tasks: Vec<Encoded>,
    ) -> Result<bool, Error> {
        let mut tx = db.pool.begin().await?;
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
}
