//! Ends waits whose deadline passed, and deletes finished and cancelled tasks
//! once they have been kept long enough, throttle windows that have passed and
//! rate buckets left idle.

use std::sync::Arc;
use std::time::Duration;

use super::Runtime;

/// Every poll interval, makes the waiting tasks whose deadline passed ready
/// (their next step runs without a signal), and looks for work at once if it
/// found any.
pub(super) async fn expire_waits(rt: Arc<Runtime>) {
    loop {
        tokio::time::sleep(rt.config.poll_interval).await;
        loop {
            match rt.store.expire_waits(BATCH).await {
                Ok(0) => break,
                Ok(expired) => {
                    tracing::debug!(expired, "waits timed out");
                    rt.wake.notify_one();
                    if expired < BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ending timed-out waits failed");
                    break;
                }
            }
        }
    }
}

/// How often a worker deletes passed throttle windows and idle rate buckets.
const LIMITS_EVERY: Duration = Duration::from_secs(60);

/// Deletes passed throttle windows and idle rate buckets, in batches of
/// [`BATCH`], until none are left.
async fn clean_limits(rt: &Runtime) {
    loop {
        match rt.store.clean_limits(BATCH).await {
            Ok(deleted) => {
                if deleted > 0 {
                    tracing::debug!(
                        deleted,
                        "deleted passed throttle windows and idle rate buckets"
                    );
                }
                if deleted < BATCH as u64 {
                    return;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "deleting passed throttle windows failed");
                return;
            }
        }
    }
}

/// The most rows one cleanup statement deletes: small enough to hold few
/// locks and little WAL at a time.
const BATCH: usize = 1000;

/// Every so often (every 2 s by default, half the shortest retention
/// period), deletes expired tasks in batches of [`BATCH`] until none are left.
/// Every worker does this; no leader is needed, since each batch skips the rows
/// another worker is deleting.
pub(super) async fn run(rt: Arc<Runtime>) {
    let keep = rt.config.retention;
    // Without a retention period for finished tasks, the children a join
    // step has read are deleted within a couple of seconds.
    let finished = keep.finished.unwrap_or(Duration::from_secs(4));
    let shortest = finished.min(keep.cancelled).min(keep.signals);
    let every = (shortest / 2).clamp(Duration::from_millis(100), Duration::from_secs(20));
    let mut limits_cleaned: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        // The history is switched on and off in the database, for all.
        rt.read_history_switch().await;
        if limits_cleaned.is_none_or(|at| at.elapsed() >= LIMITS_EVERY) {
            limits_cleaned = Some(std::time::Instant::now());
            clean_limits(&rt).await;
        }
        loop {
            match rt.store.clean(&keep, BATCH).await {
                Ok(deleted) => {
                    if deleted > 0 {
                        tracing::debug!(
                            deleted,
                            "deleted finished and cancelled tasks kept long enough"
                        );
                    }
                    if deleted < BATCH as u64 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deleting expired finished tasks failed");
                    break;
                }
            }
        }
    }
}
