//! Enqueueing: from Rust on any executor (pool, connection, the caller's
//! transaction), in batches, and from plain SQL.

mod common;

use std::time::Duration;

use common::{conformance, json, Db, TestDb};
use jetpack::chrono::{self, Utc};
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

jetpack::scheduler!(Tasks { Greeter });

/// Milliseconds from now to the task's wakeup.
async fn due_in_ms(db: &Db, id: i64) -> i64 {
    (db.find(id).await.unwrap().wakeup_at - Utc::now()).num_milliseconds()
}

conformance!(
    enqueue_stores_the_readable_row,
    delay_and_schedule_set_wakeup_at,
    invalid_times_are_refused_and_store_nothing,
    enqueue_many_inserts_in_one_statement_in_order,
    enqueue_many_mixes_steps_of_different_kinds,
    enqueue_joins_the_callers_transaction,
    a_plain_sql_insert_runs,
    text_that_is_not_json_is_refused_from_sql,
    claim_query_uses_the_partial_index,
);

async fn enqueue_stores_the_readable_row(db: TestDb) {
    let id = db.enqueue(read("name.txt")).await;
    let row = db.find(id).await.unwrap();
    assert_eq!(
        json(&row.step),
        json(r#"{"Greeter":{"ReadName":{"filename":"name.txt"}}}"#)
    );
    assert_eq!((row.tried, row.error, row.locked_by), (0, None, None));
    assert!(due_in_ms(&db, id).await <= 0);
    let kind = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE kind = 'Greeter.ReadName'",
            None,
        )
        .await;
    assert_eq!(kind, 1);
}

async fn delay_and_schedule_set_wakeup_at(db: TestDb) {
    let id = db
        .delay(read("a"), Duration::from_secs(3600))
        .await
        .unwrap();
    let ms = due_in_ms(&db, id).await;
    assert!((3_590_000..=3_600_000).contains(&ms), "{ms}");

    let at = Utc::now() + chrono::Duration::days(2);
    let id = db.schedule(read("b"), at).await.unwrap();
    let stored = db.find(id).await.unwrap().wakeup_at;
    // PostgreSQL keeps microseconds, SQLite milliseconds.
    assert_eq!(stored.timestamp_millis(), at.timestamp_millis());
}

async fn invalid_times_are_refused_and_store_nothing(db: TestDb) {
    let far = chrono::DateTime::<Utc>::MAX_UTC;
    let err = db.schedule(read("a"), far).await.unwrap_err();
    assert!(matches!(err, jetpack::Error::InvalidTime(_)), "{err}");
    let err = db.delay(read("a"), Duration::MAX).await.unwrap_err();
    assert!(matches!(err, jetpack::Error::InvalidTime(_)), "{err}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        0
    );
}

async fn enqueue_many_inserts_in_one_statement_in_order(db: TestDb) {
    let names: Vec<String> = (0..1000).map(|i| format!("file-{i}")).collect();
    let ids = db.enqueue_many(names.iter().map(|n| read(n))).await;
    assert_eq!(ids.len(), 1000);
    for (id, name) in ids.iter().zip(&names) {
        let step = json(&db.find(*id).await.unwrap().step);
        assert_eq!(step["Greeter"]["ReadName"]["filename"], name.as_str());
    }
    assert!(db.enqueue_many(Vec::<ReadName>::new()).await.is_empty());
}

/// A batch of one kind and a batch of several take different statements on
/// SQLite; both keep every step, its kind and the order of the ids.
async fn enqueue_many_mixes_steps_of_different_kinds(db: TestDb) {
    let tasks: Vec<Greeter> = (0..100)
        .map(|i| {
            if i % 3 == 0 {
                Greeter::SayHello(SayHello {
                    name: format!("n-{i}"),
                })
            } else {
                Greeter::ReadName(read(&format!("f-{i}")))
            }
        })
        .collect();
    let ids = db.enqueue_many(tasks).await;
    assert_eq!(ids.len(), 100);
    for (i, id) in ids.iter().enumerate() {
        let step = json(&db.find(*id).await.unwrap().step);
        let kind_is = |sql: &'static str| db.scalar(sql, Some(*id));
        if i % 3 == 0 {
            assert_eq!(step["Greeter"]["SayHello"]["name"], format!("n-{i}"));
            let sql =
                "SELECT count(*) FROM jetpack_tasks WHERE id = $1 AND kind = 'Greeter.SayHello'";
            assert_eq!(kind_is(sql).await, 1, "kind of task {id}");
        } else {
            assert_eq!(step["Greeter"]["ReadName"]["filename"], format!("f-{i}"));
            let sql =
                "SELECT count(*) FROM jetpack_tasks WHERE id = $1 AND kind = 'Greeter.ReadName'";
            assert_eq!(kind_is(sql).await, 1, "kind of task {id}");
        }
    }
}

