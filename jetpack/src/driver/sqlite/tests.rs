//! What only SQLite has: its batched statements, the worker's own
//! connection, and the migrations that rebuild or check its table.

use super::complete::Batch;
use super::*;
use crate::driver::{Migrations, Pooled, Store};
use crate::model::Wakeup;
use crate::model::FENCE_MAX;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The all-or-nothing statements write every item of a batch whose
/// attempts all hold their tasks, in one statement: SQLite evaluates their
/// check once, before the first row changes (were it evaluated per row,
/// the first write would fail it for the rest, and every flush would go
/// the exact way).
#[tokio::test]
async fn a_batch_of_held_attempts_is_written_by_one_statement_each(
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = connect("sqlite::memory:").await?;
    <Sqlite as crate::driver::Migrations>::migrate(&pool).await?;
    sqlx::query(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
         INSERT INTO jetpack_tasks (step) SELECT '{\"M\":{\"A\":null}}' FROM s",
    )
    .execute(&pool)
    .await?;
    let store = crate::driver::Pooled::<Sqlite>::new(pool.clone());
    let claimed = store
        .claim(50, &["M.A".to_string()], "w", Duration::from_secs(60))
        .await?;
    assert_eq!(claimed.len(), 50);
    let next = Outcome::Next {
        step: r#"{"M":{"B":null}}"#.into(),
        kind: "M.B".into(),
        wakeup: Wakeup::Now,
        scope: None,
    };
    let retry = Outcome::Retry {
        delay: Duration::from_secs(60),
        error: "again".into(),
    };
    let park = Outcome::park("boom".into());
    let done: Vec<(i64, i64, &Outcome)> = claimed
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let outcome = match i {
                0..20 => &Outcome::Finish,
                20..40 => &next,
                40..45 => &retry,
                _ => &park,
            };
            (t.id, t.fence, outcome)
        })
        .collect();
    let batch = Batch::of(&done, None)?;
    assert_eq!(batch.statements.len(), 3);
    let mut db = pool.acquire().await?;
    for statement in &batch.statements {
        assert!(
            statement.write_if_all_held(&mut db).await?,
            "{} wrote less than all its items",
            statement.if_held
        );
    }
    let left: Vec<(String, Option<String>, bool, i64)> = sqlx::query_as(
        "SELECT kind, error, locked_by IS NULL AND lease_until IS NULL, count(*)
         FROM jetpack_tasks GROUP BY 1, 2, 3 ORDER BY 1, 2",
    )
    .fetch_all(&mut *db)
    .await?;
    assert_eq!(
        left,
        [
            ("M.A".to_string(), None, true, 5),
            ("M.A".to_string(), Some("boom".to_string()), true, 5),
            ("M.B".to_string(), None, true, 20),
        ]
    );
    Ok(())
}

/// Migration 0018 refuses rows that would stall; those already written
/// are parked saying what was wrong (a negative join count first set to
/// the awaited children still live), and clearing `error` resumes each.
#[tokio::test]
async fn rows_that_would_stall_are_parked_by_the_migration(
) -> Result<(), Box<dyn std::error::Error>> {
    const CHECKED: i64 = 20261207000018;
    let pool = connect("sqlite::memory:").await?;
    let migrator = migrator();
    migrator.run_to(CHECKED - 1, &pool).await?;
    sqlx::raw_sql(
        r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"A":1}}'), ('{"M":{"B":2}}'),
               ('{"M":{"C":3}}'), ('{"M":{"D":4}}');
           UPDATE jetpack_tasks SET state = 'parked' WHERE id = 1;
           UPDATE jetpack_tasks SET state = 'waiting' WHERE id = 2;
           UPDATE jetpack_tasks SET state = 'waiting', children_left = -1 WHERE id = 3;
           UPDATE jetpack_tasks SET parent_id = 3, awaited = 'wait' WHERE id = 4;"#,
    )
    .execute(&pool)
    .await?;
    migrator.run_to(CHECKED, &pool).await?;
    const ROWS: &str = "SELECT id, state, children_left, error FROM jetpack_tasks
                        WHERE id < 4 ORDER BY id";
    let rows: Vec<(i64, String, Option<i64>, Option<String>)> =
        sqlx::query_as(ROWS).fetch_all(&pool).await?;
    let said: Vec<_> = rows
        .iter()
        .map(|r| r.3.clone().unwrap_or_default())
        .collect();
    assert!(said[0].contains("parked without an error"), "{said:?}");
    assert!(
        said[1].contains("neither a signal nor children"),
        "{said:?}"
    );
    assert!(said[2].contains("children_left was -1"), "{said:?}");
    assert!(rows.iter().all(|r| r.1 == "parked"), "{rows:?}");
    assert_eq!(rows[2].2, Some(1), "the child still awaited");

    sqlx::query("UPDATE jetpack_tasks SET error = NULL WHERE id < 4")
        .execute(&pool)
        .await?;
    let rows: Vec<(i64, String, Option<i64>, Option<String>)> =
        sqlx::query_as(ROWS).fetch_all(&pool).await?;
    assert_eq!(
        rows,
        [
            (1, "ready".into(), None, None),
            (2, "ready".into(), None, None),
            (3, "waiting".into(), Some(1), None),
        ],
        "resumed: the parent waits for its child again"
    );
    Ok(())
}

