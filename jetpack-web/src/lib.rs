//! Jetpack's dashboard: an [axum](https://docs.rs/axum) router to mount in a
//! server of your own, or to serve with `jetpack serve`.
//!
//! - **Overview**: every machine with its tasks per state, and the steps
//!   moved, finished and failed per minute over the last hour.
//! - **Machines** as diagrams: each step with its live counts, each edge with
//!   the tasks that moved along it in the last hour.
//! - **Tasks**: lists by state, step and error (parked ones first of all), a
//!   task's step JSON, history, parent and children; search by id or key.
//! - **Actions** (off unless turned on): resume, cancel, redrive, and editing a
//!   task's step JSON, checked by decoding it with the program's types
//!   ([`Dashboard::typed`]). Each asks for confirmation; forms carry a token
//!   and cross-site requests are refused.
//!
//! Counts refresh every two seconds without reloading. Every asset is in the
//! binary: no Node toolchain, no network at run time.
//!
//! ```no_run
//! # use jetpack_suite::readme::Tasks;
//! # async fn run(pool: jetpack::sqlx::PgPool) -> std::io::Result<()> {
//! let dashboard = jetpack_web::Dashboard::new(pool)
//!     .typed::<Tasks>()
//!     .actions(true)
//!     .authorize(|request, _access| request.headers.contains_key("x-operator"));
//! dashboard.serve("127.0.0.1:3000".parse().unwrap()).await
//! # }
//! ```
//!
//! To mount it under a path of your server, say so ([`Dashboard::base`]) and
//! nest its router there:
//!
//! ```no_run
//! # async fn run(pool: jetpack::sqlx::PgPool) {
//! let app = axum::Router::new()
//!     .nest("/jetpack", jetpack_web::Dashboard::new(pool).base("/jetpack").router());
//! # }
//! ```

#![deny(missing_docs)]

/// The axum this dashboard is built with, to serve or nest its router.
pub use axum;

mod diagram;
mod guard;
mod pages;
mod routes;

use guard::*;
use routes::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, request::Parts, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jetpack::admin::{self, Filter};
use jetpack::sqlx::{PgPool, SqlitePool};
use jetpack::{BoxFuture, Scheduler, TaskRow, TaskState};
use serde::Deserialize;
use serde_json::{json, Value};

/// The database a dashboard reads, either backend.
#[derive(Clone, Debug)]
pub enum Database {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

impl From<PgPool> for Database {
    fn from(pool: PgPool) -> Self {
        Database::Postgres(pool)
    }
}

impl From<SqlitePool> for Database {
    fn from(pool: SqlitePool) -> Self {
        Database::Sqlite(pool)
    }
}

/// Runs `$e` with `$p` the pool of either backend.
macro_rules! on {
    ($db:expr, $p:ident => $e:expr) => {
        match $db {
            Database::Postgres($p) => $e,
            Database::Sqlite($p) => $e,
        }
    };
}
pub(crate) use on;

/// What a request asks to do, for [`Dashboard::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Look: a page or its live data.
    Read,
    /// Change tasks: resume, cancel, redrive, edit.
    Act,
}

type Authorize = Arc<dyn Fn(&Parts, Access) -> bool + Send + Sync>;

/// What the program's types add: decoding an edited step, checking a
/// redrive's fields. Without them edits are refused and a redrive is checked
/// against the recorded graphs only.
trait Types: Send + Sync {
    /// Whether there are types to decode with.
    fn typed(&self) -> bool;
    /// Replaces task `id`'s step by `step`, decoded first when there are types.
    fn edit<'a>(
        &'a self,
        db: &'a Database,
        id: i64,
        step: &'a str,
    ) -> BoxFuture<'a, Result<(), jetpack::Error>>;
    /// Moves tasks from step `from` to step `to`, checked as well as the types allow.
    fn redrive<'a>(
        &'a self,
        db: &'a Database,
        from: &'a str,
        to: &'a str,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<u64, jetpack::Error>>;
}

struct Untyped;

impl Types for Untyped {
    fn typed(&self) -> bool {
        false
    }

    fn edit<'a>(
        &'a self,
        _: &'a Database,
        _: i64,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), jetpack::Error>> {
        Box::pin(async {
            Err(jetpack::Error::Admin(
                "editing a step needs the program's types, to decode it: serve the dashboard \
                 with `Dashboard::typed::<Tasks>()` (or `jetpack_cli::run::<Tasks>()`); nothing changed"
                    .into(),
            ))
        })
    }

    fn redrive<'a>(
        &'a self,
        db: &'a Database,
        from: &'a str,
        to: &'a str,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<u64, jetpack::Error>> {
        Box::pin(async move { on!(db, p => admin::redrive_recorded(p, from, to, filter).await) })
    }
}

