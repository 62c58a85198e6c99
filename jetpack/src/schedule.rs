//! Schedules: tasks enqueued on the ticks of a cron expression, by the
//! workers, exactly once per tick whatever their number ([`Schedule`]).
//!
//! A feature: imports `model`, `enqueue` and `workflow` (docs/design.md, layers).

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use crate::enqueue::{to_json, Encoded};
use crate::model::Error;
use crate::workflow::IntoTask;

/// The longest schedule name, in bytes.
const MAX_NAME: usize = 200;

/// The most missed ticks a schedule may catch up.
const MAX_CATCH_UP: u32 = 1000;

/// What a schedule does with ticks that passed while no worker ran it (every
/// worker was down, or none declared it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missed {
    /// Only the most recent tick that passed runs (late); those before it
    /// are skipped. The default.
    Skip,
    /// The most recent tick runs, and up to this many before it, oldest first.
    CatchUp(u32),
}

/// Builds the task of one tick, from the tick's time.
type MakeTask = Arc<dyn Fn(DateTime<Utc>) -> Result<Encoded, Error> + Send + Sync>;

/// A task enqueued on every tick of a cron expression, in a time zone, by
/// whichever worker comes first: each declares the schedule
/// ([`WorkerBuilder::schedule`](crate::WorkerBuilder::schedule)), and the one
/// that moves the schedule's row (`jetpack_schedules`) to the tick enqueues
/// the tick's task in the same transaction. No leader, no duplicate on a
/// restart; a schedule no worker declares any more simply stops.
///
/// ```
/// use jetpack::{Missed, Schedule};
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Report { day: String }
/// # jetpack::task!(Nightly { Report });
/// # #[jetpack::async_trait] impl jetpack::Step<Nightly> for Report {
/// #     async fn step(self, _: &jetpack::Context<'_>) -> jetpack::StepResult<Self> { jetpack::NextStep::none() } }
/// let nightly = Schedule::cron("nightly-report", "0 30 2 * * *", |tick| Report {
///     day: tick.date_naive().to_string(),
/// })?
/// .time_zone("Europe/Berlin")?
/// .missed(Missed::CatchUp(3));
/// # Ok::<(), jetpack::Error>(())
/// ```
#[derive(Clone)]
pub struct Schedule {
    pub(crate) name: String,
    cron: croner::Cron,
    expression: String,
    zone: chrono_tz::Tz,
    pub(crate) missed: Missed,
    make: MakeTask,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("expression", &self.expression)
            .field("zone", &self.zone)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl Schedule {
    /// A schedule named `name` (1 to 200 bytes, unique among a worker's
    /// schedules: it names the schedule's row) whose ticks are those of the
    /// cron `expression`: five fields (minute, hour, day of month, month, day
    /// of week), or six with seconds first; `@daily` and the like too. On each
    /// tick, `task(tick)` is enqueued. In UTC unless [`time_zone`](Self::time_zone)
    /// says otherwise. An invalid expression is refused here.
    pub fn cron<T, F>(name: impl Into<String>, expression: &str, task: F) -> Result<Self, Error>
    where
        T: IntoTask,
        F: Fn(DateTime<Utc>) -> T + Send + Sync + 'static,
    {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
            return Err(Error::InvalidSchedule(format!(
                "a schedule's name must be 1 to {MAX_NAME} bytes without NUL, not {} bytes",
                name.len()
            )));
        }
        let cron: croner::Cron = expression.parse().map_err(|e| {
            Error::InvalidSchedule(format!(
                "schedule {name:?}: invalid cron expression {expression:?}: {e}"
            ))
        })?;
        Ok(Schedule {
            name,
            cron,
            expression: expression.to_string(),
            zone: chrono_tz::Tz::UTC,
            missed: Missed::Skip,
            make: Arc::new(move |tick| to_json(task(tick))),
        })
    }

    /// The time zone the expression's times are in, by its IANA name
    /// (`Europe/Berlin`): "every day at 02:30" follows daylight saving time.
    /// An unknown name is refused here.
    pub fn time_zone(mut self, zone: &str) -> Result<Self, Error> {
        self.zone = zone.parse().map_err(|_| {
            Error::InvalidSchedule(format!(
                "schedule {:?}: unknown time zone {zone:?} (an IANA name such as Europe/Berlin)",
                self.name
            ))
        })?;
        Ok(self)
    }

