use jetpack::{Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order;
#[derive(Debug, Serialize, Deserialize)]
struct Paid;
// `Paid` follows `Order`, but not by a join: `Order => [join Paid]` would say so.
jetpack::task!(Shop { Order => [Paid], Paid });

#[jetpack::async_trait]
impl Step<Shop> for Order {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::join(Paid)
    }
}

#[jetpack::async_trait]
impl Step<Shop> for Paid {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
