use jetpack::{Context, NextStep, Signal, Step, StepResult, Wait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ReadName;
#[derive(Debug, Serialize, Deserialize)]
struct SayHello;
#[derive(Debug, Serialize, Deserialize)]
struct SayBye;
#[derive(Debug, Serialize, Deserialize)]
struct Named;
impl Signal for Named {
    const NAME: &'static str = "named";
}

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Greeter {
    #[next(SayHello)]
    ReadName(ReadName),
    #[next(SayBye)]
    SayHello(SayHello),
    SayBye(SayBye),
}

#[jetpack::async_trait]
impl Step<Greeter> for ReadName {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        // not declared: ReadName may only wait to go on to SayHello
        NextStep::wait(SayBye, Wait::signal::<Named>())
    }
}
#[jetpack::async_trait]
impl Step<Greeter> for SayHello {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::now(SayBye)
    }
}
#[jetpack::async_trait]
impl Step<Greeter> for SayBye {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
