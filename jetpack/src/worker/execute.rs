//! Runs one attempt of one step and records its outcome.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tracing::{field, Instrument};

use super::{lock, Backoff, Runtime, Slot};
use crate::model::MAX_KEY_LEN;
use crate::model::{is_refusal, Claimed, EnqueueRecord, Outcome, Trace, FENCE_MAX};
use crate::workflow::Scheduler;
use crate::workflow::StepError;
use crate::workflow::{Context, Stop, StopReason, Wait, Wakeup};

pub(super) async fn run<T: Scheduler>(
    rt: Arc<Runtime>,
    mut task: Claimed,
    mut slot: Slot,
    stop: Arc<Stop>,
) {
    let span = tracing::info_span!(
        "step",
        task_id = task.id,
        attempt = task.tried,
        machine = field::Empty,
        step = field::Empty,
    );
    let started = std::time::Instant::now();
    async {
        let Some((outcome, tx, kind, labels)) = attempt::<T>(&rt, &task, &stop).await else {
            return;
        };
        // A task at the step it was enqueued with: its row, the record of
        // its enqueue, goes into the history with this transition.
        let enqueued = task.enqueued_at.map(|at| EnqueueRecord {
            at,
            kind: std::mem::take(&mut task.kind),
            step: std::mem::take(&mut task.step),
        });
        let trace = Trace {
            kind,
            attempt: task.tried,
            duration_us: i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX),
            labels,
            enqueued,
        };
        if tx.is_none() {
            // The step is done; only its outcome is left to write, with others.
            // (A step's own transaction holds a connection until it commits, so
            // that step keeps its running slot until then.)
            slot.stop_running();
        }
        record(&rt, &task, outcome, tx, &stop, trace).await;
    }
    .instrument(span)
    .await;
    {
        // Only this attempt's entry: after a lost lease, this worker may hold the
        // task again as a newer attempt.
        let mut in_flight = lock(&rt.in_flight);
        if in_flight.get(&task.id).map(|a| a.fence) == Some(task.fence) {
            in_flight.remove(&task.id);
        }
    }
    drop(slot);
}

/// What an attempt ended with: the outcome to record, the step's
/// transaction if it opened one, and the kind and metric labels of the step
/// it ran (`None` when its JSON did not decode).
type Ended = (
    Outcome,
    Option<Box<dyn Any + Send>>,
    Option<String>,
    Option<crate::metrics::Labels>,
);

/// Parks a task with `error`, logged.
fn park(error: String) -> (Outcome, Option<Box<dyn Any + Send>>) {
    tracing::error!(%error, "parking task");
    (Outcome::park(error), None)
}

/// Decodes and runs the step; returns what should happen to the task; `None`
/// when there is nothing to record (the task went back to the claims).
async fn attempt<T: Scheduler>(rt: &Runtime, task: &Claimed, stop: &Stop) -> Option<Ended> {
    let value: T = match serde_json::from_str(&task.step) {
        Ok(value) => value,
        Err(e) => {
            let (outcome, tx) = park(format!(
                "cannot decode the step JSON: {e} (a step is stored as {{\"Machine\":{{\"Step\":{{..fields..}}}}}})"
            ));
            return Some((outcome, tx, None, None));
        }
    };
    let labels = (value.machine_name(), value.step_name());
    let kind = crate::workflow::kind(labels.0, labels.1);
    match value.limit_scope() {
        Err(e) => {
            let (outcome, tx) = park(e);
            return Some((outcome, tx, Some(kind), Some(labels)));
        }
        // A row written without its scope (by hand): it goes back, with its
        // scope, to the claims that keep its step's limit.
        Ok(Some(scope)) if task.scope.is_none() => {
            tracing::info!(%scope, "a task of a limited step had no scope: given it, and released");
            // Stored again, so that a row under a former name of the step
            // takes the name its scope is of.
            let step = match value.into_step_json() {
                Ok(step) => step,
                Err(e) => {
                    let (outcome, tx) = park(format!("cannot encode the step JSON: {e}"));
                    return Some((outcome, tx, Some(kind), Some(labels)));
                }
            };
            // The step stored again is the task's first transition when it
            // is still at the step it was enqueued with: the history takes
            // the record of that enqueue in first.
            let enqueued = (task.enqueued_at)
                .filter(|_| rt.history.load(std::sync::atomic::Ordering::Relaxed))
                .map(|at| EnqueueRecord {
                    at,
                    kind: task.kind.clone(),
                    step: task.step.clone(),
                });
            if let Err(e) = rt
                .store
                .rescope(task.id, task.fence, &scope, &step, &kind, enqueued.as_ref())
                .await
            {
                tracing::warn!(error = %e, "giving a task its scope failed; its lease will expire");
            }
            return None;
        }
        Ok(_) => {}
    }
    let started = std::time::Instant::now();
    let lag = Duration::from_micros(u64::try_from(task.lag_us).unwrap_or(0));
    rt.metrics.started(labels, lag);
    let ran = run_step(rt, task, stop, value).await;
    rt.metrics
        .ended(labels, started.elapsed(), ran.as_ref().map(|(o, _)| o));
    let (outcome, tx) = ran?;
    Some((outcome, tx, Some(kind), Some(labels)))
}

