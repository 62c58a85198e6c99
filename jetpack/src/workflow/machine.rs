//! Machines, their steps, the transition graph and the scheduler enum.

use std::fmt::Write as _;

use serde::{de::DeserializeOwned, Serialize};

pub(crate) use crate::model::kind;
pub use crate::model::BoxFuture;
use crate::model::Wakeup;
use crate::workflow::context::Context;
use crate::workflow::policy::{RetryPolicy, StepError};

/// What running one step of a machine produced: the next state and when it is
/// due, or `None` when the task is finished.
pub type MachineResult<M> = Result<Option<(M, Wakeup)>, StepError>;

/// A workflow: an enum with one variant per step. Implemented by
/// `#[derive(Machine)]` and by [`task!`](crate::task); not by hand.
pub trait Machine: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The machine's name, the outer key of the stored JSON.
    const NAME: &'static str;
    /// The names of its steps, in declaration order.
    const STEPS: &'static [&'static str];
    /// What a task of this machine returns when it finishes
    /// ([`NextStep::finish`](crate::NextStep::finish)): the result a parent's
    /// join step reads. `()` unless the enum declares `#[output(Type)]`.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The transition graph: steps, edges, initial and terminal steps.
    fn graph() -> Graph;

    /// The name of the step this value is in.
    fn step_name(&self) -> &'static str;

    /// The retry policy of the step this value is in.
    fn policy(&self) -> RetryPolicy;

    /// Runs the step this value is in.
    #[doc(hidden)]
    fn run<'a>(self, cx: &'a Context<'a>) -> BoxFuture<'a, MachineResult<Self>>;
}

/// The one machine a step type belongs to. Implemented by `#[derive(Machine)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a step of any machine",
    label = "not a step of any machine",
    note = "add a variant `{Self}({Self})` to the machine enum that runs it (`#[derive(Machine)]` or `task!`)"
)]
pub trait StepOf: Sized + Send + 'static {
    /// The machine enum that holds this step.
    type Machine: Machine + From<Self>;
    /// The step's name in that machine (its variant name).
    const NAME: &'static str;
    /// The steps that may follow it, as a tuple: `(SayHello,)`, or `()` for a
    /// terminal step. Named in compile errors about undeclared transitions.
    type Successors;
}

/// Marks `Self` as a step of machine `M`. Implemented by `#[derive(Machine)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a step of machine `{M}`",
    label = "not a step of `{M}`",
    note = "add a variant `{Self}({Self})` to the `{M}` enum, or implement `Step` for the machine it belongs to"
)]
pub trait MemberOf<M> {}

/// `Self` is a declared successor of step `From` in machine `M`: the
/// `#[next(..)]` list of `From` names it. `Allowed` is the tuple of all of
/// `From`'s successors, for the error message. Implemented by `#[derive(Machine)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a declared successor of `{From}` in machine `{M}`; the successors of `{From}` are `{Allowed}`",
    label = "`{From}` may not be followed by `{Self}`",
    note = "a step may only return the steps listed in `#[next(..)]` on its variant of `{M}`: to allow this one, add it there, `#[next(.., {Self})]` (a step that returns itself, a loop, lists itself too); a step without `#[next]` is terminal and can only return `NextStep::none()`"
)]
pub trait Follows<From, M, Allowed>: Into<M> {}

/// Never steps: these two impls only make `Follows` ambiguous until the compiler
/// knows which step is returning (from the return type), so that an undeclared
/// transition is reported against that step instead of being inferred from the
/// one impl that exists.
#[doc(hidden)]
pub enum InferFromReturnType {}
#[doc(hidden)]
pub enum InferFromReturnTypeToo {}

impl<N: Into<M>, M, A> Follows<InferFromReturnType, M, A> for N {}
impl<N: Into<M>, M, A> Follows<InferFromReturnTypeToo, M, A> for N {}

