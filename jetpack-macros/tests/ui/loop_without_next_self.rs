// A step that returns itself (a poll loop) must list itself: `#[next(Poll)]`.
use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Poll {
    left: u32,
}
#[derive(Debug, Serialize, Deserialize)]
struct Done;

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Poller {
    #[next(Done)]
    Poll(Poll),
    Done(Done),
}

#[jetpack::async_trait]
impl Step<Poller> for Poll {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        match self.left {
            0 => NextStep::now(Done),
            left => NextStep::now(Poll { left: left - 1 }),
        }
    }
}

#[jetpack::async_trait]
impl Step<Poller> for Done {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
