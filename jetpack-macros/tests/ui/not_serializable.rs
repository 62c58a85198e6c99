use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug)]
struct Opaque; // neither Serialize nor Deserialize

#[derive(Debug, Serialize, Deserialize)]
struct Holder(Opaque);

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum M {
    Holder(Holder),
}

#[jetpack::async_trait]
impl Step<M> for Holder {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
