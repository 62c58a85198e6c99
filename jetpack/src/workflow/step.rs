//! Steps, their outcomes and the context they run in.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{Rate, Wakeup};
use crate::workflow::context::{lock, Context, Then, Wait};
use crate::workflow::machine::{Awaits, Follows, Joins, Machine, MemberOf, StepOf};
use crate::workflow::policy::{RetryPolicy, StepError};

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
    /// step (see [`TestContext`](crate::TestContext)).
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
}