/// Migration 0004 rebuilds the table to relax its check: every row, the id
/// sequence (a finished task's id is never given again) and the triggers
/// survive it, and text that is not JSON written by hand is still refused.
#[tokio::test]
async fn the_table_rebuild_keeps_rows_ids_and_triggers() -> Result<(), Box<dyn std::error::Error>> {
    const REBUILD: i64 = 20261126000004;
    let pool = connect("sqlite::memory:").await?;
    let migrator = migrator();
    migrator.run_to(REBUILD - 1, &pool).await?;
    // A parked task, a leased one, and the newest one finished: its id
    // must not come back.
    sqlx::raw_sql(
        r#"INSERT INTO jetpack_tasks (step)
               VALUES ('{"M":{"A":1}}'), ('{"M":{"B":2}}'), ('{"M":{"C":3}}');
           UPDATE jetpack_tasks SET error = 'boom', tried = 3 WHERE id = 1;
           UPDATE jetpack_tasks SET locked_by = 'w', fence = 7, tried = 1,
               lease_until = '2999-01-01 00:00:00.000' WHERE id = 2;
           DELETE FROM jetpack_tasks WHERE id = 3;"#,
    )
    .execute(&pool)
    .await?;
    const ROWS: &str = "SELECT json_group_array(json_array(id, step, wakeup_at, tried, error,
         locked_by, fence, created_at, updated_at, kind, lease_until)) FROM jetpack_tasks";
    let before: String = sqlx::query_scalar(ROWS).fetch_one(&pool).await?;

    migrator.run_to(REBUILD, &pool).await?;
    let after: String = sqlx::query_scalar(ROWS).fetch_one(&pool).await?;
    assert_eq!(after, before);
    assert!(
        after.contains(r#""M.A""#) && after.contains(r#""boom""#),
        "{after}"
    );

    let id: i64 = sqlx::query_scalar(
        r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"D":4}}') RETURNING id"#,
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(id, 4, "the id sequence went on from the highest id given");
    let kind: String = sqlx::query_scalar("SELECT kind FROM jetpack_tasks WHERE id = 4")
        .fetch_one(&pool)
        .await?;
    assert_eq!(kind, "M.D", "the insert trigger derives kind");

    let refused = sqlx::query("INSERT INTO jetpack_tasks (step) VALUES ('{oops')")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "a hand insert of text that is not JSON");
    let refused = sqlx::query("UPDATE jetpack_tasks SET step = '{oops' WHERE id = 2")
        .execute(&pool)
        .await;
    assert!(
        refused.is_err(),
        "a hand update of step to text that is not JSON"
    );
    sqlx::query(r#"UPDATE jetpack_tasks SET step = '{"M":{"E":5}}' WHERE id = 2"#)
        .execute(&pool)
        .await?;
    sqlx::query("UPDATE jetpack_tasks SET error = NULL WHERE id = 1")
        .execute(&pool)
        .await?;
    let rows: Vec<(i64, String, i32, Option<String>)> =
        sqlx::query_as("SELECT id, kind, tried, error FROM jetpack_tasks WHERE id < 3 ORDER BY id")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        rows,
        [(1, "M.A".into(), 0, None), (2, "M.E".into(), 1, None)],
        "the resume trigger resets a resumed task; the update trigger derives kind"
    );
    let indexed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'jetpack_tasks_ready'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(indexed, 1);
    Ok(())
}

