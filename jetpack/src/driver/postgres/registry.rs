//! PostgreSQL: the registry ([`Registry`](crate::driver::Registry)).

use super::*;

/// Records machines `$1` with graphs `$2`, those that changed.
const REGISTER: &str = "
INSERT INTO jetpack_machines AS m (name, graph)
SELECT * FROM unnest($1::text[], $2::jsonb[])
ON CONFLICT (name) DO UPDATE SET graph = EXCLUDED.graph, updated_at = now()
WHERE m.graph IS DISTINCT FROM EXCLUDED.graph";

#[async_trait]
impl crate::driver::Registry for Postgres {
    async fn register(db: &PgHandle, machines: &[(String, String)]) -> Result<(), Error> {
        let (names, graphs): (Vec<&str>, Vec<&str>) = (machines.iter())
            .map(|(n, g)| (n.as_str(), g.as_str()))
            .unzip();
        sqlx::query(REGISTER)
            .bind(names)
            .bind(graphs)
            .execute(&db.pool)
            .await?;
        Ok(())
    }

    async fn other_kinds(db: &PgHandle, kinds: &[String]) -> Result<Vec<(String, i64)>, Error> {
        Ok(sqlx::query_as(
            "SELECT kind, count(*) FROM jetpack_tasks
             WHERE kind <> ALL($1) AND state IN ('ready', 'waiting', 'parked')
             GROUP BY kind ORDER BY kind",
        )
        .bind(kinds)
        .fetch_all(&db.pool)
        .await?)
    }
}
