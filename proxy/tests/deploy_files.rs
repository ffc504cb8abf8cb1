//! The deployment files in `deploy/` against what the binaries accept: the systemd units and
//! their environment file, the compose file, its config and the Dockerfile. Every command line
//! in them parses with the binary's own command-line parser, every config loads with the
//! binary's own loader, and the values that several files must agree on (ports, host names,
//! credentials, paths, stop timeouts) do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use serde_yaml::Value;
use watchpost_admin::cli::{Cli as AdminCli, Command as AdminCommand};
use watchpost_admin::Config as AdminConfig;
use watchpost_proxy::cli::Cli as ProxyCli;
use watchpost_proxy::Settings;

const PROXY_BIN: &str = env!("CARGO_BIN_EXE_watchpost-proxy");
const DEMO_BIN: &str = env!("CARGO_BIN_EXE_watchpost-demo-upstream");

/// Where the units expect the config and the secrets.
const ETC_CONFIG: &str = "/etc/watchpost/watchpost.toml";
const ENV_FILE: &str = "/etc/watchpost/watchpost.env";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[track_caller]
fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn pairs(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A duration as systemd and compose write them: `30`, `30s`, `2min`, `1m30s`.
#[track_caller]
fn duration(text: &str) -> Duration {
    let mut total = 0u64;
    let mut digits = String::new();
    let mut rest = text.trim();
    if rest.chars().all(|c| c.is_ascii_digit()) {
        return Duration::from_secs(rest.parse().expect("seconds"));
    }
    while !rest.is_empty() {
        let c = rest.chars().next().expect("not empty");
        if c.is_ascii_digit() {
            digits.push(c);
            rest = &rest[1..];
            continue;
        }
        let (factor, len) = if rest.starts_with("min") {
            (60, 3)
        } else if rest.starts_with('m') {
            (60, 1)
        } else if rest.starts_with('s') {
            (1, 1)
        } else {
            panic!("unsupported duration {text:?}");
        };
        total += factor * digits.parse::<u64>().expect("a number before the unit");
        digits.clear();
        rest = &rest[len..];
    }
    assert!(digits.is_empty(), "duration {text:?} ends without a unit");
    Duration::from_secs(total)
}

// ------------------------------------------------------------------------------ systemd ----

/// The `Key=Value` lines of a unit file with their section, in order (keys may repeat).
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    #[track_caller]
    fn load(rel: &str) -> Self {
        let mut section = String::new();
        let mut entries = Vec::new();
        for line in read(rel).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{rel}: keep each setting on one line: {line}"
            );
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: not a Key=Value line: {line}"));
            assert!(!section.is_empty(), "{rel}: {line} is outside a section");
            entries.push((section.clone(), key.trim().into(), value.trim().into()));
        }
        Self {
            name: rel.to_string(),
            entries,
        }
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value of a key that must be set exactly once.
    #[track_caller]
    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key).as_slice() {
            [v] => v,
            other => panic!("{}: [{section}] {key} set {} times", self.name, other.len()),
        }
    }

    /// Space-separated values of a list setting (`After=`, `Wants=`), over all its lines.
    fn words(&self, section: &str, key: &str) -> BTreeSet<&str> {
        self.all(section, key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }

    /// Every `Exec*=` command line: the binary and its arguments, without systemd's `-+!@:`
    /// prefixes.
    fn exec_lines(&self) -> Vec<Vec<&str>> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k.starts_with("Exec"))
            .map(|(_, _, v)| {
                v.trim_start_matches(['-', '+', '!', '@', ':'])
                    .split_whitespace()
                    .collect()
            })
            .collect()
    }
}

fn proxy_unit() -> Unit {
    Unit::load("deploy/systemd/watchpost-proxy.service")
}

fn admin_unit() -> Unit {
    Unit::load("deploy/systemd/watchpost-admin.service")
}

/// The defaults every unit is measured against: the shipped example config.
fn example_settings() -> Settings {
    let path = repo_path("deploy/watchpost.example.toml");
    Settings::load(path.to_str(), &[]).unwrap_or_else(|e| panic!("example config: {e}"))
}