/// `Self` is a step that step `From` of machine `M` may reach through a join
/// of its children ([`NextStep::join`](crate::NextStep::join)): its `#[next(..)]`
/// list names it as `join Self`. Implemented by `#[derive(Machine)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not declared as the join step of `{From}` in machine `{M}`",
    label = "`{From}` may not join its children into `{Self}`",
    note = "mark it in the `#[next(..)]` list of `{From}`: `#[next(join {Self})]` (in `task!`: `{From} => [join {Self}]`)"
)]
pub trait Joins<From, M> {}

/// `Self` is a step that step `From` of machine `M` may reach through a wait
/// for a signal ([`NextStep::wait`](crate::NextStep::wait)): its `#[next(..)]`
/// list names it as `wait Self`. Implemented by `#[derive(Machine)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not declared as a step `{From}` waits for a signal to reach, in machine `{M}`",
    label = "`{From}` may not wait to go on to `{Self}`",
    note = "mark it in the `#[next(..)]` list of `{From}`: `#[next(wait {Self})]` (in `task!`: `{From} => [wait {Self}]`)"
)]
pub trait Awaits<From, M> {}

impl<N, M> Joins<InferFromReturnType, M> for N {}
impl<N, M> Joins<InferFromReturnTypeToo, M> for N {}
impl<N, M> Awaits<InferFromReturnType, M> for N {}
impl<N, M> Awaits<InferFromReturnTypeToo, M> for N {}

/// A value that can be stored as a task: a step, a machine or a scheduler enum.
pub trait IntoTask {
    /// The stored JSON form, e.g. `{"Greeter":{"ReadName":{"filename":"name.txt"}}}`.
    fn into_step_json(self) -> Result<String, serde_json::Error>;

    /// The `kind` column: `(machine, step)`, e.g. `("Greeter", "ReadName")`.
    fn kind(&self) -> (&'static str, &'static str);

    /// The priority the task starts with unless its enqueue says otherwise:
    /// its step's [`Step::PRIORITY`](crate::Step::PRIORITY).
    fn priority(&self) -> u8;

    /// The scope of its step's concurrency limit
    /// ([`Step::CONCURRENCY`](crate::Step::CONCURRENCY)): `None` when the
    /// step is not limited; an error for a key that cannot be stored.
    #[doc(hidden)]
    fn limit_scope(&self) -> Result<Option<String>, String>;
}

/// A value that starts a task of one machine: one of its steps, or the
/// machine enum itself. A step spawns it as a child with
/// [`Context::spawn`](crate::Context::spawn). Implemented by `#[derive(Machine)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a step or machine of a `#[derive(Machine)]` enum",
    label = "cannot be spawned as a child task",
    note = "a child task starts at a step of one machine: pass one of its step structs, or the machine enum"
)]
pub trait TaskOf: IntoTask + Send + 'static {
    /// The machine whose task it starts.
    type Machine: Machine;
}

/// The enum a worker runs, combining machines. Implemented by
/// [`scheduler!`](crate::scheduler); not by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a scheduler: a worker runs the enum that `jetpack::scheduler!` declares",
    label = "not declared by `jetpack::scheduler!`",
    note = "declare one with every machine the worker runs, `jetpack::scheduler!(Tasks {{ {Self} }});`, and use `Worker::<Tasks>`"
)]
pub trait Scheduler: Serialize + DeserializeOwned + IntoTask + Send + 'static {
    /// The graphs of all machines.
    fn graphs() -> Vec<Graph>;
    /// The machine this value is in.
    fn machine_name(&self) -> &'static str;
    /// The step this value is in.
    fn step_name(&self) -> &'static str;
    /// The retry policy of that step.
    fn policy(&self) -> RetryPolicy;
    /// Runs that step.
    #[doc(hidden)]
    fn run<'a>(self, cx: &'a Context<'a>) -> BoxFuture<'a, MachineResult<Self>>;

    /// The `kind` values (`"Machine.Step"`) a worker of this binary claims: every
    /// known step, plus malformed documents of known machines (`"Machine."`) and
    /// wholly malformed ones (`""`), so that those get an error on their row.
    /// A step from a newer deploy is left for a worker that knows it.
    fn kinds() -> Vec<String> {
        let mut kinds = vec![String::new()];
        for graph in Self::graphs() {
            kinds.push(format!("{}.", graph.machine));
            for step in &graph.steps {
                kinds.push(kind(graph.machine, step.name));
                kinds.extend(step.aliases.iter().map(|a| kind(graph.machine, a)));
            }
        }
        kinds
    }
}

