//! The workers' metrics, through the [`metrics`](https://docs.rs/metrics)
//! facade: install any recorder (or `serve_prometheus`, with the feature
//! `prometheus`) before building the workers and they are recorded; without
//! one they cost nothing. A feature: imports `model` and `workflow`.
//!
//! Every metric has the labels `machine` and `step`:
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
//! | `jetpack_queue_lag_seconds` | histogram | how long a task had been due when its attempt was claimed |
//! | `jetpack_steps_in_flight` | gauge | attempts running now |

// A feature: imports `model` and `workflow` (docs/design.md, layers).

use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::model::Outcome;

pub(crate) use crate::model::Labels;

/// The metrics of one step type, registered once when the worker is built:
/// an attempt then costs no allocation, and nothing without a recorder.
struct StepMetrics {
    started: Counter,
    succeeded: Counter,
    failed: Counter,
    retried: Counter,
    parked: Counter,
    rate_limited: Counter,
    cancelled: Counter,
    duration: Histogram,
    lag: Histogram,
    in_flight: Gauge,
}

/// The metrics of a worker's steps. The recorder must be installed before the
/// worker is built.
pub(crate) struct Metrics(HashMap<Labels, StepMetrics>);

impl Metrics {
    /// Registers the metrics of every step of `graphs`.
    pub(crate) fn of(graphs: &[crate::workflow::Graph]) -> Self {
        let mut all = HashMap::new();
        for g in graphs {
            for s in &g.steps {
                let (machine, step) = (g.machine, s.name);
                let counter = |name: &'static str| metrics::counter!(name, "machine" => machine, "step" => step);
                all.insert(
                    (machine, step),
                    StepMetrics {
                        started: counter("jetpack_steps_started_total"),
                        succeeded: counter("jetpack_steps_succeeded_total"),
                        failed: counter("jetpack_steps_failed_total"),
                        retried: counter("jetpack_steps_retried_total"),
                        parked: counter("jetpack_steps_parked_total"),
                        rate_limited: counter("jetpack_steps_rate_limited_total"),
                        cancelled: counter("jetpack_steps_cancelled_total"),
                        duration: metrics::histogram!("jetpack_step_duration_seconds", "machine" => machine, "step" => step),
                        lag: metrics::histogram!("jetpack_queue_lag_seconds", "machine" => machine, "step" => step),
                        in_flight: metrics::gauge!("jetpack_steps_in_flight", "machine" => machine, "step" => step),
                    },
                );
            }
        }
        Metrics(all)
    }

    /// An attempt of a step of `labels` starts.
    pub(crate) fn started(&self, labels: Labels, lag: Duration) {
        if let Some(m) = self.0.get(&labels) {
            m.started.increment(1);
            m.lag.record(lag.as_secs_f64());
            m.in_flight.increment(1.0);
        }
    }

    /// An attempt that started ended after `took` with `outcome` (`None`: it
    /// reported a rate limit).
    pub(crate) fn ended(&self, labels: Labels, took: Duration, outcome: Option<&Outcome>) {
        let Some(m) = self.0.get(&labels) else {
            return;
        };
        m.in_flight.decrement(1.0);
        m.duration.record(took.as_secs_f64());
        match outcome {
            None => m.rate_limited.increment(1),
            Some(Outcome::Retry { .. }) => {
                m.failed.increment(1);
                m.retried.increment(1);
            }
            Some(Outcome::Park { .. }) => {
                m.failed.increment(1);
                m.parked.increment(1);
            }
            Some(_) => m.succeeded.increment(1),
        }
    }

    /// An attempt's outcome was discarded: its task was cancelled meanwhile.
    pub(crate) fn cancelled(&self, labels: Labels) {
        if let Some(m) = self.0.get(&labels) {
            m.cancelled.increment(1);
        }
    }
}

/// Serves the metrics in Prometheus's text format on `addr` (`GET /metrics`,
/// or any path), from a recorder installed for the whole process. Call it
/// once, before the workers are built; a second recorder is refused.
///
/// ```no_run
/// jetpack::serve_prometheus("127.0.0.1:9464".parse().unwrap())?;
/// # Ok::<(), jetpack::Error>(())
/// ```
#[cfg(feature = "prometheus")]
pub fn serve_prometheus(addr: std::net::SocketAddr) -> Result<(), crate::model::Error> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| {
            crate::model::Error::Config(format!("cannot serve Prometheus metrics on {addr}: {e}"))
        })
}
