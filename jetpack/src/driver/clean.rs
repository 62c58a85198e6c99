//! Retention: deleting the finished and cancelled tasks, signals and history
//! kept past their periods.

use async_trait::async_trait;

use super::Base;
use crate::model::{Error, Retention};

/// The statements of retention.
#[async_trait]
pub trait Clean: Base {
    /// Deletes up to `limit` finished and cancelled tasks kept longer than
    /// `keep` says, oldest first, and up to `limit` kept signals and rows of
    /// history as old; how many it deleted.
    async fn clean(db: &Self::Handle, keep: &Retention, limit: usize) -> Result<u64, Error>;
}
