//! Faults a worker meets in production: its connections killed by the server
//! (the LISTEN one included), a huge step, and arguments out of range.

mod common;

use std::time::Duration;

use common::{conformance, Db, TestDb};
use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    name: String,
}
#[derive(Debug, Serialize, Deserialize)]
struct Bye;

jetpack::task!(Greet { Hello => [Bye], Bye });

#[jetpack::async_trait]
impl Step<Greet> for Hello {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx)
            .record_run(cx, &format!("Hello {}", self.name.len()))
            .await?;
        NextStep::now(Bye)
    }
}
#[jetpack::async_trait]
impl Step<Greet> for Bye {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        Db::of(cx).record_run(cx, "Bye").await?;
        NextStep::none()
    }
}

jetpack::scheduler!(Tasks { Greet });

fn hello(name: &str) -> Hello {
    Hello { name: name.into() }
}

conformance!(a_ten_megabyte_step_runs_and_others_keep_going);

async fn a_ten_megabyte_step_runs_and_others_keep_going(db: TestDb) {
    db.create_app_tables().await;
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    let big = db.enqueue(hello(&"x".repeat(10 * 1024 * 1024))).await;
    let small: Vec<i64> = db
        .enqueue_many((0..50).map(|i| hello(&i.to_string())))
        .await;
    common::finished(&db, big).await;
    for id in small {
        common::finished(&db, id).await;
    }
    w.shutdown().await;
    assert_eq!(
        db.runs(big).await,
        [("Hello 10485760".into(), 1), ("Bye".into(), 1)]
    );
}

#[tokio::test]
async fn killed_connections_including_listen_are_replaced_and_work_is_picked_up() {
    let db = TestDb::postgres().await;
    db.create_app_tables().await;
    // Polling every 10 minutes: only notifications can bring new work promptly.
    let w = common::spawn(
        db.worker::<Tasks>()
            .poll_interval(Duration::from_secs(600))
            .build()
            .unwrap(),
    );
    let first = db.enqueue(hello("first")).await;
    common::finished(&db, first).await;

    let listening = "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    assert_eq!(db.scalar(listening, None).await, 1);
    let killed = db
        .scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            None,
        )
        .await;
    assert!(killed >= 1, "the worker's connections were terminated");

    // The listener comes back by itself...
    common::wait_for(common::DEADLINE, || async {
        Ok((db.scalar(listening, None).await == 1).then_some(()))
    })
    .await
    .expect("the worker listens again");
    // ...and new work is picked up through it, long before the next poll.
    let second = db.enqueue(hello("second")).await;
    common::finished(&db, second).await;
    w.shutdown().await;
}

#[tokio::test]
async fn out_of_range_arguments_are_refused_at_the_api() {
    for db in [TestDb::postgres().await, TestDb::sqlite().await] {
        let far = jetpack::chrono::DateTime::<jetpack::chrono::Utc>::MAX_UTC;
        assert!(matches!(
            db.schedule(hello("a"), far).await,
            Err(jetpack::Error::InvalidTime(_))
        ));
        let ancient = jetpack::chrono::DateTime::<jetpack::chrono::Utc>::MIN_UTC;
        assert!(matches!(
            db.schedule(hello("a"), ancient).await,
            Err(jetpack::Error::InvalidTime(_))
        ));
        assert!(matches!(
            db.delay(hello("a"), Duration::MAX).await,
            Err(jetpack::Error::InvalidTime(_))
        ));
        // A time in the past is not an error: the task is due at once.
        let past = jetpack::chrono::Utc::now() - jetpack::chrono::Duration::days(365);
        let id = db.schedule(hello("late"), past).await.unwrap();
        assert!(db.find(id).await.is_some());
        // Settings out of range are refused when the worker is built.
        assert!(db.worker::<Tasks>().concurrency(0).build().is_err());
        assert!(db
            .worker::<Tasks>()
            .lease(Duration::from_millis(1))
            .build()
            .is_err());
    }
}

/// A login role of the test's own, dropped (with its grants) when the test ends.
struct Role {
    name: String,
    db_url: String,
}

impl Drop for Role {
    fn drop(&mut self) {
        let name = &self.name;
        let _ =
            jetpack_suite::run_sql_blocking(&self.db_url, vec![format!("DROP OWNED BY {name}")]);
        let admin = jetpack_suite::database_url();
        let _ =
            jetpack_suite::run_sql_blocking(&admin, vec![format!("DROP ROLE IF EXISTS {name}")]);
    }
}

#[tokio::test]
async fn a_worker_needs_only_dml_privileges() {
    use jetpack::sqlx::{self, postgres::PgConnectOptions};
    let db = TestDb::postgres().await;
    db.create_app_tables().await;
    let name = format!("jetpack_worker_{}", std::process::id());
    let role = Role {
        name: name.clone(),
        db_url: db.url.clone(),
    };
    for sql in [
        format!("CREATE ROLE {name} LOGIN"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON jetpack_tasks TO {name}"),
        format!("GRANT SELECT, INSERT, DELETE ON jetpack_history_blocks TO {name}"),
        format!("GRANT SELECT, INSERT, UPDATE ON jetpack_machines TO {name}"),
        format!("GRANT INSERT, SELECT ON runs TO {name}"),
    ] {
        let Db::Postgres(pool) = &*db else {
            unreachable!()
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    let options: PgConnectOptions = db.url.parse().unwrap();
    let small = Db::Postgres(
        sqlx::PgPool::connect_with(options.username(&role.name))
            .await
            .unwrap(),
    );
    let id = small.enqueue(hello("least privilege")).await;
    let w = common::spawn(small.worker::<Tasks>().build().unwrap());
    common::finished(&small, id).await;
    w.shutdown().await;
    assert_eq!(db.runs(id).await.len(), 2);
    if let Db::Postgres(pool) = small {
        pool.close().await;
    }
}

/// A due task locked by someone else's transaction is skipped (SKIP LOCKED); the
/// worker must then wait, not spin on claim queries until the lock goes.
#[tokio::test]
async fn a_due_task_locked_elsewhere_does_not_make_the_worker_spin() {
    use jetpack::sqlx;
    let db = TestDb::postgres().await;
    db.create_app_tables().await;
    let Db::Postgres(pool) = &*db else {
        unreachable!()
    };
    let id = db.enqueue(hello("locked")).await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM jetpack_tasks WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let statements = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    let flush = "SELECT pg_stat_force_next_flush()";
    let w = common::spawn(db.worker::<Tasks>().build().unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query(flush).execute(pool).await.unwrap();
    let before: i64 = sqlx::query_scalar(statements)
        .fetch_one(pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlx::query(flush).execute(pool).await.unwrap();
    let after: i64 = sqlx::query_scalar(statements)
        .fetch_one(pool)
        .await
        .unwrap();
    // A spinning worker commits thousands of claim transactions a second; a
    // waiting one about two per 10 ms nap.
    assert!(
        after - before < 500,
        "{} transactions in one second while the task was locked",
        after - before
    );
    holder.rollback().await.unwrap();
    common::finished(&db, id).await;
    w.shutdown().await;
}
