//! The `jetpack` binary, run against real databases (PostgreSQL at
//! `DATABASE_URL`, and an SQLite file): every command on tasks made by the
//! library, and a one-line error with exit status 1 for a bad URL, a database
//! that is unreachable or not migrated, an unknown id, a filter that matches
//! nothing.

use std::process::Command;

use jetpack::Machine;
use jetpack_suite::readme::{Greeter, ReadName};
use jetpack_suite::{Db, TestDb};
use serde_json::Value;

/// What a run of `jetpack args…` did: exit code, stdout, stderr.
fn jetpack(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jetpack"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the jetpack binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Builds the `tasks` example, a program's own command line with the
/// README's types (a no-op when it is up to date), and returns its path. With
/// `--workspace`, as `cargo test --workspace` builds it: `-p jetpack-cli` would
/// compile Jetpack again with that package's features alone.
fn tasks_binary() -> std::path::PathBuf {
    let jetpack = std::path::PathBuf::from(env!("CARGO_BIN_EXE_jetpack"));
    let target = jetpack.parent().expect("target/<profile>");
    let mut args = vec!["build", "-q", "--workspace", "--example", "tasks"];
    if target.ends_with("release") {
        args.push("--release");
    }
    let status = Command::new(env!("CARGO"))
        .args(&args)
        .status()
        .expect("run cargo build --example tasks");
    assert!(status.success(), "building the tasks example failed");
    target.join("examples").join("tasks")
}

/// A run of the `tasks` example: exit code, stdout, stderr.
fn typed(binary: &std::path::Path, db: Option<&TestDb>, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = db.map_or(vec![], |db| vec!["--url", db.url.as_str()]);
    all.extend_from_slice(args);
    let out = Command::new(binary)
        .args(&all)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the tasks example");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `jetpack --url <db> args…`, which must succeed; its stdout.
fn ok(db: &TestDb, args: &[&str]) -> String {
    let mut all = vec!["--url", db.url.as_str()];
    all.extend_from_slice(args);
    let (code, out, err) = jetpack(&all);
    assert_eq!(code, 0, "jetpack {args:?} failed: {err}");
    out
}

/// `jetpack --url <db> args…`, which must fail with one line saying `says`.
fn fails(db: &TestDb, args: &[&str], says: &str) {
    let mut all = vec!["--url", db.url.as_str()];
    all.extend_from_slice(args);
    let (code, _, err) = jetpack(&all);
    assert_eq!(code, 1, "jetpack {args:?} should fail: {err}");
    assert!(
        err.starts_with("jetpack: ") && err.trim_end().lines().count() == 1,
        "{err:?}"
    );
    assert!(err.contains(says), "jetpack {args:?}: {err}");
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn commands_operate_on_tasks(db: TestDb) {
    let ids = db
        .enqueue_many(["a.txt", "b.txt"].map(|f| ReadName { filename: f.into() }))
        .await;
    db.exec(
        "UPDATE jetpack_tasks SET error = 'boom' WHERE id = $1",
        Some(ids[0]),
        None,
    )
    .await;

    let status = json(&ok(&db, &["--json", "status"]));
    let mut rows: Vec<(String, String, i64)> = (status.as_array().expect("rows").iter())
        .map(|r| {
            (
                r["step"].as_str().unwrap_or("").into(),
                r["state"].as_str().unwrap_or("").into(),
                r["count"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("Greeter.ReadName".into(), "parked".into(), 1),
            ("Greeter.ReadName".into(), "ready".into(), 1)
        ]
    );
    assert!(ok(&db, &["status"]).contains("Greeter.ReadName"));
    // A small table is counted row by row, with or without --exact.
    assert!(status
        .as_array()
        .is_some_and(|rows| rows.iter().all(|r| r["estimated"] == false)));
    assert_eq!(json(&ok(&db, &["--json", "status", "--exact"])), status);
    let watched = ok(&db, &["--json", "watch", "--times", "2", "--every", "1s"]);
    let reports: Vec<Value> = watched.lines().map(json).collect();
    let want = serde_json::json!({ "Greeter.ReadName": { "parked": 1, "ready": 1 } });
    assert_eq!(reports, [want.clone(), want], "{watched}");
    let plain = ok(&db, &["watch", "--times", "1"]);
    assert!(
        plain.starts_with("2 live tasks") && plain.contains("parked 1, ready 1"),
        "{plain}"
    );

    let parked = json(&ok(&db, &["--json", "list", "--state", "parked"]));
    assert_eq!(parked[0]["id"], ids[0]);
    assert_eq!(parked.as_array().map(Vec::len), Some(1));
    let shown = ok(&db, &["show", &ids[0].to_string()]);
    assert!(
        shown.contains("error      boom") && shown.contains("history:"),
        "{shown}"
    );
    let history = json(&ok(&db, &["--json", "history", &ids[0].to_string()]));
    let events: Vec<&str> = history
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|t| t["event"].as_str())
        .collect();
    assert_eq!(events, ["enqueued", "parked"]);

    assert_eq!(
        ok(&db, &["resume", &ids[0].to_string()]).trim(),
        "resumed 1 task"
    );
    fails(&db, &["resume", "--error", "boom"], "nothing changed");
    fails(&db, &["show", "999999"], "no task 999999");

    // Redrive, checked against the graph a worker recorded.
    fails(
        &db,
        &[
            "redrive",
            "--from",
            "Greeter.ReadName",
            "--to",
            "Greeter.SayHello",
        ],
        "no machine Greeter",
    );
    let graph = Greeter::graph().to_json().to_string();
    let record = match &*db {
        Db::Postgres(_) => {
            "INSERT INTO jetpack_machines (name, graph) VALUES ('Greeter', $1::jsonb)"
        }
        Db::Sqlite(_) => "INSERT INTO jetpack_machines (name, graph) VALUES ('Greeter', $1)",
    };
    db.exec(record, None, Some(&graph)).await;
    fails(
        &db,
        &[
            "redrive",
            "--from",
            "Greeter.ReadName",
            "--to",
            "Other.Step",
        ],
        "another machine",
    );
    let moved = ok(
        &db,
        &[
            "--json",
            "redrive",
            "--from",
            "Greeter.ReadName",
            "--to",
            "Greeter.SayHello",
            "--state",
            "ready",
        ],
    );
    assert_eq!(json(&moved)["redrove"], 2);
    let dot = ok(&db, &["graph", "Greeter", "--format", "dot"]);
    assert!(dot.contains("\"ReadName\" -> \"SayHello\""), "{dot}");
    assert!(ok(&db, &["graph", "Greeter"]).contains("ReadName --> SayHello"));
    fails(&db, &["graph", "Nope"], "no machine Nope is recorded");

    assert_eq!(
        ok(&db, &["cancel", "--reason", "no", "--machine", "Greeter"]).trim(),
        "cancelled 2 tasks"
    );
    assert_eq!(
        ok(&db, &["purge", "--state", "cancelled"]).trim(),
        "purged 2 tasks"
    );
    assert_eq!(ok(&db, &["status"]).trim(), "no tasks");
    let counts = json(&ok(
        &db,
        &["--json", "history", "--at", "2000-01-01 00:00:00"],
    ));
    assert_eq!(counts, Value::Array(vec![]));
    if let Db::Postgres(_) = &*db {
        // The tables' owner dropped them: a clear hint.
        db.exec("DROP TABLE jetpack_tasks CASCADE", None, None)
            .await;
        fails(&db, &["status"], "run `jetpack migrate`");
    }
}

/// A program's own command line (`jetpack_cli::run::<Tasks>()`): `verify`
/// decodes every live row with its types, `redrive` checks the fields, and
/// `graph` needs no database.
async fn a_programs_own_command_line_checks_with_its_types(db: TestDb) {
    let tasks = tasks_binary();
    let (code, out, err) = typed(&tasks, None, &["graph", "Greeter"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ReadName --> SayHello"), "{out}");

    let good = db
        .enqueue_many([ReadName {
            filename: "a.txt".into(),
        }])
        .await;
    let bad = db
        .insert_raw(r#"{"Greeter":{"SayHello":{"name":7}}}"#)
        .await
        .expect("insert");
    let gone = db
        .insert_raw(r#"{"Greeter":{"Wave":{"name":"Ann"}}}"#)
        .await
        .expect("insert");
    let (code, out, err) = typed(&tasks, Some(&db), &["--json", "verify"]);
    assert_eq!(code, 1, "verify must fail: {out} {err}");
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["checked"], 3);
    assert_eq!(report["unknown"][0]["step"], "Greeter.Wave");
    assert_eq!(report["unknown"][0]["examples"][0], gone);
    assert_eq!(report["undecodable_examples"][0]["id"], bad);
    let (code, out, _) = typed(&tasks, Some(&db), &["verify"]);
    assert_eq!(code, 1);
    assert!(out.contains("unknown step Greeter.Wave: 1 tasks"), "{out}");
    // The `jetpack` binary has no types to decode with.
    fails(&db, &["verify"], "jetpack_cli::run::<Tasks>()");

    // A redrive whose fields do not fit the step they go to changes nothing.
    let (code, _, err) = typed(
        &tasks,
        Some(&db),
        &[
            "redrive",
            "--from",
            "Greeter.ReadName",
            "--to",
            "Greeter.SayHello",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "task {}'s fields do not fit step Greeter.SayHello",
            good[0]
        )),
        "{err}"
    );
    // A step that is gone is redriven to one that fits.
    let (code, out, err) = typed(
        &tasks,
        Some(&db),
        &[
            "--json",
            "redrive",
            "--from",
            "Greeter.Wave",
            "--to",
            "Greeter.SayHello",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["redrove"], 1);
    ok(&db, &["cancel", &bad.to_string(), "--reason", "bad row"]);
    let (code, out, err) = typed(&tasks, Some(&db), &["verify"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains("2 live tasks checked") && out.contains("every live task decodes"),
        "{out}"
    );
}

#[tokio::test]
async fn postgres_programs_own_command_line() {
    a_programs_own_command_line_checks_with_its_types(TestDb::postgres().await).await;
}

#[tokio::test]
async fn sqlite_programs_own_command_line() {
    a_programs_own_command_line_checks_with_its_types(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn postgres_commands_operate_on_tasks() {
    commands_operate_on_tasks(TestDb::postgres().await).await;
}

#[tokio::test]
async fn sqlite_commands_operate_on_tasks() {
    commands_operate_on_tasks(TestDb::sqlite().await).await;
}

#[test]
fn bad_urls_and_missing_databases_are_one_line_errors() {
    let dir = std::env::temp_dir().join(format!("jetpack_cli_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let file = dir.join("new.db");
    let url = format!("sqlite://{}", file.display());
    for (args, says) in [
        (vec!["status"], "no database: give --url"),
        (
            vec!["--url", "mysql://db", "status"],
            "unsupported database URL",
        ),
        (vec!["--url", url.as_str(), "status"], "no database file at"),
        (
            vec!["--url", "postgres://postgres@127.0.0.1:1/none", "status"],
            "cannot connect to",
        ),
    ] {
        let (code, _, err) = jetpack(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.starts_with("jetpack: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = jetpack(&["list", "--older-than", "5x"]);
    assert_eq!(code, 2, "a bad argument is a usage error: {err}");
    let (code, out, err) = jetpack(&["--url", url.as_str(), "migrate"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("migrated"), "{out}");
    let (code, out, err) = jetpack(&["--url", url.as_str(), "status"]);
    assert_eq!((code, out.trim()), (0, "no tasks"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP/1.1 exchange with `port`: the answer's status line and body.
async fn http(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the dashboard listening");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("a request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("an answer");
    answer
}

/// `jetpack serve`: the dashboard of the database, on 127.0.0.1, read-only
/// unless `--actions`, answering only for its own host names.
#[tokio::test]
async fn serve_answers_pages_and_is_read_only_by_default() {
    let db = TestDb::sqlite().await;
    let id = db
        .enqueue(ReadName {
            filename: "missing.txt".into(),
        })
        .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let bind = format!("127.0.0.1:{port}");
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetpack"))
        .args(["--url", db.url.as_str(), "serve", "--bind", bind.as_str()])
        .args(["--allowed-host", "jetpack.example.com"])
        .kill_on_drop(true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("jetpack serve");
    jetpack_suite::wait_for(std::time::Duration::from_secs(20), || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(drop))
    })
    .await
    .expect("the dashboard listening");
    let page = http(
        port,
        &format!("GET /tasks/{id} HTTP/1.1\r\nHost: {bind}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("missing.txt") && page.contains("Read-only"),
        "{page}"
    );
    let post = http(
        port,
        &format!(
            "POST /tasks/{id}/cancel HTTP/1.1\r\nHost: {bind}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\nConnection: close\r\n\r\ncsrf=x"
        ),
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 403"), "{post}");
    // Names other than localhost, an IP address and --allowed-host are refused.
    let host = |host: &str| {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        async move { http(port, &request).await }
    };
    let rebound = host("evil.example").await;
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(
        rebound.contains("does not answer for the host"),
        "{rebound}"
    );
    let allowed = host(&format!("jetpack.example.com:{port}")).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    let local = host(&format!("localhost:{port}")).await;
    assert!(local.starts_with("HTTP/1.1 200"), "{local}");
    assert_eq!(
        db.find(id).await.map(|t| t.state),
        Some(jetpack::TaskState::Ready)
    );
    serve.kill().await.expect("stop it");
}
