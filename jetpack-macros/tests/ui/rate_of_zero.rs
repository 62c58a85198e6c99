use jetpack::{Context, NextStep, Rate, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Call;

jetpack::task!(Api { Call });

#[jetpack::async_trait]
impl Step<Api> for Call {
    // A rate of nothing per second would never run the step.
    const RATE: Option<Rate> = Some(Rate::per_second(0));
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
