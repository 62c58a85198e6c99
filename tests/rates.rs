//! Global rate limits: `Step::RATE`, per step type and per key, across
//! workers; a step that reports being rate limited goes back without
//! spending an attempt and slows its scope; against a server that answers
//! 429 above its rate, the steps converge under it.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{conformance, finished, Db, TestDb};
use jetpack::{chrono, Context, NextStep, Rate, Step, StepError, StepResult};
use jetpack_suite::most_in_window;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records when it started. At most [`TICKS`] a second, per `key` when given.
#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    key: Option<String>,
}

/// Calls the test's HTTP server on `port`; a 429 is a rate limit.
#[derive(Debug, Serialize, Deserialize)]
struct Call {
    port: u16,
}

/// Rate limited on its first `times` runs, then done; under a rate.
#[derive(Debug, Serialize, Deserialize)]
struct Flaky {
    times: usize,
}

/// As [`Flaky`], with no rate.
#[derive(Debug, Serialize, Deserialize)]
struct Unrated {
    times: usize,
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Paced {
    #[initial]
    Tick(Tick),
    #[initial]
    Call(Call),
    #[initial]
    Flaky(Flaky),
    #[initial]
    Unrated(Unrated),
}

jetpack::scheduler!(Tasks { Paced });

/// [`Tick`]'s rate: 20 a second, 2 at once.
const TICKS: Rate = Rate::per_second(20).burst(2);

#[jetpack::async_trait]
impl Step<Paced> for Tick {
    const RATE: Option<Rate> = Some(TICKS);
    fn limit_key(&self) -> Option<String> {
        self.key.clone()
    }
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let now = chrono::Utc::now().timestamp_micros();
        let scope = self.key.unwrap_or_default();
        Db::of(cx)
            .record_span(cx.task_id(), &scope, now, now)
            .await?;
        NextStep::none()
    }
}

/// What the steps declare for the server that allows [`SERVER_RATE`]: twice
/// that.
const CALLS: Rate = Rate::per_second(40);

/// Requests the test server accepts in any second.
const SERVER_RATE: usize = 20;

#[jetpack::async_trait]
impl Step<Paced> for Call {
    const RATE: Option<Rate> = Some(CALLS);
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let (status, retry_after) = get(self.port).await?;
        if status == 429 {
            return Err(StepError::rate_limited(retry_after));
        }
        if status != 200 {
            return Err(format!("the server answered {status}").into());
        }
        Db::of(cx).record_run(cx, "Call").await?;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Paced> for Flaky {
    const RATE: Option<Rate> = Some(Rate::per_second(100));
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        rate_limited_at_first(cx, "Flaky", self.times).await?;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Paced> for Unrated {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        rate_limited_at_first(cx, "Unrated", self.times).await?;
        NextStep::none()
    }
}

/// Records the run; rate limited (for 100 ms) while this task ran no more
/// than `times` times.
async fn rate_limited_at_first(
    cx: &Context<'_>,
    step: &str,
    times: usize,
) -> Result<(), StepError> {
    let db = Db::of(cx);
    db.record_run(cx, step).await?;
    if db.runs(cx.task_id()).await.len() <= times {
        return Err(StepError::rate_limited(Some(Duration::from_millis(100))));
    }
    Ok(())
}

/// `GET /` from the test server on `port`: the status, and `Retry-After`.
async fn get(port: u16) -> Result<(u16, Option<Duration>), std::io::Error> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let bad = || std::io::Error::other(format!("not an HTTP answer: {answer:?}"));
    let status = (answer.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let retry_after = (answer.lines())
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs);
    Ok((status, retry_after))
}

/// What the test server answered.
#[derive(Default)]
struct Served {
    /// When each accepted request came, within the last second.
    window: VecDeque<Instant>,
    accepted: u64,
    refused: u64,
}

/// An HTTP server that accepts [`SERVER_RATE`] requests in any second and
/// answers the others `429 Too Many Requests`, without a `Retry-After` (as
/// many APIs do); its port and its counts.
async fn rate_limited_server() -> (u16, Arc<Mutex<Served>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the test server");
    let port = listener.local_addr().expect("its address").port();
    let served = Arc::new(Mutex::new(Served::default()));
    let counts = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let accepted = {
                    let mut s = served.lock().expect("counts");
                    let now = Instant::now();
                    while s
                        .window
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                    {
                        s.window.pop_front();
                    }
                    let accepted = s.window.len() < SERVER_RATE;
                    if accepted {
                        s.window.push_back(now);
                        s.accepted += 1;
                    } else {
                        s.refused += 1;
                    }
                    accepted
                };
                let answer: &[u8] = if accepted {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = stream.write_all(answer).await;
            });
        }
    });
    (port, counts)
}

