//! Jetpack: durable background tasks and workflows as typed state machines.
//!
//! Each state of a task is a struct implementing [`Step`]; `#[derive(Machine)]` on
//! an enum of those structs declares which step may follow which, and the compiler
//! rejects any other transition. All state of one task lives in one table row —
//! the step as readable JSON, `wakeup_at`, `tried`, `error` — so a task that keeps
//! failing parks with its error, a person fixes the world, clears `error` with
//! plain SQL, and the task resumes where it stopped.
//!
//! See the README for the guide; `examples/tutorial.rs` is the runnable tutorial.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
// Without a backend only the machine types and macros are of use (the trybuild
// cases compile against them so): the storage code is there, unused.
#![cfg_attr(
    not(any(feature = "postgres", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_variables)
)]

pub mod admin;
mod driver;
mod enqueue;
mod history;
mod limits;
pub mod metrics;
mod model;
#[cfg(feature = "cron")]
mod schedule;
mod verify;
mod worker;
mod workflow;

pub use async_trait::async_trait;
pub use enqueue::{
    cancel, cancel_with_descendants, delay, enqueue, enqueue_all, enqueue_many, find, resume,
    schedule, signal, Backend, Cancel, Delivery, Enqueue, Enqueued, OnConflict, SignalTo, TaskRow,
    TaskState, MAX_PRIORITY,
};
pub use history::{
    activity, counts_at, history, history_at, set_history, Activity, Minute, TaskError, Transition,
    ERRORS_CHANNEL,
};
pub use jetpack_macros::{scheduler, task, Machine};
#[cfg(feature = "prometheus")]
pub use metrics::serve_prometheus;
pub use model::Error;
#[cfg(feature = "cron")]
pub use schedule::{Missed, Schedule};
pub use tokio_util::sync::CancellationToken;
pub use verify::{verify, VerifyReport};
pub use worker::{Worker, WorkerBuilder};
pub use workflow::{
    Awaits, BoxFuture, Follows, Graph, IntoTask, Joins, Machine, MachineResult, MemberOf,
    RecordedGraph, RecordedStep, Scheduler, StepNode, StepOf, TaskOf,
};
pub use workflow::{
    Child, ChildError, Context, NextStep, OnPark, Rate, RetryPolicy, Signal, Spawn, SpawnAll, Step,
    StepError, StepResult, StopReason, TestContext, Tx, Wait, Wakeup,
};

/// The SQLite backend's helpers.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use crate::driver::sqlite::connect;
}

/// Re-exported so that applications use the same versions Jetpack does.
pub use chrono;
pub use sqlx;

/// Applies Jetpack's migrations (creating the `jetpack_tasks` table and its
/// functions and triggers). Safe to call from every worker at startup: it takes
/// a lock and applies only what is missing. On SQLite it also switches the file
/// to WAL mode. Jetpack records its migrations in
/// `_jetpack_migrations`, apart from your own `_sqlx_migrations`.
pub async fn migrate<DB: Backend>(pool: &sqlx::Pool<DB>) -> Result<(), Error> {
    DB::migrate(pool).await
}

/// What the macros' generated code names. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::enqueue::MAX_PRIORITY;
    pub use crate::workflow::{
        limit_scope, tagged_json, Awaits, BoxFuture, Follows, Graph, IntoTask, Joins, Machine,
        MachineResult, MemberOf, Scheduler, StepOf, TaskOf,
    };
    pub use crate::workflow::{Context, NextStep, Rate, RetryPolicy, Step, StepError, Wakeup};
    pub use serde;
    pub use serde_json;
}
