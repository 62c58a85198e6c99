//! The completer: records the outcomes of many steps in one transaction.
//!
//! Executors hand their outcome over and wait for the answer. The completer takes
//! whatever has queued up while the previous flush ran (up to `MAX_BATCH`) and
//! writes it at once, so under load a commit serves many steps, and an idle
//! worker still records a lone outcome right away.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Runtime;
use crate::model::Error;
use crate::model::{is_refusal, Outcome, Trace};

/// The most outcomes written by one flush.
const MAX_BATCH: usize = 256;

/// One outcome waiting to be written, and where to send the answer: whether
/// the attempt still held its task.
pub(super) struct Completion {
    pub id: i64,
    pub fence: i64,
    /// Shared with the executor, which keeps it to try again if this fails.
    pub outcome: Arc<Outcome>,
    /// What the history records of the attempt.
    pub trace: Arc<Trace>,
    pub reply: oneshot::Sender<Result<bool, Error>>,
}

pub(super) type Completions = mpsc::UnboundedSender<Completion>;

pub(super) fn channel() -> (Completions, mpsc::UnboundedReceiver<Completion>) {
    mpsc::unbounded_channel()
}

pub(super) async fn run(rt: Arc<Runtime>, mut queue: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Steps that finished at the same moment as this one are typically
        // runnable right now: let them hand their outcomes over first, so one
        // flush takes them all. This costs a turn of the scheduler, not a timer.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(completion) => batch.push(completion),
                Err(_) => break,
            }
        }
        tracing::trace!(outcomes = batch.len(), "recording outcomes");
        let writes = rt.writes.lock().await;
        let mut failed = Vec::new();
        let done: Vec<(i64, i64, &Outcome)> =
            batch.iter().map(|c| (c.id, c.fence, &*c.outcome)).collect();
        let traces: Vec<&Trace> = batch.iter().map(|c| &*c.trace).collect();
        let history = rt.history(&traces);
        match rt.store.complete_many(&done, history.as_ref()).await {
            Ok(held) => {
                failed = failures(
                    &rt,
                    batch.iter().zip(&held).filter(|(_, h)| **h).map(|(c, _)| c),
                );
                for (completion, held) in batch.drain(..).zip(held) {
                    let _ = completion.reply.send(Ok(held));
                }
            }
            Err(e) if is_refusal(&e) => {
                // The database refused a value of one of the outcomes (a next
                // step PostgreSQL cannot store, say). The others must not share
                // its fate: each is written alone, and the one at fault parks
                // its task with the database's reason.
                tracing::debug!(error = %e, outcomes = batch.len(), "writing the outcomes one by one");
                for completion in batch.drain(..) {
                    let held = alone(&rt, &completion).await;
                    if let Ok((true, park)) = &held {
                        let written = park.as_ref().unwrap_or(&completion.outcome);
                        let (id, trace) = (completion.id, &completion.trace);
                        failed.extend(crate::model::TaskError::of(
                            id,
                            written,
                            trace,
                            &rt.config.name,
                        ));
                    }
                    let _ = completion.reply.send(held.map(|(held, _)| held));
                }
            }
            Err(e) => {
                // Every executor gets the error and retries on its own schedule.
                let text = e.to_string();
                for completion in batch.drain(..) {
                    let _ = completion.reply.send(Err(Error::Completion(text.clone())));
                }
            }
        }
        drop(writes);
        tell_errors(&rt, failed).await;
    }
}

/// The failed attempts among `written` (their outcomes written).
fn failures<'a>(
    rt: &Runtime,
    written: impl Iterator<Item = &'a Completion>,
) -> Vec<crate::model::TaskError> {
    written
        .filter_map(|c| crate::model::TaskError::of(c.id, &c.outcome, &c.trace, &rt.config.name))
        .collect()
}

/// Tells of failed attempts: this process's
/// [`Worker::errors`](crate::Worker::errors) receivers, and on PostgreSQL
/// every listener, in one statement (after the flush has answered its steps
/// and let go of the writes).
async fn tell_errors(rt: &Runtime, events: Vec<crate::model::TaskError>) {
    if events.is_empty() {
        return;
    }
    let payloads: Vec<String> = events
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .collect();
    // Listeners elsewhere first: once this process's receivers have heard
    // of a failure, every listener has been told too.
    if let Err(e) = rt.store.notify_errors(&payloads).await {
        tracing::warn!(error = %e, "notifying listeners of failed attempts failed");
    }
    for event in events {
        // No receiver is not an error.
        let _ = rt.errors.send(event);
    }
}

/// Writes one outcome; if the database refuses it, parks the task with the
/// reason instead. Whether the attempt still held its task, and the outcome
/// that parked it instead of its own, if one did.
async fn alone(rt: &Runtime, c: &Completion) -> Result<(bool, Option<Outcome>), Error> {
    let traces = [&*c.trace];
    let history = rt.history(&traces);
    let error = match rt
        .store
        .complete_many(&[(c.id, c.fence, &c.outcome)], history.as_ref())
        .await
    {
        Ok(held) => return Ok((held.first().copied().unwrap_or(false), None)),
        Err(e) if is_refusal(&e) => e,
        Err(e) => return Err(Error::Completion(e.to_string())),
    };
    tracing::error!(task_id = c.id, %error, "the database refused the step's outcome; parking task");
    let park = Outcome::refused(&error);
    match rt
        .store
        .complete_many(&[(c.id, c.fence, &park)], history.as_ref())
        .await
    {
        Ok(held) => Ok((held.first().copied().unwrap_or(false), Some(park))),
        Err(e) => Err(Error::Completion(e.to_string())),
    }
}
