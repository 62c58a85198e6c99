//! The worker: claims ready tasks, runs their steps, records what came of them.
//!
//! Its parts, each with one job: the fetch loop in [`Worker::run`] claims batches
//! sized to the free slots; [`execute`] runs one attempt (timeouts and panics
//! become failures) and records its outcome; [`heartbeat`] keeps the leases of
//! running steps alive, and tells the steps of cancelled tasks to stop;
//! [`notify`] turns database notifications into wakeups and cancels; [`clean`]
//! ends waits whose deadline passed and deletes what was kept long enough.
//!
//! The worker layer: imports `model`, `driver` and the features, never the facade
//! (docs/design.md, layers).

mod clean;
mod complete;
#[cfg(feature = "cron")]
mod cron;
mod execute;
mod heartbeat;
mod notify;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::driver::Backend;
use crate::driver::{Pooled, Store};
use crate::model::Error;
use crate::model::{History, Limit, Retention, Trace};
use crate::workflow::Scheduler;
use crate::workflow::{Shared, StateMap, Stop, StopReason};

/// Settings of a worker; see the [`WorkerBuilder`] methods.
#[derive(Debug, Clone)]
struct Config {
    concurrency: usize,
    batch_size: usize,
    lease: Duration,
    poll_interval: Duration,
    shutdown_timeout: Duration,
    name: String,
    retention: Retention,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // Measured with `examples/bench` (scenario 3): 100 reached 0.44 of
            // the raw claim-and-delete loop, 200 reaches 0.54; steps are async
            // tasks, so the cost is memory for a few hundred futures.
            concurrency: 200,
            batch_size: 200,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(30),
            name: format!("worker-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            retention: Retention {
                finished: None,
                cancelled: Duration::from_secs(7 * 24 * 3600),
                signals: Duration::from_secs(7 * 24 * 3600),
                history: Duration::from_secs(7 * 24 * 3600),
            },
        }
    }
}

/// One attempt this worker holds.
struct Attempt {
    fence: i64,
    /// Its outcome has been handed over to be written: if the heartbeat then
    /// finds the lease gone, the outcome was written meanwhile (or the write
    /// will say the lease was lost), so the heartbeat raises no alarm.
    recording: bool,
    /// Stops the step's task when the lease is lost: another attempt may run
    /// the step now, and this one's outcome would be fenced off. (Dropped, the
    /// step's future rolls back its transaction and gives its slot back.)
    abort: Option<tokio::task::AbortHandle>,
    /// Tells the step to stop (shared with its [`Context`](crate::Context)).
    stop: Arc<Stop>,
}

/// The attempts this worker holds, by task id.
type InFlight = Arc<Mutex<HashMap<i64, Attempt>>>;

/// What the worker's parts share.
struct Runtime {
    store: Arc<dyn Store>,
    shared: Shared,
    config: Config,
    kinds: Vec<String>,
    /// The kinds of steps with a concurrency or a rate limit, with them.
    limited: Vec<Limit>,
    in_flight: InFlight,
    wake: Notify,
    completions: complete::Completions,
    /// Taken by each multi-row write of held tasks: the completer's flushes,
    /// the heartbeat and releases. On PostgreSQL two such statements running at
    /// once lock the rows they share in different orders and deadlock (the
    /// database aborts one after `deadlock_timeout`, a 1 s stall); one at a
    /// time, they cannot. It also lets the heartbeat tell a lost lease from an
    /// attempt whose outcome was just written.
    writes: tokio::sync::Mutex<()>,
    /// Signalled when the fetch loop found less ready work than it could take.
    idle: Notify,
    /// Until when limited steps are likely to become claimable soon (tokens
    /// refill, a rate limit's pause ends): the worker looks for them every
    /// [`LIMITED_CLAIM_PAUSE`] meanwhile, instead of napping to its poll.
    limited_busy: Mutex<Option<Instant>>,
    /// Whether the history is on, as the database last said.
    history: std::sync::atomic::AtomicBool,
    /// Failed attempts, for [`Worker::errors`].
    errors: tokio::sync::broadcast::Sender<crate::model::TaskError>,
    /// The steps' metrics.
    metrics: crate::metrics::Metrics,
}

impl Runtime {
    /// Limited steps may become claimable within `d` (see `limited_busy`).
    fn limited_busy_for(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut busy = lock(&self.limited_busy);
        if busy.is_none_or(|b| b < until) {
            *busy = Some(until);
        }
    }

