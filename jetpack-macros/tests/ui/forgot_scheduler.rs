// A worker runs the enum `scheduler!` declares, not a machine.
use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Hello;

jetpack::task!(Greeter { Hello });

#[jetpack::async_trait]
impl Step<Greeter> for Hello {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn run(_worker: jetpack::Worker<Greeter>) {}

fn main() {}
