//! A task as an enqueue stores it: its step encoded, its options checked,
//! and what became of it.

use chrono::{DateTime, Utc};

/// A boxed, sendable future, as returned by generated code.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The `kind` column's value for step `step` of machine `machine`.
pub(crate) fn kind(machine: &str, step: &str) -> String {
    format!("{machine}.{step}")
}

/// The highest priority a task may have; the lowest is 0, the default.
///
/// A task of priority `p` is claimed as if it had become due `p` minutes
/// earlier: higher first, first in first out within one priority, and a task
/// waits behind higher-priority work only for what arrived within 10 minutes
/// after it.
pub const MAX_PRIORITY: u8 = 10;

/// The longest key a wait or a signal may be addressed by, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 1024;

/// A task ready to insert: its JSON and its `kind`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Encoded {
    pub(crate) json: String,
    /// `(machine, step)`; stored as "machine.step".
    pub(crate) kind: (&'static str, &'static str),
    /// The task's priority: its step's, unless the enqueue gave one.
    pub(crate) priority: u8,
    /// The scope of its step's concurrency limit, if it has one.
    pub(crate) scope: Option<String>,
}

impl Encoded {
    pub(crate) fn kind(&self) -> String {
        kind(self.kind.0, self.kind.1)
    }
}

/// Whether all `steps` are of one kind (and so of one priority), with no
/// concurrency scope.
pub(crate) fn one_kind(steps: &[Encoded]) -> bool {
    steps.windows(2).all(|w| w[0].kind == w[1].kind) && steps.iter().all(|s| s.scope.is_none())
}

/// What an enqueue with a [unique key](crate::Enqueue::unique_key) does when a live
/// task (ready, scheduled, running, waiting or parked) already holds the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnConflict {
    /// Keep the live task and answer its id ([`Enqueued::Existing`]): the
    /// new task is not stored.
    #[default]
    Ignore,
    /// Replace the live task's step, due time and priority, if it has not
    /// started ([`Enqueued::Replaced`]); with a delay, that is a debounce
    /// (see [`Enqueue::debounce`](crate::Enqueue::debounce)). A task that is running, waiting or parked
    /// gives up the key to a new task ([`Enqueued::Created`]), which runs
    /// with the new step after the old one.
    Replace,
}

/// What became of an [`Enqueue`](crate::Enqueue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enqueued {
    /// A new task, with this id.
    Created(i64),
    /// A live task held the unique key: this one, left as it was.
    Existing(i64),
    /// A live task held the unique key and had not started: this one, now
    /// with the new step, due time and priority.
    Replaced(i64),
    /// The throttle's window was taken: this is the task that took it (it
    /// may have finished since).
    Throttled(i64),
}

impl Enqueued {
    /// The id of the task the enqueue created or found.
    pub fn id(self) -> i64 {
        match self {
            Enqueued::Created(id)
            | Enqueued::Existing(id)
            | Enqueued::Replaced(id)
            | Enqueued::Throttled(id) => id,
        }
    }

    /// Whether a new task was stored.
    pub fn is_created(self) -> bool {
        matches!(self, Enqueued::Created(_))
    }
}

/// A checked [`Enqueue`](crate::Enqueue), as the statements bind it.
#[doc(hidden)]
#[derive(Debug)]
pub struct NewTask {
    pub(crate) step: Encoded,
    /// The delay in µs, or the time (`at`) when not `None`.
    pub(crate) delay: i64,
    pub(crate) at: Option<DateTime<Utc>>,
    pub(crate) unique_key: Option<String>,
    pub(crate) on_conflict: OnConflict,
    /// The throttle key and window in µs.
    pub(crate) throttle: Option<(String, i64)>,
}

/// Whether a throttle's window was free.
#[doc(hidden)]
pub enum Window {
    /// It was: this enqueue took it.
    Taken,
    /// Another enqueue took it, and stored this task (`None`: none yet).
    Held(Option<i64>),
}
