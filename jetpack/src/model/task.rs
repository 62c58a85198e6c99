//! A task as its row holds it: the row, its state, when its step is due, and
//! what a cancel or a signal found.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Error;

/// When a task's next step is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// As soon as a worker is free.
    Now,
    /// After a delay, measured on the database clock.
    Delay(Duration),
    /// At a point in time.
    At(DateTime<Utc>),
}

/// A task's row, as [`find`](crate::find) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskRow {
    /// The task's id.
    pub id: i64,
    /// What the task is doing (the `state` column, with running and scheduled
    /// told apart from ready).
    pub state: TaskState,
    /// The current step as JSON, `{"Machine":{"Step":{..}}}`; for a finished
    /// or cancelled task, the step it ended at.
    pub step: String,
    /// When the step may run. While a step runs longer than a third of its
    /// lease, the heartbeat moves this along with the lease.
    pub wakeup_at: DateTime<Utc>,
    /// Attempts of the current step so far.
    pub tried: i32,
    /// The error the task is parked with, or the reason it was cancelled.
    pub error: Option<String>,
    /// The worker running the step, if one is.
    pub locked_by: Option<String>,
    /// While a worker runs the step: when its lease expires.
    pub lease_until: Option<DateTime<Utc>>,
    /// When the task finished or was cancelled.
    pub finished_at: Option<DateTime<Utc>>,
    /// The task that started this one as its child, if one did.
    pub parent_id: Option<i64>,
    /// What the task returned when it finished ([`NextStep::finish`](crate::NextStep::finish)),
    /// as JSON: kept on a finished task that is kept.
    pub result: Option<String>,
    /// The task's priority, 0 to [`MAX_PRIORITY`](crate::MAX_PRIORITY), higher first.
    pub priority: u8,
    /// The task's unique key ([`Enqueue::unique_key`](crate::Enqueue::unique_key)), if it has one.
    pub unique_key: Option<String>,
}

/// What a task is doing, as [`find`](crate::find) tells it.
///
/// The row's `state` column holds `ready`, `waiting`, `parked`, `cancelled`
/// or `finished`; a ready task is [`Running`](TaskState::Running) while a
/// worker holds a live lease on it, and [`Scheduled`](TaskState::Scheduled)
/// while its `wakeup_at` is ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskState {
    /// Due: the next free worker runs it.
    Ready,
    /// Due later, at `wakeup_at` (a delayed task, or a retry).
    Scheduled,
    /// A worker runs its step now.
    Running,
    /// Waits for something outside: its children, a signal.
    Waiting,
    /// Failed for good; `error` says why. Clear it to resume.
    Parked,
    /// Cancelled; `error` holds the reason.
    Cancelled,
    /// Done, and kept for a while (see
    /// [`WorkerBuilder::keep_finished`](crate::WorkerBuilder::keep_finished)).
    Finished,
}

impl TaskState {
    /// The state as `find`'s query names it.
    pub(crate) fn parse(text: &str) -> Result<Self, Error> {
        Ok(match text {
            "ready" => TaskState::Ready,
            "scheduled" => TaskState::Scheduled,
            "running" => TaskState::Running,
            "waiting" => TaskState::Waiting,
            "parked" => TaskState::Parked,
            "cancelled" => TaskState::Cancelled,
            "finished" => TaskState::Finished,
            other => {
                return Err(Error::Config(format!(
                    "unknown task state {other:?} (is the database migrated by a newer Jetpack?)"
                )))
            }
        })
    }
}

/// What [`cancel`](crate::cancel) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancel {
    /// The task is cancelled (now, or it was already). A running step hears
    /// of it through [`Context::stopped`](crate::Context::stopped), and its
    /// outcome is discarded.
    Cancelled,
    /// The task had finished (and is kept): there is nothing to cancel.
    Finished,
    /// There is no such task: it never existed, or it finished and its row
    /// was deleted.
    NotFound,
}

impl Cancel {
    /// The answer for the state a cancel statement left the row in, `None`
    /// for no row.
    pub(crate) fn of(state: Option<&str>) -> Self {
        match state {
            Some("cancelled") => Cancel::Cancelled,
            Some("finished") => Cancel::Finished,
            _ => Cancel::NotFound,
        }
    }
}

/// Where [`signal`](crate::signal) sends a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTo {
    /// The task with this id.
    Task(i64),
    /// Every task waiting for the signal under this key
    /// ([`Wait::key`](crate::Wait::key)).
    Key(String),
}

impl SignalTo {
    /// (task id, key), one of them set, as the statements bind them.
    pub(crate) fn parts(self) -> (Option<i64>, Option<String>) {
        match self {
            SignalTo::Task(id) => (Some(id), None),
            SignalTo::Key(key) => (None, Some(key)),
        }
    }
}

/// What [`signal`](crate::signal) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// A task waited for the signal: it is ready now, with the payload.
    Delivered,
    /// No task waits for it now (it waits for something else, has not begun
    /// to wait, or its wait timed out): the signal is kept, and the next wait
    /// for it by that task (or key) takes it at once. Signals are taken
    /// oldest first, one per wait.
    Kept,
    /// There is no task with that id: nothing was kept.
    NotFound,
    /// The task has finished: nothing was kept.
    Finished,
    /// The task was cancelled: nothing was kept.
    Cancelled,
}

impl Delivery {
    /// The answer the database gave.
    pub(crate) fn of(verdict: &str) -> Result<Self, Error> {
        Ok(match verdict {
            "delivered" => Delivery::Delivered,
            "kept" => Delivery::Kept,
            "not found" => Delivery::NotFound,
            "finished" => Delivery::Finished,
            "cancelled" => Delivery::Cancelled,
            other => {
                return Err(Error::Config(format!(
                    "unknown answer {other:?} from the signal statement (is the database migrated by a newer Jetpack?)"
                )))
            }
        })
    }
}

/// Converts a wakeup into (delay in microseconds, absolute time) for binding.
pub(crate) fn wakeup_binds(wakeup: &Wakeup) -> Result<(i64, Option<DateTime<Utc>>), Error> {
    match *wakeup {
        Wakeup::Now => Ok((0, None)),
        Wakeup::Delay(d) => Ok((micros(d)?, None)),
        Wakeup::At(at) => {
            use chrono::Datelike;
            if !(1..=9999).contains(&at.year()) {
                return Err(Error::InvalidTime(format!(
                    "{at} is outside the years 1 to 9999"
                )));
            }
            Ok((0, Some(at)))
        }
    }
}

/// A duration in whole microseconds, as bound into SQL.
pub(crate) fn micros(d: Duration) -> Result<i64, Error> {
    // Anything beyond 10,000 years is certainly a mistake.
    i64::try_from(d.as_micros())
        .ok()
        .filter(|&us| us < 100 * 365 * 24 * 3600 * 1_000_000 * 100)
        .ok_or_else(|| Error::InvalidTime(format!("a delay of {d:?} is too long")))
}
