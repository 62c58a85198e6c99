//! Turns database notifications into wakeups of the fetch loop.

use std::sync::Arc;

use super::{lock, Backoff, Runtime};
use crate::model::Notice;

/// Listens for new work and stop requests. When the listening connection drops
/// it reconnects with backoff, and wakes the fetch loop after reconnecting since
/// notifications may have been missed; polling covers the gap meanwhile.
pub(super) async fn run(rt: Arc<Runtime>) {
    let mut backoff = Backoff::default();
    loop {
        let mut listener = match rt.store.listen().await {
            Ok(listener) => listener,
            Err(e) => {
                let pause = backoff.next();
                tracing::warn!(error = %e, retry_in = ?pause, "listening for notifications failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        rt.wake.notify_one();
        loop {
            match listener.recv().await {
                Ok(Notice::Wake) => {
                    backoff.reset();
                    rt.wake.notify_one();
                }
                Ok(Notice::Cancel(id)) => {
                    backoff.reset();
                    let held = lock(&rt.in_flight).get(&id).map(|a| (id, a.fence));
                    if let Some(attempt) = held {
                        rt.stop_lost(vec![attempt], true).await;
                    }
                }
                Ok(Notice::Stop) => {
                    tracing::info!("stop requested through the database");
                    rt.shared.shutdown.cancel();
                }
                Err(e) => {
                    let pause = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?pause, "notification connection failed");
                    tokio::time::sleep(pause).await;
                    break;
                }
            }
        }
    }
}
