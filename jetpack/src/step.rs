//! Steps, their outcomes and the context they run in.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

use crate::machine::{Awaits, BoxFuture, Follows, Joins, Machine, MemberOf, StepOf};
use crate::Error;

mod children;
pub use crate::model::{Rate, Wakeup};
pub use children::{Child, ChildError, OnPark, Spawn, SpawnAll};

/// One state of a task, and the code that moves it on.
///
/// `M` is the machine the step belongs to; the value returned names the next
/// step, which must be one the machine declares with `#[next(..)]` for this step.
///
/// ```
/// # use jetpack::{Context, NextStep, Step, StepResult};
/// # use serde::{Deserialize, Serialize};
/// # use std::time::Duration;
/// #[derive(Debug, Serialize, Deserialize)]
/// struct ReadName { filename: String }
/// #[derive(Debug, Serialize, Deserialize)]
/// struct SayHello { name: String }
///
/// #[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
/// enum Greeter {
///     #[next(SayHello)]
///     ReadName(ReadName),
///     SayHello(SayHello),
/// }
///
/// #[jetpack::async_trait]
/// impl Step<Greeter> for ReadName {
///     const RETRY_LIMIT: i32 = 5;
///     const RETRY_DELAY: Duration = Duration::from_millis(200);
///     async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
///         let name = std::fs::read_to_string(&self.filename)?;
///         NextStep::now(SayHello { name })
///     }
/// }
///
/// #[jetpack::async_trait]
/// impl Step<Greeter> for SayHello {
///     async fn step(self, _cx: &Context<'_>) -> StepResult<Self> {
///         tracing::info!("Hello, {}", self.name);
///         NextStep::none()
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a step of machine `{M}` but does not implement `Step<{M}>`",
    label = "missing `impl Step<{M}> for {Self}`",
    note = "write `#[jetpack::async_trait] impl Step<{M}> for {Self} {{ async fn step(self, cx: &Context<'_>) -> StepResult<Self> {{ .. }} }}`"
)]
#[async_trait::async_trait]
pub trait Step<M: Machine>: MemberOf<M> + StepOf + Sized + Send + Sync + 'static {
    /// How many times a failed attempt is retried before the task is parked with
    /// its error (so `RETRY_LIMIT + 1` attempts in all). A crashed worker's attempt
    /// counts too.
    const RETRY_LIMIT: i32 = 0;
    /// The delay before the first retry.
    const RETRY_DELAY: Duration = Duration::from_secs(1);
    /// Each further retry waits this many times longer than the previous one
    /// (exponential backoff); `1.0` keeps the delay constant. A random ±20%
    /// jitter spreads retries of many tasks apart.
    const RETRY_BACKOFF: f64 = 2.0;
    /// The longest delay between two retries.
    const RETRY_MAX_DELAY: Duration = Duration::from_secs(3600);
    /// How long one attempt may run before it is cancelled and counted as failed.
    /// `None`, the default, lets it run as long as it needs (its lease is kept
    /// alive by the worker's heartbeat).
    const TIMEOUT: Option<Duration> = None;
    /// The priority of a task enqueued (or spawned) at this step, unless the
    /// enqueue gives one ([`Enqueue::priority`](crate::Enqueue::priority)): 0
    /// (the default) to [`MAX_PRIORITY`](crate::MAX_PRIORITY), higher first.
    /// A task keeps its priority from step to step. A value above the maximum
    /// does not compile.
    const PRIORITY: u8 = 0;
    /// At most this many steps of this type run at once, across every worker
    /// of every process on the database (per key, when
    /// [`limit_key`](Step::limit_key) gives one). `None`, the default: no
    /// limit. `Some(0)` does not compile.
    const CONCURRENCY: Option<u32> = None;
    /// At most this many steps of this type start per period, across every
    /// worker of every process on the database (per key, when
    /// [`limit_key`](Step::limit_key) gives one), e.g.
    /// `Some(Rate::per_second(10))`; the rate adapts when steps report
    /// [`StepError::rate_limited`]. `None`, the default: no limit. A count,
    /// period or burst of zero does not compile.
    const RATE: Option<Rate> = None;

    /// The key the [`CONCURRENCY`](Step::CONCURRENCY) and
    /// [`RATE`](Step::RATE) limits count under, e.g. a tenant's id or an
    /// API's host: steps of different keys are limited apart. Computed when
    /// the step is stored (enqueued, spawned, or returned as the next step).
    /// `None`, the default: one limit for the step type.
    fn limit_key(&self) -> Option<String> {
        None
    }

    /// Runs the step and says what comes next.
    async fn step(self, cx: &Context<'_>) -> StepResult<Self>;
}