/// The longest limit key, in bytes.
pub(crate) const MAX_LIMIT_KEY: usize = 1024;

/// The `limit_scope` of a step of `machine.step`, whose step type is
/// `limited` (by a concurrency or a rate limit) or not: `None` for an
/// unlimited step, the kind for a step limited as a whole, `kind/key` for one
/// limited per key. An empty key, one with NUL, or one longer than 1024 bytes
/// is refused.
#[doc(hidden)]
pub fn limit_scope(
    machine: &str,
    step: &str,
    limited: bool,
    key: impl FnOnce() -> Option<String>,
) -> Result<Option<String>, String> {
    if !limited {
        return Ok(None);
    }
    let kind = kind(machine, step);
    match key() {
        None => Ok(Some(kind)),
        Some(key) if key.is_empty() || key.contains('\0') || key.len() > MAX_LIMIT_KEY => Err(format!(
            "the limit key of a {kind} step must be 1 to {MAX_LIMIT_KEY} bytes without NUL, not {} bytes",
            key.len()
        )),
        Some(key) => Ok(Some(format!("{kind}/{key}"))),
    }
}

#[doc(hidden)]
pub fn tagged_json<T: Serialize>(tag: &str, value: &T) -> Result<String, serde_json::Error> {
    struct Tagged<'a, T>(&'a str, &'a T);
    impl<T: Serialize> Serialize for Tagged<'_, T> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(self.0, self.1)?;
            map.end()
        }
    }
    serde_json::to_string(&Tagged(tag, value))
}

/// The transition graph of one machine, known at run time.
///
/// ```
/// # use jetpack::{Machine, Step, StepResult, NextStep, Context};
/// # use serde::{Serialize, Deserialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct A;
/// # #[derive(Debug, Serialize, Deserialize)] struct B;
/// # #[jetpack::async_trait] impl Step<Flow> for A { async fn step(self, _: &Context<'_>) -> StepResult<Self> { NextStep::now(B) } }
/// # #[jetpack::async_trait] impl Step<Flow> for B { async fn step(self, _: &Context<'_>) -> StepResult<Self> { NextStep::none() } }
/// #[derive(Debug, Serialize, Deserialize, Machine)]
/// enum Flow {
///     #[next(B)]
///     A(A),
///     B(B),
/// }
/// let graph = Flow::graph();
/// assert_eq!(graph.initial(), ["A"]);
/// assert_eq!(graph.terminal(), ["B"]);
/// assert_eq!(graph.edges(), [("A", "B")]);
/// assert!(graph.to_mermaid().contains("A --> B"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// The machine's name.
    pub machine: &'static str,
    /// Its steps in declaration order.
    pub steps: Vec<StepNode>,
}

/// One step of a [`Graph`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StepNode {
    /// The step's name.
    pub name: &'static str,
    /// The steps that may follow it; empty for a terminal step.
    pub next: Vec<&'static str>,
    /// Those of `next` it reaches by joining its children (`join` in `#[next]`).
    pub joins: Vec<&'static str>,
    /// Those of `next` it reaches by waiting for a signal, or its timeout
    /// (`wait` in `#[next]`).
    pub waits: Vec<&'static str>,
    /// Whether a task normally starts here (`#[initial]`, or the first step).
    pub initial: bool,
    /// How many steps of this type may run at once across all workers
    /// ([`Step::CONCURRENCY`](crate::Step::CONCURRENCY)); `None`: no limit.
    pub concurrency: Option<u32>,
    /// How many steps of this type may start per period across all workers
    /// ([`Step::RATE`](crate::Step::RATE)); `None`: no limit.
    pub rate: Option<crate::model::Rate>,
    /// Its retries and timeout.
    pub policy: RetryPolicy,
    /// The priority of a task enqueued at it ([`Step::PRIORITY`](crate::Step::PRIORITY)).
    pub priority: u8,
    /// Its former names (`#[serde(alias = "Old")]` on the variant): rows that
    /// still carry one are claimed and decoded as this step.
    pub aliases: Vec<&'static str>,
}