struct Typed<T>(std::marker::PhantomData<fn() -> T>);

impl<T: Scheduler> Types for Typed<T> {
    fn typed(&self) -> bool {
        true
    }

    fn edit<'a>(
        &'a self,
        db: &'a Database,
        id: i64,
        step: &'a str,
    ) -> BoxFuture<'a, Result<(), jetpack::Error>> {
        Box::pin(async move { on!(db, p => admin::edit::<T, _>(p, id, step).await) })
    }

    fn redrive<'a>(
        &'a self,
        db: &'a Database,
        from: &'a str,
        to: &'a str,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<u64, jetpack::Error>> {
        Box::pin(async move { on!(db, p => admin::redrive::<T, _>(p, from, to, filter).await) })
    }
}

/// A dashboard of one database: build it, then take its [`router`](Dashboard::router)
/// or [`serve`](Dashboard::serve) it.
pub struct Dashboard {
    db: Database,
    actions: bool,
    allowed_hosts: Vec<String>,
    list_wait: Duration,
    base: String,
    authorize: Option<Authorize>,
    types: Arc<dyn Types>,
}

impl Dashboard {
    /// A read-only dashboard of `db` (a `PgPool` or a `SqlitePool`), at the
    /// root of its server.
    pub fn new(db: impl Into<Database>) -> Self {
        Dashboard {
            db: db.into(),
            actions: false,
            allowed_hosts: Vec::new(),
            list_wait: Duration::from_millis(150),
            base: String::new(),
            authorize: None,
            types: Arc::new(Untyped),
        }
    }

    /// Checks edits and redrives with the program's scheduler `T`: an edited
    /// step must decode as `T`, a redriven task's fields as the step it goes
    /// to. Without it, editing a step is refused.
    pub fn typed<T: Scheduler>(mut self) -> Self {
        self.types = Arc::new(Typed::<T>(std::marker::PhantomData));
        self
    }

    /// Turns the actions on (off by default: the dashboard only reads).
    pub fn actions(mut self, on: bool) -> Self {
        self.actions = on;
        self
    }

    /// Host names a request may name (its `Host` header) besides `localhost`
    /// and IP addresses, which are always answered: the name a proxy or a DNS
    /// entry gives the dashboard, such as `jetpack.example.com` (the port
    /// does not matter, nor case). Requests for any other name get 403: a
    /// page of another site could otherwise point a name of its own at this
    /// machine (DNS rebinding), and read the dashboard and its form token as
    /// if it were the dashboard's own page. `"*"` answers every name, for a
    /// dashboard behind a proxy that checks the host itself. Each call adds
    /// to the names.
    pub fn allowed_hosts<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names = names.into_iter().map(|name| {
            let name: String = name.into();
            name.trim_end_matches('.').to_ascii_lowercase()
        });
        self.allowed_hosts.extend(names);
        self
    }

    /// How long a list of tasks may look for its page before it stops and
    /// says so (150 ms by default). Parked tasks are indexed; other filters
    /// read the table in id order until they have a page, which on a table of
    /// a million tasks can take a quarter of a second.
    pub fn list_wait(mut self, wait: Duration) -> Self {
        self.list_wait = wait;
        self
    }

    /// The path the router is nested at (`"/jetpack"`), for its links; none
    /// by default.
    pub fn base(mut self, path: &str) -> Self {
        self.base = path.trim_end_matches('/').to_string();
        self
    }

    /// Lets a request through only when `allow(request, access)` says so; the
    /// others get 403. Without it every request that reaches the router is
    /// allowed: bind to 127.0.0.1 (as `serve` and `jetpack serve` do by
    /// default), or put your own authentication in front.
    pub fn authorize(
        mut self,
        allow: impl Fn(&Parts, Access) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.authorize = Some(Arc::new(allow));
        self
    }

    /// The router: pages, their live data under `/api`, the actions and the
    /// assets.
    pub fn router(self) -> Router {
        let mut token = [0u8; 16];
        let token = match getrandom::fill(&mut token) {
            Ok(()) => token.iter().map(|b| format!("{b:02x}")).collect(),
            Err(e) => {
                // Without randomness no token can be trusted: no action passes.
                tracing::error!(error = %e, "no randomness for the dashboard's token: actions are refused");
                String::new()
            }
        };
        let inner = Arc::new(Inner {
            db: self.db,
            actions: self.actions,
            allowed_hosts: self.allowed_hosts,
            list_wait: self.list_wait,
            base: self.base,
            authorize: self.authorize,
            types: self.types,
            token,
            counts: Cached::default(),
            activity: Cached::default(),
        });
        Router::new()
            .route("/", get(overview))
            .route("/machines/{name}", get(machine))
            .route("/tasks", get(tasks))
            .route("/tasks/{id}", get(task))
            .route("/search", get(search))
            .route("/api/counts", get(api_counts))
            .route("/api/activity", get(api_activity))
            .route("/api/tasks/{id}", get(api_task))
            .route("/tasks/{id}/resume", post(resume))
            .route("/tasks/{id}/cancel", post(cancel))
            .route("/tasks/{id}/edit", post(edit))
            .route("/redrive", post(redrive))
            .route("/assets/dashboard.css", get(css))
            .route("/assets/dashboard.js", get(js))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(inner.clone(), guard))
            .with_state(inner)
    }

    /// Serves the router on `addr` until Ctrl-C.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "the Jetpack dashboard is listening");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    }
}

