use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Page;

jetpack::task!(Alert { Page });

#[jetpack::async_trait]
impl Step<Alert> for Page {
    // Priorities run from 0 to 10.
    const PRIORITY: u8 = 11;
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