    /// The history of `traces` written by this worker, when it is on.
    fn history<'a>(&'a self, traces: &'a [&'a Trace]) -> Option<History<'a>> {
        self.history
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(History {
                worker: &self.config.name,
                traces,
            })
    }

    /// Reads whether the history is on.
    async fn read_history_switch(&self) {
        match self.store.history_on().await {
            Ok(on) => self.history.store(on, std::sync::atomic::Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "reading whether the history is on failed"),
        }
    }

    /// Whether limited steps may become claimable soon.
    fn limited_busy(&self) -> bool {
        lock(&self.limited_busy).is_some_and(|b| b > Instant::now())
    }

    /// The attempts held, as (id, fence).
    fn held(&self) -> Vec<(i64, i64)> {
        lock(&self.in_flight)
            .iter()
            .map(|(&id, attempt)| (id, attempt.fence))
            .collect()
    }

    /// Starts holding a claimed attempt; its stop signal.
    fn hold(&self, id: i64, fence: i64) -> Arc<Stop> {
        let stop = Arc::new(Stop::default());
        let attempt = Attempt {
            fence,
            recording: false,
            abort: None,
            stop: Arc::clone(&stop),
        };
        lock(&self.in_flight).insert(id, attempt);
        stop
    }

    /// Of the attempts `lost` (whose leases were not renewed, or which were
    /// reported cancelled), tells the steps of cancelled tasks to stop, and
    /// stops those that were told before; stops the steps of the others,
    /// whose leases are lost. `lost` are attempts this worker holds and has
    /// not recorded.
    async fn stop_lost(&self, lost: Vec<(i64, i64)>, cancel_notice: bool) {
        if lost.is_empty() {
            return;
        }
        let ids: Vec<i64> = lost.iter().map(|a| a.0).collect();
        let states = match self.store.states(&ids).await {
            Ok(states) => states,
            Err(e) => {
                tracing::warn!(error = %e, "reading the states of tasks whose leases were lost failed");
                if cancel_notice {
                    return;
                }
                Vec::new()
            }
        };
        let cancelled: std::collections::HashSet<i64> = states
            .into_iter()
            .filter(|(_, state)| state == "cancelled")
            .map(|(id, _)| id)
            .collect();
        let mut in_flight = lock(&self.in_flight);
        for (id, fence) in lost {
            let Some(attempt) = in_flight.get(&id).filter(|a| a.fence == fence) else {
                continue;
            };
            if attempt.recording {
                continue;
            }
            if cancelled.contains(&id) {
                if attempt.stop.reason() == Some(StopReason::Cancelled) && !cancel_notice {
                    tracing::warn!(
                        task_id = id,
                        "the task was cancelled and its step has not returned; stopping it"
                    );
                } else {
                    tracing::info!(task_id = id, "the task was cancelled; telling its step");
                    attempt.stop.fire(StopReason::Cancelled);
                    continue;
                }
            } else if cancel_notice {
                // Not cancelled after all (the cancel rolled back).
                continue;
            } else {
                tracing::warn!(
                    task_id = id,
                    "lease lost: another attempt took the task over, or its row was \
                     changed or deleted; stopping the step"
                );
                attempt.stop.fire(StopReason::LeaseLost);
            }
            if let Some(attempt) = in_flight.remove(&id) {
                if let Some(abort) = attempt.abort {
                    abort.abort();
                }
            }
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the map
/// of held attempts stays valid whatever a step did).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the steps of the machines in scheduler `T`.
///
/// Any number of workers, in any number of processes, can share one database:
/// each task is claimed by one of them at a time, under a lease.
///
/// ```no_run
/// # jetpack::task!(Greeter { Hello });
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Hello;
/// # #[jetpack::async_trait] impl jetpack::Step<Greeter> for Hello {
/// #     async fn step(self, _: &jetpack::Context<'_>) -> jetpack::StepResult<Self> { jetpack::NextStep::none() } }
/// jetpack::scheduler!(Tasks { Greeter });
/// # async fn f(pool: sqlx::PgPool) -> Result<(), jetpack::Error> {
/// let worker = jetpack::Worker::<Tasks>::builder(pool).concurrency(32).build()?;
/// let stop = worker.shutdown_token();
/// tokio::spawn(async move {
///     // On SIGTERM, say (`examples/worker.rs` shows how).
///     tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
///     stop.cancel();
/// });
/// worker.run().await?;
/// # Ok(()) }
/// ```
pub struct Worker<T: Scheduler> {
    rt: Arc<Runtime>,
    completions: tokio::sync::mpsc::UnboundedReceiver<complete::Completion>,
    #[cfg(feature = "cron")]
    schedules: Arc<Vec<crate::schedule::Schedule>>,
    _tasks: PhantomData<fn() -> T>,
}

impl<T: Scheduler> Worker<T> {
    /// A worker with default settings on `pool`.
    pub fn new<DB: Backend>(pool: sqlx::Pool<DB>) -> Self {
        WorkerBuilder::new(pool).finish()
    }

    /// A worker with settings of your choice.
    ///
    /// The worker claims tasks and writes their outcomes on connections of
    /// its own, opened with the pool's options (PostgreSQL: one for claims,
    /// one for outcomes; SQLite: one for both): they neither wait for nor
    /// starve the pool your steps and application use. From the pool it
    /// takes one connection for good on PostgreSQL, to listen for
    /// notifications, and others now and then.
    pub fn builder<DB: Backend>(pool: sqlx::Pool<DB>) -> WorkerBuilder<T> {
        WorkerBuilder::new(pool)
    }

    /// Cancelling this token shuts the worker down gracefully: it claims nothing
    /// more, lets running steps finish within the shutdown timeout, and releases
    /// the leases of those that do not. `SELECT pg_notify('jetpack', 'stop')`
    /// does the same for every worker on the database.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.rt.shared.shutdown.clone()
    }

    /// The failed attempts of this worker's steps, retried or parked, as
    /// their outcomes are written: for alerts. A receiver that falls more
    /// than 1,024 events behind misses the oldest (`RecvError::Lagged`). On
    /// PostgreSQL every worker also notifies
    /// [`ERRORS_CHANNEL`](crate::ERRORS_CHANNEL), for listeners anywhere.
    ///
    /// ```no_run
    /// # async fn f<T: jetpack::Scheduler>(worker: jetpack::Worker<T>) {
    /// let mut errors = worker.errors();
    /// tokio::spawn(async move {
    ///     while let Ok(e) = errors.recv().await {
    ///         if e.parked {
    ///             tracing::error!(task = e.task_id, step = ?e.kind, error = %e.error, "parked");
    ///         }
    ///     }
    /// });
    /// # }
    /// ```
    pub fn errors(&self) -> tokio::sync::broadcast::Receiver<crate::model::TaskError> {
        self.rt.errors.subscribe()
    }

    /// The name this worker writes into `locked_by` of the tasks it runs.
    pub fn name(&self) -> &str {
        &self.rt.config.name
    }

    /// Runs until shut down. Database errors never end it: it logs them, backs
    /// off and carries on.
    pub async fn run(self) -> Result<(), Error> {
        let Worker {
            rt,
            completions,
            #[cfg(feature = "cron")]
            schedules,
            ..
        } = self;
        let stop = rt.shared.shutdown.clone();
        let mut helpers = JoinSet::new();
        helpers.spawn(complete::run(rt.clone(), completions));
        helpers.spawn(notify::run(rt.clone()));
        helpers.spawn(heartbeat::run(rt.clone()));
        helpers.spawn(report_other_kinds::<T>(rt.clone()));
        helpers.spawn(clean::run(rt.clone()));
        helpers.spawn(clean::expire_waits(rt.clone()));
        #[cfg(feature = "cron")]
        helpers.spawn(cron::run(rt.clone(), schedules));

        let slots = Slots::new(&rt.config);
        let claim_threshold = (rt.config.batch_size.min(rt.config.concurrency) / 2).max(1);
        let mut steps = JoinSet::new();
        let mut backoff = Backoff::default();
        // When the claim of limited steps last found none to take, while the
        // worker has not napped since: such claims cost a transaction of their
        // own, so a worker draining other steps repeats them only now and then.
        let mut no_limited_since: Option<Instant> = None;
        rt.read_history_switch().await;
        let machines: Vec<(String, String)> = (T::graphs().iter())
            .map(|g| (g.machine.to_string(), g.to_json().to_string()))
            .collect();
        if let Err(e) = rt.store.register(&machines).await {
            tracing::warn!(error = %e, "recording the machines in jetpack_machines failed");
        }
        tracing::info!(worker = %rt.config.name, concurrency = rt.config.concurrency, "worker started");

        while !stop.is_cancelled() {
            while steps.try_join_next().is_some() {}
            // Claim in batches: while steps run, wait until at least half a batch
            // of slots is free rather than claiming one task per finished step.
            let free = slots.free();
            if free < claim_threshold && !steps.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = slots.freed.notified() => continue,
                }
            }
            if free < rt.config.batch_size && !steps.is_empty() {
                // Steps that finish together free their slots together: let
                // those that can run now do so, then claim for all of them.
                tokio::task::yield_now().await;
            }
            let limit = slots.free().min(rt.config.batch_size);
            let try_limited = no_limited_since.is_none_or(|at| at.elapsed() >= LIMITED_CLAIM_PAUSE);
            let claimed = match claim(&rt, limit, try_limited).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    let pause = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?pause, "claiming tasks failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            backoff.reset();
            let (claimed, limited_full, limited_none) = claimed;
            if stop.is_cancelled() {
                // The shutdown began while the claim ran: start nothing new,
                // give back what it took (not counted as tried).
                let took: Vec<(i64, i64)> = claimed.iter().map(|t| (t.id, t.fence)).collect();
                if !took.is_empty() {
                    tracing::info!(
                        tasks = took.len(),
                        "shutting down: giving back what the last claim took"
                    );
                    rt.release(&took).await;
                }
                break;
            }
            if limited_none {
                no_limited_since.get_or_insert_with(Instant::now);
            } else if try_limited {
                no_limited_since = None;
            }
            let got = claimed.len();
            let full_batch = got == limit;
            tracing::trace!(claimed = got, limit, "claimed");
            for task in claimed {
                let Some(slot) = slots.take() else {
                    // Unreachable: only this loop takes slots and it claimed no
                    // more than were free. Give the task back rather than lose it.
                    rt.release(&[(task.id, task.fence)]).await;
                    continue;
                };
                let id = task.id;
                let stop = rt.hold(id, task.fence);
                let abort = steps.spawn(execute::run::<T>(rt.clone(), task, slot, stop));
                if let Some(attempt) = lock(&rt.in_flight).get_mut(&id) {
                    attempt.abort = Some(abort);
                }
            }
            if full_batch {
                continue;
            }
            rt.idle.notify_one();
            let nap = match rt.store.next_due(&rt.kinds).await {
                Ok(Some(due)) => due.min(rt.config.poll_interval),
                Ok(None) => rt.config.poll_interval,
                Err(e) => {
                    tracing::warn!(error = %e, "looking for the next due task failed");
                    backoff.next()
                }
            };
            if nap.is_zero() && got > 0 {
                continue;
            }
            // Due but not claimable (locked by another transaction): do not spin.
            let mut nap = nap.max(Duration::from_millis(10));
            if rt.limited_busy() {
                // Rate limits refill and pauses end without a notification.
                nap = nap.min(LIMITED_CLAIM_PAUSE);
            }
            // Limited steps at their limits: one of this worker's steps ending
            // may free a share (a share freed in another process is seen at
            // the next poll, or taken by that process).
            let limits_may_free = !rt.limited.is_empty() && !limited_full && !steps.is_empty();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = rt.wake.notified() => {}
                _ = slots.freed.notified(), if limits_may_free => {}
                _ = tokio::time::sleep(nap) => {}
            }
            no_limited_since = None;
        }

        while steps.try_join_next().is_some() {}
        let running = steps.len();
        if running > 0 {
            tracing::info!(running, timeout = ?rt.config.shutdown_timeout, "shutting down: waiting for running steps");
        }
        let drained = tokio::time::timeout(rt.config.shutdown_timeout, async {
            while steps.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            steps.abort_all();
            while steps.join_next().await.is_some() {}
            let abandoned = rt.held();
            tracing::warn!(
                abandoned = abandoned.len(),
                "shutdown timeout passed: releasing the leases of unfinished steps"
            );
            rt.release(&abandoned).await;
        }
        helpers.abort_all();
        tracing::info!(worker = %rt.config.name, "worker stopped");
        Ok(())
    }
}

