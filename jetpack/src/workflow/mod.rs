//! Workflows as types: [`Machine`]s of [`Step`]s, the [`Context`] a step runs
//! with, children and joins, signals, retry policies. A feature: imports
//! `model` and `driver`.

mod children;
mod context;
mod machine;
mod policy;
mod step;

pub use crate::model::{Rate, Wakeup};
pub use children::{Child, ChildError, OnPark, Spawn, SpawnAll};
pub use context::{Context, Signal, Spawned, StopReason, TestContext, Tx, Wait};
pub(crate) use context::{Shared, StateMap, Stop};
pub(crate) use machine::{kind, to_json};
pub use machine::{
    limit_scope, tagged_json, Awaits, BoxFuture, Follows, Graph, IntoTask, Joins, Machine,
    MachineResult, MemberOf, RecordedGraph, RecordedStep, Scheduler, StepNode, StepOf, TaskOf,
};
pub use policy::{RetryPolicy, StepError};
pub use step::{NextStep, Step, StepResult};
