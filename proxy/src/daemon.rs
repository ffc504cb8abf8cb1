//! `--daemon` and `--pid-file`: running under a service manager that tracks a forking daemon
//! through a PID file (systemd's `Type=forking` + `PIDFile=`), which is what lets a zero-downtime
//! binary upgrade (`--upgrade`) replace the process the manager considers the service's main
//! one.
//!
//! The command forks before any thread exists (the proxy's runtimes are started in the
//! background process only). The foreground process then waits until the background one
//! serves, or fails, and exits 0 or 1 accordingly: a service manager that considers the start
//! (or reload) done when the foreground process exits sees it done only once the proxy accepts
//! connections. The PID file is written at that moment, replaced atomically, so during an
//! upgrade it names the old process until the new one has taken the listening sockets over.

use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use daemonix::{Daemonize, Outcome, Stdio};

/// Which side of the fork this is.
pub enum Role {
    /// The foreground process: exit with this code (the background one served, or failed).
    Foreground(ExitCode),
    /// The background process: start the proxy, then call [`Ready::notify`].
    Background(Ready),
}

/// The background process's end of the readiness channel.
pub struct Ready(Option<UnixStream>);

impl Ready {
    /// A handle that notifies nobody (the proxy runs in the foreground).
    pub fn none() -> Self {
        Self(None)
    }

    /// Tell the foreground process that the proxy serves; it exits 0.
    pub fn notify(&mut self) {
        if let Some(mut w) = self.0.take() {
            if let Err(e) = w.write_all(b"1") {
                // The foreground process is gone (killed): nobody waits for the answer.
                tracing::warn!(error = %e, "daemon: cannot notify the starting process");
            }
        }
    }
}

/// Fork into the background: standard input from /dev/null, standard output and error kept
/// (the journal under systemd), the working directory kept (relative paths in the config keep
/// their meaning), a new session. Must run before any thread is started.
pub fn daemonize() -> Result<Role, String> {
    // A connected socket pair as the readiness pipe: the foreground end reads one byte, or
    // end-of-file once every copy of the background end is closed (the process died).
    let (mut reader, writer) =
        UnixStream::pair().map_err(|e| format!("daemon: cannot create a socket pair: {e}"))?;
    let cwd = std::env::current_dir()
        .map_err(|e| format!("daemon: cannot read the working directory: {e}"))?;
    let outcome = Daemonize::new()
        .working_directory(cwd)
        .umask(0o027)
        .stdout(Stdio::keep())
        .stderr(Stdio::keep())
        .execute();
    match outcome {
        Outcome::Parent(Err(e)) => Err(format!("daemon: cannot fork: {e}")),
        Outcome::Parent(Ok(_)) => {
            drop(writer);
            let mut byte = [0u8; 1];
            let served = loop {
                match reader.read(&mut byte) {
                    Ok(n) => break n == 1,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break false,
                }
            };
            if served {
                Ok(Role::Foreground(ExitCode::SUCCESS))
            } else {
                eprintln!("watchpost-proxy: the background process exited before it served");
                Ok(Role::Foreground(ExitCode::from(1)))
            }
        }
        // In the child: its error ends it, and the foreground process sees the pipe close.
        Outcome::Child(Err(e)) => Err(format!("daemon: cannot detach: {e}")),
        Outcome::Child(Ok(_)) => {
            drop(reader);
            Ok(Role::Background(Ready(Some(writer))))
        }
    }
}

/// Write this process's id to `path`, replacing the file atomically (a reader sees the old
/// id or the new one, never an empty file).
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Check, before anything starts, that the PID file can be written where it is asked for.
pub fn check_pid_file(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::NamedTempFile::new_in(dir).map(drop)
}

/// Remove `path` if it still names this process (after an upgrade it names the new one).
pub fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_file_is_replaced_and_removed_only_by_its_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("proxy.pid");
        std::fs::write(&path, "1\n").expect("an old file");
        write_pid_file(&path).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{}\n", std::process::id()));
        // Only the file itself is left (no temporary file).
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
        remove_pid_file(&path);
        assert!(!path.exists());

        std::fs::write(&path, "1\n").expect("another process's file");
        remove_pid_file(&path);
        assert!(path.exists(), "a file naming another process stays");
    }
}
