//! The registry: the machines a worker runs, recorded with their graphs, and
//! the live tasks of kinds no worker of this build knows.

use async_trait::async_trait;

use super::Base;
use crate::model::Error;

/// The statements of the registry (the recorded graphs are read by
/// [`Admin`](super::Admin)).
#[async_trait]
pub trait Registry: Base {
    /// Records the machines `(name, graph as JSON)` in `jetpack_machines`,
    /// writing only those that changed.
    async fn register(db: &Self::Handle, machines: &[(String, String)]) -> Result<(), Error>;

    /// How many live tasks (ready, waiting or parked) wait whose kind is none
    /// of `kinds`, by kind.
    async fn other_kinds(db: &Self::Handle, kinds: &[String]) -> Result<Vec<(String, i64)>, Error>;
}
