//! Enqueueing: from Rust on any executor (pool, connection, the caller's
//! transaction), in batches, and from plain SQL.

mod common;

use std::time::Duration;

use common::TestDb;
use jetpack::sqlx::{self, Acquire};
use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ReadName {
    filename: String,
}
#[derive(Debug, Serialize, Deserialize)]
struct SayHello {
    name: String,
}
jetpack::task!(Greeter { ReadName => [SayHello], SayHello });

#[jetpack::async_trait]
impl Step<Greeter> for ReadName {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::now(SayHello {
            name: self.filename,
        })
    }
}
#[jetpack::async_trait]
impl Step<Greeter> for SayHello {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn read(name: &str) -> ReadName {
    ReadName {
        filename: name.into(),
    }
}

/// Seconds from now (database clock) to the task's wakeup.
async fn due_in(pool: &sqlx::PgPool, id: i64) -> f64 {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM wakeup_at - now())::float8 FROM jetpack_tasks WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn enqueue_stores_the_readable_row() {
    let db = TestDb::new().await;
    let id = jetpack::enqueue(&db.pool, read("name.txt")).await.unwrap();
    let row = common::row(&db.pool, id).await.unwrap();
    assert_eq!(
        row.step,
        r#"{"Greeter": {"ReadName": {"filename": "name.txt"}}}"#
    );
    assert_eq!((row.tried, row.error, row.locked_by), (0, None, None));
    assert!(due_in(&db.pool, id).await <= 0.0);
    let kind: String = sqlx::query_scalar("SELECT kind FROM jetpack_tasks WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(kind, "Greeter.ReadName");
}

#[tokio::test]
async fn delay_and_schedule_set_wakeup_at() {
    let db = TestDb::new().await;
    let id = jetpack::delay(&db.pool, read("a"), Duration::from_secs(3600))
        .await
        .unwrap();
    let secs = due_in(&db.pool, id).await;
    assert!((3590.0..=3600.0).contains(&secs), "{secs}");

    let at = jetpack::chrono::Utc::now() + jetpack::chrono::Duration::days(2);
    let id = jetpack::schedule(&db.pool, read("b"), at).await.unwrap();
    let stored: jetpack::chrono::DateTime<jetpack::chrono::Utc> =
        sqlx::query_scalar("SELECT wakeup_at FROM jetpack_tasks WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored.timestamp_micros(), at.timestamp_micros());
}

#[tokio::test]
async fn invalid_times_are_refused_and_store_nothing() {
    let db = TestDb::new().await;
    let far = jetpack::chrono::DateTime::<jetpack::chrono::Utc>::MAX_UTC;
    let err = jetpack::schedule(&db.pool, read("a"), far)
        .await
        .unwrap_err();
    assert!(matches!(err, jetpack::Error::InvalidTime(_)), "{err}");
    let err = jetpack::delay(&db.pool, read("a"), Duration::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, jetpack::Error::InvalidTime(_)), "{err}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM jetpack_tasks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn enqueue_many_inserts_in_one_statement_in_order() {
    let db = TestDb::new().await;
    let names: Vec<String> = (0..1000).map(|i| format!("file-{i}")).collect();
    let ids = jetpack::enqueue_many(&db.pool, names.iter().map(|n| read(n)))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1000);
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, step #>> '{Greeter,ReadName,filename}' FROM jetpack_tasks ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<(i64, String)> = ids.into_iter().zip(names).collect();
    assert_eq!(stored, expected);
    let none = jetpack::enqueue_many(&db.pool, Vec::<ReadName>::new())
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn enqueue_joins_the_callers_transaction() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let rolled_back = jetpack::enqueue(&mut *tx, read("lost")).await.unwrap();
    jetpack::enqueue_many(&mut *tx, [read("lost too")])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(common::row(&db.pool, rolled_back).await.is_none());

    let mut conn = db.pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let kept = jetpack::delay(&mut *tx, read("kept"), Duration::from_secs(5))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(common::row(&db.pool, kept).await.is_some());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM jetpack_tasks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

jetpack::scheduler!(Tasks { Greeter });

#[tokio::test]
async fn sql_insert_and_a_trigger_calling_jetpack_enqueue_both_run() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    // A plain INSERT, as documented.
    let by_insert: i64 = sqlx::query_scalar(
        r#"INSERT INTO jetpack_tasks (step) VALUES ('{"Greeter":{"ReadName":{"filename":"sql"}}}') RETURNING id"#,
    )
    .fetch_one(pool)
    .await
    .unwrap();
    // An application trigger that enqueues through jetpack_enqueue().
    for sql in [
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL)",
        r#"CREATE FUNCTION greet_user() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               PERFORM jetpack_enqueue(jsonb_build_object('Greeter',
                   jsonb_build_object('SayHello', jsonb_build_object('name', NEW.name))));
               RETURN NEW;
           END $$"#,
        "CREATE TRIGGER greet AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION greet_user()",
        "INSERT INTO users (name) VALUES ('Ann')",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    let by_trigger: i64 =
        sqlx::query_scalar("SELECT id FROM jetpack_tasks WHERE kind = 'Greeter.SayHello'")
            .fetch_one(pool)
            .await
            .unwrap();
    let later: i64 = sqlx::query_scalar(
        r#"SELECT jetpack_enqueue('{"Greeter":{"SayHello":{"name":"later"}}}', now() + interval '1 hour')"#,
    )
    .fetch_one(pool)
    .await
    .unwrap();

    let worker = common::spawn(common::builder::<Tasks>(pool).build().unwrap());
    common::finished(pool, by_insert).await;
    common::finished(pool, by_trigger).await;
    worker.shutdown().await;
    assert!(
        common::row(pool, later).await.is_some(),
        "a task scheduled for later must wait"
    );
}

#[tokio::test]
async fn claim_query_uses_the_partial_index() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    sqlx::query(
        r#"INSERT INTO jetpack_tasks (step, wakeup_at, error)
           SELECT '{"Greeter":{"SayHello":{"name":"x"}}}', now() + (i % 100) * interval '1 minute',
                  CASE WHEN i % 10 = 0 THEN 'failed' END
           FROM generate_series(1, 20000) i"#,
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE jetpack_tasks")
        .execute(pool)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM jetpack_tasks
         WHERE error IS NULL AND wakeup_at <= now() AND kind = ANY('{Greeter.SayHello}')
         ORDER BY wakeup_at LIMIT 16 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using jetpack_tasks_ready"),
        "{plan}"
    );
}
