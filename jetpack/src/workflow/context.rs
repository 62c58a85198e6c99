//! What a running step sees: its [`Context`] (task, attempt, shared state,
//! stop signals, its transaction), the signals it may wait for, and the
//! [`TestContext`] that builds one in a unit test.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

use crate::driver::{Backend, Pooled, Store};
use crate::model::{BoxFuture, Error};
use crate::workflow::policy::StepError;

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

/// What a task waits for when a step returns [`NextStep::wait`](crate::NextStep::wait): a signal,
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
    /// The worker's pool with its driver; `None` in a [`TestContext`]
    /// without a pool.
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) shutdown: CancellationToken,
    /// A [`TestContext`] without a pool records the children a step spawns
    /// here (`kind`, step JSON, awaited) instead of inserting them.
    pub(crate) spawned: Option<std::sync::Mutex<Vec<Spawned>>>,
}

impl Shared {
    /// The database's name, for messages.
    pub(crate) fn database(&self) -> &'static str {
        (self.store.as_ref()).map_or("no database (a TestContext without a pool)", |s| {
            s.database()
        })
    }

    /// The worker's pool with its driver, for a step's children.
    pub(crate) fn store(&self) -> Result<&dyn Store, Error> {
        self.store.as_deref().ok_or(Error::WrongDatabase {
            actual: "no database",
            requested: "PostgreSQL or SQLite (child tasks need a worker's database)",
        })
    }
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
    pub(crate) task_id: i64,
    pub(crate) attempt: i32,
    pub(crate) shared: &'a Shared,
    pub(crate) stop: &'a Stop,
    /// The step's transaction once it asked for one: a `sqlx::Transaction<'static, DB>`.
    pub(crate) tx: Mutex<Option<Box<dyn Any + Send>>>,
    /// What the step returned besides its next step.
    pub(crate) then: std::sync::Mutex<Then>,
    /// Whether the step spawned children its join is to wait for.
    pub(crate) awaits_children: std::sync::atomic::AtomicBool,
    /// The signal the task waited for, `(name, payload)`: the payload is
    /// `None` when the wait timed out.
    pub(crate) signal: Option<(String, Option<String>)>,
}

/// What a step returned besides its next step: a wait, a join, an output.
#[derive(Debug, Default)]
pub(crate) struct Then {
    pub(crate) wait: Option<Wait>,
    pub(crate) join: bool,
    pub(crate) output: Option<String>,
}

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

    /// The payload of signal `S`, in a step that [`NextStep::wait`](crate::NextStep::wait) led to:
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
        let pool = self.shared.store.as_ref().map(|store| store.pool());
        pool.and_then(|pool| pool.downcast_ref())
            .ok_or(Error::WrongDatabase {
                actual: self.shared.database(),
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
                    actual: self.shared.database(),
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
                store: None,
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
    pub fn pool<DB: Backend>(mut self, pool: sqlx::Pool<DB>) -> Self {
        self.shared.store = Some(Arc::new(Pooled::new(pool)));
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

    /// The context to pass to [`Step::step`](crate::Step::step). A transaction the step opened
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
