//! A program's own `jetpack` command line, with its types (here the README's
//! `Tasks`): `verify` decodes every live row with them, `redrive` checks the
//! fields of what it moves, `graph` draws a machine without a database.
//!
//! ```sh
//! cargo run -p jetpack-cli --example tasks -- --url sqlite://jetpack.db verify
//! ```

#[tokio::main]
async fn main() -> std::process::ExitCode {
    jetpack_cli::run::<jetpack_suite::readme::Tasks>().await
}