/// Runs the decoded step `value` of `task`; `None` when it was rate limited
/// (the task went back).
async fn run_step<T: Scheduler>(
    rt: &Runtime,
    task: &Claimed,
    stop: &Stop,
    value: T,
) -> Option<(Outcome, Option<Box<dyn Any + Send>>)> {
    let span = tracing::Span::current();
    span.record("machine", value.machine_name());
    span.record("step", value.step_name());
    let policy = value.policy();
    let attempts = policy.limit.saturating_add(1);
    if task.tried > attempts.saturating_add(1) {
        // Claims count one at a time and park at `attempts + 1`: more was
        // written by hand.
        return Some(park(format!(
            "tried is {}, beyond the {attempts} attempts of this step (was it set by hand?); \
             clear error to run the step again with a full retry budget",
            task.tried
        )));
    }
    if task.tried > attempts {
        return Some(park(format!(
            "attempt {} of at most {attempts} never finished: its worker stopped or lost \
             its lease while running it (a crash counts as a failed attempt)",
            task.tried - 1
        )));
    }
    if task.fence >= FENCE_MAX {
        return Some(park(format!(
            "the fence is {}, its largest value, so that attempts can no longer be told \
             apart (was it set by hand?); set fence to 0 and clear error to resume",
            task.fence
        )));
    }

    let cx = Context::new(task.id, task.tried, &rt.shared, stop)
        .with_signal(task.wait_for.clone(), task.signal.clone());
    let run = AssertUnwindSafe(value.run(&cx)).catch_unwind();
    let result = match policy.timeout {
        None => run.await,
        Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
            Ok(Err(StepError::from(format!(
                "the step timed out after {limit:?}"
            ))))
        }),
    };
    let then = cx.take_then();
    let result = match result {
        // Children the step spawned for a join it did not return run detached.
        Ok(Ok(done)) => match cx.settle_children(then.join && done.is_some()).await {
            Ok(()) => Ok(Ok(done)),
            Err(e) => Ok(Err(StepError::from(format!(
                "cannot detach the children the step spawned: {e}"
            )))),
        },
        other => other,
    };
    let tx = cx.take_tx();
    let error = match result {
        Ok(Ok(None)) => {
            tracing::debug!("task finished");
            // A parent's join reads an awaited child's result from its row.
            let finish = if task.awaited || rt.config.retention.finished.is_some() {
                Outcome::Keep {
                    result: then.output,
                }
            } else {
                Outcome::Finish
            };
            return Some((finish, tx));
        }
        Ok(Ok(Some((next, wakeup)))) => match next_step(&next, wakeup, then.wait, then.join) {
            Ok(outcome) => {
                tracing::debug!(next = next.step_name(), ?wakeup, "step done");
                return Some((outcome, tx));
            }
            Err(error) => error,
        },
        Ok(Err(error)) => error,
        Err(panic) => StepError::from(format!("the step panicked: {}", panic_message(&*panic))),
    };
    // A failed step's transaction rolls back as it is dropped here.
    drop(tx);
    let text = error.chain();
    if let Some(retry_after) = error.retry_after() {
        back(rt, task, retry_after, policy.max_delay).await;
        return None;
    }
    if error.is_permanent() || task.tried >= attempts {
        tracing::error!(error = %text, tried = task.tried, "step failed; parking task");
        Some((Outcome::park(text), None))
    } else {
        let delay = policy.delay_after(task.tried);
        tracing::warn!(error = %text, retry_in = ?delay, "step failed; will retry");
        Some((Outcome::Retry { delay, error: text }, None))
    }
}

/// Gives back `task`, whose step was rate limited, without counting its
/// attempt, as [`limits::give_back`](crate::limits::give_back) says.
async fn back(rt: &Runtime, task: &Claimed, retry_after: Option<Duration>, max_delay: Duration) {
    let scope = task.scope.as_deref();
    let (delay, slow) = crate::limits::give_back(&rt.limited, scope, retry_after, max_delay);
    // The task is due again (and the scope's pause ends) after `delay`.
    rt.limited_busy_for(delay + super::LIMITED_BUSY);
    tracing::info!(retry_in = ?delay, slowed = slow.is_some(), "step rate limited; task goes back");
    if let Err(e) = rt.store.back(task.id, task.fence, delay, slow).await {
        tracing::warn!(error = %e, "giving back a rate-limited task failed; its lease will expire");
    }
}

