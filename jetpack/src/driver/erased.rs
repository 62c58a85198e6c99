//! The driver erased once, for the worker: [`Store`] is every pool-side
//! statement of [`Driver`] as an object-safe trait, implemented for any
//! driver by [`Pooled`], so the worker's loops and a step's children run on
//! `Arc<dyn Store>` without knowing the database.

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ChildRow, Driver, Listener};
use crate::model::{
    Claimed, Encoded, EnqueueRecord, Error, History, Limit, Outcome, Rate, Retention,
};

/// A pool with the worker's state of its driver (see [`Base::Handle`](super::Base::Handle)).
pub(crate) struct Pooled<D: Driver> {
    pool: sqlx::Pool<D>,
    handle: D::Handle,
}

impl<D: Driver> Pooled<D> {
    /// The worker's side of `pool`.
    pub(crate) fn new(pool: sqlx::Pool<D>) -> Self {
        Pooled {
            handle: D::handle(pool.clone()),
            pool,
        }
    }

    /// The same with `handle`, made by the caller (a test's variant).
    #[cfg(all(test, feature = "sqlite"))]
    pub(crate) fn with(pool: sqlx::Pool<D>, handle: D::Handle) -> Self {
        Pooled { pool, handle }
    }
}

/// The statements a worker runs, on its pool; see [`Driver`]'s traits for
/// what each does.
#[async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// The database's name, for messages.
    fn database(&self) -> &'static str;
    /// How often to poll when no notification arrives, unless the user chose.
    fn default_poll_interval(&self) -> Duration;
    /// The connections a worker needs from its pool at the least, and how many
    /// the pool may open.
    fn connections(&self) -> (u32, u32);
    /// The pool, as `sqlx::Pool<DB>`, for a step's [`Context::pool`](crate::Context::pool).
    fn pool(&self) -> &(dyn Any + Send + Sync);

    async fn claim(
        &self,
        limit: usize,
        kinds: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error>;
    async fn claim_limited(
        &self,
        limit: usize,
        limits: &[Limit],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error>;
    async fn back(
        &self,
        id: i64,
        fence: i64,
        delay: Duration,
        slow: Option<(&str, &Rate)>,
    ) -> Result<(), Error>;
    async fn rescope(
        &self,
        id: i64,
        fence: i64,
        scope: &str,
        step: &str,
        kind: &str,
        enqueued: Option<&EnqueueRecord>,
    ) -> Result<(), Error>;
    async fn unscope(&self, kinds: &[String]) -> Result<u64, Error>;
    async fn heartbeat(
        &self,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<(i64, i64)>, Error>;
    async fn release(&self, held: &[(i64, i64)]) -> Result<(), Error>;
    async fn next_due(&self, kinds: &[String]) -> Result<Option<Duration>, Error>;
    async fn listen(&self) -> Result<Box<dyn Listener>, Error>;

    async fn complete_many(
        &self,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error>;
    /// Records one outcome in the step's transaction `tx` (as [`Store::begin`]
    /// opened it), then commits it when the attempt still held its task and
    /// rolls it back otherwise; whether it held.
    async fn complete_in_tx(
        &self,
        tx: Box<dyn Any + Send>,
        id: i64,
        fence: i64,
        outcome: &Outcome,
        history: Option<&History<'_>>,
    ) -> Result<bool, Error>;
    async fn notify_errors(&self, payloads: &[String]) -> Result<(), Error>;

    /// Opens a transaction on the pool, boxed as a step's transaction.
    async fn begin(&self) -> Result<Box<dyn Any + Send>, Error>;
    async fn insert_children(
        &self,
        tx: &mut (dyn Any + Send),
        parent: i64,
        awaited: Option<&str>,
        steps: Vec<Encoded>,
    ) -> Result<Vec<i64>, Error>;
    async fn detach_children(&self, tx: &mut (dyn Any + Send), parent: i64) -> Result<(), Error>;
    async fn child_results(
        &self,
        parent: i64,
        machine: Option<&str>,
        child: Option<i64>,
    ) -> Result<Vec<ChildRow>, Error>;
    async fn expire_waits(&self, limit: usize) -> Result<u64, Error>;
    async fn states(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, Error>;

    async fn clean_limits(&self, limit: usize) -> Result<u64, Error>;
    #[cfg_attr(not(feature = "cron"), allow(dead_code))]
    async fn last_tick(&self, name: &str, start: DateTime<Utc>) -> Result<DateTime<Utc>, Error>;
    #[cfg_attr(not(feature = "cron"), allow(dead_code))]
    async fn fire(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tasks: Vec<Encoded>,
    ) -> Result<bool, Error>;
    async fn history_on(&self) -> Result<bool, Error>;
    async fn register(&self, machines: &[(String, String)]) -> Result<(), Error>;
    async fn other_kinds(&self, kinds: &[String]) -> Result<Vec<(String, i64)>, Error>;
    async fn clean(&self, keep: &Retention, limit: usize) -> Result<u64, Error>;
}

/// The step's transaction, as [`Store::begin`] boxed it, back in its type.
fn transaction<D: Driver>(
    tx: &mut (dyn Any + Send),
) -> Result<&mut sqlx::Transaction<'static, D>, Error> {
    tx.downcast_mut().ok_or_else(wrong_database::<D>)
}

fn wrong_database<D: Driver>() -> Error {
    Error::WrongDatabase {
        actual: D::NAME,
        requested: "another database",
    }
}

#[async_trait]
impl<D: Driver> Store for Pooled<D> {
    fn database(&self) -> &'static str {
        D::NAME
    }
    fn default_poll_interval(&self) -> Duration {
        D::DEFAULT_POLL
    }
    fn connections(&self) -> (u32, u32) {
        (
            D::WORKER_CONNECTIONS,
            self.pool.options().get_max_connections(),
        )
    }
    fn pool(&self) -> &(dyn Any + Send + Sync) {
        &self.pool
    }

    async fn claim(
        &self,
        limit: usize,
        kinds: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        D::claim(&self.handle, limit, kinds, owner, lease).await
    }
    async fn claim_limited(
        &self,
        limit: usize,
        limits: &[Limit],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        D::claim_limited(&self.handle, limit, limits, owner, lease).await
    }
    async fn back(
        &self,
        id: i64,
        fence: i64,
        delay: Duration,
        slow: Option<(&str, &Rate)>,
    ) -> Result<(), Error> {
        D::back(&self.handle, id, fence, delay, slow).await
    }
    async fn rescope(
        &self,
        id: i64,
        fence: i64,
        scope: &str,
        step: &str,
        kind: &str,
        enqueued: Option<&EnqueueRecord>,
    ) -> Result<(), Error> {
        D::rescope(&self.handle, id, fence, scope, step, kind, enqueued).await
    }
    async fn unscope(&self, kinds: &[String]) -> Result<u64, Error> {
        D::unscope(&self.handle, kinds).await
    }
    async fn heartbeat(
        &self,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<(i64, i64)>, Error> {
        D::heartbeat(&self.handle, held, lease).await
    }
    async fn release(&self, held: &[(i64, i64)]) -> Result<(), Error> {
        D::release(&self.handle, held).await
    }
    async fn next_due(&self, kinds: &[String]) -> Result<Option<Duration>, Error> {
        D::next_due(&self.handle, kinds).await
    }
    async fn listen(&self) -> Result<Box<dyn Listener>, Error> {
        D::listen(&self.handle).await
    }

    async fn complete_many(
        &self,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error> {
        D::complete_many(&self.handle, done, history).await
    }
    async fn complete_in_tx(
        &self,
        tx: Box<dyn Any + Send>,
        id: i64,
        fence: i64,
        outcome: &Outcome,
        history: Option<&History<'_>>,
    ) -> Result<bool, Error> {
        let mut tx = *tx
            .downcast::<sqlx::Transaction<'static, D>>()
            .map_err(|_| wrong_database::<D>())?;
        let held = D::complete_in_tx(&mut tx, id, fence, outcome, history).await?;
        if held {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(held)
    }
    async fn notify_errors(&self, payloads: &[String]) -> Result<(), Error> {
        D::notify_errors(&self.handle, payloads).await
    }

    async fn begin(&self) -> Result<Box<dyn Any + Send>, Error> {
        Ok(Box::new(self.pool.begin().await?))
    }
    async fn insert_children(
        &self,
        tx: &mut (dyn Any + Send),
        parent: i64,
        awaited: Option<&str>,
        steps: Vec<Encoded>,
    ) -> Result<Vec<i64>, Error> {
        D::insert_children(transaction::<D>(tx)?, parent, awaited, steps).await
    }
    async fn detach_children(&self, tx: &mut (dyn Any + Send), parent: i64) -> Result<(), Error> {
        D::detach_children(transaction::<D>(tx)?, parent).await
    }
    async fn child_results(
        &self,
        parent: i64,
        machine: Option<&str>,
        child: Option<i64>,
    ) -> Result<Vec<ChildRow>, Error> {
        D::child_results(&self.handle, parent, machine, child).await
    }
    async fn expire_waits(&self, limit: usize) -> Result<u64, Error> {
        D::expire_waits(&self.handle, limit).await
    }
    async fn states(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, Error> {
        D::states(&self.handle, ids).await
    }

    async fn clean_limits(&self, limit: usize) -> Result<u64, Error> {
        D::clean_limits(&self.handle, limit).await
    }
    async fn last_tick(&self, name: &str, start: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
        D::last_tick(&self.handle, name, start).await
    }
    async fn fire(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tasks: Vec<Encoded>,
    ) -> Result<bool, Error> {
        D::fire(&self.handle, name, from, to, tasks).await
    }
    async fn history_on(&self) -> Result<bool, Error> {
        D::history_on(&self.handle).await
    }
    async fn register(&self, machines: &[(String, String)]) -> Result<(), Error> {
        D::register(&self.handle, machines).await
    }
    async fn other_kinds(&self, kinds: &[String]) -> Result<Vec<(String, i64)>, Error> {
        D::other_kinds(&self.handle, kinds).await
    }
    async fn clean(&self, keep: &Retention, limit: usize) -> Result<u64, Error> {
        D::clean(&self.handle, keep, limit).await
    }
}
