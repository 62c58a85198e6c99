//! Before a deploy: does every live task still decode with this program's
//! types? Prints what would be stranded and exits 1 if anything would.
//!
//! ```text
//! DATABASE_URL=sqlite://jetpack.db cargo run --example verify
//! ```
//!
//! It checks the tutorial's machines (`jetpack_suite::readme::Tasks`); your
//! deploy pipeline runs the same against your scheduler type.

use jetpack_suite::readme::Tasks;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://jetpack.db".into());
    let report = if url.starts_with("sqlite:") {
        let pool = jetpack::sqlite::connect(&url).await?;
        jetpack::migrate(&pool).await?;
        jetpack::verify::<Tasks, _>(&pool).await?
    } else {
        let pool = jetpack::sqlx::PgPool::connect(&url).await?;
        jetpack::migrate(&pool).await?;
        jetpack::verify::<Tasks, _>(&pool).await?
    };
    print!("{report}");
    if !report.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}
