//! Why a step failed ([`StepError`]) and how it is retried ([`RetryPolicy`]).

use std::fmt;
use std::time::Duration;

/// Why a step failed. Any error converts into it with `?`; the text of the error
/// and its sources is what the task's row records.
///
/// By default a failure is retried up to the step's `RETRY_LIMIT`; a
/// [`permanent`](StepError::permanent) one parks the task at once.
pub struct StepError {
    error: Box<dyn std::error::Error + Send + Sync>,
    kind: ErrorKind,
}

/// What a [`StepError`] does to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Retry,
    Permanent,
    RateLimited(Option<Duration>),
}

impl StepError {
    /// A failure that retrying cannot fix: the task is parked with this error
    /// right away, whatever retries are left.
    pub fn permanent(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StepError {
            error: error.into(),
            kind: ErrorKind::Permanent,
        }
    }

    /// What the step called is over its rate ("429 Too Many Requests"): the
    /// task goes back, due after `retry_after` (what the answer's
    /// `Retry-After` said; `None`: when the slowed rate allows), without
    /// spending an attempt and without an error on its row. When the step
    /// has a [`RATE`](crate::Step::RATE), its scope's rate halves and no step of
    /// the scope starts for that wait, across every worker (see
    /// [`Rate`](crate::Rate)). A task can be rate limited any number of times.
    ///
    /// ```
    /// # use jetpack::StepError;
    /// # use std::time::Duration;
    /// # fn status() -> u16 { 429 }
    /// # fn f() -> Result<(), StepError> {
    /// if status() == 429 {
    ///     return Err(StepError::rate_limited(Some(Duration::from_secs(1))));
    /// }
    /// # Ok(()) }
    /// # assert!(f().unwrap_err().retry_after().is_some());
    /// ```
    pub fn rate_limited(retry_after: Option<Duration>) -> Self {
        let error = match retry_after {
            Some(after) => format!("rate limited; retry after {after:?}"),
            None => "rate limited".to_string(),
        };
        StepError {
            error: error.into(),
            kind: ErrorKind::RateLimited(retry_after),
        }
    }

    /// Whether this failure skips the remaining retries.
    pub fn is_permanent(&self) -> bool {
        self.kind == ErrorKind::Permanent
    }

    /// Whether this is a [`rate_limited`](StepError::rate_limited) error,
    /// and the wait it asks for: `Some(None)` when it names none.
    pub fn retry_after(&self) -> Option<Option<Duration>> {
        match self.kind {
            ErrorKind::RateLimited(after) => Some(after),
            _ => None,
        }
    }

    /// The error and its chain of sources, `outer: inner: root`.
    pub fn chain(&self) -> String {
        let mut text = self.error.to_string();
        let mut source = self.error.source();
        while let Some(e) = source {
            let s = e.to_string();
            if !text.ends_with(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
            source = e.source();
        }
        text
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for StepError {
    fn from(error: E) -> Self {
        StepError {
            error: error.into(),
            kind: ErrorKind::Retry,
        }
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepError")
            .field("error", &self.chain())
            .field("kind", &self.kind)
            .finish()
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain())
    }
}

/// The retry settings of one step, taken from its [`Step`](crate::Step) constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// [`Step::RETRY_LIMIT`](crate::Step::RETRY_LIMIT)
    pub limit: i32,
    /// [`Step::RETRY_DELAY`](crate::Step::RETRY_DELAY)
    pub delay: Duration,
    /// [`Step::RETRY_BACKOFF`](crate::Step::RETRY_BACKOFF)
    pub backoff: f64,
    /// [`Step::RETRY_MAX_DELAY`](crate::Step::RETRY_MAX_DELAY)
    pub max_delay: Duration,
    /// [`Step::TIMEOUT`](crate::Step::TIMEOUT)
    pub timeout: Option<Duration>,
}

impl RetryPolicy {
    /// The delay before the retry that follows failed attempt number `attempt`
    /// (1-based), without jitter.
    pub fn base_delay(&self, attempt: i32) -> Duration {
        let exp = attempt.saturating_sub(1).clamp(0, 64);
        let factor = self.backoff.max(1.0).powi(exp);
        let secs = (self.delay.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }

    /// [`base_delay`](Self::base_delay) with a random ±20% jitter, capped at `max_delay`.
    pub fn delay_after(&self, attempt: i32) -> Duration {
        let jitter = 0.8 + fastrand::f64() * 0.4;
        self.base_delay(attempt).mul_f64(jitter).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::context::{StopReason, TestContext};

    fn policy(backoff: f64) -> RetryPolicy {
        RetryPolicy {
            limit: 5,
            delay: Duration::from_secs(1),
            backoff,
            max_delay: Duration::from_secs(10),
            timeout: None,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(2.0);
        let delays: Vec<_> = (1..=6).map(|a| p.base_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(policy(1.0).base_delay(5), Duration::from_secs(1));
        assert_eq!(p.base_delay(i32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = policy(2.0);
        for _ in 0..1000 {
            let d = p.delay_after(2).as_secs_f64();
            assert!((1.6..=2.4).contains(&d), "{d}");
            assert!(p.delay_after(10) <= p.max_delay);
        }
    }

    /// `stopped()` completes with the first reason given, whether it came
    /// before or while the step awaited it; shutdown counts when nothing else
    /// was said.
    #[tokio::test]
    async fn stopped_tells_the_first_reason() {
        let test = TestContext::new();
        let cx = test.context();
        assert_eq!(cx.stop_reason(), None);
        let waiting = async { cx.stopped().await };
        let stop = async {
            tokio::task::yield_now().await;
            test.stop(StopReason::Cancelled);
            test.stop(StopReason::LeaseLost);
        };
        let (reason, ()) = tokio::join!(waiting, stop);
        assert_eq!(reason, StopReason::Cancelled);
        assert_eq!(cx.stopped().await, StopReason::Cancelled);

        let test = TestContext::new();
        let cx = test.context();
        test.shutdown_token().cancel();
        assert_eq!(cx.stopped().await, StopReason::Shutdown);
        test.stop(StopReason::LeaseLost);
        assert_eq!(cx.stop_reason(), Some(StopReason::LeaseLost));
    }

    #[test]
    fn error_chain_includes_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading config")]
        struct Outer(#[source] std::io::Error);
        let e = StepError::from(Outer(std::io::Error::other("disk on fire")));
        assert_eq!(e.chain(), "reading config: disk on fire");
        assert!(!e.is_permanent());
        assert!(StepError::permanent("no").is_permanent());
    }
}
