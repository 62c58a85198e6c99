// Loops, branches, self-retries and terminal steps, with derive and with task!.
use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Check { n: u32 }
#[derive(Debug, Serialize, Deserialize)]
pub struct Approve;
#[derive(Debug, Serialize, Deserialize)]
pub struct Reject;

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
pub enum Review {
    #[next(Check, Approve, Reject)]
    Check(Check),
    #[next(Check)]
    Approve(Approve),
    Reject(Reject),
}

#[jetpack::async_trait]
impl Step<Review> for Check {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        match self.n {
            0 => NextStep::now(Reject),
            1 => NextStep::delay(Approve, std::time::Duration::from_secs(1)),
            n => NextStep::now(Check { n: n - 1 }),
        }
    }
}
#[jetpack::async_trait]
impl Step<Review> for Approve {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::at(Check { n: 5 }, jetpack::chrono::Utc::now())
    }
}
#[jetpack::async_trait]
impl Step<Review> for Reject {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Ping;
jetpack::task!(pub Pinger { Ping => [Ping] });
#[jetpack::async_trait]
impl Step<Pinger> for Ping {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::now(Ping)
    }
}

jetpack::scheduler!(pub Tasks { Review, Pinger });

fn main() {}