/// Per kind (`Machine.Step`), the tasks per state, and the states whose
/// counts are estimates ([`admin::estimated_counts`]: on a big table, all but
/// parked and waiting).
#[derive(Debug, Default)]
struct Counts {
    per_kind: BTreeMap<String, BTreeMap<String, i64>>,
    estimated: std::collections::BTreeSet<String>,
}

impl std::ops::Deref for Counts {
    type Target = BTreeMap<String, BTreeMap<String, i64>>;
    fn deref(&self) -> &Self::Target {
        &self.per_kind
    }
}

impl Counts {
    /// `≈` before an estimated state's numbers, nothing before exact ones.
    fn about(&self, state: &str) -> &'static str {
        if self.estimated.contains(state) {
            "≈"
        } else {
            ""
        }
    }
}

/// What the handlers share.
struct Inner {
    db: Database,
    actions: bool,
    /// Host names answered besides `localhost` and IP addresses.
    allowed_hosts: Vec<String>,
    list_wait: Duration,
    base: String,
    authorize: Option<Authorize>,
    types: Arc<dyn Types>,
    /// The forms' token: a cross-site page cannot read it.
    token: String,
    counts: Cached<Counts>,
    activity: Cached<Recent>,
}

/// The last hour's activity as last read, kept minute by minute: each read
/// asks the history only for the minutes since the last one, so that an hour
/// of a million transitions is read once, not every few seconds.
struct Recent {
    activity: Arc<jetpack::Activity>,
    read_at: jetpack::chrono::DateTime<jetpack::chrono::Utc>,
}

/// A value read in the background and kept: a page shows the last one read
/// at once, and a read starts when it is older than its freshness. Counting
/// a table of a million tasks is a scan of a few hundred milliseconds: no page
/// waits for one once a value is there, and however many viewers ask, one
/// read runs at a time. A read's freshness grows with its cost (five times
/// how long the last read took), so that a big table is not scanned nonstop.
struct Cached<T> {
    slot: std::sync::Mutex<Slot<T>>,
    read: tokio::sync::Notify,
}

struct Slot<T> {
    value: Option<(Instant, Arc<T>)>,
    /// How long the last read took.
    took: Duration,
    reading: bool,
    /// Why the last read failed, when it did.
    failed: Option<String>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            slot: std::sync::Mutex::new(Slot {
                value: None,
                took: Duration::ZERO,
                reading: false,
                failed: None,
            }),
            read: tokio::sync::Notify::new(),
        }
    }
}

