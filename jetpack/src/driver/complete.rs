//! Completions: the outcomes of attempts, written in batches or in a step's
//! own transaction, fenced so that only an attempt that still holds its task
//! writes; the notices of failed attempts.

use async_trait::async_trait;

use super::Base;
use crate::model::{Error, History, Outcome};

/// The statements of completions.
#[async_trait]
pub trait Completes: Base {
    /// Records the outcomes of attempts `(id, fence, outcome)`, all in one
    /// transaction, with their `history` when it is on; returns, in order,
    /// whether each attempt still held its task (false when its lease expired
    /// and another claim happened).
    async fn complete_many(
        db: &Self::Handle,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error>;

    /// Records one outcome on `tx`, the step's own transaction; whether the
    /// attempt still held its task (the caller then commits, or rolls back).
    async fn complete_in_tx(
        tx: &mut Self::Connection,
        id: i64,
        fence: i64,
        outcome: &Outcome,
        history: Option<&History<'_>>,
    ) -> Result<bool, Error>;

    /// Tells every listener of [`ERRORS_CHANNEL`](crate::model::ERRORS_CHANNEL)
    /// of failed attempts (JSON payloads); a backend without notifications does
    /// nothing.
    async fn notify_errors(db: &Self::Handle, payloads: &[String]) -> Result<(), Error>;
}

/// For each outcome of `done`, whether its attempt still held the task: whether
/// its (id, fence) is among those the statements wrote. By id alone, a stale
/// attempt flushed with the live attempt of the same task would count as held.
pub(crate) fn which_held(done: &[(i64, i64, &Outcome)], held: Vec<(i64, i64)>) -> Vec<bool> {
    let held: std::collections::HashSet<(i64, i64)> = held.into_iter().collect();
    done.iter()
        .map(|&(id, fence, _)| held.contains(&(id, fence)))
        .collect()
}
