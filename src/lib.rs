//! Shared helpers of Jetpack's examples and integration tests (not published).
//!
//! Tests need a PostgreSQL server: `DATABASE_URL` names it, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`. Each test gets a database of its
//! own, dropped when the test ends, so tests run in parallel and never see each
//! other's rows.

use std::future::Future;
use std::time::{Duration, Instant};

use jetpack::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use jetpack::sqlx::{self, ConnectOptions, Connection, PgPool};

/// The server the examples and tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Connects to [`database_url`], with an error that says how to get a server.
pub async fn connect() -> Result<PgPool, Box<dyn std::error::Error>> {
    let url = database_url();
    PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .map_err(|e| unreachable_server(&url, e).into())
}

fn unreachable_server(url: &str, e: sqlx::Error) -> String {
    format!(
        "cannot reach PostgreSQL at {url}: {e}\n\
         Start it (`pg_ctlcluster --skip-systemctl-redirect 15 main start`) or set \
         DATABASE_URL to a server where this user may create databases."
    )
}

/// Polls `check` until it returns `Some`, failing after `deadline`.
pub async fn wait_for<T, F, Fut>(
    deadline: Duration,
    mut check: F,
) -> Result<T, Box<dyn std::error::Error>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            return Err(format!("condition not met within {deadline:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A database of one test's own, migrated; dropped with the value.
pub struct TestDb {
    /// A pool on the test's database.
    pub pool: PgPool,
    /// The database's URL, for child processes.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates and migrates a fresh database. Panics with instructions when no
    /// server is reachable: tests never skip silently.
    pub async fn new() -> TestDb {
        let admin_url = database_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable_server(&admin_url, e)));
        let name = format!("jetpack_test_{}_{:08x}", std::process::id(), fastrand_u32());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let options: PgConnectOptions = admin_url.parse().expect("DATABASE_URL is a valid URL");
        let options = options.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        jetpack::migrate(&pool)
            .await
            .expect("migrate the test database");
        TestDb {
            pool,
            url,
            name,
            admin_url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        // Drop may run inside a runtime (or while unwinding): use a thread of its
        // own. The pool's connections belong to the test's runtime, which this
        // blocks, so they are not closed politely: FORCE ends them.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
    }
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
}
