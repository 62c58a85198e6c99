//! Keeps the leases of running steps alive.

use std::sync::Arc;

use super::Runtime;

/// Every third of the lease, extends the leases of all attempts this worker
/// holds, in one statement. A lost lease is logged; the attempt's fence keeps it
/// from overwriting the newer attempt.
pub(super) async fn run(rt: Arc<Runtime>) {
    let every = rt.config.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let held = rt.held();
        if held.is_empty() {
            continue;
        }
        match rt.store.heartbeat(&held, rt.config.lease).await {
            Ok(kept) if kept.len() < held.len() => {
                let kept: std::collections::HashSet<_> = kept.into_iter().collect();
                for (id, _) in held.iter().filter(|attempt| !kept.contains(attempt)) {
                    tracing::warn!(
                        task_id = id,
                        "lease lost: the task was taken over by another attempt"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "renewing leases failed"),
        }
    }
}