    /// What to do with ticks missed while no worker ran the schedule
    /// (default [`Missed::Skip`]). At most 1000 are caught up.
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = match missed {
            Missed::CatchUp(n) => Missed::CatchUp(n.min(MAX_CATCH_UP)),
            skip => skip,
        };
        self
    }

    /// The latest tick at or before `at`.
    pub(crate) fn latest(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole seconds (croner would take `at` itself as one).
        let local = at.trunc_subsecs(0).with_timezone(&self.zone);
        let tick = self.cron.find_previous_occurrence(&local, true).ok()?;
        Some(tick.with_timezone(&Utc))
    }

    /// The tick before `tick`.
    pub(crate) fn before(&self, tick: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = tick.trunc_subsecs(0).with_timezone(&self.zone);
        let tick = self.cron.find_previous_occurrence(&local, false).ok()?;
        Some(tick.with_timezone(&Utc))
    }

    /// The first tick after `at`.
    pub(crate) fn after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.trunc_subsecs(0).with_timezone(&self.zone);
        let tick = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(tick.with_timezone(&Utc))
    }

    /// The task of `tick`.
    pub(crate) fn task(&self, tick: DateTime<Utc>) -> Result<Encoded, Error> {
        (self.make)(tick)
    }

    /// The ticks due at `now` after `last`, oldest first: the latest, and as
    /// many before it as the policy catches up.
    pub(crate) fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let Some(latest) = self.latest(now).filter(|t| *t > last) else {
            return Vec::new();
        };
        let mut ticks = vec![latest];
        let earlier = match self.missed {
            Missed::CatchUp(n) => n,
            _ => 0,
        };
        while ticks.len() <= earlier as usize {
            match ticks.last().and_then(|&t| self.before(t)) {
                Some(t) if t > last => ticks.push(t),
                _ => break,
            }
        }
        ticks.reverse();
        ticks
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn every_minute(missed: Missed) -> Schedule {
        match Schedule::cron("m", "0 * * * * *", |_| every_minute_task()) {
            Ok(s) => s.missed(missed),
            Err(e) => panic!("{e}"),
        }
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        let time = Utc.with_ymd_and_hms(2026, 12, 3, h, m, s).single();
        time.unwrap_or_else(|| panic!("{h}:{m}:{s} is not a time"))
    }

    /// Ticks missed while no worker ran: the latest, and as many before it as
    /// the policy catches up, oldest first; none when the last tick is the
    /// latest.
    #[test]
    fn missed_ticks_follow_the_policy() {
        let now = at(10, 10, 30) + chrono::Duration::milliseconds(250);
        let last = at(10, 0, 0);
        assert_eq!(every_minute(Missed::Skip).due(last, now), [at(10, 10, 0)]);
        assert_eq!(
            every_minute(Missed::CatchUp(3)).due(last, now),
            [at(10, 7, 0), at(10, 8, 0), at(10, 9, 0), at(10, 10, 0)]
        );
        assert_eq!(every_minute(Missed::CatchUp(100)).due(last, now).len(), 10);
        assert!(every_minute(Missed::CatchUp(3))
            .due(at(10, 10, 0), now)
            .is_empty());
        assert_eq!(every_minute(Missed::Skip).after(now), Some(at(10, 11, 0)));
    }

    /// A time zone's daylight saving time moves the ticks in UTC.
    #[test]
    fn ticks_follow_the_time_zone() {
        let two_thirty = |missed| {
            let s = Schedule::cron("n", "0 30 2 * * *", |_| every_minute_task());
            s.and_then(|s| s.time_zone("Europe/Berlin"))
                .map(|s| s.missed(missed))
        };
        let s = match two_thirty(Missed::Skip) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        // Winter: UTC+1; summer: UTC+2.
        let winter = Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).single();
        let summer = Utc.with_ymd_and_hms(2026, 7, 3, 12, 0, 0).single();
        assert_eq!(
            winter.and_then(|t| s.after(t)),
            Utc.with_ymd_and_hms(2026, 12, 4, 1, 30, 0).single()
        );
        assert_eq!(
            summer.and_then(|t| s.after(t)),
            Utc.with_ymd_and_hms(2026, 7, 4, 0, 30, 0).single()
        );
    }

    fn every_minute_task() -> impl IntoTask {
        struct Task;
        impl IntoTask for Task {
            fn into_step_json(self) -> Result<String, serde_json::Error> {
                Ok("{}".into())
            }
            fn kind(&self) -> (&'static str, &'static str) {
                ("M", "S")
            }
            fn priority(&self) -> u8 {
                0
            }
            fn limit_scope(&self) -> Result<Option<String>, String> {
                Ok(None)
            }
        }
        Task
    }
}
