//! Machines know their graph, serialize to the readable row form, and `task!`
//! declares the same machine as `#[derive(Machine)]`. No database needed.

use jetpack::{Context, Graph, IntoTask, Machine, NextStep, Scheduler, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ReadName {
    filename: String,
}
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct SayHello {
    name: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Machine)]
enum Greeter {
    #[next(SayHello)]
    ReadName(ReadName),
    SayHello(SayHello),
}

#[jetpack::async_trait]
impl Step<Greeter> for ReadName {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::now(SayHello {
            name: self.filename,
        })
    }
}
#[jetpack::async_trait]
impl Step<Greeter> for SayHello {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

// A loop with a branch and a self-retry, declared with `task!`.
#[derive(Debug, Serialize, Deserialize)]
struct Poll {
    left: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct Charge;
#[derive(Debug, Serialize, Deserialize)]
struct Refund;
#[derive(Debug, Serialize, Deserialize)]
struct Done;

jetpack::task!(Payment { Poll => [Poll, Charge, Refund], Charge => [Done, Poll], Refund, Done });

#[jetpack::async_trait]
impl Step<Payment> for Poll {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        match self.left {
            0 => NextStep::now(Refund),
            1 => NextStep::now(Charge),
            n => NextStep::now(Poll { left: n - 1 }),
        }
    }
}
#[jetpack::async_trait]
impl Step<Payment> for Charge {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::delay(Done, std::time::Duration::from_secs(1))
    }
}
#[jetpack::async_trait]
impl Step<Payment> for Refund {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}
#[jetpack::async_trait]
impl Step<Payment> for Done {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

jetpack::scheduler!(Tasks { Greeter, Payment });

#[test]
fn graph_lists_steps_edges_initial_and_terminal() {
    let g: Graph = Greeter::graph();
    assert_eq!(g.machine, "Greeter");
    assert_eq!(Greeter::NAME, "Greeter");
    assert_eq!(Greeter::STEPS, ["ReadName", "SayHello"]);
    assert_eq!(g.edges(), [("ReadName", "SayHello")]);
    assert_eq!(g.initial(), ["ReadName"]);
    assert_eq!(g.terminal(), ["SayHello"]);

    let p = Payment::graph();
    assert_eq!(
        p.edges(),
        [
            ("Poll", "Poll"),
            ("Poll", "Charge"),
            ("Poll", "Refund"),
            ("Charge", "Done"),
            ("Charge", "Poll")
        ]
    );
    assert_eq!(p.initial(), ["Poll"]);
    assert_eq!(p.terminal(), ["Refund", "Done"]);
}

#[test]
fn mermaid_diagram() {
    assert_eq!(
        Greeter::graph().to_mermaid(),
        "stateDiagram-v2\n    %% Greeter\n    [*] --> ReadName\n    ReadName --> SayHello\n    SayHello --> [*]\n"
    );
    let payment = Payment::graph().to_mermaid();
    assert!(payment.contains("    Poll --> Poll\n"), "{payment}");
    assert!(payment.contains("    Charge --> Poll\n"), "{payment}");
}

// A workflow whose edges are joins and waits, as both macros declare them.
#[derive(Debug, Serialize, Deserialize)]
struct Spawn;
#[derive(Debug, Serialize, Deserialize)]
struct Joined;
#[derive(Debug, Serialize, Deserialize)]
struct Delivered;
#[derive(Debug, Serialize, Deserialize, Machine)]
#[output(String)]
enum Shop {
    #[next(join Joined)]
    Spawn(Spawn),
    #[next(wait Delivered, join Delivered, Spawn)]
    Joined(Joined),
    Delivered(Delivered),
}
#[jetpack::async_trait]
impl Step<Shop> for Spawn {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::join(Joined)
    }
}
#[jetpack::async_trait]
impl Step<Shop> for Joined {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::wait(Delivered, jetpack::Wait::signal::<Ping>())
    }
}
#[jetpack::async_trait]
impl Step<Shop> for Delivered {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::finish("done".into())
    }
}
#[derive(Serialize, Deserialize)]
struct Ping;
impl jetpack::Signal for Ping {
    const NAME: &'static str = "ping";
}

/// Join and wait edges are successors, marked in the graph and labelled in
/// the diagram (a step reached both ways shows as a join).
#[test]
fn join_and_wait_edges() {
    let graph = Shop::graph();
    assert_eq!(
        graph.edges(),
        [
            ("Spawn", "Joined"),
            ("Joined", "Delivered"),
            ("Joined", "Spawn")
        ]
    );
    assert_eq!(graph.steps[0].joins, ["Joined"]);
    assert_eq!(graph.steps[1].waits, ["Delivered"]);
    assert_eq!(graph.steps[1].joins, ["Delivered"]);
    let mermaid = graph.to_mermaid();
    assert!(
        mermaid.contains("    Spawn --> Joined: join children\n"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("    Joined --> Delivered: join children\n"),
        "{mermaid}"
    );
    assert!(mermaid.contains("    Joined --> Spawn\n"), "{mermaid}");
}

#[test]
fn stored_json_is_the_readable_form() {
    let step = ReadName {
        filename: "name.txt".into(),
    };
    let json = step.into_step_json().unwrap();
    assert_eq!(json, r#"{"Greeter":{"ReadName":{"filename":"name.txt"}}}"#);

    let machine = Greeter::SayHello(SayHello { name: "Ann".into() });
    assert_eq!(
        machine.into_step_json().unwrap(),
        r#"{"Greeter":{"SayHello":{"name":"Ann"}}}"#
    );

    // A unit step and the scheduler enum use the same form.
    assert_eq!(
        Done.into_step_json().unwrap(),
        r#"{"Payment":{"Done":null}}"#
    );
    let tasks: Tasks = serde_json::from_str(&json).unwrap();
    assert_eq!(tasks.machine_name(), "Greeter");
    assert_eq!(tasks.step_name(), "ReadName");
    assert_eq!(tasks.into_step_json().unwrap(), json);
}

#[test]
fn scheduler_knows_every_kind() {
    let kinds = Tasks::kinds();
    for kind in [
        "",
        "Greeter.",
        "Greeter.ReadName",
        "Greeter.SayHello",
        "Payment.",
        "Payment.Refund",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }
    assert_eq!(Tasks::graphs().len(), 2);
}

#[test]
fn retry_policy_comes_from_the_step() {
    #[derive(Debug, Serialize, Deserialize)]
    struct Flaky;
    #[derive(Debug, Serialize, Deserialize, Machine)]
    enum M {
        Flaky(Flaky),
    }
    #[jetpack::async_trait]
    impl Step<M> for Flaky {
        const RETRY_LIMIT: i32 = 7;
        const RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(10);
        const TIMEOUT: Option<std::time::Duration> = Some(std::time::Duration::from_secs(3));
        async fn step(self, _: &Context<'_>) -> StepResult<Self> {
            NextStep::none()
        }
    }
    let policy = M::Flaky(Flaky).policy();
    assert_eq!(policy.limit, 7);
    assert_eq!(policy.delay, std::time::Duration::from_millis(10));
    assert_eq!(policy.timeout, Some(std::time::Duration::from_secs(3)));
}