/// What a step returns: the next step and when it is due, or an error.
pub type StepResult<S> = Result<NextStep<S>, StepError>;

/// The outcome of a successful step: which step follows, and when.
///
/// The constructors only accept a step that the machine declares as a successor
/// of `S`; anything else is a compile error.
pub struct NextStep<S: StepOf> {
    next: Option<(S::Machine, Wakeup)>,
    wait: Option<Wait>,
    /// Whether the task waits for its children before `next`.
    join: bool,
    /// What the task returns, as JSON, when it finishes with one.
    output: Option<String>,
    _step: PhantomData<fn() -> S>,
}

/// A signal a task can wait for: a payload type with a name.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Delivered { carrier: String }
/// impl jetpack::Signal for Delivered {
///     const NAME: &'static str = "delivered";
/// }
/// ```
pub trait Signal: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The signal's name, as senders address it (`wait_for` in the row).
    const NAME: &'static str;
}

/// What a task waits for when a step returns [`NextStep::wait`]: a signal,
/// addressed to the task's id and, optionally, a key; with an optional timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    name: &'static str,
    key: Option<String>,
    timeout: Option<Duration>,
}

impl Wait {
    /// A wait for signal `S`, addressed to the task's id, without a timeout.
    pub fn signal<S: Signal>() -> Self {
        Wait {
            name: S::NAME,
            key: None,
            timeout: None,
        }
    }

    /// Also addressed by `key` (an order number, say): a signal sent to the
    /// key reaches every task waiting for it under that key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Gives up after `timeout`: the next step then runs without a signal
    /// ([`Context::signal`] returns `None`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The signal's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The key the wait is addressed by, besides the task's id.
    pub fn wait_key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// How long the task waits at most.
    pub fn wait_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

impl<S: StepOf> NextStep<S> {
    fn new(next: Option<(S::Machine, Wakeup)>) -> StepResult<S> {
        Ok(NextStep {
            next,
            wait: None,
            join: false,
            output: None,
            _step: PhantomData,
        })
    }

    /// Moves the task to `next` once every child this step spawned with
    /// [`Context::spawn`] has ended. Meanwhile the task is `waiting`: it
    /// holds no worker slot and no lease. `next`, the join step, reads each
    /// child's typed result with [`Context::result`] or [`Context::results`].
    /// With no children, `next` runs at once.
    ///
    /// ```
    /// # use jetpack::{Child, Context, NextStep, Step, StepResult};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Debug, Serialize, Deserialize)]
    /// struct Charge { cents: u64 }
    /// jetpack::task!(Payment -> String { Charge });
    /// #[jetpack::async_trait]
    /// impl Step<Payment> for Charge {
    ///     async fn step(self, _: &Context<'_>) -> StepResult<Self> {
    ///         NextStep::finish(format!("receipt for {} cents", self.cents))
    ///     }
    /// }
    ///
    /// #[derive(Debug, Serialize, Deserialize)]
    /// struct Order { cents: u64 }
    /// #[derive(Debug, Serialize, Deserialize)]
    /// struct Paid { payment: Child<Payment> }
    /// jetpack::task!(Shop { Order => [join Paid], Paid });
    ///
    /// #[jetpack::async_trait]
    /// impl Step<Shop> for Order {
    ///     async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
    ///         let payment = cx.spawn(Charge { cents: self.cents }).await?;
    ///         NextStep::join(Paid { payment })
    ///     }
    /// }
    ///
    /// #[jetpack::async_trait]
    /// impl Step<Shop> for Paid {
    ///     async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
    ///         let receipt: String = cx.result(&self.payment).await??;
    ///         tracing::info!(%receipt, "paid");
    ///         NextStep::none()
    ///     }
    /// }
    /// ```
    pub fn join<N>(next: N) -> StepResult<S>
    where
        N: Follows<S, S::Machine, S::Successors> + Joins<S, S::Machine>,
    {
        Ok(NextStep {
            next: Some((next.into(), Wakeup::Now)),
            wait: None,
            join: true,
            output: None,
            _step: PhantomData,
        })
    }

    /// Finishes the task with `output`, the result a parent's join step
    /// reads (and that a kept finished row shows in its `result` column).
    pub fn finish(output: <S::Machine as Machine>::Output) -> StepResult<S> {
        let output = serde_json::to_string(&output).map_err(|e| {
            StepError::permanent(format!("cannot serialize the task's output: {e}"))
        })?;
        Ok(NextStep {
            next: None,
            wait: None,
            join: false,
            output: (output != "null").then_some(output),
            _step: PhantomData,
        })
    }

