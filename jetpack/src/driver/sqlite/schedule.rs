//! SQLite: schedules ([`Schedules`](crate::driver::Schedules)).

use super::*;

/// Records schedule `?1` with last tick `?2`, unless it has a row.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const SCHEDULE_START: &str = "INSERT INTO jetpack_schedules (name, last_tick) VALUES (?1, ?2)
     ON CONFLICT (name) DO NOTHING";

/// The last tick schedule `?1` fired, in the table's format.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const LAST_TICK: &str =
    "SELECT strftime('%Y-%m-%d %H:%M:%f', last_tick) FROM jetpack_schedules WHERE name = ?1";

/// Moves schedule `?1` from tick `?2` to tick `?3`, if no other worker did
/// (the tick compared in one format, whatever a person wrote).
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
const MOVE_TICK: &str = concat!(
    "UPDATE jetpack_schedules SET last_tick = ?3, fired_at = ",
    now!(),
    " WHERE name = ?1 AND strftime('%Y-%m-%d %H:%M:%f', last_tick) = ?2"
);

/// Claims up to `limit` tasks in one transaction (see [`CLAIM_READ`]).
/// Moves schedule `name` from tick `from` to `to` and inserts `tasks`, in one
/// `BEGIN IMMEDIATE` transaction, if no other worker moved it.
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
async fn fire_schedule(
    db: &mut SqliteConnection,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tasks: &[Encoded],
) -> Result<bool, Error> {
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    let moved = sqlx::query(MOVE_TICK)
        .bind(name)
        .bind(time_text(from))
        .bind(time_text(to))
        .execute(&mut *tx)
        .await?;
    if moved.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    for task in tasks {
        sqlx::query(INSERT)
            .bind(&task.json)
            .bind(task.kind())
            .bind(0_i64)
            .bind(None::<String>)
            .bind(task.priority)
            .bind(None::<String>)
            .bind(&task.scope)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    LOCAL_WAKE.notify_waiters();
    Ok(true)
}

#[async_trait]
impl crate::driver::Schedules for Sqlite {
    async fn last_tick(
        db: &SqliteHandle,
        name: &str,
        start: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, Error> {
        let mut writer = db.writer().await?;
        let started = sqlx::query(SCHEDULE_START)
            .bind(name)
            .bind(time_text(start))
            .execute(&mut writer.db)
            .await;
        writer.done(started.map(drop).map_err(Error::from))?;
        let last: Option<String> = sqlx::query_scalar(LAST_TICK)
            .bind(name)
            .fetch_one(&db.pool)
            .await?;
        let last = last.unwrap_or_default();
        read_time(&last, || format!("last_tick of schedule {name:?}"))
    }

    async fn fire(
        db: &SqliteHandle,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tasks: Vec<Encoded>,
    ) -> Result<bool, Error> {
        let mut writer = db.writer().await?;
        let fired = fire_schedule(&mut writer.db, name, from, to, &tasks).await;
        writer.done(fired)
    }
}
