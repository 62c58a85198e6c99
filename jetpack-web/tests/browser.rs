//! The dashboard in a real browser: Debian's headless Chromium, driven over
//! WebDriver by `chromedriver` (packages `chromium` and `chromium-driver`,
//! which `.ci/run` installs). It loads the overview, sees the counts change
//! without a reload while a worker drains tasks, opens a parked task, clicks
//! Resume, confirms, and sees the task finish.
//!
//! With `JETPACK_SCREENSHOTS=<folder>` it saves the pages it visits there
//! (the README's screenshots are made so).

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use jetpack::Machine;
use jetpack_suite::readme::{Greeter, ReadName, SayHello, Tasks};
use jetpack_suite::{wait_for, Db, TestDb};
use jetpack_web::{Dashboard, Database};

const DEADLINE: Duration = Duration::from_secs(30);

/// Debian's chromedriver, or a message that says how to install it.
fn chromedriver() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("chromedriver"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin/chromedriver")])
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "no chromedriver: the browser test needs Chromium and its driver; \
             install them with `apt-get install chromium chromium-driver` (as .ci/run does)"
        )
    })
}

/// A chromedriver on a free port, killed with the value.
struct Driver {
    _child: tokio::process::Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        wait_for(DEADLINE, || async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop))
        })
        .await
        .expect("chromedriver listening");
        Driver {
            _child: child,
            port,
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let mut options = serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,860", "--hide-scrollbars"]
        });
        if std::path::Path::new("/usr/bin/chromium").is_file() {
            options["binary"] = "/usr/bin/chromium".into();
        }
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session (is the chromium package installed?)")
    }
}

/// The text of the element `css` selects, once it says `want`.
async fn shows(browser: &Client, css: &str, want: &str) {
    let result = wait_for(DEADLINE, || async move {
        let text = match browser.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Ok((text.trim() == want).then_some(()))
    })
    .await;
    if let Err(e) = result {
        let now = match browser.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(e) => format!("no element: {e}"),
        };
        panic!("{css} should show {want:?} without a reload, shows {now:?}: {e}");
    }
}

async fn screenshot(browser: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("JETPACK_SCREENSHOTS") {
        let png = browser.screenshot().await.expect("a screenshot");
        let path = PathBuf::from(dir).join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

#[tokio::test]
async fn a_browser_sees_counts_drain_and_resumes_a_parked_task() {
    let db = TestDb::postgres().await;
    let pool = match &*db {
        Db::Postgres(p) => p.clone(),
        Db::Sqlite(_) => unreachable!("a PostgreSQL database"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let site = format!("http://{}", listener.local_addr().expect("its address"));
    let dashboard = Dashboard::new(Database::from(pool.clone()))
        .typed::<Tasks>()
        .actions(true);
    tokio::spawn(async move { jetpack_web::axum::serve(listener, dashboard.router()).await });

    // Work for a worker: 40 greetings, and a name in a file that is not there yet.
    let dir = std::env::temp_dir().join(format!("jetpack_browser_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder");
    let file = dir.join("name.txt");
    let _ = std::fs::remove_file(&file);
    db.enqueue_many((0..40).map(|i| SayHello {
        name: format!("guest {i}"),
    }))
    .await;
    let stuck = db
        .enqueue(ReadName {
            filename: file.display().to_string(),
        })
        .await;
    let graph = Greeter::graph().to_json().to_string();
    db.exec(
        "INSERT INTO jetpack_machines (name, graph) VALUES ('Greeter', $1::jsonb)",
        None,
        Some(&graph),
    )
    .await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&format!("{site}/"))
        .await
        .expect("the overview");
    shows(&browser, "td[data-total='Greeter|ready']", "41").await;
    screenshot(&browser, "overview-before").await;

    // A worker drains them: the page follows without a reload.
    let worker = db.worker::<Tasks>().build().expect("a worker");
    let stop = worker.shutdown_token();
    let running = tokio::spawn(worker.run());
    shows(&browser, "td[data-total='Greeter|ready']", "0").await;
    shows(&browser, "td[data-total='Greeter|parked']", "1").await;
    shows(&browser, "#done-hour", "40").await;
    screenshot(&browser, "overview").await;

    browser
        .goto(&format!("{site}/machines/Greeter"))
        .await
        .expect("the machine");
    shows(&browser, "tspan[data-count='Greeter.ReadName|parked']", "1").await;
    shows(
        &browser,
        "tspan[data-move='Greeter.ReadName|Greeter.SayHello']",
        "0",
    )
    .await;
    screenshot(&browser, "machine").await;

    // The parked list, then the task.
    browser
        .goto(&format!("{site}/tasks?state=parked"))
        .await
        .expect("the parked list");
    screenshot(&browser, "parked").await;
    browser
        .find(Locator::Css(&format!("a[href='/tasks/{stuck}']")))
        .await
        .expect("the parked task's link")
        .click()
        .await
        .expect("open it");
    shows(&browser, "#task-state", "parked").await;
    screenshot(&browser, "task").await;

    // Fix the world, resume from the page, and the task finishes.
    std::fs::write(&file, "Browser").expect("the name");
    browser
        .find(Locator::Css("#resume summary"))
        .await
        .expect("Resume…")
        .click()
        .await
        .expect("open");
    browser
        .find(Locator::Css("#resume button"))
        .await
        .expect("the confirmation")
        .click()
        .await
        .expect("confirm");
    shows(
        &browser,
        ".notice",
        "Resumed: the task runs again with a full retry budget.",
    )
    .await;
    shows(&browser, "#task-state", "ended").await;
    let events: Vec<String> = db
        .history(stuck)
        .await
        .into_iter()
        .map(|t| t.event)
        .collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("finished"),
        "{events:?}"
    );
    assert!(events.contains(&"resumed".to_string()), "{events:?}");
    browser
        .goto(&format!("{site}/machines/Greeter"))
        .await
        .expect("the machine");
    shows(
        &browser,
        "tspan[data-move='Greeter.ReadName|Greeter.SayHello']",
        "1",
    )
    .await;

    browser.close().await.expect("close the browser");
    stop.cancel();
    running.await.expect("the worker").expect("its run");
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);
}