    /// Whether the task waits for its children before the next step
    /// ([`NextStep::join`]).
    pub fn is_join(&self) -> bool {
        self.join
    }

    /// The output the task finishes with, as JSON ([`NextStep::finish`]).
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// Moves the task to `next` once signal `wait` arrives, or its timeout
    /// passes. Meanwhile the task is `waiting`: it holds no worker slot and
    /// no lease. `next` reads the payload with [`Context::signal`]. A signal
    /// sent before the wait began is kept and taken at once.
    ///
    /// ```
    /// # use jetpack::{Context, NextStep, Signal, Step, StepResult, Wait};
    /// # use serde::{Deserialize, Serialize};
    /// # use std::time::Duration;
    /// #[derive(Serialize, Deserialize)]
    /// struct Delivered { carrier: String }
    /// impl Signal for Delivered { const NAME: &'static str = "delivered"; }
    ///
    /// # #[derive(Debug, Serialize, Deserialize)] struct Ship { order: u64 }
    /// # #[derive(Debug, Serialize, Deserialize)] struct Arrived { order: u64 }
    /// # jetpack::task!(Order { Ship => [wait Arrived], Arrived });
    /// # #[jetpack::async_trait] impl Step<Order> for Arrived {
    /// #     async fn step(self, _: &Context<'_>) -> StepResult<Self> { NextStep::none() } }
    /// #[jetpack::async_trait]
    /// impl Step<Order> for Ship {
    ///     async fn step(self, _: &Context<'_>) -> StepResult<Self> {
    ///         let wait = Wait::signal::<Delivered>()
    ///             .key(format!("order-{}", self.order))
    ///             .timeout(Duration::from_secs(14 * 24 * 3600));
    ///         NextStep::wait(Arrived { order: self.order }, wait)
    ///     }
    /// }
    /// ```
    pub fn wait<N>(next: N, wait: Wait) -> StepResult<S>
    where
        N: Follows<S, S::Machine, S::Successors> + Awaits<S, S::Machine>,
    {
        Ok(NextStep {
            next: Some((next.into(), Wakeup::Now)),
            wait: Some(wait),
            join: false,
            output: None,
            _step: PhantomData,
        })
    }

    /// The wait the task enters, if the step returned [`NextStep::wait`].
    pub fn waits_for(&self) -> Option<&Wait> {
        self.wait.as_ref()
    }

    /// Moves the task to `next`, to run right away.
    pub fn now<N: Follows<S, S::Machine, S::Successors>>(next: N) -> StepResult<S> {
        Self::new(Some((next.into(), Wakeup::Now)))
    }

    /// Moves the task to `next`, to run after `delay`. The task is stored, not
    /// slept on: a crash or shutdown meanwhile loses nothing.
    pub fn delay<N: Follows<S, S::Machine, S::Successors>>(
        next: N,
        delay: Duration,
    ) -> StepResult<S> {
        Self::new(Some((next.into(), Wakeup::Delay(delay))))
    }

    /// Moves the task to `next`, to run at `at`.
    pub fn at<N: Follows<S, S::Machine, S::Successors>>(
        next: N,
        at: DateTime<Utc>,
    ) -> StepResult<S> {
        Self::new(Some((next.into(), Wakeup::At(at))))
    }

    /// Finishes the task.
    pub fn none() -> StepResult<S> {
        Self::new(None)
    }

    #[doc(hidden)]
    pub fn into_parts(self, cx: &Context<'_>) -> Option<(S::Machine, Wakeup)> {
        *lock(&cx.then) = Then {
            wait: self.wait,
            join: self.join,
            output: self.output,
        };
        self.next
    }

    /// The step the task moves to, `None` when it finishes: for tests of a
    /// step (see [`TestContext`]).
    pub fn next(&self) -> Option<&S::Machine> {
        self.next.as_ref().map(|(next, _)| next)
    }

    /// When the next step is due, `None` when the task finishes.
    pub fn wakeup(&self) -> Option<Wakeup> {
        self.next.as_ref().map(|&(_, wakeup)| wakeup)
    }

    /// Whether the task finishes here.
    pub fn is_finish(&self) -> bool {
        self.next.is_none()
    }
}

impl<S: StepOf> fmt::Debug for NextStep<S>
where
    S::Machine: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NextStep").field(&self.next).finish()
    }
}