/// How long a worker that found no limited step to claim, and has not napped
/// since, goes without looking again.
const LIMITED_CLAIM_PAUSE: Duration = Duration::from_millis(50);

/// How long after claiming steps under a rate limit a worker keeps looking
/// for more every [`LIMITED_CLAIM_PAUSE`].
const LIMITED_BUSY: Duration = Duration::from_secs(2);

/// Claims up to `limit` tasks: first of limited steps, if `try_limited` (they
/// cannot take more than their limits), then of the others. Also says whether
/// the claim of limited steps took all it asked for, and whether it took none.
async fn claim(
    rt: &Runtime,
    limit: usize,
    try_limited: bool,
) -> Result<(Vec<crate::model::Claimed>, bool, bool), Error> {
    let (owner, lease) = (&rt.config.name, rt.config.lease);
    let mut claimed = Vec::new();
    let (mut limited_full, mut limited_none) = (true, false);
    if !rt.limited.is_empty() && try_limited {
        claimed = rt
            .store
            .claim_limited(limit, &rt.limited, owner, lease)
            .await?;
        limited_full = claimed.len() == limit;
        limited_none = claimed.is_empty();
        if !limited_none && rt.limited.iter().any(|l| l.rate.is_some()) {
            // Steps under a rate: the rest of their tasks get tokens soon.
            rt.limited_busy_for(LIMITED_BUSY);
        }
    }
    let rest = limit - claimed.len();
    if rest > 0 {
        claimed.extend(rt.store.claim(rest, &rt.kinds, owner, lease).await?);
    }
    Ok((claimed, limited_full, limited_none))
}

