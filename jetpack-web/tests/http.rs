//! The dashboard's router, requested directly (no browser): its pages on real
//! databases, its actions and what they change, and what it refuses — a
//! missing token, another site, a read-only dashboard, the authorization
//! hook, a task a worker holds, a step that does not decode, an unknown id.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use jetpack::Machine;
use jetpack_suite::readme::{Greeter, ReadName, Tasks};
use jetpack_suite::{wait_for, Db, TestDb};
use jetpack_web::{Access, Dashboard, Database};
use std::time::Duration;
use tower::ServiceExt;

fn database(db: &TestDb) -> Database {
    match &**db {
        Db::Postgres(p) => p.clone().into(),
        Db::Sqlite(p) => p.clone().into(),
    }
}

/// What the router answered: status, `Location`, body.
async fn call(app: &Router, request: Request<Body>) -> (StatusCode, String, String) {
    let response = app.clone().oneshot(request).await.expect("an answer");
    let status = response.status();
    let location = (response.headers().get(header::LOCATION))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String, String) {
    call(
        app,
        Request::get(uri)
            .header(header::HOST, "localhost")
            .body(Body::empty())
            .expect("a request"),
    )
    .await
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn post(app: &Router, uri: &str, fields: &[(&str, &str)]) -> (StatusCode, String, String) {
    let form: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "localhost")
        .body(Body::from(form.join("&")))
        .expect("a request");
    call(app, request).await
}

/// The forms' token, read from a page.
fn token(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .expect("a form with a token")
        + 19;
    page[at..].split('"').next().unwrap_or("").to_string()
}

async fn parked(db: &TestDb, filename: &str) -> i64 {
    let id = db
        .enqueue(ReadName {
            filename: filename.into(),
        })
        .await;
    db.exec(
        "UPDATE jetpack_tasks SET error = 'No such file or directory (os error 2)' WHERE id = $1",
        Some(id),
        None,
    )
    .await;
    id
}

async fn record_greeter(db: &TestDb) {
    let graph = Greeter::graph().to_json().to_string();
    let record = match &**db {
        Db::Postgres(_) => {
            "INSERT INTO jetpack_machines (name, graph) VALUES ('Greeter', $1::jsonb)"
        }
        Db::Sqlite(_) => "INSERT INTO jetpack_machines (name, graph) VALUES ('Greeter', $1)",
    };
    db.exec(record, None, Some(&graph)).await;
}

