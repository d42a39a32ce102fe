//! Running a command as a bounded child: no shell, stdin closed, output kept up to a limit,
//! stopped after a timeout. Every command the daemons run goes through [`Bounded`]: the service
//! manager (`systemctl`), the LB sidecar's validate and reload commands, the RKE2 installer
//! (which streams its output into the log line by line while it runs for minutes) and
//! `rke2 --version`.
//!
//! It waits for the process, not for its pipes to close: a command that starts a daemon (HAProxy
//! `-D`, `systemctl` starting a unit on some systems) may leave a grandchild holding them.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
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
        self.run_with(Keep::Head, None).await
    }

    /// Runs it and hands every output line to `on_line` as it is written (for commands that run
    /// for minutes and whose progress belongs in the log); the [`Finished`] outputs hold the last
    /// lines, up to [`OUTPUT_CAP`] bytes.
    pub async fn run_streaming(
        self,
        on_line: impl Fn(Stream, &str) + Send + Sync + 'static,
    ) -> Result<Finished> {
        self.run_with(Keep::TailLines, Some(Arc::new(on_line)))
            .await
    }

    async fn run_with(mut self, keep: Keep, on_line: Option<OnLine>) -> Result<Finished> {
        if self.scope == KillScope::Group {
            self.command.process_group(0);
        }
        let shown = self.shown;
        let mut child = self
            .command
            .spawn()
            .with_context(|| format!("starting `{shown}`"))?;
        let stdout = Reader::start(child.stdout.take(), Stream::Stdout, keep, on_line.clone());
        let stderr = Reader::start(child.stderr.take(), Stream::Stderr, keep, on_line);
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for `{shown}`"))?,
            Err(_) => {
                stop(&mut child, self.scope, self.term_grace).await;
                bail!("`{shown}` did not finish within {:?}", self.timeout);
            }
        };
        let (stdout, stderr) = tokio::join!(stdout.finish(), stderr.finish());
        Ok(Finished {
            status,
            stdout,
            stderr,
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
    // Read before anything is reaped: the id is gone once the process is.
    let pid = child.id().map(|pid| Pid::from_raw(pid as i32));
    let send = |signal: Signal| match (scope, pid) {
        (KillScope::Group, Some(group)) => {
            let _ = killpg(group, signal);
        }
        (KillScope::Process, Some(pid)) => {
            let _ = nix::sys::signal::kill(pid, signal);
        }
        (_, None) => {}
    };
    if let Some(grace) = grace {
        send(Signal::SIGTERM);
        let exited = tokio::time::timeout(grace, child.wait()).await.is_ok();
        if exited && scope == KillScope::Process {
            return;
        }
    }
    // Background children may outlive a group's leader; the group id stays valid while any
    // member runs.
    send(Signal::SIGKILL);
    let _ = child.wait().await;
}

type OnLine = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// What is kept of an output.
#[derive(Debug, Clone, Copy)]
enum Keep {
    /// The first [`OUTPUT_CAP`] bytes; the rest is read and dropped, so that the writer is never
    /// blocked on a full pipe.
    Head,
    /// The last whole lines that fit in [`OUTPUT_CAP`] bytes (a longer line is cut to it).
    TailLines,
}

/// What was read of one output so far, shared with its reading task: a pipe that a daemon the
/// command started keeps open never ends, and what was read before the process exited must
/// still reach the caller (an installer's last stderr lines, a validator's error).
#[derive(Default)]
struct Captured {
    head: Vec<u8>,
    lines: VecDeque<String>,
    line_bytes: usize,
}

impl Captured {
    fn push_chunk(&mut self, chunk: &[u8]) {
        let room = OUTPUT_CAP.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    fn push_line(&mut self, mut line: String) {
        if line.len() >= OUTPUT_CAP {
            let mut end = OUTPUT_CAP - 1;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
        self.line_bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.line_bytes > OUTPUT_CAP {
            self.line_bytes -= self.lines.pop_front().map_or(0, |l| l.len() + 1);
        }
    }

    fn text(&self, keep: Keep) -> String {
        match keep {
            Keep::Head => String::from_utf8_lossy(&self.head).into_owned(),
            Keep::TailLines => self.lines.iter().map(|l| format!("{l}\n")).collect(),
        }
    }
}

/// One output being read by a task of its own.
struct Reader {
    task: JoinHandle<()>,
    captured: Arc<Mutex<Captured>>,
    keep: Keep,
}

impl Reader {
    fn start(
        pipe: Option<impl AsyncRead + Send + Unpin + 'static>,
        stream: Stream,
        keep: Keep,
        on_line: Option<OnLine>,
    ) -> Reader {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let into = captured.clone();
        let task = tokio::spawn(async move {
            let Some(pipe) = pipe else { return };
            match keep {
                Keep::Head => read_chunks(pipe, &into).await,
                Keep::TailLines => {
                    read_lines(pipe, &into, |line| {
                        if let Some(on_line) = &on_line {
                            on_line(stream, line);
                        }
                    })
                    .await
                }
            }
        });
        Reader {
            task,
            captured,
            keep,
        }
    }

    /// What was read, once the pipe closed or [`PIPE_GRACE`] after the process exited.
    async fn finish(mut self) -> String {
        if tokio::time::timeout(PIPE_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        lock(&self.captured).text(self.keep)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(captured: &Mutex<Captured>) -> std::sync::MutexGuard<'_, Captured> {
    captured
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn read_chunks(mut pipe: impl AsyncRead + Unpin, into: &Mutex<Captured>) {
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lock(into).push_chunk(&chunk[..n]),
        }
    }
}

/// Every line to `on_line` (without its line ending) and into the capture.
async fn read_lines(pipe: impl AsyncRead + Unpin, into: &Mutex<Captured>, on_line: impl Fn(&str)) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                on_line(line);
                lock(into).push_line(line.to_string());
            }
        }
    }
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

    #[tokio::test]
    async fn output_read_before_a_daemon_kept_the_pipe_open_is_kept() {
        // The background `sleep` holds both pipes open after the command exits.
        let script = "echo starting; echo the reason it failed >&2; sleep 5 & exit 3";
        let started = std::time::Instant::now();
        let captured = run_bounded(
            "sh",
            &["-c", script],
            Duration::from_secs(10),
            KillScope::Process,
        )
        .await
        .unwrap();
        let streamed = Bounded::new("sh", &["-c", script], Duration::from_secs(10))
            .run_streaming(|_, _| {})
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "waited for the pipes"
        );
        for out in [captured, streamed] {
            assert_eq!(out.status.code(), Some(3));
            assert_eq!(out.stdout, "starting\n");
            assert_eq!(out.stderr, "the reason it failed\n");
        }
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
