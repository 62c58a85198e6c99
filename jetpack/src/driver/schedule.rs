//! Schedules: the last tick of each, and firing the next one with its tasks.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Base;
use crate::model::{Encoded, Error};

/// The statements of schedules.
#[async_trait]
pub trait Schedules: Base {
    /// The last tick schedule `name` fired, recorded as `start` when the
    /// schedule has no row yet.
    async fn last_tick(
        db: &Self::Handle,
        name: &str,
        start: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, Error>;

    /// Moves schedule `name` from tick `from` to `to` and enqueues `tasks`, in
    /// one transaction, if its last tick is still `from` (no other worker
    /// fired it); whether it did.
    async fn fire(
        db: &Self::Handle,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tasks: Vec<Encoded>,
    ) -> Result<bool, Error>;
}
