//! Migrations: the schema of each backend, applied under a lock.

use crate::model::{BoxFuture, Error};

/// The statements of migrations.
pub trait Migrations: sqlx::Database {
    /// Applies Jetpack's migrations that are missing.
    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>>;
}
