//! Plain data: the task row and its states, wakeups, rates, claims and
//! outcomes, filters and counts, history records, the error type.
//! The bottom layer: it does no I/O and imports nothing else of the crate.

mod admin;
mod enqueue;
mod error;
mod history;
mod outcome;
mod rate;
mod task;

pub(crate) use admin::counted;
pub use admin::{Change, Count, Filter, Related, Tallies, Tally};
pub(crate) use enqueue::{kind, one_kind, MAX_KEY_LEN};
pub use enqueue::{BoxFuture, Encoded, Enqueued, NewTask, OnConflict, Window, MAX_PRIORITY};
pub(crate) use error::is_refusal;
pub use error::Error;
#[cfg_attr(not(feature = "sqlite"), allow(unused_imports))]
pub(crate) use history::{transition, TransitionRow};
pub use history::{Activity, Minute, TaskError, Transition, ERRORS_CHANNEL};
pub use outcome::{Claimed, EnqueueRecord, History, Limit, Notice, Outcome, Retention, Trace};
pub(crate) use outcome::{Labels, FENCE_MAX};
pub use rate::Rate;
pub(crate) use task::{micros, wakeup_binds};
pub use task::{Cancel, Delivery, SignalTo, TaskRow, TaskState, Wakeup};