/// The two limits on what a worker takes on: steps running (`concurrency`), and
/// tasks held (twice that), which also counts finished steps whose outcome is
/// still being written. Freeing the running slot as soon as a step returns lets
/// the next claim overlap with the writing of the last batch's outcomes.
struct Slots {
    running: Arc<Semaphore>,
    held: Arc<Semaphore>,
    /// Signalled whenever a slot is given back.
    freed: Arc<Notify>,
}

/// What one claimed task holds until its outcome is written; see [`Slots`].
pub(crate) struct Slot {
    running: Option<OwnedSemaphorePermit>,
    held: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Slots {
    fn new(config: &Config) -> Self {
        Slots {
            running: Arc::new(Semaphore::new(config.concurrency)),
            // One batch being recorded while the next one runs.
            held: Arc::new(Semaphore::new(config.concurrency.saturating_mul(2))),
            freed: Arc::new(Notify::new()),
        }
    }

    fn free(&self) -> usize {
        self.running
            .available_permits()
            .min(self.held.available_permits())
    }

    fn take(&self) -> Option<Slot> {
        let held = self.held.clone().try_acquire_owned().ok()?;
        let running = self.running.clone().try_acquire_owned().ok()?;
        Some(Slot {
            running: Some(running),
            held: Some(held),
            freed: self.freed.clone(),
        })
    }
}

impl Slot {
    /// The step has returned: another step may run while its outcome is written.
    fn stop_running(&mut self) {
        self.running = None;
        self.freed.notify_one();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Give the permits back before waking the fetch loop, which counts them.
        self.running = None;
        self.held = None;
        self.freed.notify_one();
    }
}

impl Runtime {
    /// Gives leases back, logging (not failing) when the database is unreachable:
    /// the leases then simply expire.
    async fn release(&self, held: &[(i64, i64)]) {
        if held.is_empty() {
            return;
        }
        let released = {
            let _writes = self.writes.lock().await;
            self.store.release(held).await
        };
        if let Err(e) = released {
            tracing::warn!(error = %e, "releasing leases failed; they will expire instead");
        }
        let mut map = lock(&self.in_flight);
        for (id, _) in held {
            map.remove(id);
        }
    }
}

/// Builds a [`Worker`]; every setting has a default that suits most uses.
pub struct WorkerBuilder<T: Scheduler> {
    store: Arc<dyn Store>,
    state: StateMap,
    config: Config,
    shutdown: CancellationToken,
    #[cfg(feature = "cron")]
    schedules: Vec<crate::schedule::Schedule>,
    _tasks: PhantomData<fn() -> T>,
}

impl<T: Scheduler> WorkerBuilder<T> {
    fn new<DB: Backend>(pool: sqlx::Pool<DB>) -> Self {
        let store: Arc<dyn Store> = Arc::new(Pooled::new(pool));
        let config = Config {
            poll_interval: store.default_poll_interval(),
            ..Config::default()
        };
        WorkerBuilder {
            store,
            state: StateMap::default(),
            config,
            shutdown: CancellationToken::new(),
            #[cfg(feature = "cron")]
            schedules: Vec::new(),
            _tasks: PhantomData,
        }
    }

