//! Metrics: the workers' counters, histogram and gauge, read by scraping the
//! Prometheus endpoint (`serve_prometheus`) over HTTP. One test: the recorder
//! is the process's.

mod common;

use common::{finished, TestDb, DEADLINE};
use jetpack::{Context, NextStep, Step, StepError, StepResult};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Succeeds, or parks when `fail`.
#[derive(Debug, Serialize, Deserialize)]
struct Work {
    fail: bool,
}

jetpack::task!(Metered { Work });
jetpack::scheduler!(Tasks { Metered });

#[jetpack::async_trait]
impl Step<Metered> for Work {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        if self.fail {
            return Err(StepError::permanent("broken"));
        }
        NextStep::none()
    }
}

/// The metrics page on `port`.
async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("a request");
    let mut page = String::new();
    stream.read_to_string(&mut page).await.expect("an answer");
    page
}

/// The value of the sample `line` starts with, if there is one.
fn sample(page: &str, line: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn workers_metrics_are_scraped_from_the_prometheus_endpoint() {
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        free.local_addr().expect("its address").port()
    };
    jetpack::serve_prometheus(([127, 0, 0, 1], port).into()).expect("the endpoint");
    for db in [TestDb::postgres().await, TestDb::sqlite().await] {
        let ids = db
            .enqueue_many([false, false, true].map(|fail| Work { fail }))
            .await;
        // One had been due for ten minutes when a worker came: its queue lag.
        let due = match &*db {
            common::Db::Postgres(_) => {
                "UPDATE jetpack_tasks SET wakeup_at = now() - interval '600 seconds' WHERE id = $1"
            }
            common::Db::Sqlite(_) => {
                "UPDATE jetpack_tasks SET wakeup_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-600 seconds') WHERE id = $1"
            }
        };
        db.exec(due, Some(ids[0]), None).await;
        let worker = common::spawn(db.worker::<Tasks>().build().expect("worker"));
        finished(&db, ids[0]).await;
        finished(&db, ids[1]).await;
        common::parked(&db, ids[2]).await;
        worker.shutdown().await;
    }
    let labels = r#"{machine="Metered",step="Work"}"#;
    let page = common::wait_for(DEADLINE, || async {
        let page = scrape(port).await;
        let parked = sample(&page, &format!("jetpack_steps_parked_total{labels}"));
        Ok((parked == Some(2.0)).then_some(page))
    })
    .await
    .expect("the metrics of both backends' runs");
    for (metric, want) in [
        ("jetpack_steps_started_total", 6.0),
        ("jetpack_steps_succeeded_total", 4.0),
        ("jetpack_steps_failed_total", 2.0),
        ("jetpack_steps_in_flight", 0.0),
        ("jetpack_step_duration_seconds_count", 6.0),
    ] {
        assert_eq!(
            sample(&page, &format!("{metric}{labels}")),
            Some(want),
            "{metric} in:\n{page}"
        );
    }
    let lag = |part: &str| sample(&page, &format!("jetpack_queue_lag_seconds_{part}{labels}"));
    assert_eq!(lag("count"), Some(6.0), "{page}");
    // Two waited ten minutes, the others a few milliseconds.
    let sum = lag("sum").unwrap_or(0.0);
    assert!(
        (1200.0..1260.0).contains(&sum),
        "queue lag {sum} s in:\n{page}"
    );
}
