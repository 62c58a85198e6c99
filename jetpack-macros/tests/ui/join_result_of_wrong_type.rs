use jetpack::{Child, Context, NextStep, Step, StepResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Charge;
jetpack::task!(Payment -> u64 { Charge });

#[jetpack::async_trait]
impl Step<Payment> for Charge {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        // the machine's output is u64
        NextStep::finish("a receipt".to_string())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Order;
#[derive(Debug, Serialize, Deserialize)]
struct Paid {
    payment: Child<Payment>,
}
#[derive(Debug, Serialize, Deserialize)]
struct Cancelled;
jetpack::task!(Shop { Order => [join Paid], Paid, Cancelled });

#[jetpack::async_trait]
impl Step<Shop> for Order {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        let payment = cx.spawn(Charge).await?;
        // not declared: Order may only be followed by Paid
        NextStep::join(Cancelled)
    }
}

#[jetpack::async_trait]
impl Step<Shop> for Paid {
    async fn step(self, cx: &Context<'_>) -> StepResult<Self> {
        // the payment's result is a u64, not a String
        let receipt: String = cx.result(&self.payment).await??;
        NextStep::none()
    }
}

#[jetpack::async_trait]
impl Step<Shop> for Cancelled {
    async fn step(self, _: &Context<'_>) -> StepResult<Self> {
        NextStep::none()
    }
}

fn main() {}