/// Why a step failed. Any error converts into it with `?`; the text of the error
/// and its sources is what the task's row records.
///
/// By default a failure is retried up to the step's `RETRY_LIMIT`; a
/// [`permanent`](StepError::permanent) one parks the task at once.
pub struct StepError {
    error: Box<dyn std::error::Error + Send + Sync>,
    kind: ErrorKind,
}

/// What a [`StepError`] does to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Retry,
    Permanent,
    RateLimited(Option<Duration>),
}

impl StepError {
    /// A failure that retrying cannot fix: the task is parked with this error
    /// right away, whatever retries are left.
    pub fn permanent(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StepError {
            error: error.into(),
            kind: ErrorKind::Permanent,
        }
    }

    /// What the step called is over its rate ("429 Too Many Requests"): the
    /// task goes back, due after `retry_after` (what the answer's
    /// `Retry-After` said; `None`: when the slowed rate allows), without
    /// spending an attempt and without an error on its row. When the step
    /// has a [`RATE`](Step::RATE), its scope's rate halves and no step of
    /// the scope starts for that wait, across every worker (see
    /// [`Rate`]). A task can be rate limited any number of times.
    ///
    /// ```
    /// # use jetpack::StepError;
    /// # use std::time::Duration;
    /// # fn status() -> u16 { 429 }
    /// # fn f() -> Result<(), StepError> {
    /// if status() == 429 {
    ///     return Err(StepError::rate_limited(Some(Duration::from_secs(1))));
    /// }
    /// # Ok(()) }
    /// # assert!(f().unwrap_err().retry_after().is_some());
    /// ```
    pub fn rate_limited(retry_after: Option<Duration>) -> Self {
        let error = match retry_after {
            Some(after) => format!("rate limited; retry after {after:?}"),
            None => "rate limited".to_string(),
        };
        StepError {
            error: error.into(),
            kind: ErrorKind::RateLimited(retry_after),
        }
    }

    /// Whether this failure skips the remaining retries.
    pub fn is_permanent(&self) -> bool {
        self.kind == ErrorKind::Permanent
    }

    /// Whether this is a [`rate_limited`](StepError::rate_limited) error,
    /// and the wait it asks for: `Some(None)` when it names none.
    pub fn retry_after(&self) -> Option<Option<Duration>> {
        match self.kind {
            ErrorKind::RateLimited(after) => Some(after),
            _ => None,
        }
    }

    /// The error and its chain of sources, `outer: inner: root`.
    pub fn chain(&self) -> String {
        let mut text = self.error.to_string();
        let mut source = self.error.source();
        while let Some(e) = source {
            let s = e.to_string();
            if !text.ends_with(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
            source = e.source();
        }
        text
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for StepError {
    fn from(error: E) -> Self {
        StepError {
            error: error.into(),
            kind: ErrorKind::Retry,
        }
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepError")
            .field("error", &self.chain())
            .field("kind", &self.kind)
            .finish()
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain())
    }
}

/// The retry settings of one step, taken from its [`Step`] constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// [`Step::RETRY_LIMIT`]
    pub limit: i32,
    /// [`Step::RETRY_DELAY`]
    pub delay: Duration,
    /// [`Step::RETRY_BACKOFF`]
    pub backoff: f64,
    /// [`Step::RETRY_MAX_DELAY`]
    pub max_delay: Duration,
    /// [`Step::TIMEOUT`]
    pub timeout: Option<Duration>,
}

impl RetryPolicy {
    /// The policy of step `S` in machine `M`.
    pub fn of<S: Step<M>, M: Machine>() -> Self {
        RetryPolicy {
            limit: S::RETRY_LIMIT,
            delay: S::RETRY_DELAY,
            backoff: S::RETRY_BACKOFF,
            max_delay: S::RETRY_MAX_DELAY,
            timeout: S::TIMEOUT,
        }
    }