#[test]
fn unit_command_lines_are_ones_the_binaries_accept() {
    let proxy = proxy_unit();
    let lines = proxy.exec_lines();
    assert!(!lines.is_empty(), "the proxy unit starts nothing");
    for argv in lines {
        if argv[0] == "/bin/kill" {
            // ExecReload: SIGQUIT hands the listening sockets to the `--upgrade` binary.
            assert_eq!(argv, ["/bin/kill", "-QUIT", "$MAINPID"]);
            continue;
        }
        assert_eq!(argv[0], "/usr/local/bin/watchpost-proxy", "{argv:?}");
        let cli = ProxyCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert_eq!(cli.config.as_deref(), Some(ETC_CONFIG), "{argv:?}");
        // The real binary, with the same flags and a config file that exists here.
        let mut args: Vec<String> = argv[1..].iter().map(|a| a.to_string()).collect();
        let at = args
            .iter()
            .position(|a| a == ETC_CONFIG)
            .expect("config path");
        args[at] = repo_path("deploy/watchpost.example.toml")
            .display()
            .to_string();
        if !cli.check {
            args.push("--check".into());
        }
        let out = Command::new(PROXY_BIN)
            .args(&args)
            .env_clear() // no WATCHPOST_* overrides from the environment running the tests
            .output()
            .expect("run watchpost-proxy");
        assert!(out.status.success(), "watchpost-proxy {args:?}: {out:?}");
    }

    let admin = admin_unit();
    let mut serves = 0;
    for argv in admin.exec_lines() {
        assert_eq!(argv[0], "/usr/local/bin/watchpost-admin", "{argv:?}");
        let cli = AdminCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert_eq!(cli.config.as_deref(), Some(ETC_CONFIG), "{argv:?}");
        if matches!(cli.command, None | Some(AdminCommand::Serve)) {
            serves += 1;
        }
    }
    assert_eq!(serves, 1, "the admin unit runs `serve` once");
}

