//! The history's records: a task's transitions, failed attempts as events,
//! and the activity per minute and edge.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Error, Outcome, Trace};

/// One transition of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The row's id: transitions of one task are in this order.
    pub id: i64,
    /// The task.
    pub task_id: i64,
    /// When it happened, by the database clock.
    pub at: DateTime<Utc>,
    /// What happened: `enqueued`, `next`, `wait`, `join`, `finished`,
    /// `retry`, `parked`, `cancelled`, `resumed`, `woken`, `edited` or
    /// `deleted`.
    pub event: String,
    /// The kind (`Machine.Step`) the task was at; `None` when it was
    /// enqueued, or its step did not decode.
    pub from_kind: Option<String>,
    /// The kind the task went to (the same after a retry); `None` when it
    /// ended.
    pub to_kind: Option<String>,
    /// The step it went to, as JSON, when the step changed.
    pub step: Option<String>,
    /// The attempt that ended, for an outcome of an attempt.
    pub attempt: Option<i32>,
    /// The worker that ran that attempt.
    pub worker: Option<String>,
    /// How long that attempt ran.
    pub duration: Option<Duration>,
    /// The error of a failed attempt, of a park, or a cancel's reason.
    pub error: Option<String>,
}

/// A failed attempt, as [`Worker::errors`](crate::Worker::errors) tells it
/// in the worker's process and, on PostgreSQL, a notification on the channel
/// `jetpack_errors` tells every listener (its payload is this, as JSON:
/// `serde_json::from_str::<TaskError>(payload)`). A retry and a park alike;
/// `parked` tells them apart. Sent once the outcome is written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct TaskError {
    /// The task.
    pub task_id: i64,
    /// The step it was at (`Machine.Step`); `None` when its JSON did not decode.
    pub kind: Option<String>,
    /// The attempt that failed.
    pub attempt: i32,
    /// Whether the task is parked (no retry left, or a permanent error).
    pub parked: bool,
    /// The error, at most 4,000 bytes of it.
    pub error: String,
    /// The worker that ran the attempt.
    pub worker: String,
}

/// The channel of [`TaskError`] notifications on PostgreSQL.
pub const ERRORS_CHANNEL: &str = "jetpack_errors";

/// The most of an error a [`TaskError`] carries: a PostgreSQL notification
/// holds at most 8,000 bytes.
const MAX_EVENT_ERROR: usize = 4000;

impl TaskError {
    /// The event of a failed attempt `outcome` of `trace` by `worker`, if it
    /// is one.
    pub(crate) fn of(id: i64, outcome: &Outcome, trace: &Trace, worker: &str) -> Option<Self> {
        let (error, parked) = match outcome {
            Outcome::Retry { error, .. } => (error, false),
            Outcome::Park { error } => (error, true),
            _ => return None,
        };
        let mut error = error.clone();
        if error.len() > MAX_EVENT_ERROR {
            let mut end = MAX_EVENT_ERROR;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
        }
        Some(TaskError {
            task_id: id,
            kind: trace.kind.clone(),
            attempt: trace.attempt,
            parked,
            error,
            worker: worker.to_string(),
        })
    }
}

/// What happened since a moment, from the history: per minute, and per edge
/// of the machines' graphs ([`activity`](crate::activity)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Activity {
    /// Each minute with transitions, oldest first.
    pub minutes: Vec<Minute>,
    /// How many tasks moved along each edge (`from` kind, `to` kind).
    pub moves: Vec<(String, String, i64)>,
}

/// One minute of [`Activity`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Minute {
    /// The minute's start.
    pub at: DateTime<Utc>,
    /// Attempts that moved a task to a next step (`next`, `wait`, `join`).
    pub moved: i64,
    /// Tasks that finished.
    pub finished: i64,
    /// Attempts that failed (retried or parked).
    pub failed: i64,
    /// How many of the moves went along each edge (`from` kind, `to` kind).
    pub moves: Vec<(String, String, i64)>,
}

impl Activity {
    /// The activity of `minutes` (oldest first), their moves summed per edge:
    /// to keep a window of minutes up to date by reading only the newest
    /// ones (the dashboard keeps its last hour so).
    pub fn from_minutes(minutes: Vec<Minute>) -> Self {
        let mut moves = std::collections::BTreeMap::<(String, String), i64>::new();
        for (from, to, n) in minutes.iter().flat_map(|m| &m.moves) {
            *moves.entry((from.clone(), to.clone())).or_default() += n;
        }
        Activity {
            minutes,
            moves: moves.into_iter().map(|((f, t), n)| (f, t, n)).collect(),
        }
    }

    /// Reads the JSON list a backend's statement returns: per minute and
    /// edge (none for what is not a move), `[unix seconds, from, to, moved,
    /// finished, failed]`, by minute.
    pub(crate) fn read(rows: &str) -> Result<Self, Error> {
        type Row = (i64, Option<String>, Option<String>, i64, i64, i64);
        let rows: Vec<Row> = serde_json::from_str(rows)
            .map_err(|e| Error::Admin(format!("the activity does not read: {e}")))?;
        let mut minutes: Vec<Minute> = Vec::new();
        for (at, from, to, moved, finished, failed) in rows {
            let Some(at) = DateTime::from_timestamp(at, 0) else {
                continue;
            };
            let minute = match minutes.last_mut() {
                Some(last) if last.at == at => last,
                _ => {
                    minutes.push(Minute {
                        at,
                        moved: 0,
                        finished: 0,
                        failed: 0,
                        moves: Vec::new(),
                    });
                    let last = minutes.len() - 1;
                    &mut minutes[last]
                }
            };
            minute.moved += moved;
            minute.finished += finished;
            minute.failed += failed;
            if let (Some(from), Some(to), true) = (from, to, moved > 0) {
                minute.moves.push((from, to, moved));
            }
        }
        Ok(Activity::from_minutes(minutes))
    }
}

/// A row of history as the backends select it, its time of type `T`.
pub(crate) type TransitionRow<T> = (
    i64,
    i64,
    T,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// A transition as selected, with its time already read.
pub(crate) fn transition(row: TransitionRow<DateTime<Utc>>) -> Transition {
    let (id, task_id, at, event, from_kind, to_kind, step, attempt, worker, duration_us, error) =
        row;
    Transition {
        id,
        task_id,
        at,
        event,
        from_kind,
        to_kind,
        step,
        attempt,
        worker,
        duration: duration_us.and_then(|us| u64::try_from(us).ok().map(Duration::from_micros)),
        error,
    }
}
