// `impl Step` needs `#[jetpack::async_trait]`, as the trait's declaration has.
use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Hello;

jetpack::task!(Greeter { Hello });

impl Step<Greeter> for Hello {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
