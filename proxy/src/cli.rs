//! The command line of `watchpost-proxy`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use tracing_log::AsLog as _;
use tracing_subscriber::EnvFilter;

use crate::config::Settings;
use crate::daemon::{self, Ready, Role};
use crate::server::{self, StopOn};

/// Watchpost's gateway: decides each request's client IP, country and risk score, rejects
/// risky requests with 403, forwards the rest round-robin to healthy upstreams, and appends an
/// access-log entry per request to a Redis Stream without ever waiting on Redis.
///
/// Configuration comes from the TOML file's [proxy], [redis], [access_log], [geo], [gateway]
/// and [risk] sections; `WATCHPOST_<SECTION>_<KEY>` environment variables override single keys
/// (`WATCHPOST_PROXY_LISTEN=127.0.0.1:8080`) and `REDIS_URL` overrides [redis] url. Without a
/// file, defaults apply. The gateway config in Redis (`<prefix>gateway:config`), when present
/// and valid, replaces [gateway] and is followed live.
///
/// Signals: SIGTERM stops gracefully (in-flight requests finish, the access log is flushed),
/// SIGINT stops at once (the access log is still flushed), SIGHUP reloads the upstream list
/// and the [risk] settings from the file (an invalid file is refused and logged), SIGQUIT
/// hands the listening sockets to a new binary started with --upgrade, then drains and exits.
///
/// Under systemd (`deploy/systemd/watchpost-proxy.service`): `--daemon --pid-file`, and
/// `systemctl reload` performs the --upgrade.
#[derive(Debug, Parser)]
#[command(name = "watchpost-proxy", version)]
pub struct Cli {
    /// The TOML config file shared with watchpost-admin.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<String>,
    /// Validate the configuration (file, environment, GeoIP database, risk settings) and exit.
    #[arg(long)]
    pub check: bool,
    /// Zero-downtime upgrade: take the listening sockets over from the running proxy. Start
    /// the new binary with this flag, then send SIGQUIT to the old process: it hands its
    /// sockets over `[proxy] upgrade_sock`, stops accepting, lets in-flight requests finish
    /// and exits, while this one serves.
    #[arg(long)]
    pub upgrade: bool,
    /// Run in the background (a service manager's forking daemon, systemd `Type=forking`):
    /// the command returns once the proxy serves (exit 0) or failed to start (exit 1; an
    /// invalid configuration still exits 2 before forking). Needs --pid-file.
    #[arg(long, requires = "pid_file")]
    pub daemon: bool,
    /// Write the id of the serving process to FILE once it accepts connections (replaced
    /// atomically: during an --upgrade it names the new process once that one has the
    /// listening sockets); removed at exit if it still names this process.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Log format on standard error; the level comes from RUST_LOG (default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the tracing subscriber, with Pingora's `log` records bridged into it.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Pingora's `debug!`/`trace!` calls sit on the request path: with the bridge's default
    // (everything up to TRACE) each one would build a record only for the filter to drop it.
    // The `log` crate's own level check drops them first when it knows the filter's ceiling.
    let ceiling = filter
        .max_level_hint()
        .map_or(log::LevelFilter::Trace, |level| level.as_log());
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(ceiling)
        .init();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(builder.json().finish()),
    };
    if let Err(e) = result {
        eprintln!("watchpost-proxy: cannot install the logger: {e}");
    }
}

/// Run the binary: parse, validate, serve until a signal.
pub fn run(cli: Cli, env: &[(String, String)]) -> ExitCode {
    init_logging(cli.log_format);
    let settings = match Settings::load(cli.config.as_deref(), env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("watchpost-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        // The GeoIP file, the risk settings and the TLS files are part of the check.
        if let Err(e) = server::check(&settings).and_then(|_| server::check_tls(&settings, None)) {
            eprintln!("watchpost-proxy: {e}");
            return ExitCode::from(2);
        }
        println!("watchpost-proxy: configuration is valid");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &cli.pid_file {
        if let Err(e) = daemon::check_pid_file(path) {
            eprintln!("watchpost-proxy: --pid-file {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    let mut ready = Ready::none();
    if cli.daemon {
        // A configuration error is reported (exit 2) by the command itself, not by a
        // background process; then fork while there is still a single thread.
        if let Err(e) = server::check(&settings).and_then(|_| server::check_tls(&settings, None)) {
            eprintln!("watchpost-proxy: {e}");
            return ExitCode::from(2);
        }
        match daemon::daemonize() {
            Ok(Role::Foreground(code)) => return code,
            Ok(Role::Background(r)) => ready = r,
            Err(e) => {
                eprintln!("watchpost-proxy: {e}");
                return ExitCode::from(1);
            }
        }
    }
    match server::start_with(settings, StopOn::Signals, cli.upgrade) {
        Ok(running) => {
            if let Some(path) = &cli.pid_file {
                if let Err(e) = daemon::write_pid_file(path) {
                    // Checked writable before start, so rare; without the file a service
                    // manager cannot track the process: stop now (the runtimes stop with it).
                    tracing::error!(path = %path.display(), error = %e, "cannot write the PID file; exiting");
                    std::process::exit(1);
                }
            }
            ready.notify();
            crate::reload::on_sighup(running.reloader(), cli.config.clone(), env.to_vec());
            running.wait();
            if let Some(path) = &cli.pid_file {
                daemon::remove_pid_file(path);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("watchpost-proxy: {e}");
            ExitCode::from(1)
        }
    }
}