#[test]
fn units_run_sandboxed_as_watchpost_with_secrets_outside_the_unit() {
    let settings = example_settings();
    for unit in [proxy_unit(), admin_unit()] {
        let n = &unit.name;
        // The proxy forks (see `systemd_reload_upgrades_the_binary_under_load`).
        let kind = if n.contains("proxy") {
            "forking"
        } else {
            "exec"
        };
        assert_eq!(unit.one("Service", "Type"), kind, "{n}: Type");
        for (key, want) in [
            ("User", "watchpost"),
            ("Group", "watchpost"),
            ("EnvironmentFile", "-/etc/watchpost/watchpost.env"),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectKernelLogs", "yes"),
            ("ProtectControlGroups", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("RestrictNamespaces", "yes"),
            ("RestrictSUIDSGID", "yes"),
            ("LockPersonality", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
        ] {
            assert_eq!(unit.one("Service", key), want, "{n}: {key}");
        }
        assert_eq!(
            unit.one("Service", "EnvironmentFile")
                .trim_start_matches('-'),
            ENV_FILE
        );
        // Secrets come from the environment file only.
        for value in unit.all("Service", "Environment") {
            let upper = value.to_ascii_uppercase();
            for secret in ["SECRET", "PASS", "DATABASE_URL", "REDIS_URL", "TOKEN"] {
                assert!(!upper.contains(secret), "{n}: secret in the unit: {value}");
            }
        }
        assert!(
            unit.words("Unit", "Wants")
                .contains("network-online.target"),
            "{n}"
        );
        assert!(
            unit.words("Unit", "After")
                .contains("network-online.target"),
            "{n}"
        );
        assert_eq!(unit.one("Install", "WantedBy"), "multi-user.target", "{n}");
    }

    // No capability unless a listener of the example config is on a privileged port, and
    // then only the one that binds it.
    let privileged = [
        settings.listen,
        settings.tls_listen,
        Some(settings.health_listen),
    ]
    .iter()
    .flatten()
    .any(|a| a.port() < 1024);
    let caps = if privileged {
        "CAP_NET_BIND_SERVICE"
    } else {
        ""
    };
    let proxy = proxy_unit();
    assert_eq!(proxy.one("Service", "CapabilityBoundingSet"), caps);
    assert_eq!(proxy.one("Service", "AmbientCapabilities"), caps);
    let admin_config = AdminConfig::load(repo_path("deploy/watchpost.example.toml").to_str(), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let admin_caps = if admin_config.listen_addr().expect("listen").port() < 1024 {
        "CAP_NET_BIND_SERVICE"
    } else {
        ""
    };
    let admin = admin_unit();
    assert_eq!(admin.one("Service", "CapabilityBoundingSet"), admin_caps);
    assert_eq!(admin.one("Service", "AmbientCapabilities"), admin_caps);

    // The admin API waits for the stores when they run on the same host.
    let after = admin.words("Unit", "After");
    for store in ["postgresql.service", "redis-server.service"] {
        assert!(after.contains(store), "admin unit: After= {store}");
    }
    // At shutdown the proxy stops (and flushes into Redis) before a local Redis does.
    assert!(proxy
        .words("Unit", "After")
        .contains("redis-server.service"));
}

#[test]
fn unit_stop_timeouts_cover_the_graceful_stop() {
    let settings = example_settings();
    let p = &settings.file.proxy;
    let proxy_stop = Duration::from_secs(p.grace_period_secs + p.shutdown_timeout_secs)
        + Duration::from_millis(settings.file.access_log.shutdown_flush_ms);
    let proxy = proxy_unit();
    let timeout = duration(proxy.one("Service", "TimeoutStopSec"));
    assert!(
        timeout > proxy_stop,
        "proxy TimeoutStopSec {timeout:?} must exceed grace + shutdown + flush {proxy_stop:?}"
    );
    let nofile: u64 = proxy.one("Service", "LimitNOFILE").parse().expect("number");
    assert!(nofile >= 65_536, "proxy LimitNOFILE {nofile}");

    let admin_config = AdminConfig::load(repo_path("deploy/watchpost.example.toml").to_str(), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let timeout = duration(admin_unit().one("Service", "TimeoutStopSec"));
    assert!(
        timeout > admin_config.request_timeout(),
        "admin TimeoutStopSec {timeout:?} must exceed request_timeout_ms"
    );
}

// ------------------------------------------------------------- systemd: reload = upgrade ----

/// A free local port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether a process is still running (a zombie, exited but not yet reaped by whoever
/// adopted the daemon, counts as gone).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[track_caller]
fn read_pid(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

/// Poll `cond` until it holds; panics with `what` after `limit`.
#[track_caller]
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a fresh connection; true when it was answered 200 by the upstream.
fn one_request(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let req = "GET /load HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\
               User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\
               Accept: text/html\r\nAccept-Language: en\r\n\r\n";
    if c.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

/// The processes a test started: killed if the test fails half-way.
#[derive(Default)]
struct Reaper {
    pids: Vec<u32>,
    children: Vec<std::process::Child>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.pids {
            if running(*pid) {
                let _ = Command::new("/bin/kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The proxy unit's command lines, run the way systemd runs them (`Type=forking`: ExecStart
/// returns once the daemon serves and systemd reads `PIDFile=`; `systemctl reload` runs the
/// ExecReload lines in order, stops at the first that fails, then re-reads `PIDFile=`), with
/// the unit's paths replaced by the test binary, a test config and a temporary PID file.
/// While four clients send requests on new connections: the reload replaces the serving
/// process with no failed request, the PID file names the new process, and the old one exits.
/// A reload with an invalid file stops at `--check` and leaves the running process alone.
#[test]
fn systemd_reload_upgrades_the_binary_under_load() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let unit = proxy_unit();
    assert_eq!(unit.one("Service", "Type"), "forking");
    let unit_pid_file = unit.one("Service", "PIDFile");
    // The PID file lives in the directory systemd creates for the service (writable by its
    // user under ProtectSystem=strict).
    let runtime_dir = Path::new("/run").join(unit.one("Service", "RuntimeDirectory"));
    assert_eq!(
        Path::new(unit_pid_file).parent(),
        Some(runtime_dir.as_path())
    );

    let mut reaper = Reaper::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("proxy.log");
    let log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file")
    };
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The upstream: the demo upstream binary.
    let upstream_port = free_port();
    reaper.children.push(
        Command::new(DEMO_BIN)
            .env_clear()
            .args(["--listen", &format!("127.0.0.1:{upstream_port}")])
            .stdout(log())
            .stderr(log())
            .spawn()
            .expect("spawn the demo upstream"),
    );
    wait_for("the upstream to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", upstream_port)).is_ok()
    });

    // The proxy's config: no Redis needed (the access log retries in the background), no
    // rate limit the load could reach.
    let port = free_port();
    let config_path = dir.path().join("watchpost.toml");
    let pid_path = dir.path().join("watchpost-proxy.pid");
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\nupstreams = [\"127.0.0.1:{upstream_port}\"]\n\
         health_listen = \"127.0.0.1:0\"\nthreads = 1\ngrace_period_secs = 1\n\
         shutdown_timeout_secs = 1\nupgrade_sock = \"{sock}\"\n\
         [redis]\nurl = \"redis://127.0.0.1:1/\"\n[access_log]\nshutdown_flush_ms = 100\n\
         [risk]\nrate_limit = 1e12\n",
        sock = dir.path().join("upgrade.sock").display(),
    );
    std::fs::write(&config_path, &config).expect("write config");
    let env: Vec<(String, String)> = unit
        .all("Service", "Environment")
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    // A unit command line with the paths of this test; `$MAINPID` as systemd fills it in.
    let run = |argv: &[&str], main_pid: Option<u32>| -> std::process::ExitStatus {
        let args: Vec<String> = argv
            .iter()
            .map(|a| match *a {
                "/usr/local/bin/watchpost-proxy" => PROXY_BIN.to_string(),
                ETC_CONFIG => config_path.display().to_string(),
                p if p == unit_pid_file => pid_path.display().to_string(),
                "$MAINPID" => main_pid.expect("a main PID").to_string(),
                other => other.to_string(),
            })
            .collect();
        // Output to a file: the daemon inherits it (a pipe would stay open while it runs).
        Command::new(&args[0])
            .args(&args[1..])
            .env_clear()
            .envs(env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(log())
            .stderr(log())
            .status()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let exec = |key: &str| -> Vec<Vec<&str>> {
        unit.all("Service", key)
            .into_iter()
            .map(|v| {
                v.trim_start_matches(['-', '+', '!', '@', ':'])
                    .split_whitespace()
                    .collect()
            })
            .collect()
    };
    let start = exec("ExecStart");
    assert_eq!(start.len(), 1, "one ExecStart");
    let reload = exec("ExecReload");
    assert!(!reload.is_empty(), "an ExecReload");

    // systemctl start: the command returns once the daemon serves; the PID file names it.
    let status = run(&start[0], None);
    assert!(status.success(), "ExecStart: {status:?}\n{}", logs());
    assert!(
        pid_path.exists(),
        "ExecStart returned without a PID file\n{}",
        logs()
    );
    let old = read_pid(&pid_path);
    reaper.pids.push(old);
    assert!(running(old), "the PID file names a running process");
    assert!(
        one_request(port),
        "the daemon serves once ExecStart returned\n{}",
        logs()
    );

    // Continuous load: four clients, a new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let counter = if one_request(port) { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_for("load to flow", Duration::from_secs(20), || {
        ok.load(Ordering::Relaxed) > 20
    });

    // systemctl reload with an invalid file: the first failing line ends the reload.
    std::fs::write(&config_path, format!("{config}\n[proxy.bogus]\n")).expect("write");
    let mut failed_at = None;
    for (i, argv) in reload.iter().enumerate() {
        if !run(argv, Some(old)).success() {
            failed_at = Some(i);
            break;
        }
    }
    assert_eq!(
        failed_at,
        Some(0),
        "the --check line refuses the file first\n{}",
        logs()
    );
    assert_eq!(read_pid(&pid_path), old);
    assert!(running(old), "the running proxy is left alone");
    std::fs::write(&config_path, &config).expect("write");

    // systemctl reload: every line succeeds, $MAINPID being the PID file's process.
    let before = ok.load(Ordering::Relaxed);
    for argv in &reload {
        let status = run(argv, Some(old));
        assert!(
            status.success(),
            "ExecReload {argv:?}: {status:?}\n{}",
            logs()
        );
    }
    // ... then systemd re-reads the PID file: it names the new, serving process.
    let new = read_pid(&pid_path);
    reaper.pids.push(new);
    assert_ne!(new, old, "the PID file names the new process\n{}", logs());
    assert!(running(new), "the new process runs\n{}", logs());
    wait_for("the old process to exit", Duration::from_secs(60), || {
        !running(old)
    });
    // Requests after the old process is gone are the new one's.
    let after = ok.load(Ordering::Relaxed);
    wait_for(
        "requests served by the new process",
        Duration::from_secs(20),
        || ok.load(Ordering::Relaxed) > after + 20,
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    assert!(ok.load(Ordering::Relaxed) > before);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} requests succeeded\n{}",
        ok.load(Ordering::Relaxed),
        logs()
    );
    assert!(running(new), "the new process kept running\n{}", logs());

    // systemctl stop: KillSignal to the main process; it exits and removes its PID file.
    let signal = unit.one("Service", "KillSignal").trim_start_matches("SIG");
    let status = Command::new("/bin/kill")
        .args([format!("-{signal}"), new.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for("the new process to stop", Duration::from_secs(30), || {
        !running(new)
    });
    assert!(!pid_path.exists(), "the PID file is removed at exit");
}

/// `NAME=value` of every commented-out assignment in the environment example.
fn env_example() -> Vec<(String, String)> {
    let text = read("deploy/systemd/watchpost.env.example");
    let mut vars = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        assert!(
            line.is_empty() || line.starts_with('#'),
            "the example must set nothing until edited: {line}"
        );
        let body = line.trim_start_matches('#');
        if let Some((name, value)) = body.split_once('=') {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                vars.push((name.to_string(), value.to_string()));
            }
        }
    }
    vars
}

#[test]
fn env_example_lists_only_variables_that_take_effect() {
    let mut vars = env_example();
    let names: BTreeSet<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    for must in ["DATABASE_URL", "REDIS_URL", "WATCHPOST_SECRET_KEY"] {
        assert!(names.contains(must), "the env example lists {must}");
    }
    // The secret key is shown empty (to be generated); give it a value to see it used.
    for (k, v) in &mut vars {
        if k == "WATCHPOST_SECRET_KEY" && v.is_empty() {
            *v = "a test key".into();
        }
    }
    let proxy = |env: &[(String, String)]| format!("{:?}", Settings::load_str("", None, env));
    let admin = |env: &[(String, String)]| format!("{:?}", AdminConfig::load(None, env));
    // Uncommented all at once, both binaries start with them.
    assert!(
        Settings::load_str("", None, &vars).is_ok(),
        "{}",
        proxy(&vars)
    );
    assert!(AdminConfig::load(None, &vars).is_ok(), "{}", admin(&vars));
    // Each one is read by one of the binaries: leaving it out or giving it another value
    // changes what that binary loads (no misspelled or retired names).
    let outcome = |env: &[(String, String)]| (proxy(env), admin(env));
    let all = outcome(&vars);
    for (name, _) in &vars {
        if name == "RUST_LOG" {
            continue; // the log filter, read by the logger rather than the config loaders
        }
        let without: Vec<(String, String)> =
            vars.iter().filter(|(k, _)| k != name).cloned().collect();
        let changed: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| {
                let v = if k == name { "x" } else { v.as_str() };
                (k.clone(), v.to_string())
            })
            .collect();
        assert!(
            outcome(&without) != all || outcome(&changed) != all,
            "{name} in the env example has no effect on either binary"
        );
    }
}

// ------------------------------------------------------------------------------ compose ----

const COMPOSE: &str = "deploy/compose.yaml";
const COMPOSE_CONFIG: &str = "deploy/compose/watchpost.toml";

fn compose() -> Value {
    serde_yaml::from_str(&read(COMPOSE)).unwrap_or_else(|e| panic!("{COMPOSE}: {e}"))
}

#[track_caller]
fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(s.is_mapping(), "{COMPOSE}: no service {name}");
    s
}

#[track_caller]
fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("{what}: {x:?} is not a string"))
                .to_string()
        })
        .collect()
}

