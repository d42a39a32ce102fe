//! Running a command as a bounded child: no shell, stdin closed, output captured up to a limit,
//! killed after a timeout. The service manager (`systemctl`) and the LB sidecar's validate and
//! reload commands run through [`run_bounded`]; the installer, which streams its output into the
//! log line by line while it runs for minutes, keeps its own loop but the same rules (own process
//! group, the group killed on timeout).
//!
//! It waits for the process, not for its pipes to close: a command that starts a daemon (HAProxy
//! `-D`, `systemctl` starting a unit on some systems) may leave a grandchild holding them.

use std::ffi::OsStr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::AsyncReadExt;

/// How much of each of stdout and stderr is kept: enough for any diagnostic, bounded against a
/// command that floods its output.
pub const OUTPUT_CAP: usize = 16 * 1024;

/// How long the pipes are read after the process exited (a daemon it started may hold them).
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// What a timeout kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillScope {
    /// The process alone: what it started on purpose (a daemon, a unit) must survive it.
    Process,
    /// Its whole process group (it runs in a new one): nothing it started outlives it.
    Group,
}

/// A finished command: its status and the first [`OUTPUT_CAP`] bytes of each output.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program` with `args` under `timeout`; an error when it cannot start or does not finish
/// in time (then killed per `scope`).
pub async fn run_bounded<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    timeout: Duration,
    scope: KillScope,
) -> Result<Finished> {
    let shown = || {
        std::iter::once(program.as_ref())
            .chain(args.iter().map(AsRef::as_ref))
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut command = tokio::process::Command::new(program.as_ref());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if scope == KillScope::Group {
        command.process_group(0);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting `{}`", shown()))?;
    let stdout = tokio::spawn(read_capped(child.stdout.take()));
    let stderr = tokio::spawn(read_capped(child.stderr.take()));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.with_context(|| format!("waiting for `{}`", shown()))?,
        Err(_) => {
            if let (KillScope::Group, Some(pid)) = (scope, child.id()) {
                let group = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            stdout.abort();
            stderr.abort();
            bail!("`{}` did not finish within {timeout:?}", shown());
        }
    };
    Ok(Finished {
        status,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
    })
}

async fn collect(task: tokio::task::JoinHandle<Vec<u8>>) -> String {
    let abort = task.abort_handle();
    match tokio::time::timeout(PIPE_GRACE, task).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => {
            abort.abort();
            String::new()
        }
    }
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) if buf.len() < OUTPUT_CAP => {
                    let room = OUTPUT_CAP - buf.len();
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
                // Keep draining so the writer is not blocked on a full pipe.
                Ok(_) => {}
            }
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_output_up_to_the_cap_and_the_status() {
        let out = run_bounded(
            "sh",
            &[
                "-c",
                "echo out; echo err >&2; head -c 100000 /dev/zero; exit 3",
            ],
            Duration::from_secs(10),
            KillScope::Process,
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert!(out.stdout.starts_with("out\n"));
        assert_eq!(out.stdout.len(), OUTPUT_CAP);
        assert_eq!(out.stderr, "err\n");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_group_but_spares_what_a_process_scope_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = |name: &str| dir.path().join(name);
        // A grandchild that writes its marker a second after the command is killed.
        let script =
            |name: &str| format!("(sleep 1.5; touch {}) & sleep 30", marker(name).display());
        for (name, scope) in [("group", KillScope::Group), ("process", KillScope::Process)] {
            let err = run_bounded(
                "sh",
                &["-c", &script(name)],
                Duration::from_millis(300),
                scope,
            )
            .await
            .unwrap_err();
            assert!(format!("{err}").contains("did not finish"), "{err}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!marker("group").exists(), "the group outlived the timeout");
        assert!(
            marker("process").exists(),
            "a process-scope grandchild was killed"
        );
    }

    #[tokio::test]
    async fn does_not_wait_for_pipes_a_daemon_keeps_open() {
        let started = std::time::Instant::now();
        let out = run_bounded(
            "sh",
            &["-c", "sleep 5 & echo started"],
            Duration::from_secs(10),
            KillScope::Process,
        )
        .await
        .unwrap();
        assert!(out.status.success());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
