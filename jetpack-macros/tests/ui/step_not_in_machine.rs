use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ReadName;
#[derive(Debug, Serialize, Deserialize)]
struct Stranger;

jetpack::task!(Greeter { ReadName });

#[jetpack::async_trait]
impl Step<Greeter> for ReadName {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}
#[jetpack::async_trait]
impl Step<Greeter> for Stranger {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