    /// How many steps run at once (default 200). Steps are async tasks, so a high
    /// limit costs little; lower it for steps that each hold scarce resources.
    /// A worker holds at most twice this many tasks: steps that returned wait
    /// for their outcomes to be written together while the next ones run.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// The most tasks claimed by one query (default 200). While steps run, the
    /// worker claims again once half a batch of slots is free.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }

    /// How long a claim is valid without a heartbeat (default 30 s). A worker
    /// that dies loses its tasks to other workers after this long; a live one
    /// renews the lease every third of it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How often to look for work when no notification arrives: the fallback
    /// if a notification is lost on PostgreSQL (default 2 s), and how soon
    /// changes made by other processes are seen on SQLite (default 250 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// How long a shutdown waits for running steps before releasing them
    /// (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Keeps finished tasks for `period` (state `finished`, with `finished_at`
    /// and the step they finished at) instead of deleting them as they finish,
    /// so that [`find`](crate::find) and SQL can still see them. The workers
    /// delete them once the period has passed, in small batches, a few times
    /// a minute. By default finished tasks are deleted at once, and those
    /// kept earlier (by workers with this setting) within a minute.
    pub fn keep_finished(mut self, period: Duration) -> Self {
        self.config.retention.finished = Some(period);
        self
    }

    /// How long cancelled tasks are kept (state `cancelled`, the reason in
    /// `error`) before the workers delete them (default 7 days).
    pub fn keep_cancelled(mut self, period: Duration) -> Self {
        self.config.retention.cancelled = period;
        self
    }

