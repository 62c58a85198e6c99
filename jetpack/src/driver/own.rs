//! A connection of the worker's own, outside its pool, for the statements it
//! runs most (claims, outcomes): opened with the pool's options when first
//! needed, and closed after an error (which also rolls back what it began), so
//! that the next use opens a new one.
//!
//! Outside the pool, a worker's hot statements neither wait for nor starve
//! the connections its steps and the application use, and take no turn of the
//! pool's bookkeeping: a pool by default pings a connection (a round trip)
//! each time it hands one out.

use tokio::sync::{Mutex, MutexGuard};

use crate::model::Error;

/// One connection of the worker's own; uses of it wait for each other.
pub(crate) struct Own<C>(Mutex<Option<C>>);

impl<C> Default for Own<C> {
    fn default() -> Self {
        Own(Mutex::new(None))
    }
}

/// The connection, taken for one use.
pub(crate) struct Taken<'a, C> {
    slot: MutexGuard<'a, Option<C>>,
    pub(crate) db: C,
}

impl<C> Own<C> {
    /// Waits for the uses before, then takes the connection, opened by
    /// `connect` if there is none.
    pub(crate) async fn take<F>(&self, connect: F) -> Result<Taken<'_, C>, Error>
    where
        F: std::future::Future<Output = Result<C, Error>>,
    {
        let mut slot = self.0.lock().await;
        let db = match slot.take() {
            Some(db) => db,
            None => connect.await?,
        };
        Ok(Taken { slot, db })
    }
}

impl<C> Taken<'_, C> {
    /// Ends the use: the connection goes back for the next one, unless the
    /// use failed. Then it is closed (rolling back what it had begun) and the
    /// next use opens a new one.
    pub(crate) fn done<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_ok() {
            *self.slot = Some(self.db);
        }
        result
    }
}