/// Migration 0005 adds checks for values written by hand: rows that break
/// them already are kept, parked with what was wrong, with valid values;
/// good rows, the id sequence, the index and the triggers stay.
#[tokio::test]
async fn the_checks_migration_parks_bad_rows_and_keeps_the_rest(
) -> Result<(), Box<dyn std::error::Error>> {
    const CHECKS: i64 = 20261130000005;
    let pool = connect("sqlite::memory:").await?;
    let migrator = migrator();
    migrator.run_to(CHECKS - 1, &pool).await?;
    sqlx::raw_sql(
        r#"INSERT INTO jetpack_tasks (step, wakeup_at, tried, fence) VALUES
               ('{"M":{"A":1}}', '2026-11-30 10:00:00.000', 2, 5),
               ('{"M":{"B":2}}', 'tomorrow', 0, 0),
               ('{"M":{"C":3}}', '2026-11-30T10:00:00Z', 2147483647, 9223372036854775807),
               ('{"M":{"D":4}}', '2026-11-30 10:00:00.000', 'abc', -3),
               ('{"M":{"E":5}}', '2026-11-30 10:00:00.000', 0, 0);
           DELETE FROM jetpack_tasks WHERE id = 5;"#,
    )
    .execute(&pool)
    .await?;
    migrator.run(&pool).await?;
    let rows: Vec<(i64, String, i64, i64, Option<String>)> =
        sqlx::query_as("SELECT id, wakeup_at, tried, fence, error FROM jetpack_tasks ORDER BY id")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        rows[0],
        (1, "2026-11-30 10:00:00.000".into(), 2, 5, None),
        "a good row is unchanged"
    );
    let error = |i: usize| rows[i].4.clone().unwrap_or_default();
    assert!(error(1).contains("wakeup_at was 'tomorrow'"), "{rows:?}");
    assert!(
        rows[1].1.len() == 23 && rows[1].1.as_str() > "2026",
        "{rows:?}"
    );
    assert_eq!(
        rows[2].1, "2026-11-30 10:00:00.000",
        "an ISO time is rewritten"
    );
    assert_eq!((rows[2].2, rows[2].3), (2147483647, FENCE_MAX), "{rows:?}");
    assert!(
        error(2).contains("fence was 9223372036854775807"),
        "{rows:?}"
    );
    assert_eq!((rows[3].2, rows[3].3), (0, 0), "{rows:?}");
    assert!(
        error(3).contains("tried was 'abc'") && error(3).contains("fence was -3"),
        "{rows:?}"
    );
    let id: i64 = sqlx::query_scalar(
        r#"INSERT INTO jetpack_tasks (step) VALUES ('{"M":{"F":6}}') RETURNING id"#,
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(id, 6, "the id sequence went on from the highest id given");
    for bad in [
        "UPDATE jetpack_tasks SET wakeup_at = 'tomorrow' WHERE id = 1",
        "UPDATE jetpack_tasks SET wakeup_at = '2026-11-30T10:00:00Z' WHERE id = 1",
        "UPDATE jetpack_tasks SET tried = -1 WHERE id = 1",
        "UPDATE jetpack_tasks SET fence = 9007199254740992 WHERE id = 1",
        "UPDATE jetpack_tasks SET id = 9223372036854775807 WHERE id = 1",
    ] {
        let refused = sqlx::query(bad).execute(&pool).await;
        assert!(refused.is_err(), "{bad} was not refused");
    }
    sqlx::query("UPDATE jetpack_tasks SET wakeup_at = datetime('now', '+1 hour') WHERE id = 1")
        .execute(&pool)
        .await?;
    let kind: String = sqlx::query_scalar("SELECT kind FROM jetpack_tasks WHERE id = 6")
        .fetch_one(&pool)
        .await?;
    assert_eq!(kind, "M.F", "the insert trigger derives kind");
    Ok(())
}