/// The outcome that moves the task to `next`, or why it cannot be stored: a
/// step that does not serialize, or a wakeup outside what the database holds.
/// Either fails the attempt for good, here, instead of failing the write of
/// the outcomes flushed with it.
fn next_step<T: Scheduler>(
    next: &T,
    wakeup: Wakeup,
    wait: Option<Wait>,
    join: bool,
) -> Result<Outcome, StepError> {
    let step = serde_json::to_string(next)
        .map_err(|e| StepError::permanent(format!("cannot serialize the next step: {e}")))?;
    crate::model::wakeup_binds(&wakeup)
        .map_err(|e| StepError::permanent(format!("cannot schedule the next step: {e}")))?;
    let kind = crate::workflow::kind(next.machine_name(), next.step_name());
    let scope = next.limit_scope().map_err(StepError::permanent)?;
    if join {
        return Ok(Outcome::Join { step, kind, scope });
    }
    let Some(wait) = wait else {
        return Ok(Outcome::Next {
            step,
            kind,
            wakeup,
            scope,
        });
    };
    let wrong = |what: String| {
        StepError::permanent(format!("cannot wait for signal `{}`: {what}", wait.name()))
    };
    if wait.name().is_empty() || wait.name().contains('\0') {
        return Err(wrong(
            "a signal's name must be non-empty text without NUL".into(),
        ));
    }
    if let Some(key) = wait.wait_key() {
        if key.is_empty() || key.contains('\0') || key.len() > MAX_KEY_LEN {
            return Err(wrong(format!(
                "its key must be non-empty text without NUL, at most {MAX_KEY_LEN} bytes"
            )));
        }
    }
    if let Some(timeout) = wait.wait_timeout() {
        crate::model::micros(timeout).map_err(|e| wrong(e.to_string()))?;
    }
    Ok(Outcome::Wait {
        step,
        kind,
        name: wait.name(),
        key: wait.wait_key().map(str::to_string),
        timeout: wait.wait_timeout(),
        scope,
    })
}

/// Writes the outcome, retrying while the database is unreachable for as long as
/// the lease lasts; after that the lease expires and another worker reruns the step.
async fn record(
    rt: &Runtime,
    task: &Claimed,
    outcome: Outcome,
    mut tx: Option<Box<dyn Any + Send>>,
    stop: &Stop,
    trace: Trace,
) {
    let mut outcome = Arc::new(outcome);
    let trace = Arc::new(trace);
    if let Some(attempt) = lock(&rt.in_flight).get_mut(&task.id) {
        if attempt.fence == task.fence {
            attempt.recording = true;
        }
    }
    let mut backoff = Backoff::default();
    let mut waited = Duration::ZERO;
    loop {
        let in_tx = tx.is_some();
        let result = match tx.take() {
            Some(tx) => {
                let traces = [&*trace];
                let history = rt.history(&traces);
                rt.store
                    .complete_in_tx(tx, task.id, task.fence, &outcome, history.as_ref())
                    .await
            }
            None => complete(rt, task, Arc::clone(&outcome), Arc::clone(&trace)).await,
        };
        let error = match result {
            Ok(true) => {
                // A step due soon may be this worker's next job, and so may
                // the children a step spawned in its transaction: look.
                if in_tx
                    || matches!(
                        *outcome,
                        Outcome::Retry { .. }
                            | Outcome::Join { .. }
                            | Outcome::Next {
                                wakeup: Wakeup::Now | Wakeup::Delay(_),
                                ..
                            }
                    )
                {
                    rt.wake.notify_one();
                }
                return;
            }
            Ok(false) if stop.reason() == Some(StopReason::Cancelled) => {
                if let Some(labels) = trace.labels {
                    rt.metrics.cancelled(labels);
                }
                tracing::info!("the task was cancelled: the step's outcome is discarded");
                return;
            }
            Ok(false) => {
                tracing::warn!("the lease was lost before the outcome was recorded: another attempt owns the task now, or the task was cancelled");
                return;
            }
            Err(e) => e,
        };
        if in_tx {
            // The step's transaction did not commit, so its writes are gone: the
            // attempt failed and the step must run again, not move on. If the
            // database refused the outcome itself, running it again would only
            // be refused again: the task parks at this step with the reason.
            outcome = Arc::new(if is_refusal(&error) {
                tracing::error!(%error, "the database refused the step's outcome; parking task");
                Outcome::refused(&error)
            } else {
                Outcome::Retry {
                    delay: Duration::ZERO,
                    error: format!("the step's transaction did not commit: {error}"),
                }
            });
        }
        let pause = backoff.next();
        waited += pause;
        if waited > rt.config.lease {
            tracing::error!(%error, "recording the outcome failed; the lease will expire and the step rerun");
            return;
        }
        tracing::warn!(%error, retry_in = ?pause, "recording the outcome failed");
        tokio::time::sleep(pause).await;
    }
}

/// Hands the outcome to the completer, which writes it with others in one
/// statement, and waits for the answer.
async fn complete(
    rt: &Runtime,
    task: &Claimed,
    outcome: Arc<Outcome>,
    trace: Arc<Trace>,
) -> Result<bool, crate::model::Error> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let completion = super::complete::Completion {
        id: task.id,
        fence: task.fence,
        outcome,
        trace,
        reply,
    };
    let stopped = || crate::model::Error::Completion("the worker's completer has stopped".into());
    if rt.completions.send(completion).is_err() {
        return Err(stopped());
    }
    answer.await.unwrap_or_else(|_| Err(stopped()))
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
