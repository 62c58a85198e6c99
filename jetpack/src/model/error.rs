//! The one error type of the runtime.

/// What went wrong in a Jetpack call. Step failures are not here: they are
/// [`StepError`](crate::StepError)s, recorded on the task's row.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or lost a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying Jetpack's migrations failed.
    #[error("migrating the jetpack schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A step could not be serialized to JSON.
    #[error("cannot serialize the step to JSON: {0}")]
    Serialize(#[source] serde_json::Error),

    /// A delay or time given to enqueue is outside what the database can store.
    #[error("invalid wakeup time: {0}")]
    InvalidTime(String),

    /// A step asked for shared state that the worker was not given.
    #[error("no state of type `{type_name}` was given to the worker (use `Worker::builder(pool).state(..)`)")]
    MissingState {
        /// The type asked for.
        type_name: &'static str,
    },

    /// A step asked for a pool or transaction of another database than the worker's.
    #[error("this worker runs on {actual}, not on the database `{requested}` asked for")]
    WrongDatabase {
        /// The database the worker runs on.
        actual: &'static str,
        /// The database type asked for.
        requested: &'static str,
    },

    /// Recording a batch of step outcomes failed (the message of the database error).
    #[error("recording step outcomes failed: {0}")]
    Completion(String),

    /// An enqueue option is out of range: a priority above the maximum, an
    /// empty or too long key, a throttle window of zero. Nothing was stored.
    #[error("invalid enqueue: {0}")]
    InvalidEnqueue(String),

    /// A schedule is invalid: its name, cron expression or time zone. Nothing
    /// was stored.
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),

    /// A worker setting is out of range.
    #[error("invalid worker setting: {0}")]
    Config(String),

    /// An operation of [`admin`](crate::admin) was refused, or matched
    /// nothing: nothing changed.
    #[error("{0}")]
    Admin(String),
}

/// Whether the database refused the values of a statement (it answered, with
/// an error about the data), as opposed to failing to run it (a lost
/// connection, a lock timeout, a deadlock): retrying the same values cannot
/// help, other values may pass.
pub(crate) fn is_refusal(error: &Error) -> bool {
    let Error::Database(sqlx::Error::Database(e)) = error else {
        return false;
    };
    #[cfg(feature = "postgres")]
    if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        // SQLSTATE classes: data exception, integrity constraint violation,
        // program limit exceeded (a value too large).
        return matches!(pg.code().get(..2), Some("22" | "23" | "54"));
    }
    // SQLite's extended result codes; the primary code is the low byte:
    // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH.
    e.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 18..=20))
}