async fn enqueue_joins_the_callers_transaction(db: TestDb) {
    // Written per backend only because the transaction types differ.
    let (rolled_back, kept) = match &*db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let lost = jetpack::enqueue(&mut *tx, read("lost")).await.unwrap();
            jetpack::enqueue_many(&mut *tx, [read("lost too")])
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            let mut conn = pool.acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            let kept = jetpack::delay(&mut *tx, read("kept"), Duration::from_secs(5))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            (lost, kept)
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let lost = jetpack::enqueue(&mut *tx, read("lost")).await.unwrap();
            jetpack::enqueue_many(&mut *tx, [read("lost too")])
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            let mut conn = pool.acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            let kept = jetpack::delay(&mut *tx, read("kept"), Duration::from_secs(5))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            (lost, kept)
        }
    };
    // (SQLite may give the rolled-back id to the next insert: check the content.)
    let lost = db.find(rolled_back).await.map(|r| json(&r.step));
    assert!(lost.is_none_or(|step| step["Greeter"]["ReadName"]["filename"] == "kept"));
    assert!(db.find(kept).await.is_some());
    assert_eq!(
        db.scalar("SELECT count(*) FROM jetpack_tasks", None).await,
        1
    );
}

async fn a_plain_sql_insert_runs(db: TestDb) {
    db.exec(
        r#"INSERT INTO jetpack_tasks (step) VALUES ('{"Greeter":{"ReadName":{"filename":"sql"}}}')"#,
        None,
        None,
    )
    .await;
    let worker = common::spawn(db.worker::<Tasks>().build().unwrap());
    common::drained(&db, common::DEADLINE).await;
    worker.shutdown().await;
}

/// Whatever a person writes by hand is checked by the database: an insert, and
/// an edit of a task's step (on SQLite the table's check covers the first, the
/// trigger that derives `kind` the second). The edited task keeps its step.
async fn text_that_is_not_json_is_refused_from_sql(db: TestDb) {
    assert!(db.insert_raw("{oops").await.is_err(), "an insert");
    let id = db.enqueue(read("a")).await;
    let edit = match &*db {
        Db::Postgres(_) => "UPDATE jetpack_tasks SET step = $2::jsonb WHERE id = $1",
        Db::Sqlite(_) => "UPDATE jetpack_tasks SET step = $2 WHERE id = $1",
    };
    let refused = db.try_exec(edit, Some(id), Some("{oops")).await;
    assert!(refused.is_err(), "an edit of the step: {refused:?}");
    let step = json(&db.find(id).await.unwrap().step);
    assert_eq!(step["Greeter"]["ReadName"]["filename"], "a");
    // A good edit goes through, and the task's kind follows its step.
    let edited = db
        .try_exec(
            edit,
            Some(id),
            Some(r#"{"Greeter":{"SayHello":{"name":"b"}}}"#),
        )
        .await;
    assert_eq!(edited.unwrap(), 1);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE id = $1 AND kind = 'Greeter.SayHello'",
            Some(id)
        )
        .await,
        1
    );
}

async fn claim_query_uses_the_partial_index(db: TestDb) {
    let plan = match &*db {
        Db::Postgres(pool) => {
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
                 WHERE state = 'ready' AND limit_scope IS NULL AND wakeup_at <= now()
                   AND kind = ANY('{Greeter.SayHello}')
                   AND timezone('UTC', timezone('UTC', wakeup_at) - priority * interval '1 minute') <= now()
                 ORDER BY timezone('UTC', timezone('UTC', wakeup_at) - priority * interval '1 minute')
                 LIMIT 16 FOR UPDATE SKIP LOCKED",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            plan.join("\n")
        }
        Db::Sqlite(pool) => {
            let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
                "EXPLAIN QUERY PLAN SELECT id FROM jetpack_tasks
                 WHERE state = 'ready' AND limit_scope IS NULL
                   AND wakeup_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
                   AND kind IN (SELECT value FROM json_each('[\"Greeter.SayHello\"]'))
                   AND CASE WHEN priority = 0 THEN wakeup_at
                       ELSE strftime('%Y-%m-%d %H:%M:%f', wakeup_at, -priority || ' minutes') END
                       <= strftime('%Y-%m-%d %H:%M:%f', 'now')
                 ORDER BY CASE WHEN priority = 0 THEN wakeup_at
                          ELSE strftime('%Y-%m-%d %H:%M:%f', wakeup_at, -priority || ' minutes') END
                 LIMIT 16",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            plan.into_iter()
                .map(|(_, _, _, detail)| detail)
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let expected = match &*db {
        Db::Postgres(_) => "Index Scan using jetpack_tasks_ready",
        Db::Sqlite(_) => "USING INDEX jetpack_tasks_ready",
    };
    assert!(plan.contains(expected), "{plan}");
}

/// PostgreSQL only: `jetpack_enqueue()` called from an application's trigger.
#[tokio::test]
async fn a_postgres_trigger_enqueues_with_jetpack_enqueue() {
    let db = TestDb::postgres().await;
    let Db::Postgres(pool) = &*db else {
        unreachable!()
    };
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

    let worker = common::spawn(db.worker::<Tasks>().build().unwrap());
    common::finished(&db, by_trigger).await;
    worker.shutdown().await;
    assert!(
        db.find(later).await.is_some(),
        "a task scheduled for later must wait"
    );
}
