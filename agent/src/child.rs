//! Running a command as a bounded child: no shell, stdin closed, output kept up to a limit,
//! stopped after a timeout. Every command the daemons run goes through [`Bounded`]: the service
//! manager (`systemctl`), the LB sidecar's validate and reload commands, the RKE2 installer
//! (which streams its output into the log line by line while it runs for minutes) and
//! `rke2 --version`.
//!
//! It waits for the process, not for its pipes to close: a command that starts a daemon (HAProxy
//! `-D`, `systemctl` starting a unit on some systems) may leave a grandchild holding them.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// How much of each of stdout and stderr is kept: enough for any diagnostic, bounded against a
/// command that floods its output.
pub const OUTPUT_CAP: usize = 16 * 1024;

/// How long the pipes are read after the process exited (a daemon it started may hold them).
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// What a timeout stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillScope {
    /// The process alone: what it started on purpose (a daemon, a unit) must survive it.
    Process,
    /// Its whole process group (it runs in a new one): nothing it started outlives it.
    Group,
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A finished command: its status and what it wrote, at most [`OUTPUT_CAP`] bytes of each
/// output (the first bytes when captured, the last lines when streamed: see [`Bounded::run`]).
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A command to run under limits: built like [`std::process::Command`], then [`Bounded::run`] or
/// [`Bounded::run_streaming`].
pub struct Bounded {
    command: tokio::process::Command,
    shown: String,
    timeout: Duration,
    scope: KillScope,
    term_grace: Option<Duration>,
}

impl Bounded {
    /// `program` with `args`, stopped (SIGKILL to the process alone) after `timeout`.
    pub fn new<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S], timeout: Duration) -> Self {
        let shown = std::iter::once(program.as_ref())
            .chain(args.iter().map(AsRef::as_ref))
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = tokio::process::Command::new(program.as_ref());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Bounded {
            command,
            shown,
            timeout,
            scope: KillScope::Process,
            term_grace: None,
        }
    }

    /// What a timeout stops; [`KillScope::Group`] starts the command in a process group of its
    /// own.
    pub fn kill(mut self, scope: KillScope) -> Self {
        self.scope = scope;
        self
    }

    /// On timeout, SIGTERM first and SIGKILL only after `grace` (a command that cleans up after
    /// itself, such as an installer, gets the chance).
    pub fn term_grace(mut self, grace: Duration) -> Self {
        self.term_grace = Some(grace);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> Self {
        self.command.env_remove(name);
        self
    }

    /// Runs it and keeps the first [`OUTPUT_CAP`] bytes of each output; an error when it cannot
    /// start or does not finish in time.
    pub async fn run(self) -> Result<Finished> {
        self.run_with(|pipe, _| tokio::spawn(read_head(pipe))).await
    }

    /// Runs it and hands every output line to `on_line` as it is written (for commands that run
    /// for minutes and whose progress belongs in the log); the [`Finished`] outputs hold the last
    /// lines, up to [`OUTPUT_CAP`] bytes.
    pub async fn run_streaming(
        self,
        on_line: impl Fn(Stream, &str) + Send + Sync + 'static,
    ) -> Result<Finished> {
        let on_line = std::sync::Arc::new(on_line);
        self.run_with(move |pipe, stream| {
            let on_line = on_line.clone();
            tokio::spawn(read_lines(pipe, move |line| on_line(stream, line)))
        })
        .await
    }

    async fn run_with(
        mut self,
        reader: impl Fn(Option<Pipe>, Stream) -> JoinHandle<Vec<u8>>,
    ) -> Result<Finished> {
        if self.scope == KillScope::Group {
            self.command.process_group(0);
        }
        let shown = self.shown;
        let mut child = self
            .command
            .spawn()
            .with_context(|| format!("starting `{shown}`"))?;
        let stdout = reader(child.stdout.take().map(boxed), Stream::Stdout);
        let stderr = reader(child.stderr.take().map(boxed), Stream::Stderr);
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for `{shown}`"))?,
            Err(_) => {
                stop(&mut child, self.scope, self.term_grace).await;
                stdout.abort();
                stderr.abort();
                bail!("`{shown}` did not finish within {:?}", self.timeout);
            }
        };
        Ok(Finished {
            status,
            stdout: collect(stdout).await,
            stderr: collect(stderr).await,
        })
    }
}

/// Runs `program` with `args` under `timeout`, output captured; an error when it cannot start or
/// does not finish in time (then killed per `scope`).
pub async fn run_bounded<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    timeout: Duration,
    scope: KillScope,
) -> Result<Finished> {
    Bounded::new(program, args, timeout).kill(scope).run().await
}

