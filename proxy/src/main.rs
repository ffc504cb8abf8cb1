use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = watchpost_proxy::cli::Cli::parse();
    watchpost_proxy::cli::run(cli, &watchpost_common::config::process_env())
}
