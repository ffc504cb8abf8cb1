use std::process::ExitCode;

use clap::Parser;

/// The request path allocates small, short-lived objects on every thread; mimalloc's
/// thread-local free lists serve them with less work than glibc's malloc (see
/// `benches/RESULTS.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = watchpost_proxy::cli::Cli::parse();
    watchpost_proxy::cli::run(cli, &watchpost_common::config::process_env())
}
