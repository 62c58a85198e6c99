//! Keeps the leases of running steps alive, and stops the steps that lost them.

use std::collections::HashSet;
use std::sync::Arc;

use super::{lock, Runtime};

/// Every third of the lease, extends the leases of all attempts this worker
/// holds, in one statement.
///
/// An attempt whose lease was not renewed has either just recorded its outcome
/// (nothing to renew) or really lost the task: its lease expired and another
/// attempt took it, or a person changed or deleted the row. Only the second is
/// reported, and its step is stopped: its outcome would be fenced off anyway,
/// and another attempt may be running the same step now.
pub(super) async fn run(rt: Arc<Runtime>) {
    let every = rt.config.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        // No flush runs meanwhile: an attempt not yet marked as recording has
        // not been written by this worker.
        let _writes = rt.writes.lock().await;
        let held = rt.held();
        if held.is_empty() {
            continue;
        }
        let kept = match rt.store.heartbeat(&held, rt.config.lease).await {
            Ok(kept) if kept.len() < held.len() => kept,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "renewing leases failed");
                continue;
            }
        };
        let kept: HashSet<(i64, i64)> = kept.into_iter().collect();
        let lost = {
            let in_flight = lock(&rt.in_flight);
            held.into_iter()
                .filter(|a| !kept.contains(a))
                .filter(|(id, fence)| {
                    let lost = in_flight
                        .get(id)
                        .is_some_and(|a| a.fence == *fence && !a.recording);
                    if !lost {
                        tracing::trace!(task_id = id, "not renewed: the outcome was written");
                    }
                    lost
                })
                .collect()
        };
        rt.stop_lost(lost, false).await;
    }
}
