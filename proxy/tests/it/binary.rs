//! The `watchpost-proxy` binary itself: refusing a bad config before binding anything,
//! `--check`, and a SIGTERM that flushes the access log before exiting.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{config_text, eventually, free_port, read_stream, redis_url, unique_prefix};
use crate::support::{send, Origin, BROWSER};

const BIN: &str = env!("CARGO_BIN_EXE_watchpost-proxy");

fn write(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("watchpost.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn a_bad_config_exits_non_zero_naming_the_key_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cases = [
        (
            format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\nupstreams = [\"127.0.0.1:1\", \"nowhere\"]\n"),
            "proxy.upstreams[1]",
        ),
        (
            format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n[gateway]\ntrusted_cidrs = [\"10.0.0.0/33\"]\n"),
            "10.0.0.0/33",
        ),
        (
            format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\nworkers = 4\n"),
            "workers",
        ),
    ];
    for (text, key) in cases {
        let path = write(dir.path(), &text);
        let out = Command::new(BIN)
            .args(["--config", &path])
            .env_remove("RUST_LOG")
            .output()
            .expect("run the binary");
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "stderr {stderr:?} should name {key}");
        // Nothing was bound: the port is still free.
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the listen port stayed free");
    }
}

#[test]
fn check_validates_and_help_explains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "[proxy]\nupstreams = [\"127.0.0.1:3000\"]\n");
    let out = Command::new(BIN)
        .args(["--config", &path, "--check"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let path = write(
        dir.path(),
        "[geo]\nmmdb_path = \"/nonexistent/country.mmdb\"\n",
    );
    let out = Command::new(BIN)
        .args(["--config", &path, "--check"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("geo.mmdb_path"));
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["--config", "--check", "SIGTERM", "WATCHPOST_"] {
        assert!(help.contains(word), "--help should mention {word}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_and_flushes_the_access_log() {
    let origin = Origin::start().await;
    let prefix = unique_prefix("sigterm");
    let url = redis_url();
    let dir = tempfile::tempdir().expect("tempdir");
    // A partial batch would wait a minute: only the shutdown flush can write it in time.
    let text = config_text(
        &[origin.addr],
        &url,
        &prefix,
        "[access_log]\nflush_interval_ms = 60000\n",
    )
    // One instance in its own process: the default per-thread runtimes.
    .replace("work_stealing = true", "work_stealing = false");
    let listen: std::net::SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("listen line")
        .parse()
        .expect("addr");
    let path = write(dir.path(), &text);
    let log_path = dir.path().join("proxy.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(BIN)
        .args(["--config", &path])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the proxy");
    eventually("the binary to listen", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(listen).await.ok()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(send(listen, "GET", "/", BROWSER).await.status, 200);
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("wait task")
        .expect("wait");
    assert!(
        exit.success(),
        "{exit:?}; its log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let key = format!("{prefix}access");
    assert_eq!(read_stream(&url, &key).await.len(), 3);
    let mut c = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .expect("KEYS");
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut c)
        .await
        .expect("DEL");
}
