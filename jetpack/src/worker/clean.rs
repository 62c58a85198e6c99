//! Deletes finished and cancelled tasks once they have been kept long enough.

use std::sync::Arc;
use std::time::Duration;

use super::Runtime;

/// The most rows one cleanup statement deletes: small enough to hold few
/// locks and little WAL at a time.
const BATCH: usize = 1000;

/// Every so often (a few times a minute, more often for short retention
/// periods), deletes expired tasks in batches of [`BATCH`] until none are left.
/// Every worker does this; no leader is needed, since each batch skips the rows
/// another worker is deleting.
pub(super) async fn run(rt: Arc<Runtime>) {
    let keep = rt.config.retention;
    let shortest = keep
        .finished
        .map_or(keep.cancelled, |f| f.min(keep.cancelled));
    let every = (shortest / 2).clamp(Duration::from_millis(100), Duration::from_secs(20));
    loop {
        tokio::time::sleep(every).await;
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
