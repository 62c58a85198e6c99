use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ReadName;
#[derive(Debug, Serialize, Deserialize)]
struct SayHello;
#[derive(Debug, Serialize, Deserialize)]
struct SayBye;

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
        NextStep::now(SayBye) // not declared: ReadName may only be followed by SayHello
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