    /// How long a signal that no wait took is kept for a later wait (default
    /// 7 days); then the workers delete it.
    pub fn keep_signals(mut self, period: Duration) -> Self {
        self.config.retention.signals = period;
        self
    }

    /// How long the history of transitions is kept (default 7 days); then the
    /// workers delete it, oldest first, in small batches. The history is
    /// switched on and off for every worker at once, in the database: see
    /// [`set_history`](crate::set_history).
    pub fn keep_history(mut self, period: Duration) -> Self {
        self.config.retention.history = period;
        self
    }

    /// The worker's name in `locked_by` (default `worker-<pid>-<random>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Shared state for steps, read with [`Context::state`](crate::Context::state);
    /// one value per type.
    pub fn state<S: Send + Sync + 'static>(mut self, value: S) -> Self {
        self.state.insert(value);
        self
    }

    /// Use this token for shutdown instead of a new one (for example one shared
    /// by the whole application).
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Runs `schedule` (see [`Schedule`](crate::Schedule)): on each of its
    /// ticks, this worker or another that runs it enqueues the tick's task,
    /// once. Two schedules of one worker may not share a name.
    #[cfg(feature = "cron")]
    pub fn schedule(mut self, schedule: crate::schedule::Schedule) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// Checks the settings and builds the worker.
    pub fn build(self) -> Result<Worker<T>, Error> {
        #[cfg(feature = "cron")]
        for (i, s) in self.schedules.iter().enumerate() {
            if self.schedules[..i].iter().any(|t| t.name == s.name) {
                return Err(Error::Config(format!(
                    "two schedules are named {:?}: a name is a schedule's row",
                    s.name
                )));
            }
        }
        let c = &self.config;
        if c.concurrency == 0 || c.batch_size == 0 {
            return Err(Error::Config(
                "concurrency and batch_size must be at least 1".into(),
            ));
        }
        if c.lease < Duration::from_millis(300) {
            return Err(Error::Config(format!(
                "a lease of {:?} is too short: use 300 ms or more",
                c.lease
            )));
        }
        if c.poll_interval.is_zero() {
            return Err(Error::Config("poll_interval must be above zero".into()));
        }
        if c.concurrency > MAX_CONCURRENCY {
            return Err(Error::Config(format!(
                "a concurrency of {} is more than the {MAX_CONCURRENCY} steps a worker can hold",
                c.concurrency
            )));
        }
        if crate::model::micros(c.lease).is_err() {
            return Err(Error::Config(format!(
                "a lease of {:?} is longer than the database can store",
                c.lease
            )));
        }
        let keeps = [
            c.retention.finished,
            Some(c.retention.cancelled),
            Some(c.retention.signals),
            Some(c.retention.history),
        ];
        for keep in keeps.into_iter().flatten() {
            if keep.is_zero() || crate::model::micros(keep).is_err() {
                return Err(Error::Config(format!(
                    "cannot keep tasks for {keep:?}: use a period above zero and below \
                     10,000 years (finished tasks are deleted at once unless kept)"
                )));
            }
        }
        if c.name.contains('\0') {
            return Err(Error::Config(
                "the worker's name contains a NUL character, which PostgreSQL cannot store".into(),
            ));
        }
        let (needed, allowed) = self.store.connections();
        if allowed < needed {
            return Err(Error::Config(format!(
                "the pool allows {allowed} connection(s), and a {} worker needs {needed} \
                 besides the connections of its own it claims on and writes outcomes on \
                 (PostgreSQL: one listens for notifications, another runs the rest) \
                 (raise the pool's max_connections)",
                self.store.database()
            )));
        }
        Ok(self.finish())
    }