/// The start times of the ticks of `key`.
async fn starts(db: &Db, key: &str) -> Vec<i64> {
    (db.spans().await.into_iter())
        .filter(|s| s.1 == key)
        .map(|s| s.2)
        .collect()
}

/// The most starts a token bucket allows within a second: its burst and a
/// second's refill, and one more for the time between a claim and the
/// step's start, which differs from task to task.
fn most_per_second(rate: Rate) -> usize {
    let burst = rate.burst_size() as usize;
    burst + rate.steps_per_second() as usize + 1
}

conformance!(
    no_more_than_the_rate_start_across_workers,
    a_rate_per_key_counts_each_key_apart,
    a_rate_limited_step_goes_back_without_spending_an_attempt,
    steps_converge_under_a_server_that_answers_429,
    buckets_written_by_hand_are_checked,
    passed_throttle_windows_and_idle_buckets_are_deleted,
);

async fn no_more_than_the_rate_start_across_workers(db: TestDb) {
    db.create_app_tables().await;
    let ids = db.enqueue_many((0..50).map(|_| Tick { key: None })).await;
    let began = Instant::now();
    common::run_to_the_end::<Tasks>(&db, &ids).await;
    let took = began.elapsed();
    let starts = starts(&db, "").await;
    assert_eq!(starts.len(), 50);
    let most = most_in_window(&starts, 1_000_000);
    println!(
        "{}: 50 ticks limited to {TICKS:?} took {took:?}; at most {most} in a second",
        db.backend()
    );
    assert!(
        most <= most_per_second(TICKS),
        "{most} ticks started within a second under {TICKS:?}"
    );
}

async fn a_rate_per_key_counts_each_key_apart(db: TestDb) {
    db.create_app_tables().await;
    let keys = ["a", "b", "c"];
    let ids = db
        .enqueue_many((0..60).map(|i| Tick {
            key: Some(keys[i % 3].to_string()),
        }))
        .await;
    common::run_to_the_end::<Tasks>(&db, &ids).await;
    let mut all = Vec::new();
    for key in keys {
        let starts = starts(&db, key).await;
        assert_eq!(starts.len(), 20, "ticks of key {key}");
        let most = most_in_window(&starts, 1_000_000);
        assert!(
            most <= most_per_second(TICKS),
            "{most} ticks of key {key} started within a second under {TICKS:?}"
        );
        all.extend(starts);
    }
    // One bucket for all three keys would allow no more than this.
    let most = most_in_window(&all, 1_000_000);
    println!(
        "{}: three keys, at most {most} ticks in a second",
        db.backend()
    );
    assert!(
        most > most_per_second(TICKS),
        "the keys shared one rate: at most {most} ticks in a second"
    );
    let buckets = db
        .scalar(
            "SELECT count(*) FROM jetpack_rates WHERE scope LIKE 'Paced.Tick/%'",
            None,
        )
        .await;
    assert_eq!(buckets, 3);
}

async fn a_rate_limited_step_goes_back_without_spending_an_attempt(db: TestDb) {
    db.create_app_tables().await;
    // Neither step has retries: an attempt spent would park the task.
    let flaky = db.enqueue(Flaky { times: 3 }).await;
    let unrated = db.enqueue(Unrated { times: 3 }).await;
    common::run_to_the_end::<Tasks>(&db, &[flaky, unrated]).await;
    for (id, step) in [(flaky, "Flaky"), (unrated, "Unrated")] {
        let runs = db.runs(id).await;
        assert_eq!(runs.len(), 4, "{step} ran {runs:?}");
        assert!(
            runs.iter().all(|(_, attempt)| *attempt == 1),
            "{step}'s rate limits spent attempts: {runs:?}"
        );
        // A hundred milliseconds apart at least: each went back for the
        // wait its step asked for.
        assert!(
            db.run_span_us(id).await >= 300_000,
            "{step} came back early"
        );
    }
    // The rated step's scope was slowed: its rate halved at least once from
    // 100 a second (it climbs back by 10 a second per second).
    let rate = db
        .scalar(
            "SELECT CAST(rate AS BIGINT) FROM jetpack_rates WHERE scope = 'Paced.Flaky'",
            None,
        )
        .await;
    assert!(
        rate < 100,
        "the rate of Paced.Flaky is {rate} after three slow-downs"
    );
    let unrated_buckets = db
        .scalar(
            "SELECT count(*) FROM jetpack_rates WHERE scope LIKE 'Paced.Unrated%'",
            None,
        )
        .await;
    assert_eq!(unrated_buckets, 0, "a step without a rate has no bucket");
}

