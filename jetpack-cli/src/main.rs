//! The `jetpack` binary: the command line from the database alone. A program
//! that wants its types checked builds its own with `jetpack_cli::run`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    jetpack_cli::run_untyped().await
}