    fn finish(self) -> Worker<T> {
        let (completions, queue) = complete::channel();
        Worker {
            completions: queue,
            #[cfg(feature = "cron")]
            schedules: Arc::new(self.schedules),
            rt: Arc::new(Runtime {
                store: self.store.clone(),
                shared: Shared {
                    state: self.state,
                    store: Some(self.store),
                    shutdown: self.shutdown,
                    spawned: None,
                },
                config: self.config,
                kinds: T::kinds(),
                limited: crate::limits::of(&T::graphs()),
                in_flight: InFlight::default(),
                wake: Notify::new(),
                completions,
                writes: tokio::sync::Mutex::new(()),
                idle: Notify::new(),
                limited_busy: Mutex::new(None),
                history: std::sync::atomic::AtomicBool::new(true),
                errors: tokio::sync::broadcast::channel(1024).0,
                metrics: crate::metrics::Metrics::of(&T::graphs()),
            }),
            _tasks: PhantomData,
        }
    }
}

/// The most steps a worker may hold: twice the concurrency must stay within
/// what a semaphore can count.
const MAX_CONCURRENCY: usize = Semaphore::MAX_PERMITS / 4;

/// Warns, once, of tasks waiting for steps this worker does not know: a
/// machine missing from its scheduler, or a step from a newer deploy. They are
/// left alone for a worker that knows them, which is right for a rolling deploy
/// and a silent mistake otherwise.
///
/// The count reads the whole table, so it waits until the worker first finds
/// less ready work than it could take: not while a backlog is drained at start
/// (it cost a drain of 10,000 tasks a few percent).
async fn report_other_kinds<T: Scheduler>(rt: Arc<Runtime>) {
    rt.idle.notified().await;
    // Tasks of steps whose limit was removed (by a deploy) would wait in the
    // claims of limited steps for good: they go back to the others.
    let unlimited: Vec<String> = (rt.kinds.iter())
        .filter(|k| !rt.limited.iter().any(|l| &l.kind == *k))
        .cloned()
        .collect();
    match rt.store.unscope(&unlimited).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            tasks = n,
            "tasks of steps that no longer have a concurrency or rate limit are claimed as any other"
        ),
        Err(e) => tracing::warn!(error = %e, "freeing tasks of steps without limits failed"),
    }
    let others = match rt.store.other_kinds(&rt.kinds).await {
        Ok(others) => others,
        Err(e) => {
            tracing::warn!(error = %e, "looking for tasks of unknown machines failed");
            return;
        }
    };
    let known: Vec<&str> = T::graphs().iter().map(|g| g.machine).collect();
    let mut machines: Vec<(String, i64)> = Vec::new();
    for (kind, count) in others {
        let machine = kind.split_once('.').map_or(kind.as_str(), |(m, _)| m);
        if known.contains(&machine) {
            tracing::warn!(
                kind = %kind,
                tasks = count,
                "tasks wait at a step this worker does not know (from a newer deploy?); \
                 they are left for a worker that runs it"
            );
        } else {
            match machines.last_mut() {
                Some((m, n)) if m == machine => *n += count,
                _ => machines.push((machine.to_string(), count)),
            }
        }
    }
    for (machine, count) in machines {
        tracing::warn!(
            machine = %machine,
            tasks = count,
            "tasks of a machine that is not in this worker's scheduler wait; \
             add it to `scheduler!` or run a worker that has it"
        );
    }
}

/// Exponential backoff for database errors: 100 ms doubling up to 5 s.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = Duration::from_millis(100 << self.0.min(6)).min(Duration::from_secs(5));
        self.0 = self.0.saturating_add(1);
        d
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}
