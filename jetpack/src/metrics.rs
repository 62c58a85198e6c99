//! The workers' metrics, through the [`metrics`](https://docs.rs/metrics)
//! facade: install any recorder (or [`serve_prometheus`]) and they are
//! recorded; without one they cost a check. Every metric has the labels
//! `machine` and `step`:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `jetpack_steps_started_total` | counter | attempts started |
//! | `jetpack_steps_succeeded_total` | counter | attempts that moved the task on or finished it |
//! | `jetpack_steps_failed_total` | counter | attempts that failed (retried or parked) |
//! | `jetpack_steps_retried_total` | counter | failed attempts to be retried |
//! | `jetpack_steps_parked_total` | counter | attempts that parked the task |
//! | `jetpack_steps_rate_limited_total` | counter | attempts that reported a rate limit |
//! | `jetpack_steps_cancelled_total` | counter | attempts whose task was cancelled meanwhile |
//! | `jetpack_step_duration_seconds` | histogram | how long attempts ran |
//! | `jetpack_steps_in_flight` | gauge | attempts running now |

use std::time::Duration;

use crate::store::Outcome;

/// A step's labels: its machine and its name.
pub(crate) type Labels = (&'static str, &'static str);

/// An attempt of a step of `labels` starts.
pub(crate) fn started((machine, step): Labels) {
    metrics::counter!("jetpack_steps_started_total", "machine" => machine, "step" => step)
        .increment(1);
    metrics::gauge!("jetpack_steps_in_flight", "machine" => machine, "step" => step).increment(1.0);
}

/// An attempt that started ended after `took` with `outcome` (`None`: it
/// reported a rate limit).
pub(crate) fn ended((machine, step): Labels, took: Duration, outcome: Option<&Outcome>) {
    metrics::gauge!("jetpack_steps_in_flight", "machine" => machine, "step" => step).decrement(1.0);
    metrics::histogram!("jetpack_step_duration_seconds", "machine" => machine, "step" => step)
        .record(took.as_secs_f64());
    let names: &[&'static str] = match outcome {
        None => &["jetpack_steps_rate_limited_total"],
        Some(Outcome::Retry { .. }) => {
            &["jetpack_steps_failed_total", "jetpack_steps_retried_total"]
        }
        Some(Outcome::Park { .. }) => &["jetpack_steps_failed_total", "jetpack_steps_parked_total"],
        Some(_) => &["jetpack_steps_succeeded_total"],
    };
    for &name in names {
        metrics::counter!(name, "machine" => machine, "step" => step).increment(1);
    }
}

/// An attempt's outcome was discarded: its task was cancelled meanwhile.
pub(crate) fn cancelled((machine, step): Labels) {
    metrics::counter!("jetpack_steps_cancelled_total", "machine" => machine, "step" => step)
        .increment(1);
}

/// Serves the metrics in Prometheus's text format on `addr` (`GET /metrics`,
/// or any path), from a recorder installed for the whole process. Call it
/// once, before the workers start; a second recorder is refused.
///
/// ```no_run
/// jetpack::serve_prometheus("127.0.0.1:9464".parse().unwrap())?;
/// # Ok::<(), jetpack::Error>(())
/// ```
#[cfg(feature = "prometheus")]
pub fn serve_prometheus(addr: std::net::SocketAddr) -> Result<(), crate::Error> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| {
            crate::Error::Config(format!("cannot serve Prometheus metrics on {addr}: {e}"))
        })
}