    /// The delay before the retry that follows failed attempt number `attempt`
    /// (1-based), without jitter.
    pub fn base_delay(&self, attempt: i32) -> Duration {
        let exp = attempt.saturating_sub(1).clamp(0, 64);
        let factor = self.backoff.max(1.0).powi(exp);
        let secs = (self.delay.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }

    /// [`base_delay`](Self::base_delay) with a random ±20% jitter, capped at `max_delay`.
    pub fn delay_after(&self, attempt: i32) -> Duration {
        let jitter = 0.8 + fastrand::f64() * 0.4;
        self.base_delay(attempt).mul_f64(jitter).min(self.max_delay)
    }
}

/// Typed shared state handed to every step (clients, configuration).
#[derive(Default, Clone)]
pub(crate) struct StateMap(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl StateMap {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref())
    }
}

/// Why a running step should stop, as [`Context::stopped`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The worker is shutting down: return soon (for example
    /// `NextStep::now(self)`, to carry on where this left off) or be released
    /// and rerun elsewhere once the shutdown timeout passes.
    Shutdown,
    /// The task was cancelled. Whatever the step returns now is discarded and
    /// its transaction rolled back; a step that does not return is stopped at
    /// the worker's next heartbeat.
    Cancelled,
    /// The worker lost the task's lease (it could not renew it in time, and
    /// another worker may run the step now). The step is stopped.
    LeaseLost,
}

impl StopReason {
    fn code(self) -> u8 {
        match self {
            StopReason::Shutdown => 1,
            StopReason::Cancelled => 2,
            StopReason::LeaseLost => 3,
        }
    }

    fn of(code: u8) -> Option<Self> {
        match code {
            1 => Some(StopReason::Shutdown),
            2 => Some(StopReason::Cancelled),
            3 => Some(StopReason::LeaseLost),
            _ => None,
        }
    }
}

/// The stop signal of one attempt: the first reason given wins.
#[derive(Default)]
pub(crate) struct Stop {
    reason: std::sync::atomic::AtomicU8,
    notify: tokio::sync::Notify,
}

impl Stop {
    /// Tells the step to stop for `reason`, unless it was told already.
    pub(crate) fn fire(&self, reason: StopReason) {
        use std::sync::atomic::Ordering;
        if self
            .reason
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        StopReason::of(self.reason.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// What the worker shares with every step it runs.
pub(crate) struct Shared {
    pub(crate) state: StateMap,
    /// The worker's pool, as `sqlx::Pool<DB>`.
    pub(crate) pool: Box<dyn Any + Send + Sync>,
    pub(crate) database: &'static str,
    pub(crate) shutdown: CancellationToken,
    /// A [`TestContext`] without a pool records the children a step spawns
    /// here (`kind`, step JSON, awaited) instead of inserting them.
    pub(crate) spawned: Option<std::sync::Mutex<Vec<Spawned>>>,
}

/// A child a step spawned under a [`TestContext`] without a pool: see
/// [`TestContext::spawned`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Spawned {
    /// The id the step was given for it.
    pub id: i64,
    /// Its `kind`, `"Machine.Step"`.
    pub kind: String,
    /// Its step as stored, `{"Machine":{"Step":{..}}}`.
    pub step: String,
    /// Whether the step's join waits for it (not `.detached()`).
    pub awaited: bool,
}

/// What a running step knows about its task and its worker.
///
/// A worker makes one for each attempt; a unit test of a step makes one with
/// [`TestContext`].
pub struct Context<'a> {
    task_id: i64,
    attempt: i32,
    shared: &'a Shared,
    stop: &'a Stop,
    /// The step's transaction once it asked for one: a `sqlx::Transaction<'static, DB>`.
    tx: Mutex<Option<Box<dyn Any + Send>>>,
    /// What the step returned besides its next step.
    then: std::sync::Mutex<Then>,
    /// Whether the step spawned children its join is to wait for.
    awaits_children: std::sync::atomic::AtomicBool,
    /// The signal the task waited for, `(name, payload)`: the payload is
    /// `None` when the wait timed out.
    signal: Option<(String, Option<String>)>,
}

/// What a step returned besides its next step: a wait, a join, an output.
#[derive(Debug, Default)]
pub(crate) struct Then {
    pub(crate) wait: Option<Wait>,
    pub(crate) join: bool,
    pub(crate) output: Option<String>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The step's transaction, from [`Context::tx`]: a `sqlx::Transaction`, so
/// `&mut **tx` is an executor.
pub struct Tx<'a, DB: sqlx::Database> {
    slot: MutexGuard<'a, Option<Box<dyn Any + Send>>>,
    _db: PhantomData<fn() -> DB>,
}

impl<DB: sqlx::Database> std::ops::Deref for Tx<'_, DB> {
    type Target = sqlx::Transaction<'static, DB>;

    fn deref(&self) -> &Self::Target {
        match self.slot.as_ref().and_then(|tx| tx.downcast_ref()) {
            Some(tx) => tx,
            None => unreachable!("Context::tx checked the transaction's type"),
        }
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for Tx<'_, DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self.slot.as_mut().and_then(|tx| tx.downcast_mut()) {
            Some(tx) => tx,
            None => unreachable!("Context::tx checked the transaction's type"),
        }
    }
}

