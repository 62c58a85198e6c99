//! SQLite: the registry ([`Registry`](crate::driver::Registry)).

use super::*;

/// Records machines `?1` (a JSON array of `[name, graph]`), those that changed.
const REGISTER: &str = "
INSERT INTO jetpack_machines (name, graph)
SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
ON CONFLICT (name) DO UPDATE
SET graph = excluded.graph, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE graph IS NOT excluded.graph";

#[async_trait]
impl crate::driver::Registry for Sqlite {
    async fn register(db: &SqliteHandle, machines: &[(String, String)]) -> Result<(), Error> {
        let machines = json_list(&machines)?;
        let mut writer = db.writer().await?;
        let done = sqlx::query(REGISTER)
            .bind(machines)
            .execute(&mut writer.db)
            .await;
        writer.done(done.map(drop).map_err(Error::from))
    }

    async fn other_kinds(db: &SqliteHandle, kinds: &[String]) -> Result<Vec<(String, i64)>, Error> {
        Ok(sqlx::query_as(
            "SELECT kind, count(*) FROM jetpack_tasks
             WHERE kind NOT IN (SELECT value FROM json_each(?1))
               AND state IN ('ready', 'waiting', 'parked')
             GROUP BY kind ORDER BY kind",
        )
        .bind(json_list(&kinds)?)
        .fetch_all(&db.pool)
        .await?)
    }
}
