use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Charge;

#[derive(Debug, Serialize, Deserialize)]
struct Receipt;

// A step is stored under its variant's name: serde may not rename it, and an
// alias may not be the name of another step.
#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Pay {
    #[next(Receipt)]
    #[serde(rename = "Bill")]
    Charge(Charge),
    #[serde(alias = "Charge")]
    Receipt(Receipt),
}

fn main() {}