impl<'a> Context<'a> {
    pub(crate) fn new(task_id: i64, attempt: i32, shared: &'a Shared, stop: &'a Stop) -> Self {
        Context {
            task_id,
            attempt,
            shared,
            stop,
            tx: Mutex::new(None),
            then: std::sync::Mutex::new(Then::default()),
            awaits_children: std::sync::atomic::AtomicBool::new(false),
            signal: None,
        }
    }

    /// The context of a step entered by a wait for signal `name` that
    /// received `payload` (or timed out).
    pub(crate) fn with_signal(mut self, name: Option<String>, payload: Option<String>) -> Self {
        self.signal = name.map(|name| (name, payload));
        self
    }

    /// What the step returned besides its next step, taken.
    pub(crate) fn take_then(&self) -> Then {
        std::mem::take(&mut *lock(&self.then))
    }

    /// The payload of signal `S`, in a step that [`NextStep::wait`] led to:
    /// `Ok(None)` when the wait timed out (or the step was not reached by a
    /// wait). A payload that does not decode as `S`, or a wait for another
    /// signal, is a permanent error: the task parks saying so.
    pub fn signal<S: Signal>(&self) -> Result<Option<S>, StepError> {
        match &self.signal {
            None | Some((_, None)) => Ok(None),
            Some((name, Some(payload))) => {
                if name != S::NAME {
                    return Err(StepError::permanent(format!(
                        "task {} received signal `{name}`, and its step reads signal `{}`",
                        self.task_id,
                        S::NAME
                    )));
                }
                serde_json::from_str(payload).map(Some).map_err(|e| {
                    StepError::permanent(format!(
                        "the payload of signal `{name}` received by task {} does not decode as {}: {e}",
                        self.task_id,
                        std::any::type_name::<S>()
                    ))
                })
            }
        }
    }

    /// The task's id (the `id` column).
    pub fn task_id(&self) -> i64 {
        self.task_id
    }

    /// Which attempt of this step this is: 1 for the first, 2 for the first retry.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// Shared state given to the worker with
    /// [`WorkerBuilder::state`](crate::WorkerBuilder::state).
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<&T, Error> {
        self.shared.state.get().ok_or(Error::MissingState {
            type_name: std::any::type_name::<T>(),
        })
    }

    /// The worker's connection pool: `let pool: &PgPool = cx.pool()?;`
    pub fn pool<DB: sqlx::Database>(&self) -> Result<&sqlx::Pool<DB>, Error> {
        self.shared.pool.downcast_ref().ok_or(Error::WrongDatabase {
            actual: self.shared.database,
            requested: DB::NAME,
        })
    }

    /// Cancelled when the worker is shutting down. A long step can watch it and
    /// return early (for example with `NextStep::now(self)` to resume later).
    /// [`stopped`](Self::stopped) covers this and every other reason to stop.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// Completes when the step should stop, saying why: the task was
    /// cancelled, the worker lost its lease, or the worker is shutting down.
    /// A long step races its work against it:
    ///
    /// ```no_run
    /// # use jetpack::{Context, StopReason, StepError};
    /// # async fn work() {}
    /// # async fn f(cx: &Context<'_>) -> Result<(), StepError> {
    /// tokio::select! {
    ///     () = work() => {}
    ///     reason = cx.stopped() => {
    ///         return Err(StepError::from(format!("stopped: {reason:?}")));
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn stopped(&self) -> StopReason {
        loop {
            let notified = self.stop.notify.notified();
            tokio::pin!(notified);
            // Registered before the reason is read: a stop in between wakes it.
            notified.as_mut().enable();
            if let Some(reason) = self.stop_reason() {
                return reason;
            }
            tokio::select! {
                () = notified => {}
                () = self.shared.shutdown.cancelled() => {}
            }
        }
    }