impl Graph {
    #[doc(hidden)]
    #[allow(clippy::type_complexity)]
    pub fn __new(
        machine: &'static str,
        steps: &[(
            &'static str,
            &[&'static str],
            &[&'static str],
            &[&'static str],
            bool,
            Option<u32>,
            Option<crate::model::Rate>,
            RetryPolicy,
            u8,
            &[&'static str],
        )],
    ) -> Self {
        Graph {
            machine,
            steps: steps
                .iter()
                .map(
                    |&(
                        name,
                        next,
                        joins,
                        waits,
                        initial,
                        concurrency,
                        rate,
                        policy,
                        priority,
                        aliases,
                    )| {
                        StepNode {
                            name,
                            next: next.to_vec(),
                            joins: joins.to_vec(),
                            waits: waits.to_vec(),
                            initial,
                            concurrency,
                            rate,
                            policy,
                            priority,
                            aliases: aliases.to_vec(),
                        }
                    },
                )
                .collect(),
        }
    }

    /// The steps a task normally starts at.
    pub fn initial(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter(|s| s.initial)
            .map(|s| s.name)
            .collect()
    }

    /// The steps that can only finish the task.
    pub fn terminal(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter(|s| s.next.is_empty())
            .map(|s| s.name)
            .collect()
    }

    /// Every declared transition as `(from, to)`.
    pub fn edges(&self) -> Vec<(&'static str, &'static str)> {
        self.steps
            .iter()
            .flat_map(|s| s.next.iter().map(move |&n| (s.name, n)))
            .collect()
    }

    /// The graph as JSON, as workers record it in `jetpack_machines`: the
    /// machine's name and, per step, its successors (`next`, and which of them
    /// are reached by a join or a wait), whether it is initial, its retries
    /// and timeout (in ms), priority, concurrency and rate limits.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let steps: Vec<serde_json::Value> = (self.steps.iter())
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "initial": s.initial,
                    "next": s.next,
                    "joins": s.joins,
                    "waits": s.waits,
                    "retry_limit": s.policy.limit,
                    "retry_delay_ms": ms(s.policy.delay),
                    "retry_backoff": s.policy.backoff,
                    "retry_max_delay_ms": ms(s.policy.max_delay),
                    "timeout_ms": s.policy.timeout.map(ms),
                    "priority": s.priority,
                    "aliases": s.aliases,
                    "concurrency": s.concurrency,
                    "rate": s.rate.map(|r| serde_json::json!({
                        "count": r.count(),
                        "period_ms": ms(r.period()),
                        "burst": r.burst_size(),
                    })),
                })
            })
            .collect();
        serde_json::json!({ "machine": self.machine, "steps": steps })
    }

    /// A Mermaid `stateDiagram-v2` of the machine: `[*]` enters the initial steps
    /// and leaves the terminal ones; an edge reached by a join of children is
    /// labelled `join children`, one reached by a wait `signal or timeout`.
    pub fn to_mermaid(&self) -> String {
        self.recorded().to_mermaid()
    }

    /// A Graphviz `digraph` of the machine, labelled as [`to_mermaid`](Graph::to_mermaid).
    pub fn to_dot(&self) -> String {
        self.recorded().to_dot()
    }

    /// The graph as [`to_json`](Graph::to_json) records it.
    fn recorded(&self) -> RecordedGraph {
        let names = |v: &[&'static str]| v.iter().map(|s| s.to_string()).collect();
        RecordedGraph {
            machine: self.machine.to_string(),
            steps: (self.steps.iter())
                .map(|s| RecordedStep {
                    name: s.name.to_string(),
                    initial: s.initial,
                    next: names(&s.next),
                    joins: names(&s.joins),
                    waits: names(&s.waits),
                    aliases: names(&s.aliases),
                })
                .collect(),
        }
    }
}

