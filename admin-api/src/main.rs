//! `watchpost-admin`: see the crate README.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = watchpost_admin::cli::Cli::parse();
    let env = watchpost_common::config::process_env();
    watchpost_admin::cli::run(cli, &env).await?;
    Ok(())
}
