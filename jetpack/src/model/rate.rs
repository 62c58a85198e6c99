//! Rate limits of step types, kept as token buckets in the database.

use std::time::Duration;

/// A rate limit on a step type ([`Step::RATE`](crate::Step::RATE)): at most
/// `count` steps start per `period`, across every worker of every process on
/// the database (per key, when [`Step::limit_key`](crate::Step::limit_key)
/// gives one).
///
/// The limit is a token bucket of `burst` tokens (by default `count`), which
/// refills at `count` per `period`: after a quiet time, up to `burst` steps
/// start at once, then one every `period / count`.
///
/// A step that hears "too many requests" from what it calls returns
/// [`StepError::rate_limited`](crate::StepError::rate_limited): the task goes
/// back without spending an attempt, the scope's rate halves (not below a
/// hundredth of the limit) and no step of the scope starts for the wait the
/// error gives; the rate then climbs back by a tenth of the limit per
/// `period`. The current rate is kept in the database, shared by every worker.
///
/// ```
/// use std::time::Duration;
/// use jetpack::Rate;
///
/// // 10 a second, 10 at once after a pause.
/// const API: Rate = Rate::per_second(10);
/// // 100 a minute, started evenly: never two at once.
/// const MAIL: Rate = Rate::per_minute(100).burst(1);
/// // 3 every 10 seconds.
/// const SLOW: Rate = Rate::new(3, Duration::from_secs(10));
/// assert_eq!(MAIL.steps_per_second(), 100.0 / 60.0);
/// # let _ = (API, SLOW);
/// ```
///
/// A count, period or burst of zero does not compile when it is a step's
/// `RATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    period: Duration,
    burst: u32,
}

impl Rate {
    /// At most `count` per `period`, with a burst of `count`.
    pub const fn new(count: u32, period: Duration) -> Rate {
        Rate {
            count,
            period,
            burst: count,
        }
    }

    /// At most `count` a second.
    pub const fn per_second(count: u32) -> Rate {
        Rate::new(count, Duration::from_secs(1))
    }

    /// At most `count` a minute.
    pub const fn per_minute(count: u32) -> Rate {
        Rate::new(count, Duration::from_secs(60))
    }

    /// At most `count` an hour.
    pub const fn per_hour(count: u32) -> Rate {
        Rate::new(count, Duration::from_secs(3600))
    }

    /// How many steps may start at once after a quiet time (the bucket's
    /// size); `1` spaces every start evenly. A worker looks for rate-limited
    /// steps at least every 50 ms, so a burst below the rate's count per
    /// 50 ms keeps a worker from reaching the full rate.
    pub const fn burst(self, burst: u32) -> Rate {
        Rate { burst, ..self }
    }

    /// The count per period.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The bucket's size.
    pub const fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The limit in steps per second.
    pub fn steps_per_second(&self) -> f64 {
        f64::from(self.count) / self.period.as_secs_f64()
    }

    /// How fast the rate climbs back after a slow-down, in steps per second
    /// gained per second: a tenth of the limit per period.
    pub(crate) fn climb(&self) -> f64 {
        self.steps_per_second() / 10.0 / self.period.as_secs_f64()
    }

    /// The lowest the rate goes after slow-downs: a hundredth of the limit.
    pub(crate) fn floor(&self) -> f64 {
        self.steps_per_second() / 100.0
    }

    /// Whether a step's `RATE` is one a worker can keep: no count, period or
    /// burst of zero. Checked at compile time.
    #[doc(hidden)]
    pub const fn valid(rate: Option<Rate>) -> bool {
        match rate {
            None => true,
            Some(r) => r.count > 0 && r.burst > 0 && !r.period.is_zero(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_per_second_climb_and_floor() {
        let r = Rate::per_minute(120);
        assert_eq!(r.steps_per_second(), 2.0);
        assert_eq!(r.burst_size(), 120);
        // A tenth of the limit per period: from half back to the full rate
        // in five periods.
        assert!((r.climb() * 60.0 * 5.0 - 1.0).abs() < 1e-9);
        assert_eq!(r.floor(), 0.02);
        assert!(Rate::valid(Some(Rate::per_second(1).burst(1))));
        assert!(Rate::valid(None));
        assert!(!Rate::valid(Some(Rate::per_second(0))));
        assert!(!Rate::valid(Some(Rate::per_second(5).burst(0))));
        assert!(!Rate::valid(Some(Rate::new(5, Duration::ZERO))));
    }
}
