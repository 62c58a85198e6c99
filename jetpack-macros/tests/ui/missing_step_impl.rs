use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ReadName;
#[derive(Debug, Serialize, Deserialize)]
struct SayHello;

jetpack::task!(Greeter { ReadName => [SayHello], SayHello });

#[jetpack::async_trait]
impl Step<Greeter> for ReadName {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::now(SayHello)
    }
}
// No `impl Step<Greeter> for SayHello`.

fn main() {}
