use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ReadName;

#[derive(Debug, Serialize, Deserialize, jetpack::Machine)]
enum Greeter {
    #[next(SayHelo)]
    ReadName(ReadName),
    Broken { name: String },
}

fn main() {}
