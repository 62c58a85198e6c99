//! PostgreSQL: migrations ([`Migrations`](crate::driver::Migrations)).

use super::*;

impl crate::driver::Migrations for Postgres {
    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut migrator = sqlx::migrate!("../migrations/postgres");
            migrator.dangerous_set_table_name("_jetpack_migrations");
            migrator.run(pool).await?;
            Ok(())
        })
    }
}