/// A machine's graph as workers recorded it in `jetpack_machines`
/// ([`Graph::to_json`]): what a tool without the machine's types (the
/// `jetpack` command line) reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
pub struct RecordedGraph {
    /// The machine's name.
    pub machine: String,
    /// Its steps in declaration order.
    pub steps: Vec<RecordedStep>,
}

/// One step of a [`RecordedGraph`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
pub struct RecordedStep {
    /// The step's name.
    pub name: String,
    /// Whether a task normally starts here.
    pub initial: bool,
    /// The steps that may follow it.
    pub next: Vec<String>,
    /// Those of `next` reached by a join.
    pub joins: Vec<String>,
    /// Those of `next` reached by a wait.
    pub waits: Vec<String>,
    /// Its former names, which rows may still carry (empty in a graph
    /// recorded before aliases were).
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl RecordedGraph {
    /// Reads a graph as [`Graph::to_json`] wrote it.
    pub fn parse(json: &str) -> Result<Self, crate::model::Error> {
        serde_json::from_str(json)
            .map_err(|e| crate::model::Error::Admin(format!("a recorded graph does not read: {e}")))
    }

    /// Each edge `(from, to, label)`, the label empty, `join children` or
    /// `signal or timeout`.
    fn labelled_edges(&self) -> Vec<(&str, &str, &'static str)> {
        (self.steps.iter())
            .flat_map(|s| {
                s.next.iter().map(move |to| {
                    let label = if s.joins.contains(to) {
                        "join children"
                    } else if s.waits.contains(to) {
                        "signal or timeout"
                    } else {
                        ""
                    };
                    (s.name.as_str(), to.as_str(), label)
                })
            })
            .collect()
    }

    /// A Mermaid `stateDiagram-v2`, as [`Graph::to_mermaid`].
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("stateDiagram-v2\n");
        let _ = writeln!(out, "    %% {}", self.machine);
        for step in self.steps.iter().filter(|s| s.initial) {
            let _ = writeln!(out, "    [*] --> {}", step.name);
        }
        for (from, to, label) in self.labelled_edges() {
            let label = if label.is_empty() {
                String::new()
            } else {
                format!(": {label}")
            };
            let _ = writeln!(out, "    {from} --> {to}{label}");
        }
        for step in self.steps.iter().filter(|s| s.next.is_empty()) {
            let _ = writeln!(out, "    {} --> [*]", step.name);
        }
        out
    }

    /// A Graphviz `digraph`.
    pub fn to_dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n    rankdir=LR;\n", self.machine);
        out.push_str("    start [shape=point]; end [shape=doublecircle, label=\"\", width=0.2];\n");
        for step in self.steps.iter().filter(|s| s.initial) {
            let _ = writeln!(out, "    start -> \"{}\";", step.name);
        }
        for (from, to, label) in self.labelled_edges() {
            let _ = writeln!(out, "    \"{from}\" -> \"{to}\" [label=\"{label}\"];");
        }
        for step in self.steps.iter().filter(|s| s.next.is_empty()) {
            let _ = writeln!(out, "    \"{}\" -> end;", step.name);
        }
        out.push_str("}\n");
        out
    }
}

/// A task's step encoded for its row: JSON, kind, priority, limit scope.
pub(crate) fn to_json(task: impl IntoTask) -> Result<crate::model::Encoded, crate::model::Error> {
    let kind = task.kind();
    let priority = task.priority();
    let scope = task
        .limit_scope()
        .map_err(crate::model::Error::InvalidEnqueue)?;
    let json = task
        .into_step_json()
        .map_err(crate::model::Error::Serialize)?;
    Ok(crate::model::Encoded {
        json,
        kind,
        priority,
        scope,
    })
}
