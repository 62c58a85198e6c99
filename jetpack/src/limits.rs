//! Limits of steps: which kinds run under a concurrency or a rate limit (from
//! the machines' graphs, former names too), and how an attempt its rate turned
//! away goes back. Imports `model` and `workflow`; the statements that keep the
//! limits are the driver's (`Claims::claim_limited`, `Claims::back`, `Limits`).

use std::time::Duration;

use crate::model::{Limit, Rate};
use crate::workflow::Graph;

/// The limits of the steps of `graphs`: one per kind, each of a step's former
/// names keeping its limits (and its own budget: its rows carry their own
/// scope).
pub(crate) fn of(graphs: &[Graph]) -> Vec<Limit> {
    graphs
        .iter()
        .flat_map(|g| {
            (g.steps.iter())
                .filter(|s| s.concurrency.is_some() || s.rate.is_some())
                .flat_map(|s| {
                    (std::iter::once(&s.name).chain(&s.aliases)).map(|name| Limit {
                        kind: crate::workflow::kind(g.machine, name),
                        concurrency: s.concurrency,
                        rate: s.rate,
                    })
                })
        })
        .collect()
}

/// How an attempt of scope `scope` that its step's rate turned away goes
/// back: due after `retry_after` when the step said, else two intervals
/// between starts at the step's rate (one at the halved rate), else a second;
/// at most `max_delay`. With the step's rate, its scope slows too.
pub(crate) fn give_back<'a>(
    limited: &'a [Limit],
    scope: Option<&'a str>,
    retry_after: Option<Duration>,
    max_delay: Duration,
) -> (Duration, Option<(&'a str, &'a Rate)>) {
    let kind = scope.and_then(|s| s.split('/').next());
    let rate = (limited.iter())
        .find(|l| Some(l.kind.as_str()) == kind)
        .and_then(|l| l.rate.as_ref());
    let delay = retry_after
        .or_else(|| rate.map(|r| r.period() * 2 / r.count()))
        .unwrap_or(Duration::from_secs(1))
        .min(max_delay);
    (delay, scope.zip(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(kind: &str, rate: Option<Rate>) -> Limit {
        Limit {
            kind: kind.into(),
            concurrency: Some(2),
            rate,
        }
    }

    #[test]
    fn a_turned_away_attempt_waits_two_intervals_of_its_rate_and_slows_its_scope() {
        let limited = [limit("M.A", Some(Rate::per_second(10))), limit("M.B", None)];
        let hour = Duration::from_secs(3600);
        let (delay, slow) = give_back(&limited, Some("M.A/eu"), None, hour);
        assert_eq!(delay, Duration::from_millis(200));
        assert_eq!(slow.map(|(scope, _)| scope), Some("M.A/eu"));
        let (delay, slow) = give_back(&limited, Some("M.B"), None, hour);
        assert_eq!((delay, slow.is_none()), (Duration::from_secs(1), true));
        let asked = Some(Duration::from_secs(30));
        let (delay, _) = give_back(&limited, Some("M.A"), asked, Duration::from_secs(5));
        assert_eq!(
            delay,
            Duration::from_secs(5),
            "at most the step's longest delay"
        );
    }
}