async fn steps_converge_under_a_server_that_answers_429(db: TestDb) {
    db.create_app_tables().await;
    let (port, served) = rate_limited_server().await;
    let n = 150;
    let ids = db.enqueue_many((0..n).map(|_| Call { port })).await;
    let began = Instant::now();
    common::run_to_the_end::<Tasks>(&db, &ids).await;
    let took = began.elapsed();
    let (accepted, refused) = {
        let s = served.lock().expect("counts");
        (s.accepted, s.refused)
    };
    println!(
        "{}: {n} calls declared at {CALLS:?} against a server taking {SERVER_RATE}/s: \
         {accepted} accepted, {refused} refused (429) in {took:?} ({:.1}/s)",
        db.backend(),
        accepted as f64 / took.as_secs_f64()
    );
    assert_eq!(accepted, n as u64);
    let parked = db
        .scalar(
            "SELECT count(*) FROM jetpack_tasks WHERE state = 'parked'",
            None,
        )
        .await;
    assert_eq!(parked, 0);
    let runs = db
        .scalar(
            "SELECT count(*) FROM runs WHERE step = 'Call' AND attempt = 1",
            None,
        )
        .await;
    assert_eq!(runs, n, "every call succeeded on its first attempt");
    // Declared at twice the server's rate, without slowing down (a short
    // pause after each 429: the server gives no Retry-After), about one call
    // in two would be refused; halving the rate on a 429 and climbing back
    // slowly keeps the refusals far fewer.
    assert!(
        refused * 3 < accepted,
        "{refused} calls refused for {accepted} accepted: the rate did not adapt"
    );
}

async fn buckets_written_by_hand_are_checked(db: TestDb) {
    for bad in [
        "INSERT INTO jetpack_rates (scope, tokens, rate, refilled_at) \
         VALUES ('Paced.Tick', -1, 1, '2026-01-01 00:00:00')",
        "INSERT INTO jetpack_rates (scope, tokens, rate, refilled_at) \
         VALUES ('Paced.Tick', 1, 0, '2026-01-01 00:00:00')",
        "INSERT INTO jetpack_rates (scope, tokens, rate, refilled_at) \
         VALUES ('Paced.Tick', 1, 1, 'soon')",
    ] {
        let refused = db.try_exec(bad, None, None).await;
        assert!(refused.is_err(), "accepted: {bad}");
    }
    // A scope paused far ahead by hand waits; deleting its row lets it go on.
    db.create_app_tables().await;
    db.exec(
        "INSERT INTO jetpack_rates (scope, tokens, rate, refilled_at) \
         VALUES ('Paced.Tick/held', 5, 1, '9999-01-01 00:00:00')",
        None,
        None,
    )
    .await;
    let held = db
        .enqueue(Tick {
            key: Some("held".into()),
        })
        .await;
    let free = db
        .enqueue(Tick {
            key: Some("free".into()),
        })
        .await;
    let workers = common::two_workers::<Tasks>(&db);
    finished(&db, free).await;
    assert!(db.find(held).await.is_some(), "the paused scope's task ran");
    db.exec(
        "DELETE FROM jetpack_rates WHERE scope = 'Paced.Tick/held'",
        None,
        None,
    )
    .await;
    finished(&db, held).await;
    for w in workers {
        w.shutdown().await;
    }
}

async fn passed_throttle_windows_and_idle_buckets_are_deleted(db: TestDb) {
    for sql in [
        "INSERT INTO jetpack_throttles (key, until) VALUES ('passed', '2020-01-01 00:00:00')",
        "INSERT INTO jetpack_throttles (key, until) VALUES ('open', '9999-01-01 00:00:00')",
        "INSERT INTO jetpack_rates (scope, tokens, rate, refilled_at) \
         VALUES ('Paced.Tick/idle', 1, 1, '2020-01-01 00:00:00')",
        "INSERT INTO jetpack_rates (scope, tokens, rate, refilled_at) \
         VALUES ('Paced.Tick/busy', 1, 1, '9000-01-01 00:00:00')",
    ] {
        db.exec(sql, None, None).await;
    }
    let worker = common::spawn(db.worker::<Tasks>().build().expect("worker"));
    common::wait_for(common::DEADLINE, || async {
        let left = db
            .scalar(
                "SELECT (SELECT count(*) FROM jetpack_throttles WHERE key = 'passed') \
                      + (SELECT count(*) FROM jetpack_rates WHERE scope = 'Paced.Tick/idle')",
                None,
            )
            .await;
        Ok((left == 0).then_some(()))
    })
    .await
    .expect("the passed window and the idle bucket are deleted");
    worker.shutdown().await;
    let kept = db
        .scalar(
            "SELECT (SELECT count(*) FROM jetpack_throttles) + (SELECT count(*) FROM jetpack_rates)",
            None,
        )
        .await;
    assert_eq!(kept, 2, "the open window and the bucket in use are kept");
}
