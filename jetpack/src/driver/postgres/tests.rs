//! What only PostgreSQL has: its plans and its HOT updates.

use crate::driver::conformance::{drop_pg, pg_database, TestResult};

/// A claim changes no indexed column, so on a page with room PostgreSQL
/// updates the row in place (HOT) without new index entries. It wrote the
/// lease into the indexed `wakeup_at` before, and no claim was HOT.
#[tokio::test]
async fn postgres_claims_are_hot_updates() -> TestResult {
    let (admin, name, pool) = pg_database().await?;
    let counts = async {
        sqlx::query(
            r#"INSERT INTO jetpack_tasks (step, kind)
               SELECT format('{"Order":{"Ship":{"order":%s}}}', i)::jsonb, 'Order.Ship'
               FROM generate_series(1, 1000) i"#,
        )
        .execute(&pool)
        .await?;
        let mut tx = pool.begin().await?;
        sqlx::query(super::claim::CLAIM)
            .bind(100_i64)
            .bind(vec!["Order.Ship".to_string()])
            .bind("worker-1234567-0123abcd")
            .bind(30_000_000_i64)
            .execute(&mut *tx)
            .await?;
        let counts: (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables
             WHERE relname = 'jetpack_tasks'",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(counts)
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    let (updated, hot) = counts?;
    assert_eq!(updated, 100);
    assert!(hot >= 90, "only {hot} of {updated} claims were HOT updates");
    Ok(())
}

/// The claim must be an index scan of the ready index, then a TID scan of
/// the rows it locked, on a queue of any real size: written as a join, it
/// was planned as a hash join over a sequential scan of all 10,000 rows of
/// a freshly filled queue. (A table of a page or two is rightly read whole.)
#[tokio::test]
async fn postgres_claim_never_scans_the_table() -> TestResult {
    let (admin, name, pool) = pg_database().await?;
    let plan = async {
        for rows in [10_000, 200_000] {
            sqlx::query("TRUNCATE jetpack_tasks").execute(&pool).await?;
            // Every priority, and a tenth scheduled within the head
            // start of the highest.
            sqlx::query(
                r#"INSERT INTO jetpack_tasks (step, kind, priority, wakeup_at)
                   SELECT '{"M":{"A":null}}', 'M.A', i % 11,
                          now() + CASE WHEN i % 10 = 0 THEN (i % 600) * interval '1 second'
                                       ELSE -(i % 600) * interval '1 second' END
                   FROM generate_series(1, $1) i"#,
            )
            .bind(rows)
            .execute(&pool)
            .await?;
            sqlx::query("ANALYZE jetpack_tasks").execute(&pool).await?;
            let explain = format!("EXPLAIN {}", super::claim::CLAIM);
            let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
                .bind(100_i64)
                .bind(vec!["M.A".to_string()])
                .bind("w")
                .bind(30_000_000_i64)
                .fetch_all(&pool)
                .await?;
            // The worker's own connections plan it once, generically.
            let generic =
                generic_plan(&pool, super::claim::CLAIM, "100, '{M.A}', 'w', 30000000").await?;
            for plan in [plan.join("\n"), generic] {
                if plan.contains("Seq Scan")
                    || !plan.contains("Index Scan using jetpack_tasks_ready")
                    || !plan.contains("Tid Scan")
                {
                    return Ok::<_, Box<dyn std::error::Error>>(Some(format!(
                        "with {rows} rows:\n{plan}"
                    )));
                }
            }
        }
        Ok(None)
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    if let Some(plan) = plan? {
        panic!("the claim is not planned as an index scan and a TID scan {plan}");
    }
    Ok(())
}

/// The claim of limited steps reads the limited index, one probe per
/// scope, never the whole table: 200,000 ready tasks of a limited step in
/// 100 scopes, and as many without a limit.
#[tokio::test]
async fn postgres_limited_claim_never_scans_the_table() -> TestResult {
    let (admin, name, pool) = pg_database().await?;
    let plan = async {
        sqlx::query(
            r#"INSERT INTO jetpack_tasks (step, kind, limit_scope)
               SELECT '{"M":{"A":null}}', 'M.A', CASE WHEN i % 2 = 0 THEN 'M.A/' || (i % 100) END
               FROM generate_series(1, 400000) i"#,
        )
        .execute(&pool)
        .await?;
        sqlx::query("ANALYZE jetpack_tasks").execute(&pool).await?;
        let explain = format!("EXPLAIN {}", super::claim::CLAIM_LIMITED);
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
            .bind(100_i64)
            .bind(vec!["M.A".to_string()])
            .bind(vec![4_i32])
            .bind("w")
            .bind(30_000_000_i64)
            // Under a rate too: the buckets are read and written.
            .bind(vec![Some(10.0_f64)])
            .bind(vec![Some(10.0_f64)])
            .bind(vec![Some(1.0_f64)])
            .fetch_all(&pool)
            .await?;
        let generic = generic_plan(
            &pool,
            super::claim::CLAIM_LIMITED,
            "100, '{M.A}', '{4}', 'w', 30000000, '{10}', '{10}', '{1}'",
        )
        .await?;
        let wrong = |plan: &String| {
            !plan.contains("jetpack_tasks_limited") || plan.contains("Seq Scan on jetpack_tasks")
        };
        let plans = [plan.join("\n"), generic];
        Ok::<_, Box<dyn std::error::Error>>(plans.into_iter().find(wrong))
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    if let Some(plan) = plan? {
        panic!("the limited claim reads more than the limited index:\n{plan}");
    }
    Ok(())
}

/// The plan of `sql` as the worker's own connections run it (planned once,
/// generically, see `PgHandle::connect`), for the arguments `args`.
async fn generic_plan(pool: &sqlx::PgPool, sql: &str, args: &str) -> TestResult<String> {
    let mut db = pool.acquire().await?;
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *db)
        .await?;
    let prepare = format!("PREPARE generic AS {sql}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare))
        .execute(&mut *db)
        .await?;
    let explain = format!("EXPLAIN EXECUTE generic({args})");
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .fetch_all(&mut *db)
        .await?;
    sqlx::raw_sql("DEALLOCATE generic; RESET plan_cache_mode")
        .execute(&mut *db)
        .await?;
    Ok(plan.join("\n"))
}

/// The flush of outcomes, planned generically as the worker's own connection
/// runs it, finds the attempts' rows by their primary key: never a scan of
/// the table.
#[tokio::test]
async fn postgres_flush_never_scans_the_table() -> TestResult {
    let (admin, name, pool) = pg_database().await?;
    let plans = async {
        sqlx::query(
            r#"INSERT INTO jetpack_tasks (step, kind)
               SELECT '{"M":{"A":null}}', 'M.A' FROM generate_series(1, 100000)"#,
        )
        .execute(&pool)
        .await?;
        sqlx::query("ANALYZE jetpack_tasks").execute(&pool).await?;
        let mut plans = Vec::new();
        for (sql, params) in super::complete::STATEMENTS {
            let args = vec!["NULL"; params].join(", ");
            plans.push(generic_plan(&pool, sql, &args).await?);
        }
        Ok::<_, Box<dyn std::error::Error>>(plans)
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    for plan in plans? {
        assert!(
            !plan.contains("Seq Scan on jetpack_tasks") && plan.contains("jetpack_tasks_pkey"),
            "the flush reads the whole table:\n{plan}"
        );
    }
    Ok(())
}

/// A row of history written by hand with arrays of other lengths is read as
/// far as it goes: what is missing reads as NULL, an entry without a task id
/// or an event is no transition. A step that is not JSON is refused.
#[tokio::test]
async fn history_written_by_hand_is_read_as_far_as_it_goes() -> TestResult {
    use crate::driver::Histories;
    let (admin, name, pool) = pg_database().await?;
    let read = async {
        sqlx::query(
            "INSERT INTO jetpack_history_blocks (block, task_ids, events, from_kinds, to_kinds,
                 steps, attempts, durations, errors, enqueued_ats, enqueued_kinds, enqueued_steps,
                 enqueued_errors)
             VALUES (0, '{7, 8, NULL}', '{edited}', '{}', '{M.A, M.B}', '{}', '{}', '{}', '{}',
                     '{}', '{}', '{}', '{}')",
        )
        .execute(&pool)
        .await?;
        let refused = sqlx::query(
            "INSERT INTO jetpack_history_blocks (block, task_ids, events, from_kinds, to_kinds,
                 steps, attempts, durations, errors, enqueued_ats, enqueued_kinds, enqueued_steps,
                 enqueued_errors)
             VALUES (0, '{7}', '{edited}', '{}', '{}', '{\"{oops\"}', '{}', '{}', '{}', '{}',
                     '{}', '{}', '{}')",
        )
        .execute(&pool)
        .await
        .is_err();
        let seven = sqlx::Postgres::history(&pool, 7).await?;
        let eight = sqlx::Postgres::history(&pool, 8).await?;
        Ok::<_, Box<dyn std::error::Error>>((refused, seven, eight))
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    let (refused, seven, eight) = read?;
    assert!(refused, "a step that is not JSON was taken");
    let seven: Vec<_> = seven
        .iter()
        .map(|t| (t.event.as_str(), t.to_kind.as_deref()))
        .collect();
    assert_eq!(seven, [("edited", Some("M.A"))]);
    assert!(eight.is_empty(), "an entry without an event: {eight:?}");
    Ok(())
}
