//! Runs the worker's schedules: on each tick, the worker that moves the
//! schedule's row to it enqueues the tick's task, in one transaction.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Runtime;
use crate::model::Error;
use crate::schedule::Schedule;

/// The longest a worker goes without looking at its schedules (a tick
/// another worker fired, a clock that jumped).
const LOOK_AGAIN: Duration = Duration::from_secs(60);

/// How far a schedule's last tick may lie ahead of this worker's clock (the
/// clocks of the workers that fire it differ a little) before it is taken
/// for one written by hand: ticks after it would never come.
const AHEAD: Duration = Duration::from_secs(300);

pub(super) async fn run(rt: Arc<Runtime>, schedules: Arc<Vec<Schedule>>) {
    if schedules.is_empty() {
        return;
    }
    let stop = rt.shared.shutdown.clone();
    loop {
        let now = Utc::now();
        let mut wake = now + LOOK_AGAIN;
        for schedule in schedules.iter() {
            match fire(&rt, schedule, now).await {
                Ok(Some(next)) => wake = wake.min(next),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(schedule = %schedule.name, error = %e, "running a schedule failed; trying again in a second");
                    wake = wake.min(now + Duration::from_secs(1));
                }
            }
        }
        let nap = (wake - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(nap) => {}
        }
    }
}

/// Enqueues the ticks of `schedule` due at `now`, unless another worker did;
/// the time of its next tick.
async fn fire(
    rt: &Runtime,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Error> {
    // A schedule seen for the first time starts at its latest tick: that one
    // has passed before it existed, so it does not run.
    let start = schedule.latest(now).unwrap_or(now);
    let last = rt.store.last_tick(&schedule.name, start).await?;
    if last > now + AHEAD {
        // Set by hand (or by a worker whose clock ran far ahead): the schedule
        // would stop without a word. It starts again as if seen for the first
        // time: from its latest tick, which does not run.
        tracing::warn!(
            schedule = %schedule.name,
            last_tick = %last,
            "the schedule's last tick is in the future (set by hand?), so it would never fire again; it fires from now on"
        );
        rt.store
            .fire(&schedule.name, last, start, Vec::new())
            .await?;
        return Ok(schedule.after(now));
    }
    let due = schedule.due(last, now);
    if let Some(&latest) = due.last() {
        let tasks = due
            .iter()
            .map(|&tick| schedule.task(tick))
            .collect::<Result<Vec<_>, _>>()?;
        if rt.store.fire(&schedule.name, last, latest, tasks).await? {
            tracing::debug!(schedule = %schedule.name, ticks = due.len(), tick = %latest, "schedule fired");
        }
    }
    Ok(schedule.after(now))
}