/// `tasks` ready tasks of step `{"M":{"A":null}}`.
fn insert_tasks(tasks: usize) -> String {
    let rows = vec![r#"('{"M":{"A":null}}')"#; tasks].join(", ");
    format!("INSERT INTO jetpack_tasks (step) VALUES {rows}")
}

/// The SQLite worker writes on a connection of its own, opened from the
/// pool's options: on an in-memory database it must reach the same
/// database as the pool (sqlx names it, shared-cache), not a new empty one.
#[tokio::test]
async fn sqlite_worker_writes_reach_an_in_memory_database() -> TestResult {
    let pool = super::connect("sqlite::memory:").await?;
    <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
    sqlx::query(sqlx::AssertSqlSafe(insert_tasks(3)))
        .execute(&pool)
        .await?;
    for few in [usize::MAX, 0] {
        let store = Pooled::with(
            pool.clone(),
            super::SqliteHandle::with_few(pool.clone(), few),
        );
        let claimed = store
            .claim(1, &["M.A".to_string()], "w", Duration::from_secs(60))
            .await?;
        let [task] = claimed.as_slice() else {
            return Err(format!("claimed {claimed:?} (few: {few})").into());
        };
        let held = store
            .complete_many(&[(task.id, task.fence, &Outcome::Finish)], None)
            .await?;
        assert_eq!(held, [true], "few: {few}");
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jetpack_tasks")
        .fetch_one(&pool)
        .await?;
    assert_eq!(
        left, 1,
        "two of three tasks finished, seen through the pool"
    );
    pool.close().await;
    Ok(())
}

/// A write of the SQLite worker that fails inside its transaction leaves
/// no lock behind (its connection is closed, rolling back), and the next
/// write opens a new connection and succeeds.
#[tokio::test]
async fn sqlite_failed_write_leaves_no_lock_and_the_next_succeeds() -> TestResult {
    let dir = std::env::temp_dir().join(format!("jetpack_unit_fail_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("unit.db").display());
    let pool = super::connect(&url).await?;
    let result = async {
        <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
        sqlx::query(sqlx::AssertSqlSafe(insert_tasks(2)))
            .execute(&pool)
            .await?;
        // Batch statements: the claim begins a transaction, then reads.
        let store = Pooled::with(pool.clone(), super::SqliteHandle::with_few(pool.clone(), 0));
        let kinds = vec!["M.A".to_string()];
        let hour = Duration::from_secs(3600);
        store.claim(1, &kinds, "w", hour).await?;
        sqlx::query("ALTER TABLE jetpack_tasks RENAME TO jetpack_gone")
            .execute(&pool)
            .await?;
        let failed = store.claim(1, &kinds, "w", hour).await;
        assert!(failed.is_err(), "a claim without its table: {failed:?}");
        // A write elsewhere gets the lock (it would time out if the failed
        // claim still held it).
        sqlx::query("ALTER TABLE jetpack_gone RENAME TO jetpack_tasks")
            .execute(&pool)
            .await?;
        let again = store.claim(1, &kinds, "w", hour).await?;
        assert_eq!(again.len(), 1, "the claim after the failure: {again:?}");
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Times as the tables store them are read and written by hand; other
/// shapes a person may write are still read.
#[test]
fn times_read_and_written_as_the_tables_store_them() {
    let text = "2026-12-08 01:14:03.617";
    let at = super::read_time(text, String::new).expect("the tables' own format");
    assert_eq!(super::time_text(at), text);
    for other in [
        "2026-12-08 01:14:03",
        "2026-12-08 01:14:03.5",
        "2026-12-08 01:14:03.123456",
    ] {
        let read = super::read_time(other, String::new).expect(other);
        let by_chrono = chrono::NaiveDateTime::parse_from_str(other, "%Y-%m-%d %H:%M:%S%.f")
            .expect(other)
            .and_utc();
        assert_eq!(read, by_chrono, "{other}");
    }
    for bad in [
        "2026-13-08 01:14:03.617",
        "2026-12-08T01:14:03.617",
        "not a time",
    ] {
        assert!(super::read_time(bad, String::new).is_err(), "{bad}");
    }
}

/// Rows of history written by hand are read as far as they go: entries that
/// are not JSON, an entry that is not an array, a field of another type.
/// Other rows of the block, and other tasks' history, read as ever.
#[tokio::test]
async fn history_written_by_hand_is_read_as_far_as_it_goes() -> TestResult {
    use crate::driver::{Enqueues, Histories};
    let pool = connect("sqlite::memory:").await?;
    <Sqlite as crate::driver::Migrations>::migrate(&pool).await?;
    let id = Sqlite::insert(
        &pool,
        crate::model::Encoded {
            json: r#"{"M":{"A":1}}"#.into(),
            kind: ("M", "A"),
            priority: 0,
            scope: None,
        },
        Wakeup::Now,
    )
    .await?;
    sqlx::query("UPDATE jetpack_tasks SET error = 'by hand' WHERE id = ?1")
        .bind(id)
        .execute(&pool)
        .await?;
    for entries in ["not json", "[42, null]", r#"[["one", "edited"]]"#] {
        sqlx::query("INSERT INTO jetpack_history_blocks (block, entries) VALUES (?1 >> 10, ?2)")
            .bind(id)
            .bind(entries)
            .execute(&pool)
            .await?;
    }
    let events: Vec<String> = (Sqlite::history(&pool, id).await?.into_iter())
        .map(|t| t.event)
        .collect();
    assert_eq!(events, ["enqueued", "parked"]);
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM jetpack_history")
        .fetch_one(&pool)
        .await?;
    assert_eq!(
        all, 3,
        "the enqueue, the park and the entry of task 0 (\"one\")"
    );
    Ok(())
}
