//! What a claim gives a worker and what an attempt ends with: the claimed
//! task, the attempt's outcome and trace, the limits and retention the
//! statements apply, the database's notices.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Error, Rate, Wakeup};

/// A step's labels: its machine and its name.
pub(crate) type Labels = (&'static str, &'static str);

/// A task a worker has claimed, as the claim statement returns it.
#[derive(Debug)]
#[cfg_attr(any(feature = "postgres", feature = "sqlite"), derive(sqlx::FromRow))]
pub struct Claimed {
    pub id: i64,
    pub step: String,
    /// The attempt number this claim started (1-based).
    pub tried: i32,
    /// The claim's fence: only this attempt may write the row.
    pub fence: i64,
    /// The signal the task waited for, if its last step was a wait.
    pub wait_for: Option<String>,
    /// The payload of that signal; `None` when the wait timed out.
    pub signal: Option<String>,
    /// Whether a parent's join waits for this task: its finish is then kept,
    /// with its result, for the join step to read.
    pub awaited: bool,
    /// The scope of its concurrency limit, as the row has it: always `None`
    /// from the driver's claim, which takes only tasks without one.
    #[cfg_attr(any(feature = "postgres", feature = "sqlite"), sqlx(default))]
    pub scope: Option<String>,
    /// How long it had been due when claimed (claim time minus `wakeup_at`,
    /// both the database's clock), in µs: the queue lag.
    pub lag_us: i64,
    /// When it was enqueued, if it is still at the step it was enqueued with
    /// (no transition yet): its row is then the record of its enqueue, which
    /// the history takes in with its first transition.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Its kind, as the row has it.
    pub kind: String,
}

/// What the history records of the attempts whose outcomes one write
/// records, besides the outcomes.
pub struct History<'a> {
    /// The worker that ran them.
    pub worker: &'a str,
    /// One per outcome, in the same order.
    pub traces: &'a [&'a Trace],
}

/// What the history records of one attempt, besides its outcome.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The kind of the step it ran; `None` when its JSON did not decode.
    pub kind: Option<String>,
    /// Its number (1 for the first).
    pub attempt: i32,
    /// From its claim to its outcome, in µs.
    pub duration_us: i64,
    /// The labels of its metrics, when its step decoded.
    pub labels: Option<Labels>,
    /// The task's enqueue, when this was an attempt of the step it was
    /// enqueued with and nothing has moved it since its claim.
    pub enqueued: Option<EnqueueRecord>,
}

/// The record of a task's enqueue, which the history takes in with the
/// task's first transition (until then the task's row is that record).
#[derive(Debug, Clone)]
pub struct EnqueueRecord {
    /// When the task was enqueued (`created_at`).
    pub at: DateTime<Utc>,
    /// The kind it was enqueued at, as its row has it.
    pub kind: String,
    /// The step it was enqueued with, as the row's JSON.
    pub step: String,
}

impl Outcome {
    /// The history's event for this outcome, the kind it moves the task to
    /// (`None`: it stays at its step, or ends), and its error.
    pub(crate) fn event(&self) -> (&'static str, Option<&str>, Option<&str>) {
        match self {
            Outcome::Next { kind, .. } => ("next", Some(kind), None),
            Outcome::Wait { kind, .. } => ("wait", Some(kind), None),
            Outcome::Join { kind, .. } => ("join", Some(kind), None),
            Outcome::Finish | Outcome::Keep { .. } => ("finished", None, None),
            Outcome::Retry { error, .. } => ("retry", None, Some(error)),
            Outcome::Park { error } => ("parked", None, Some(error)),
        }
    }
}

/// A step type with a concurrency or a rate limit, as the claims of limited
/// steps keep them.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// Its kind, `Machine.Step`.
    pub kind: String,
    /// How many may run at once, per scope.
    pub concurrency: Option<u32>,
    /// How many may start per period, per scope.
    pub rate: Option<Rate>,
}

impl Limit {
    /// The rate as the claims take it: steps per second, the bucket's size,
    /// and how fast a slowed rate climbs back (per second per second).
    pub(crate) fn bucket(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        match &self.rate {
            None => (None, None, None),
            Some(r) => (
                Some(r.steps_per_second()),
                Some(f64::from(r.burst_size())),
                Some(r.climb()),
            ),
        }
    }
}

/// What happens to a claimed task when its attempt ends.
#[derive(Debug)]
pub enum Outcome {
    /// Move to the next step, stored as JSON (of kind "Machine.Step"), due at `wakeup`.
    Next {
        step: String,
        kind: String,
        wakeup: Wakeup,
        /// The scope of the step's concurrency limit, if it has one.
        scope: Option<String>,
    },
    /// Wait for signal `name` (addressed to the task and to `key`) for at
    /// most `timeout`, then move to `step`.
    Wait {
        step: String,
        kind: String,
        name: &'static str,
        key: Option<String>,
        timeout: Option<Duration>,
        scope: Option<String>,
    },
    /// Wait for the task's awaited children to end, then move to `step`.
    Join {
        step: String,
        kind: String,
        scope: Option<String>,
    },
    /// Finished: the row is deleted.
    Finish,
    /// Finished, and kept (state `finished`) with its `result` (JSON) until
    /// the workers' cleanup.
    Keep { result: Option<String> },
    /// Failed with `error`; retried after `delay`.
    Retry { delay: Duration, error: String },
    /// Failed for good; parked with its error until a person clears it.
    Park { error: String },
}

impl Outcome {
    /// Parks the task with `error`, made storable: without NUL characters
    /// (PostgreSQL's text cannot hold them) and at most [`MAX_ERROR_LEN`] bytes.
    pub(crate) fn park(mut error: String) -> Outcome {
        error.retain(|c| c != '\0');
        if error.len() > MAX_ERROR_LEN {
            let mut end = MAX_ERROR_LEN;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
            error.push_str(" [truncated]");
        }
        Outcome::Park { error }
    }
}

impl Outcome {
    /// Parks the task because the database refused its outcome: writing the
    /// same outcome again would be refused again.
    pub(crate) fn refused(error: &Error) -> Outcome {
        Outcome::park(format!("the database refused the step's outcome: {error}"))
    }
}

/// The longest error text kept on a row.
const MAX_ERROR_LEN: usize = 16 * 1024;

/// How long finished and cancelled tasks are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `None`: finished tasks are deleted as they finish, and any kept
    /// earlier (by another worker, or before a restart) by the cleanup.
    pub finished: Option<Duration>,
    pub cancelled: Duration,
    /// How long a signal no wait took is kept.
    pub signals: Duration,
    /// How long the history's rows are kept.
    pub history: Duration,
}

/// The largest fence the table allows (2^53 - 1, so that SQLite's sum of a
/// batch's fences cannot overflow). Claims saturate there; a worker parks a
/// task whose fence reached it, since its attempts could no longer be told
/// apart.
pub(crate) const FENCE_MAX: i64 = (1 << 53) - 1;

/// A notification from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Work may be ready.
    Wake,
    /// `pg_notify('jetpack', 'stop')`: every worker shuts down gracefully.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Stop,
    /// Task `id` was cancelled while a worker held it.
    Cancel(i64),
}

impl Notice {
    /// The notice a payload on the `jetpack` channel means: `stop`,
    /// `cancel <id>`, or anything else (a wakeup).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn parse(payload: &str) -> Notice {
        if payload == "stop" {
            return Notice::Stop;
        }
        match payload.strip_prefix("cancel ").map(str::parse) {
            Some(Ok(id)) => Notice::Cancel(id),
            _ => Notice::Wake,
        }
    }
}