impl<T> Cached<T> {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        // A panic while holding it cannot leave a slot half-written.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// The value kept in `cache`, reading it with `read` when it is older
    /// than `fresh` (or its read's cost): at once when there is one, else
    /// after at most `wait` (`None` when none was read by then).
    async fn kept<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        cache: fn(&Inner) -> &Cached<T>,
        read: fn(Arc<Inner>) -> BoxFuture<'static, Result<T, jetpack::Error>>,
        fresh: Duration,
        wait: Duration,
    ) -> Result<Option<Arc<T>>, Failure> {
        let kept = cache(self);
        let waiting = kept.read.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        let value = {
            let mut slot = kept.slot();
            let fresh = fresh.max(slot.took * 5);
            let value = slot.value.as_ref().map(|(_, v)| v.clone());
            let stale = slot
                .value
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= fresh);
            if stale && !slot.reading {
                slot.reading = true;
                let inner = self.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = read(inner.clone()).await;
                    let kept = cache(&inner);
                    let mut slot = kept.slot();
                    slot.reading = false;
                    slot.took = started.elapsed();
                    match result {
                        Ok(v) => {
                            slot.value = Some((Instant::now(), Arc::new(v)));
                            slot.failed = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the dashboard could not read the database");
                            slot.failed = Some(e.to_string());
                        }
                    }
                    drop(slot);
                    kept.read.notify_waiters();
                });
            }
            value
        };
        if value.is_some() {
            return Ok(value);
        }
        let _ = tokio::time::timeout(wait, waiting).await;
        let slot = kept.slot();
        match (&slot.value, &slot.failed) {
            (Some((_, v)), _) => Ok(Some(v.clone())),
            (None, Some(e)) => Err(Failure::Database(e.clone())),
            (None, None) => Ok(None),
        }
    }

    /// The tasks per step and state, or `None` while the first count runs
    /// longer than `wait`.
    async fn counts(self: &Arc<Self>, wait: Duration) -> Result<Option<Arc<Counts>>, Failure> {
        fn read(inner: Arc<Inner>) -> BoxFuture<'static, Result<Counts, jetpack::Error>> {
            Box::pin(async move {
                let rows = on!(&inner.db, p => admin::estimated_counts(p).await)?;
                let mut counts = Counts::default();
                for c in rows {
                    let state = state_name(c.state);
                    if c.estimated {
                        counts.estimated.insert(state.clone());
                    }
                    *counts
                        .per_kind
                        .entry(c.kind)
                        .or_default()
                        .entry(state)
                        .or_default() += c.count;
                }
                Ok(counts)
            })
        }
        self.kept(|i| &i.counts, read, Duration::from_millis(900), wait)
            .await
    }

    /// The last hour's activity, or `None` while the first read runs longer
    /// than `wait`.
    async fn activity(
        self: &Arc<Self>,
        wait: Duration,
    ) -> Result<Option<Arc<jetpack::Activity>>, Failure> {
        fn read(inner: Arc<Inner>) -> BoxFuture<'static, Result<Recent, jetpack::Error>> {
            Box::pin(async move {
                use jetpack::chrono::{DurationRound, TimeDelta, Utc};
                let now = Utc::now();
                let minute = |t: jetpack::chrono::DateTime<Utc>| {
                    t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
                };
                let window = now - TimeDelta::hours(1);
                let last = (inner.activity.slot().value.as_ref()).map(|(_, kept)| kept.clone());
                // The minutes since the one before the last read: a minute's
                // rows can still come in while a transaction begun in it
                // commits. The older ones are kept as they were read.
                let since = (last.as_ref())
                    .map(|last| minute(last.read_at) - TimeDelta::minutes(1))
                    .filter(|since| *since > window)
                    .unwrap_or(window);
                let fresh = on!(&inner.db, p => jetpack::activity(p, since).await)?;
                let mut minutes: Vec<jetpack::Minute> = (last.iter())
                    .flat_map(|last| &last.activity.minutes)
                    .filter(|m| m.at >= minute(window) && m.at < since)
                    .cloned()
                    .collect();
                minutes.extend(fresh.minutes);
                Ok(Recent {
                    activity: Arc::new(jetpack::Activity::from_minutes(minutes)),
                    read_at: now,
                })
            })
        }
        let recent = self
            .kept(|i| &i.activity, read, Duration::from_secs(4), wait)
            .await?;
        Ok(recent.map(|r| r.activity.clone()))
    }

    fn check_token(&self, token: &str) -> Result<(), Failure> {
        if self.token.is_empty() || token != self.token {
            return Err(Failure::Forbidden(
                "the form's token is missing or stale: reload the page and try again; nothing changed".into(),
            ));
        }
        Ok(())
    }

    fn page(&self) -> pages::Page<'_> {
        pages::Page {
            base: &self.base,
            token: &self.token,
            actions: self.actions,
            typed: self.types.typed(),
        }
    }
}

/// A state's name as pages and the API write it.
fn state_name(state: TaskState) -> String {
    format!("{state:?}").to_lowercase()
}

/// Why a request did not get its page, as a page with a status.
#[derive(Debug)]
enum Failure {
    NotFound(String),
    Bad(String),
    Forbidden(String),
    Conflict(String),
    Database(String),
}

impl From<jetpack::Error> for Failure {
    fn from(e: jetpack::Error) -> Self {
        match e {
            // The admin API's errors say what to do and that nothing changed.
            jetpack::Error::Admin(text) => Failure::Conflict(text),
            other => Failure::Database(other.to_string()),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Failure::NotFound(t) => (StatusCode::NOT_FOUND, t),
            Failure::Bad(t) => (StatusCode::BAD_REQUEST, t),
            Failure::Forbidden(t) => (StatusCode::FORBIDDEN, t),
            Failure::Conflict(t) => (StatusCode::CONFLICT, t),
            Failure::Database(t) => {
                tracing::warn!(error = %t, "a dashboard page could not read the database");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the database did not answer: {t}"),
                )
            }
        };
        (status, html(pages::failure(status, &text))).into_response()
    }
}