    /// Why the step should stop, if it should: see [`stopped`](Self::stopped).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop.reason().or_else(|| {
            self.shared
                .shutdown
                .is_cancelled()
                .then_some(StopReason::Shutdown)
        })
    }

    /// The step's own transaction, opened on first use. It commits together with
    /// the task's move to the next step, or not at all: if the step fails, or
    /// another worker took the task over meanwhile, its writes roll back.
    ///
    /// ```no_run
    /// # use jetpack::{Context, StepResult};
    /// # async fn f(cx: &Context<'_>) -> Result<(), jetpack::StepError> {
    /// let mut tx = cx.tx::<sqlx::Postgres>().await?;
    /// sqlx::query("INSERT INTO ledger (amount) VALUES (1)").execute(&mut **tx).await?;
    /// # Ok(()) }
    /// ```
    pub fn tx<DB: sqlx::Database>(&self) -> BoxFuture<'_, Result<Tx<'_, DB>, Error>> {
        // Boxed so the future is provably `Send` for every caller's lifetimes.
        Box::pin(async move {
            let mut slot = self.tx.lock().await;
            if slot.is_none() {
                let tx = self.pool::<DB>()?.begin().await?;
                *slot = Some(Box::new(tx));
            }
            match slot
                .as_ref()
                .map(|tx| tx.is::<sqlx::Transaction<'static, DB>>())
            {
                Some(true) => Ok(Tx {
                    slot,
                    _db: PhantomData,
                }),
                _ => Err(Error::WrongDatabase {
                    actual: self.shared.database,
                    requested: DB::NAME,
                }),
            }
        })
    }

    /// Takes the step's transaction, if it opened one.
    pub(crate) fn take_tx(&self) -> Option<Box<dyn Any + Send>> {
        self.tx.try_lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A [`Context`] for unit tests of steps: no worker, no database unless you
/// give it a pool.
///
/// ```
/// # use jetpack::{Context, NextStep, Step, StepResult, TestContext, Wakeup};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Serialize, Deserialize, PartialEq)]
/// struct Greet { name: String }
/// #[derive(Debug, Serialize, Deserialize, PartialEq)]
/// struct Done { greeting: String }
///
/// #[derive(Debug, Serialize, Deserialize, PartialEq, jetpack::Machine)]
/// enum Hello {
///     #[next(Done)]
///     Greet(Greet),
///     Done(Done),
/// }
///
/// #[jetpack::async_trait]
/// impl Step<Hello> for Greet {
///     async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
///         let prefix = cx.state::<&'static str>()?;
///         NextStep::now(Done { greeting: format!("{prefix}, {}", self.name) })
///     }
/// }
/// # #[jetpack::async_trait]
/// # impl Step<Hello> for Done {
/// #     async fn step(self, _: &Context<'_>) -> StepResult<Self> { NextStep::none() }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let test = TestContext::new().task_id(7).state("Hello");
/// let next = Greet { name: "Ada".into() }.step(&test.context()).await.unwrap();
/// assert_eq!(next.next(), Some(&Hello::Done(Done { greeting: "Hello, Ada".into() })));
/// assert_eq!(next.wakeup(), Some(Wakeup::Now));
/// # }
/// ```
pub struct TestContext {
    task_id: i64,
    attempt: i32,
    shared: Shared,
    stop: Stop,
    signal: Option<(String, Option<String>)>,
}

impl Default for TestContext {
    fn default() -> Self {
        TestContext::new()
    }
}

impl TestContext {
    /// Task 1, attempt 1, no state, no database.
    pub fn new() -> Self {
        TestContext {
            task_id: 1,
            attempt: 1,
            shared: Shared {
                state: StateMap::default(),
                pool: Box::new(()),
                database: "no database (a TestContext without a pool)",
                shutdown: CancellationToken::new(),
                spawned: Some(std::sync::Mutex::new(Vec::new())),
            },
            stop: Stop::default(),
            signal: None,
        }
    }

    /// The signal [`Context::signal`] returns: `Some(payload)` as if it
    /// arrived, `None` as if the wait for it timed out.
    pub fn signal<S: Signal>(mut self, payload: Option<&S>) -> Self {
        let payload = payload.map(|p| serde_json::to_string(p).unwrap_or_default());
        self.signal = Some((S::NAME.to_string(), payload));
        self
    }

    /// The task id the step sees.
    pub fn task_id(mut self, id: i64) -> Self {
        self.task_id = id;
        self
    }

    /// The attempt number the step sees (1 for the first).
    pub fn attempt(mut self, attempt: i32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Shared state, as [`WorkerBuilder::state`](crate::WorkerBuilder::state) gives it.
    pub fn state<S: Send + Sync + 'static>(mut self, value: S) -> Self {
        self.shared.state.insert(value);
        self
    }

    /// The pool [`Context::pool`] and [`Context::tx`] use. With a pool, the
    /// children a step spawns are inserted (in its transaction, rolled back
    /// when the context is dropped); without one, they are recorded: see
    /// [`spawned`](Self::spawned).
    pub fn pool<DB: sqlx::Database>(mut self, pool: sqlx::Pool<DB>) -> Self {
        self.shared.pool = Box::new(pool);
        self.shared.database = DB::NAME;
        self.shared.spawned = None;
        self
    }

    /// The children the step spawned, in order, when the context has no pool.
    /// They were given the ids 1001, 1002 and so on.
    ///
    /// ```
    /// # use jetpack::{Context, NextStep, Step, StepResult, TestContext};
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Charge { cents: u64 }
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Order;
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Paid;
    /// # jetpack::task!(Payment { Charge });
    /// # jetpack::task!(Shop { Order => [join Paid], Paid });
    /// # #[jetpack::async_trait] impl Step<Payment> for Charge {
    /// #     async fn step(self, _: &Context<'_>) -> StepResult<Self> { NextStep::none() } }
    /// # #[jetpack::async_trait] impl Step<Shop> for Paid {
    /// #     async fn step(self, _: &Context<'_>) -> StepResult<Self> { NextStep::none() } }
    /// #[jetpack::async_trait]
    /// impl Step<Shop> for Order {
    ///     async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
    ///         cx.spawn(Charge { cents: 500 }).await?;
    ///         NextStep::join(Paid)
    ///     }
    /// }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let test = TestContext::new();
    /// let next = Order.step(&test.context()).await.unwrap();
    /// assert!(next.is_join());
    /// let spawned = test.spawned();
    /// assert_eq!(spawned[0].kind, "Payment.Charge");
    /// assert_eq!(spawned[0].step, r#"{"Payment":{"Charge":{"cents":500}}}"#);
    /// # }
    /// ```
    pub fn spawned(&self) -> Vec<Spawned> {
        self.shared
            .spawned
            .as_ref()
            .map(|spawned| lock(spawned).clone())
            .unwrap_or_default()
    }

    /// The token [`Context::shutdown`] returns: cancel it to test how a step
    /// stops when its worker shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// Tells the step to stop, as a cancel or a lost lease would:
    /// [`Context::stopped`] completes with `reason`. (For
    /// [`StopReason::Shutdown`], cancel the [`shutdown_token`](Self::shutdown_token).)
    pub fn stop(&self, reason: StopReason) {
        self.stop.fire(reason);
    }

    /// The context to pass to [`Step::step`]. A transaction the step opened
    /// is rolled back when the context is dropped.
    pub fn context(&self) -> Context<'_> {
        let (name, payload) = self.signal.clone().unzip();
        Context::new(self.task_id, self.attempt, &self.shared, &self.stop)
            .with_signal(name, payload.flatten())
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("task_id", &self.task_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: f64) -> RetryPolicy {
        RetryPolicy {
            limit: 5,
            delay: Duration::from_secs(1),
            backoff,
            max_delay: Duration::from_secs(10),
            timeout: None,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(2.0);
        let delays: Vec<_> = (1..=6).map(|a| p.base_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(policy(1.0).base_delay(5), Duration::from_secs(1));
        assert_eq!(p.base_delay(i32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = policy(2.0);
        for _ in 0..1000 {
            let d = p.delay_after(2).as_secs_f64();
            assert!((1.6..=2.4).contains(&d), "{d}");
            assert!(p.delay_after(10) <= p.max_delay);
        }
    }

    /// `stopped()` completes with the first reason given, whether it came
    /// before or while the step awaited it; shutdown counts when nothing else
    /// was said.
    #[tokio::test]
    async fn stopped_tells_the_first_reason() {
        let test = TestContext::new();
        let cx = test.context();
        assert_eq!(cx.stop_reason(), None);
        let waiting = async { cx.stopped().await };
        let stop = async {
            tokio::task::yield_now().await;
            test.stop(StopReason::Cancelled);
            test.stop(StopReason::LeaseLost);
        };
        let (reason, ()) = tokio::join!(waiting, stop);
        assert_eq!(reason, StopReason::Cancelled);
        assert_eq!(cx.stopped().await, StopReason::Cancelled);

        let test = TestContext::new();
        let cx = test.context();
        test.shutdown_token().cancel();
        assert_eq!(cx.stopped().await, StopReason::Shutdown);
        test.stop(StopReason::LeaseLost);
        assert_eq!(cx.stop_reason(), Some(StopReason::LeaseLost));
    }

    #[test]
    fn error_chain_includes_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading config")]
        struct Outer(#[source] std::io::Error);
        let e = StepError::from(Outer(std::io::Error::other("disk on fire")));
        assert_eq!(e.chain(), "reading config: disk on fire");
        assert!(!e.is_permanent());
        assert!(StepError::permanent("no").is_permanent());
    }
}
