//! Claims and leases: taking ready tasks (limited or not), giving attempts
//! back, renewing and releasing leases, the wakeups a worker listens for.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Encode, Executor, IntoArguments, Type};

use super::Base;
use crate::model::{Claimed, EnqueueRecord, Error, Limit, Notice, Rate};

/// The statements of claims and leases.
#[async_trait]
pub trait Claims: Base {
    /// Claims up to `limit` ready tasks of the given kinds, oldest first, leasing
    /// them to `owner` for `lease`; bumps `tried` and `fence` of each.
    async fn claim(
        db: &Self::Handle,
        limit: usize,
        kinds: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error>;

    /// Claims up to `limit` ready tasks of limited steps, of the kinds
    /// `limits` names with their limits (per scope): never more attempts
    /// holding live leases in a scope than its concurrency, never more
    /// started than its rate's bucket holds tokens (which the claim takes).
    async fn claim_limited(
        db: &Self::Handle,
        limit: usize,
        limits: &[Limit],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error>;

    /// Gives back attempt `(id, fence)`, whose step was rate limited: ready
    /// after `delay`, not counted as tried. With `slow`, the scope's rate
    /// (under that limit) halves and its claims pause for `delay`, unless a
    /// slow-down's pause is under way.
    async fn back(
        db: &Self::Handle,
        id: i64,
        fence: i64,
        delay: Duration,
        slow: Option<(&str, &Rate)>,
    ) -> Result<(), Error>;

    /// Gives a task claimed without a concurrency scope (a row written by
    /// hand, or under a step's former name) its `scope`, stores its step
    /// again as `step` of `kind` (the step's current name), and releases it
    /// to the claims of limited steps (not counted as an attempt). The step
    /// stored again is a transition: with `enqueued` (the history is on, and
    /// the claim found the task at the step it was enqueued with), the
    /// history takes in the record of its enqueue first, if nothing moved the
    /// task since.
    async fn rescope(
        db: &Self::Handle,
        id: i64,
        fence: i64,
        scope: &str,
        step: &str,
        kind: &str,
        enqueued: Option<&EnqueueRecord>,
    ) -> Result<(), Error>;

    /// Takes the concurrency scope from the live tasks of `kinds`, whose
    /// steps have no limit; how many.
    async fn unscope(db: &Self::Handle, kinds: &[String]) -> Result<u64, Error>;

    /// Extends the leases of the given `(id, fence)` attempts; returns those
    /// still held.
    async fn heartbeat(
        db: &Self::Handle,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<(i64, i64)>, Error>;

    /// Gives back abandoned attempts: ready at once, and not counted as tried.
    async fn release(db: &Self::Handle, held: &[(i64, i64)]) -> Result<(), Error>;

    /// How long until the next task of these kinds is due, by the database clock.
    async fn next_due(db: &Self::Handle, kinds: &[String]) -> Result<Option<Duration>, Error>;

    /// Opens the stream of wakeups (new work, resumed tasks, stop requests).
    async fn listen(db: &Self::Handle) -> Result<Box<dyn Listener>, Error>;
}

/// A stream of wakeups.
#[async_trait]
pub trait Listener: Send {
    /// Waits for the next notice. An error means the connection dropped; the
    /// caller backs off and calls again (the listener reconnects).
    async fn recv(&mut self) -> Result<Notice, Error>;
}

/// [`Claims::back`] on a transaction `tx`: statement `back` gives the attempt
/// back (`$1` id, `$2` fence, `$3` delay in µs); with `slow`, statement
/// `slow_down` slows its scope (`$1` scope, `$2` steps per second, `$3`
/// climb, `$4` floor, `$5` delay in µs).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn back_and_slow<D>(
    tx: &mut D::Connection,
    (back, slow_down): (&'static str, &'static str),
    id: i64,
    fence: i64,
    delay: i64,
    slow: Option<(&str, &Rate)>,
) -> Result<(), Error>
where
    D: sqlx::Database,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'q> f64: Encode<'q, D> + Type<D>,
    for<'q> String: Encode<'q, D> + Type<D>,
{
    sqlx::query(back)
        .bind(id)
        .bind(fence)
        .bind(delay)
        .execute(&mut *tx)
        .await?;
    if let Some((scope, rate)) = slow {
        sqlx::query(slow_down)
            .bind(scope.to_owned())
            .bind(rate.steps_per_second())
            .bind(rate.climb())
            .bind(rate.floor())
            .bind(delay)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
