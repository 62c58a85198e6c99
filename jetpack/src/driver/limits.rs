//! Limits: the upkeep of throttle windows and rate buckets (the claims of
//! limited steps are [`Claims::claim_limited`](super::Claims::claim_limited)).

use std::time::Duration;

use async_trait::async_trait;

use super::Base;
use crate::model::Error;

/// How long a rate bucket no claim took from is kept: a day. Deleted, it
/// starts again full and at its limit, as it would mostly be by then.
pub(crate) const IDLE_BUCKET: Duration = Duration::from_secs(24 * 3600);

/// The statements of limits.
#[async_trait]
pub trait Limits: Base {
    /// Deletes up to `limit` throttle windows that have passed and up to
    /// `limit` rate buckets no claim has taken from for [`IDLE_BUCKET`]; how
    /// many it deleted.
    async fn clean_limits(db: &Self::Handle, limit: usize) -> Result<u64, Error>;
}