/// Stops a command that ran out of time: SIGTERM first when it gets a grace, then SIGKILL, to its
/// group or to it alone, then reaps it.
async fn stop(child: &mut tokio::process::Child, scope: KillScope, grace: Option<Duration>) {
    let group = match (scope, child.id()) {
        (KillScope::Group, Some(pid)) => Some(Pid::from_raw(pid as i32)),
        _ => None,
    };
    if let Some(grace) = grace {
        match (group, child.id()) {
            (Some(group), _) => {
                let _ = killpg(group, Signal::SIGTERM);
            }
            (None, Some(pid)) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            (None, None) => {}
        }
        if tokio::time::timeout(grace, child.wait()).await.is_ok() && group.is_none() {
            return;
        }
    }
    // Background children may outlive the leader; the group id stays valid while any member
    // runs.
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

async fn collect(task: JoinHandle<Vec<u8>>) -> String {
    let abort = task.abort_handle();
    match tokio::time::timeout(PIPE_GRACE, task).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => {
            abort.abort();
            String::new()
        }
    }
}

/// The first [`OUTPUT_CAP`] bytes; the rest is read and dropped so that the writer is never
/// blocked on a full pipe.
async fn read_head<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
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
                Ok(_) => {}
            }
        }
    }
    buf
}

/// Every line to `on_line` (without its line ending); returns the last whole lines that fit in
/// [`OUTPUT_CAP`] bytes. A line longer than the cap is cut to it.
async fn read_lines<R: AsyncRead + Unpin>(pipe: Option<R>, on_line: impl Fn(&str)) -> Vec<u8> {
    let mut tail = std::collections::VecDeque::<String>::new();
    let mut tail_bytes = 0;
    let Some(pipe) = pipe else {
        return Vec::new();
    };
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let mut line = line.trim_end_matches(['\n', '\r']).to_string();
                on_line(&line);
                if line.len() >= OUTPUT_CAP {
                    let mut end = OUTPUT_CAP - 1;
                    while !line.is_char_boundary(end) {
                        end -= 1;
                    }
                    line.truncate(end);
                }
                tail_bytes += line.len() + 1;
                tail.push_back(line);
                while tail_bytes > OUTPUT_CAP {
                    let dropped = tail.pop_front().map_or(0, |l| l.len() + 1);
                    tail_bytes -= dropped;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(tail_bytes);
    for line in tail {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

type Pipe = Box<dyn AsyncRead + Send + Unpin>;

fn boxed(pipe: impl AsyncRead + Send + Unpin + 'static) -> Pipe {
    Box::new(pipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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

    #[tokio::test]
    async fn streams_lines_as_written_and_keeps_the_last_ones() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let out = Bounded::new(
            "sh",
            &["-c", "echo a; echo b >&2; i=0; while [ $i -lt 3000 ]; do echo line-$i >&2; i=$((i+1)); done; echo last >&2"],
            Duration::from_secs(10),
        )
        .run_streaming(move |stream, line| {
            record.lock().unwrap().push((stream, line.to_string()));
        })
        .await
        .unwrap();
        assert!(out.status.success());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3003);
        assert!(seen.contains(&(Stream::Stdout, "a".into())));
        assert_eq!(seen.last(), Some(&(Stream::Stderr, "last".into())));
        assert_eq!(out.stdout, "a\n");
        assert!(out.stderr.ends_with("line-2999\nlast\n"));
        assert!(out.stderr.len() <= OUTPUT_CAP);
        assert!(!out.stderr.contains("\nb\n"), "the oldest lines went first");
    }

    #[tokio::test]
    async fn a_term_grace_lets_the_command_clean_up_before_the_kill() {
        let dir = tempfile::tempdir().unwrap();
        let cleaned = dir.path().join("cleaned");
        let script = format!(
            "trap 'touch {}; exit 1' TERM; sleep 30 & wait",
            cleaned.display()
        );
        let err = Bounded::new("sh", &["-c", &script], Duration::from_millis(300))
            .kill(KillScope::Group)
            .term_grace(Duration::from_secs(3))
            .run()
            .await
            .unwrap_err();
        assert!(format!("{err}").contains("did not finish"), "{err}");
        assert!(cleaned.exists(), "SIGTERM came first");
    }

    #[tokio::test]
    async fn environment_and_directory_reach_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = Bounded::new(
            "sh",
            &[
                "-c",
                "pwd; echo \"$CHILD_TEST_SET/${CHILD_TEST_INHERITED:-removed}\"",
            ],
            Duration::from_secs(10),
        )
        .current_dir(dir.path())
        .env("CHILD_TEST_SET", "set")
        .env("CHILD_TEST_INHERITED", "leaks")
        .env_remove("CHILD_TEST_INHERITED")
        .run()
        .await
        .unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(
            out.stdout,
            format!("{}\nset/removed\n", canonical.display())
        );
    }
}