async fn pages_and_actions(db: TestDb) {
    let app = Dashboard::new(database(&db))
        .typed::<Tasks>()
        .actions(true)
        .router();
    let (status, _, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("No machines yet"), "{page}");

    record_greeter(&db).await;
    let id = parked(&db, "missing.txt").await;
    let (_, _, page) = get(&app, "/").await;
    assert!(page.contains(r#"href="/machines/Greeter""#), "{page}");
    assert!(page.contains(r#"data-total="Greeter|parked""#), "{page}");
    let (status, _, page) = get(&app, "/machines/Greeter").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("<svg") && page.contains(r#"data-count="Greeter.ReadName|parked""#),
        "{page}"
    );
    let (_, _, page) = get(&app, "/tasks?state=parked").await;
    assert!(
        page.contains(&format!(r#"href="/tasks/{id}""#)) && page.contains("os error 2"),
        "{page}"
    );
    // Counts are read at most about once a second, however many ask.
    let shared = &app;
    wait_for(Duration::from_secs(5), || async move {
        let (_, _, counts) = get(shared, "/api/counts").await;
        let counts: serde_json::Value = serde_json::from_str(&counts).expect("JSON");
        Ok((counts["counts"]["Greeter.ReadName"]["parked"] == 1).then_some(()))
    })
    .await
    .expect("the parked task counted");

    // Bad input: a clear page, nothing else.
    let (status, _, page) = get(&app, "/machines/Nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("no machine Nope"), "{page}");
    let (status, _, page) = get(&app, "/tasks/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("is not a task id"), "{page}");
    let (status, _, page) = get(&app, "/tasks/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("no task 999999"), "{page}");
    let (status, location, _) = get(&app, &format!("/search?q={id}")).await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, &*format!("/tasks/{id}"))
    );
    let (status, _, page) = get(&app, "/search?q=order-42").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("No live task holds this key"), "{page}");

    // The task page, with its actions behind confirmations.
    let (status, _, page) = get(&app, &format!("/tasks/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Confirm: resume task") && page.contains("missing.txt"),
        "{page}"
    );
    let csrf = token(&page);
    let resume = format!("/tasks/{id}/resume");
    let (status, _, page) = post(&app, &resume, &[("csrf", "forged")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("token"), "{page}");
    let cross = Request::post(&resume)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "localhost:3000")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::from(format!("csrf={csrf}")))
        .expect("a request");
    let (status, _, page) = call(&app, cross).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("another site"), "{page}");
    assert_eq!(
        db.find(id).await.and_then(|t| t.error).as_deref(),
        Some("No such file or directory (os error 2)")
    );

    // An edit that does not decode changes nothing; one that does is saved.
    let edit = format!("/tasks/{id}/edit");
    let bad = r#"{"Greeter":{"ReadName":{"file":1}}}"#;
    let (status, _, page) = post(&app, &edit, &[("csrf", &csrf), ("step", bad)]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(page.contains("does not decode"), "{page}");
    assert!(db
        .find(id)
        .await
        .expect("the task")
        .step
        .contains("missing.txt"));
    let elsewhere = r#"{"Billing":{"Notify":{"account":1}}}"#;
    let (status, _, page) = post(&app, &edit, &[("csrf", &csrf), ("step", elsewhere)]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(page.contains("must stay in that machine"), "{page}");
    let good = r#"{"Greeter":{"ReadName":{"filename":"found.txt"}}}"#;
    let (status, location, _) = post(&app, &edit, &[("csrf", &csrf), ("step", good)]).await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, &*format!("/tasks/{id}?done=edited"))
    );
    let row = db.find(id).await.expect("the task");
    assert!(
        row.step.contains("found.txt") && row.error.is_some(),
        "{row:?}"
    );
    let events: Vec<String> = db.history(id).await.into_iter().map(|t| t.event).collect();
    assert!(events.contains(&"edited".to_string()), "{events:?}");

    // A task a worker holds is left alone.
    let hold = match &*db {
        Db::Postgres(_) => "UPDATE jetpack_tasks SET locked_by = 'w1', lease_until = now() + interval '1 hour', error = NULL WHERE id = $1",
        Db::Sqlite(_) => "UPDATE jetpack_tasks SET locked_by = 'w1', lease_until = strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 hour'), error = NULL WHERE id = $1",
    };
    let held = parked(&db, "held.txt").await;
    db.exec(hold, Some(held), None).await;
    let (status, _, page) = post(&app, &format!("/tasks/{held}/cancel"), &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(page.contains("is running on w1"), "{page}");

    // Resume, then cancel.
    let (status, location, _) = post(&app, &resume, &[("csrf", &csrf)]).await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, &*format!("/tasks/{id}?done=resumed"))
    );
    assert_eq!(db.find(id).await.and_then(|t| t.error), None);
    let (status, _, page) = post(&app, &resume, &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(page.contains("not parked"), "{page}");
    let (status, _, _) = post(
        &app,
        &format!("/tasks/{id}/cancel"),
        &[("csrf", &csrf), ("reason", "no longer wanted")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let row = db.find(id).await.expect("the task");
    assert_eq!(
        (row.state, row.error.as_deref()),
        (jetpack::TaskState::Cancelled, Some("no longer wanted"))
    );

    // A redrive is checked with the types: ReadName's fields are not SayHello's.
    let other = parked(&db, "other.txt").await;
    let (status, _, page) = post(
        &app,
        "/redrive",
        &[
            ("csrf", &csrf),
            ("from", "Greeter.ReadName"),
            ("to", "Greeter.SayHello"),
            ("state", "parked"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        page.contains(&format!("task {other}'s fields do not fit")),
        "{page}"
    );
}

#[tokio::test]
async fn postgres_pages_and_actions() {
    pages_and_actions(TestDb::postgres().await).await;
}

#[tokio::test]
async fn sqlite_pages_and_actions() {
    pages_and_actions(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn read_only_untyped_and_authorized_dashboards_refuse_what_they_must() {
    let db = TestDb::sqlite().await;
    let id = parked(&db, "missing.txt").await;

    // Read-only (the default): no forms, and a post is refused.
    let app = Dashboard::new(database(&db)).router();
    let (_, _, page) = get(&app, &format!("/tasks/{id}")).await;
    assert!(
        page.contains("Read-only") && !page.contains("Confirm:"),
        "{page}"
    );
    let (status, _, page) = post(&app, &format!("/tasks/{id}/resume"), &[("csrf", "x")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("read-only"), "{page}");

    // Without the program's types, an edit is refused.
    let app = Dashboard::new(database(&db)).actions(true).router();
    let (_, _, page) = get(&app, &format!("/tasks/{id}")).await;
    assert!(page.contains("Editing needs the program's types"), "{page}");
    let step = r#"{"Greeter":{"ReadName":{"filename":"x.txt"}}}"#;
    let (status, _, page) = post(
        &app,
        &format!("/tasks/{id}/edit"),
        &[("csrf", &token(&page)), ("step", step)],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(page.contains("needs the program's types"), "{page}");
    assert!(db
        .find(id)
        .await
        .expect("the task")
        .step
        .contains("missing.txt"));

    // The hook: reads need a header, actions are never allowed.
    let app = Dashboard::new(database(&db))
        .actions(true)
        .authorize(|request, access| {
            access == Access::Read && request.headers.contains_key("x-operator")
        })
        .router();
    let (status, _, _) = get(&app, "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let request = Request::get("/")
        .header(header::HOST, "127.0.0.1:3000")
        .header("x-operator", "ann")
        .body(Body::empty())
        .expect("a request");
    let (status, _, _) = call(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = post(&app, &format!("/tasks/{id}/resume"), &[("csrf", "x")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        db.find(id).await.and_then(|t| t.error).is_some(),
        "nothing changed"
    );
}

/// A request for a name other than localhost, an IP address or one the
/// operator allows is refused, reads and actions alike: with DNS rebinding, a
/// page of another site would otherwise read the dashboard (and its form
/// token) through a name of its own.
#[tokio::test]
async fn requests_for_other_hosts_are_refused() {
    let db = TestDb::sqlite().await;
    let id = parked(&db, "missing.txt").await;
    let on = |host: Option<&str>, uri: &str| {
        let mut request = Request::get(uri);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        request.body(Body::empty()).expect("a request")
    };
    let app = Dashboard::new(database(&db)).actions(true).router();
    for host in [
        "localhost",
        "localhost:3000",
        "127.0.0.1:3000",
        "[::1]:3000",
        "10.1.2.3",
        "app.localhost",
    ] {
        let (status, _, page) = call(&app, on(Some(host), "/")).await;
        assert_eq!(status, StatusCode::OK, "{host}: {page}");
    }
    for host in [
        Some("evil.example"),
        Some("evil.example:3000"),
        Some("127.0.0.1.evil.example"),
        None,
    ] {
        let (status, _, page) = call(&app, on(host, &format!("/tasks/{id}"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host:?}: {page}");
        assert!(!page.contains("missing.txt"), "{host:?}: {page}");
    }
    let (_, _, page) = call(&app, on(Some("evil.example:3000"), "/api/counts")).await;
    assert!(page.contains("does not answer for the host"), "{page}");

    // An action with the page's own token, through a rebound name: refused.
    let (_, _, page) = get(&app, &format!("/tasks/{id}")).await;
    let resume = Request::post(format!("/tasks/{id}/resume"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "evil.example:3000")
        .body(Body::from(format!("csrf={}", token(&page))))
        .expect("a request");
    let (status, _, _) = call(&app, resume).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        db.find(id).await.and_then(|t| t.error).is_some(),
        "nothing changed"
    );

    // The operator's names, in any case and with any port; "*" for any.
    let app = Dashboard::new(database(&db))
        .allowed_hosts(["Jetpack.Example.com"])
        .router();
    let (status, _, _) = call(&app, on(Some("jetpack.example.COM:8443"), "/")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&app, on(Some("evil.example"), "/")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let app = Dashboard::new(database(&db)).allowed_hosts(["*"]).router();
    let (status, _, _) = call(&app, on(Some("evil.example"), "/")).await;
    assert_eq!(status, StatusCode::OK);
}

/// The last hour's activity is read minute by minute: after the first read,
/// the dashboard asks the history only for the latest minutes and keeps the
/// older ones. Here a move of half an hour ago is deleted from the history
/// after the first read: it is still counted, with the move made since.
/// (The history is written in time order, as Jetpack writes it.)
async fn the_last_hour_is_read_minute_by_minute(db: TestDb) {
    let (earlier, now) = match &*db {
        Db::Postgres(_) => (
            "INSERT INTO jetpack_history (task_id, at, event, from_kind, to_kind)
             VALUES (2, now() - interval '2 hours', 'next', 'Greeter.ReadName', 'Greeter.SayHello'),
                    (1, now() - interval '30 minutes', 'next', 'Greeter.ReadName', 'Greeter.SayHello')",
            "INSERT INTO jetpack_history (task_id, event, from_kind, to_kind)
             VALUES (3, 'next', 'Greeter.ReadName', 'Greeter.SayHello')",
        ),
        Db::Sqlite(_) => (
            "INSERT INTO jetpack_history (task_id, at, event, from_kind, to_kind)
             VALUES (2, strftime('%Y-%m-%d %H:%M:%f', 'now', '-2 hours'), 'next', 'Greeter.ReadName', 'Greeter.SayHello'),
                    (1, strftime('%Y-%m-%d %H:%M:%f', 'now', '-30 minutes'), 'next', 'Greeter.ReadName', 'Greeter.SayHello')",
            "INSERT INTO jetpack_history (task_id, event, from_kind, to_kind)
             VALUES (3, 'next', 'Greeter.ReadName', 'Greeter.SayHello')",
        ),
    };
    db.exec(earlier, None, None).await;
    let app = Dashboard::new(database(&db)).router();
    let moved = |body: &str| -> Option<i64> {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        let moves = value.get("moves")?.as_array()?;
        let edge = moves
            .iter()
            .find(|m| m[0] == "Greeter.ReadName" && m[1] == "Greeter.SayHello");
        Some(edge.map_or(0, |m| m[2].as_i64().unwrap_or(0)))
    };
    let (_, _, first) = get(&app, "/api/activity").await;
    assert_eq!(
        moved(&first),
        Some(1),
        "the move of two hours ago is out: {first}"
    );

    db.exec("DELETE FROM jetpack_history WHERE task_id = 1", None, None)
        .await;
    db.exec(now, None, None).await;
    let seen = wait_for(Duration::from_secs(20), || async {
        let (_, _, body) = get(&app, "/api/activity").await;
        Ok((moved(&body) != Some(1)).then_some(body))
    })
    .await
    .expect("the new move is read");
    assert_eq!(
        moved(&seen),
        Some(2),
        "the minute of half an hour ago was kept: {seen}"
    );
}

#[tokio::test]
async fn postgres_the_last_hour_is_read_minute_by_minute() {
    the_last_hour_is_read_minute_by_minute(TestDb::postgres().await).await
}

#[tokio::test]
async fn sqlite_the_last_hour_is_read_minute_by_minute() {
    the_last_hour_is_read_minute_by_minute(TestDb::sqlite().await).await
}

/// A list that has not found its page in time stops and says why: here the
/// table is locked by another transaction, so the list cannot finish.
#[tokio::test]
async fn a_list_that_takes_too_long_says_so() {
    let db = TestDb::postgres().await;
    let Db::Postgres(pool) = &*db else {
        unreachable!("a PostgreSQL database")
    };
    let mut lock = pool.begin().await.expect("a transaction");
    jetpack::sqlx::query("LOCK TABLE jetpack_tasks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("the lock");
    let app = Dashboard::new(database(&db))
        .list_wait(Duration::from_millis(100))
        .router();
    let (status, _, page) = get(&app, "/tasks?error=nowhere").await;
    lock.rollback().await.expect("let go");
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("took too long") && page.contains("parked state"),
        "{page}"
    );
}
