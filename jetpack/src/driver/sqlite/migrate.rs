//! SQLite: migrations ([`Migrations`](crate::driver::Migrations)) and the pool Jetpack opens on a file.

use super::*;

/// Jetpack's SQLite migrations, recorded in `_jetpack_migrations` (apart from
/// the application's own `_sqlx_migrations`).
pub(crate) fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("../migrations/sqlite");
    migrator.dangerous_set_table_name("_jetpack_migrations");
    migrator
}

/// Applies Jetpack's migrations in one `BEGIN IMMEDIATE` transaction, so that
/// processes migrating one file at once take turns: the first applies what is
/// missing, the others then find nothing to do. (SQLite has no advisory lock,
/// and sqlx's migrator takes none on SQLite: two processes could both see a
/// migration missing, and the second one's `CREATE TABLE` failed.) A process
/// that finds the file locked by another one's migration waits for it, up to
/// a minute.
async fn migrate_locked(pool: &SqlitePool) -> Result<(), Error> {
    let mut db = pool.acquire().await?;
    let waited = std::time::Instant::now();
    let mut tx = loop {
        match db.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => break tx,
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("5") && waited.elapsed() < MIGRATE_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    migrator().run_direct(None, &mut *tx, false).await?;
    tx.commit().await?;
    Ok(())
}

/// How long [`migrate_locked`] waits for another process's migration.
const MIGRATE_WAIT: Duration = Duration::from_secs(60);

/// Opens (creating if needed) the SQLite file at `url` (`sqlite://jetpack.db`)
/// with the settings Jetpack needs: WAL journal, `synchronous = NORMAL`, a busy
/// timeout of 5 s.
pub async fn connect(url: &str) -> Result<SqlitePool, Error> {
    let options: SqliteConnectOptions = url.parse()?;
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?)
}

impl crate::driver::Migrations for Sqlite {
    fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            // WAL lets workers read while another process writes; the setting is
            // kept in the file, so pools that did not ask for it get it too.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(pool)
                .await?;
            migrate_locked(pool).await
        })
    }
}