/// The container paths where a service mounts `source` (relative to the compose file).
fn mounts(svc: &Value, source: &str) -> Vec<String> {
    let Some(list) = svc["volumes"].as_sequence() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(Value::as_str)
        .filter_map(|m| {
            let mut parts = m.split(':');
            (parts.next() == Some(source)).then(|| parts.next().unwrap_or_default().to_string())
        })
        .collect()
}

/// Container ports a service publishes (`"127.0.0.1:8080:8080"` → 8080).
fn published(svc: &Value) -> BTreeSet<u16> {
    strings(&svc["ports"], "ports")
        .iter()
        .map(|p| {
            p.rsplit(':')
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("port mapping {p:?}"))
        })
        .collect()
}

/// The value after `flag` in a command line.
#[track_caller]
fn flag<'a>(argv: &'a [String], flag: &str) -> &'a str {
    let at = argv
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{argv:?} has no {flag}"));
    argv.get(at + 1).expect("flag value")
}

/// `(host, port)` of a `host:port` or `scheme://[user[:pass]@]host:port[/…]`.
#[track_caller]
fn host_port(addr: &str) -> (String, u16) {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or_default();
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr:?} has no port"));
    (host.to_string(), port.parse().expect("port"))
}

fn compose_config_table() -> toml::Table {
    toml::from_str(&read(COMPOSE_CONFIG)).unwrap_or_else(|e| panic!("{COMPOSE_CONFIG}: {e}"))
}

#[test]
fn compose_config_loads_in_both_binaries() {
    let path = repo_path(COMPOSE_CONFIG);
    let admin = AdminConfig::load(path.to_str(), &[]).unwrap_or_else(|e| panic!("admin: {e}"));
    assert_eq!(
        admin.listen_addr().expect("listen").ip().to_string(),
        "0.0.0.0"
    );
    // The upstream names a compose service, which resolves only on the compose network:
    // replace it with an address to load everything else with the proxy's own loader.
    let env = pairs(&[("WATCHPOST_PROXY_UPSTREAMS", r#"["127.0.0.1:3000"]"#)]);
    let proxy = Settings::load(path.to_str(), &env).unwrap_or_else(|e| panic!("proxy: {e}"));
    watchpost_proxy::server::check(&proxy).unwrap_or_else(|e| panic!("proxy --check: {e}"));
    let listen = proxy.listen.expect("a cleartext listener");
    assert!(listen.ip().is_unspecified(), "{listen}");
    assert!(proxy.health_listen.ip().is_unspecified());
    let upstreams = compose_config_table()["proxy"]["upstreams"].clone();
    let upstreams: Vec<String> = upstreams.try_into().expect("upstreams are strings");
    for u in &upstreams {
        host_port(u);
    }
    assert_eq!(proxy.file.redis.url, admin.redis.url, "one Redis for both");
    assert_eq!(proxy.file.redis.key_prefix, admin.redis.key_prefix);
}

#[test]
fn the_cluster_compose_config_names_the_cluster_services_in_both_binaries() {
    const CONFIG: &str = "deploy/compose/watchpost-cluster.toml";
    let path = repo_path(CONFIG);
    let admin = AdminConfig::load(path.to_str(), &[]).unwrap_or_else(|e| panic!("admin: {e}"));
    let env = pairs(&[("WATCHPOST_PROXY_UPSTREAMS", r#"["127.0.0.1:3000"]"#)]);
    let proxy = Settings::load(path.to_str(), &env).unwrap_or_else(|e| panic!("proxy: {e}"));
    let nodes = proxy.file.redis.cluster_nodes.clone();
    assert_eq!(nodes, admin.redis.cluster_nodes, "one cluster for both");
    assert!(proxy.file.redis.target().is_cluster());
    let mut compose: Value = serde_yaml::from_str(&read("deploy/compose/cluster.yaml"))
        .unwrap_or_else(|e| panic!("deploy/compose/cluster.yaml: {e}"));
    compose.apply_merge().expect("the redis nodes' merge key");
    for node in &nodes {
        let (host, port) = host_port(node.trim_start_matches("redis://"));
        assert_eq!(port, 6379, "{node}");
        let svc = service(&compose, &host);
        assert!(
            strings(&svc["command"], "command").contains(&"--cluster-enabled".to_string()),
            "{host} runs in cluster mode"
        );
    }
    for svc in ["admin", "proxy"] {
        assert_eq!(
            mounts(service(&compose, svc), "./watchpost-cluster.toml"),
            ["/etc/watchpost/watchpost.toml"],
            "{svc}"
        );
    }
}

#[test]
fn compose_services_agree_with_the_config_and_the_binaries() {
    let c = compose();
    let admin_cfg = AdminConfig::load(repo_path(COMPOSE_CONFIG).to_str(), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let table = compose_config_table();
    let proxy_sec = &table["proxy"];
    let listen = host_port(proxy_sec["listen"].as_str().expect("listen")).1;
    let health = host_port(proxy_sec["health_listen"].as_str().expect("health_listen")).1;
    let admin_port = admin_cfg.listen_addr().expect("listen").port();

    // Each Watchpost service: the image built from deploy/Dockerfile, the config mounted
    // where its command reads it.
    for name in ["admin", "proxy", "demo-upstream"] {
        let svc = service(&c, name);
        assert_eq!(svc["build"]["context"].as_str(), Some(".."), "{name}");
        assert_eq!(
            svc["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "{name}"
        );
        assert!(
            svc["healthcheck"]["test"].is_sequence(),
            "{name}: healthcheck"
        );
    }
    for name in ["redis", "postgres"] {
        assert!(
            service(&c, name)["healthcheck"]["test"].is_sequence(),
            "{name}"
        );
    }

    let admin = service(&c, "admin");
    let argv = strings(&admin["command"], "admin command");
    let cli = AdminCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(matches!(cli.command, None | Some(AdminCommand::Serve)));
    assert_eq!(
        mounts(admin, "./compose/watchpost.toml"),
        [cli.config.clone().expect("--config")]
    );
    assert_eq!(published(admin), BTreeSet::from([admin_port]));

    let proxy = service(&c, "proxy");
    let argv = strings(&proxy["command"], "proxy command");
    let cli = ProxyCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(!cli.check);
    assert_eq!(
        mounts(proxy, "./compose/watchpost.toml"),
        [cli.config.clone().expect("--config")]
    );
    assert_eq!(published(proxy), BTreeSet::from([listen, health]));

    // The demo upstream listens where the proxy's config sends traffic.
    let demo = service(&c, "demo-upstream");
    let argv = strings(&demo["command"], "demo-upstream command");
    assert_eq!(argv[0], "watchpost-demo-upstream");
    let out = Command::new(DEMO_BIN)
        .env_clear()
        .args(&argv[1..])
        .arg("--help")
        .output()
        .expect("run watchpost-demo-upstream");
    assert!(out.status.success(), "{argv:?}: {out:?}");
    let demo_port = host_port(flag(&argv, "--listen")).1;
    let upstreams: Vec<String> = proxy_sec["upstreams"].clone().try_into().expect("list");
    assert_eq!(upstreams, [format!("demo-upstream:{demo_port}")]);

    // Health checks probe the ports the config listens on.
    let probe = |svc: &Value, port: u16, path: &str| {
        let test = strings(&svc["healthcheck"]["test"], "healthcheck");
        let url = format!("http://127.0.0.1:{port}{path}");
        assert!(test.contains(&url), "{test:?} should probe {url}");
    };
    probe(admin, admin_port, "/healthz");
    probe(proxy, health, "/healthz");
    probe(demo, demo_port, "/");

    // Redis and PostgreSQL: the services and credentials the config names.
    assert_eq!(host_port(&admin_cfg.redis.url), ("redis".into(), 6379));
    let pg_url = &admin_cfg.postgres.url;
    assert_eq!(host_port(pg_url), ("postgres".into(), 5432));
    let pg = service(&c, "postgres");
    let (userinfo, db) = pg_url
        .strip_prefix("postgres://")
        .and_then(|r| r.split_once('@'))
        .map(|(u, r)| (u, r.rsplit('/').next().unwrap_or_default()))
        .expect("postgres://user:password@host:port/db");
    let (user, password) = userinfo.split_once(':').expect("user:password");
    for (key, want) in [
        ("POSTGRES_USER", user),
        ("POSTGRES_PASSWORD", password),
        ("POSTGRES_DB", db),
    ] {
        assert_eq!(
            pg["environment"][key].as_str(),
            Some(want),
            "postgres {key}"
        );
    }
    let data = mounts(pg, "postgres-data");
    assert_eq!(data, ["/var/lib/postgresql/data"]);
    assert!(c["volumes"]
        .as_mapping()
        .is_some_and(|v| v.contains_key("postgres-data")));

    // Start order: the stores (and the upstream) are healthy before the services start.
    for (name, deps) in [
        ("admin", &["postgres", "redis"][..]),
        ("proxy", &["redis", "demo-upstream"][..]),
    ] {
        for dep in deps {
            assert_eq!(
                service(&c, name)["depends_on"][*dep]["condition"].as_str(),
                Some("service_healthy"),
                "{name} depends on {dep}"
            );
        }
    }

    // Stopping: compose waits at least as long as the proxy's graceful stop takes.
    let p = &example_settings().file;
    let proxy_stop = Duration::from_secs(p.proxy.grace_period_secs + p.proxy.shutdown_timeout_secs)
        + Duration::from_millis(p.access_log.shutdown_flush_ms);
    let grace = duration(
        proxy["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    );
    assert!(grace > proxy_stop, "proxy stop_grace_period {grace:?}");
}

#[test]
fn the_image_holds_every_binary_compose_runs() {
    let dockerfile = read("deploy/Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(
        froms[0].starts_with("FROM rust:1-bookworm AS "),
        "{}",
        froms[0]
    );
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    assert!(dockerfile.contains("cargo build --release --locked"));
    for tool in ["cmake", "pkg-config", "ca-certificates", "curl"] {
        assert!(dockerfile.contains(tool), "the Dockerfile installs {tool}");
    }
    let user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("USER");
    assert!(!["root", "0"].contains(&user.trim()), "runs as {user}");

    // Every binary of the two service crates is built and copied into the image.
    let mut bins = Vec::new();
    for (krate, package) in [
        ("proxy", "watchpost-proxy"),
        ("admin-api", "watchpost-admin"),
    ] {
        assert!(
            dockerfile.contains(&format!("-p {package}")),
            "the Dockerfile builds {package}"
        );
        let manifest: toml::Table = toml::from_str(&read(&format!("{krate}/Cargo.toml")))
            .unwrap_or_else(|e| panic!("{krate}/Cargo.toml: {e}"));
        for bin in manifest["bin"].as_array().expect("[[bin]]") {
            bins.push(bin["name"].as_str().expect("name").to_string());
        }
    }
    let copied = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("&& for bin in "))
        .expect("the loop that copies the binaries out");
    let copied: BTreeSet<&str> = copied.trim_end_matches("; do \\").split(' ').collect();
    for bin in &bins {
        assert!(
            copied.contains(bin.as_str()),
            "{bin} is not copied into the image"
        );
    }
    // ... and compose runs only binaries that are there.
    let c = compose();
    for (name, svc) in c["services"].as_mapping().expect("services") {
        if svc.get("build").is_some() {
            let argv = strings(&svc["command"], "command");
            assert!(bins.contains(&argv[0]), "{name:?} runs {}", argv[0]);
        }
    }

    // A small build context.
    let ignore: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(|l| l.trim().trim_matches('/').to_string())
        .collect();
    for dir in ["target", ".cache", ".git"] {
        assert!(ignore.contains(dir), ".dockerignore must exclude {dir}");
    }
}

// ------------------------------------------------------------------------------- README ----

#[test]
fn readme_documents_the_deploy_files_with_working_commands() {
    let readme = read("README.md");
    let section = readme
        .split("\n## Deploying\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Deploying section");
    for file in [
        "watchpost-proxy.service",
        "watchpost-admin.service",
        "watchpost.env.example",
        "deploy/compose.yaml",
        "deploy/Dockerfile",
        "deploy/compose/watchpost.toml",
    ] {
        assert!(section.contains(file), "the Deploying section names {file}");
    }
    // Every deploy/ path it names exists.
    for word in section.split(|c: char| c.is_whitespace() || "`()[]".contains(c)) {
        if let Some(path) = word.strip_prefix("deploy/") {
            let path = path.trim_end_matches([',', '.', ':', ';']);
            assert!(
                repo_path("deploy").join(path).exists(),
                "README names deploy/{path}, which does not exist"
            );
        }
    }
    // The commands that create the first admin key parse, with the config path each
    // deployment uses. Shell line continuations are joined first.
    let joined = section.replace("\\\n", " ");
    let mut checked = 0;
    for line in joined.lines().filter(|l| l.contains("create-admin")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.ends_with("watchpost-admin"))
            .unwrap_or_else(|| panic!("{line}: which binary?"));
        let argv = &words[at..];
        let cli = AdminCli::try_parse_from(argv).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            matches!(cli.command, Some(AdminCommand::CreateAdmin { .. })),
            "{line}"
        );
        let config = cli.config.expect("--config");
        if line.contains("docker compose") {
            let c = compose();
            assert_eq!(
                mounts(service(&c, "admin"), "./compose/watchpost.toml"),
                [config]
            );
        } else {
            assert_eq!(config, ETC_CONFIG, "{line}");
        }
        checked += 1;
    }
    assert_eq!(
        checked, 2,
        "one create-admin command for systemd, one for compose"
    );
}
