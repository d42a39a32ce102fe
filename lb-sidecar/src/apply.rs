//! Safe apply: the only place that touches the LB's files and processes.
//!
//! The live file only ever changes by an atomic rename of a candidate that the LB's own validator
//! accepted, and a failed reload is rolled back to the previous file. A broken template, a
//! validator that says no, or an LB that refuses the new file therefore never leaves the LB
//! without a working config.
//!
//! Files next to the live one (`nginx.conf` shown):
//! - `nginx.conf.candidate`: the file being checked; renamed over the live one on success.
//! - `nginx.conf.candidate-check`: for the nginx include layouts, a wrapper main config that
//!   includes the candidate so the validator sees a complete nginx.conf.
//! - `nginx.conf.rejected`: the last candidate the validator refused, for an operator to inspect.
//! - `nginx.conf.last-good`: the live file as it was before the last swap.
//! - `nginx.conf.reload-pending`: exists from the swap until a reload succeeded, so a sidecar
//!   that crashed in between reloads on its next start even though the file is unchanged.
//!
//! None of these end in `.conf`/`.cfg`, so an operator's `include *.conf` never picks them up.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rke2_bootstrap::child::{run_bounded, KillScope};
use rke2_bootstrap::fsutil::{sync_dir, write_file_atomic};

use crate::config::{working_file, LbKind, Reload, SidecarConfig};
use crate::render::{RenderError, Rendered};

/// What a successful apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The candidate is byte-identical to the live file and no reload is pending.
    Unchanged,
    /// The candidate was validated, swapped in and the LB reloaded.
    Reloaded,
    /// The live file already matched but a previous swap was never followed by a successful
    /// reload: reloaded now.
    ReloadedPending,
}

/// Why an apply failed. In every case the LB keeps serving: either the live file was never
/// touched, or it was put back.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The validator refused the candidate; the live file is untouched.
    #[error("candidate rejected by the validator: {detail}")]
    Rejected { detail: String },
    /// The reload failed; the previous file was restored and the LB reloaded with it.
    #[error("reload failed, rolled back to the last good config: {reload}")]
    RolledBack { reload: String },
    /// The reload failed and so did the rollback: the LB needs an operator.
    #[error("reload failed ({reload}) and the rollback failed too ({rollback})")]
    RollbackFailed { reload: String, rollback: String },
    /// Reading or writing files failed before the live file was touched.
    #[error("{0:#}")]
    Io(anyhow::Error),
}

/// Placeholders in validate and reload argv templates:
/// - `{file}`: the file to check (validate: the candidate, or its wrapper for nginx includes;
///   reload: the live file);
/// - `{candidate}`: the rendered candidate itself;
/// - `{live}`: the live file;
/// - `{pid_file}`: the LB's pid file;
/// - `{pid}`: the pid read from it (the command fails if it cannot be read).
pub struct Placeholders<'a> {
    pub file: &'a Path,
    pub candidate: &'a Path,
    pub live: &'a Path,
    pub pid_file: &'a Path,
}

impl Placeholders<'_> {
    /// Expands every placeholder in every argument. Unknown `{...}` stay literal: an argv is
    /// not a shell string and a literal brace is legitimate there.
    pub fn expand(&self, argv: &[String]) -> Result<Vec<OsString>> {
        let mut out = Vec::with_capacity(argv.len());
        for arg in argv {
            let mut arg = arg.clone();
            if arg.contains("{pid}") {
                arg = arg.replace("{pid}", &read_pid(self.pid_file)?.to_string());
            }
            for (key, path) in [
                ("{file}", self.file),
                ("{candidate}", self.candidate),
                ("{live}", self.live),
                ("{pid_file}", self.pid_file),
            ] {
                if arg.contains(key) {
                    let path = path
                        .to_str()
                        .with_context(|| format!("{} is not UTF-8", path.display()))?;
                    arg = arg.replace(key, path);
                }
            }
            out.push(OsString::from(arg));
        }
        Ok(out)
    }
}

/// Reads a pid file: one positive integer.
pub fn read_pid(pid_file: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("reading pid file {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("pid file {} holds {:?}", pid_file.display(), text.trim()))?;
    if pid <= 1 {
        bail!("pid file {} holds pid {pid}", pid_file.display());
    }
    Ok(pid)
}

/// A finished command.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// The most useful output for an error message: stderr, else stdout; when the LB marks
    /// its errors (`[ALERT]`, `[emerg]`), only those lines, so version banners and notices do
    /// not bury the cause.
    pub fn diagnostics(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let marked: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("[ALERT]") || l.contains("[emerg]"))
            .map(str::trim)
            .collect();
        if marked.is_empty() {
            text.trim().to_string()
        } else {
            marked.join("; ")
        }
    }
}

/// Runs `argv` (no shell) with stdin closed, capturing output, killed after `timeout` (the
/// process alone: a reload that daemonizes, HAProxy `-D`, leaves the LB running).
pub async fn run_command(argv: &[OsString], timeout: Duration) -> Result<CommandOutput> {
    let (program, args) = argv.split_first().context("empty command")?;
    let finished = run_bounded(program, args, timeout, KillScope::Process).await?;
    Ok(CommandOutput {
        status: finished.status,
        stdout: finished.stdout,
        stderr: finished.stderr,
    })
}

/// Applies rendered configs to one live file.
#[derive(Debug, Clone)]
pub struct Applier {
    pub live: PathBuf,
    pub file_mode: u32,
    /// Validator argv template; empty disables validation.
    pub validate: Vec<String>,
    pub reload: Reload,
    pub pid_file: PathBuf,
    pub timeout: Duration,
    /// How a signal reload is known to have taken effect.
    pub confirm: ReloadConfirm,
}

/// How a reload by signal is known to have taken effect. A signal is delivered whether or not
/// the LB can apply the file: nginx re-reads its config on `HUP` and, if that fails where
/// `nginx -t` could not see it (a listen address taken, too few file descriptors), logs an
/// `[emerg]` and keeps serving the old config. Without a check the sidecar would record a change
/// that never reached the LB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadConfirm {
    /// Trust the signal (an LB the sidecar knows nothing about).
    Delivered,
    /// nginx: a successful reload starts new worker processes (children of the master in the
    /// pid file); a failed one does not. `error_log` is where nginx says why it refused.
    NewWorkers { error_log: Option<PathBuf> },
}

impl Applier {
    /// The applier for a config; `reload` is what [`SidecarConfig::check`] returned.
    pub fn from_config(config: &SidecarConfig, reload: Reload) -> Self {
        let confirm = match (config.lb, &reload) {
            (LbKind::Nginx, Reload::Signal(_)) => ReloadConfirm::NewWorkers {
                error_log: (config.nginx.error_log != "stderr")
                    .then(|| PathBuf::from(&config.nginx.error_log)),
            },
            _ => ReloadConfirm::Delivered,
        };
        Applier {
            live: config.config_file(),
            file_mode: config.file_mode,
            validate: config.validate_argv(),
            reload,
            pid_file: config.pid_file(),
            timeout: config.command_timeout,
            confirm,
        }
    }

    pub fn candidate_path(&self) -> PathBuf {
        working_file(&self.live, "candidate")
    }
    pub fn check_path(&self) -> PathBuf {
        working_file(&self.live, "candidate-check")
    }
    pub fn rejected_path(&self) -> PathBuf {
        working_file(&self.live, "rejected")
    }
    pub fn last_good_path(&self) -> PathBuf {
        working_file(&self.live, "last-good")
    }
    pub fn pending_path(&self) -> PathBuf {
        working_file(&self.live, "reload-pending")
    }

    /// Validates, swaps in and reloads a rendering, or does nothing if it is already live.
    pub async fn apply(&self, rendered: &Rendered) -> Result<Applied, ApplyError> {
        let candidate = rendered.config.as_str();
        let live_now = read_optional(&self.live).map_err(ApplyError::Io)?;
        let pending = self.pending_path().exists();
        if live_now.as_deref() == Some(candidate.as_bytes()) {
            if !pending {
                return Ok(Applied::Unchanged);
            }
            let previous = read_optional(&self.last_good_path()).map_err(ApplyError::Io)?;
            return self
                .reload_or_roll_back(previous)
                .await
                .map(|()| Applied::ReloadedPending);
        }

        let candidate_path = self.candidate_path();
        write_file_atomic(&candidate_path, candidate.as_bytes(), self.file_mode)
            .map_err(ApplyError::Io)?;
        let check_wrapper = rendered.check_wrapper.as_ref();
        if let Err(detail) = self.validate(&candidate_path, check_wrapper).await {
            let _ = std::fs::rename(&candidate_path, self.rejected_path());
            return Err(ApplyError::Rejected { detail });
        }

        if let Some(previous) = &live_now {
            write_file_atomic(&self.last_good_path(), previous, self.file_mode)
                .map_err(ApplyError::Io)?;
        }
        write_file_atomic(&self.pending_path(), b"", 0o644).map_err(ApplyError::Io)?;
        std::fs::rename(&candidate_path, &self.live)
            .with_context(|| {
                format!(
                    "renaming {} to {}",
                    candidate_path.display(),
                    self.live.display()
                )
            })
            .and_then(|()| sync_dir(parent(&self.live)))
            .map_err(ApplyError::Io)?;
        self.reload_or_roll_back(live_now)
            .await
            .map(|()| Applied::Reloaded)
    }

    /// Reloads; on failure puts `previous` back (if there is one) and reloads again.
    async fn reload_or_roll_back(&self, previous: Option<Vec<u8>>) -> Result<(), ApplyError> {
        let reload = match self.reload_lb().await {
            Ok(()) => {
                self.clear_pending();
                return Ok(());
            }
            Err(err) => format!("{err:#}"),
        };
        let Some(previous) = previous else {
            return Err(ApplyError::RollbackFailed {
                reload,
                rollback: "no previous config to roll back to".into(),
            });
        };
        let rollback = async {
            write_file_atomic(&self.live, &previous, self.file_mode)?;
            self.reload_lb().await
        };
        match rollback.await {
            Ok(()) => {
                self.clear_pending();
                Err(ApplyError::RolledBack { reload })
            }
            Err(err) => Err(ApplyError::RollbackFailed {
                reload,
                rollback: format!("{err:#}"),
            }),
        }
    }

    fn clear_pending(&self) {
        match std::fs::remove_file(self.pending_path()) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(error = %err, "cannot remove the reload-pending marker"),
        }
    }

    /// Runs the validator on the candidate, through `check_wrapper` when the rendering has one;
    /// `Err` carries the validator's diagnostics.
    async fn validate(
        &self,
        candidate: &Path,
        check_wrapper: Option<&Result<String, RenderError>>,
    ) -> Result<(), String> {
        if self.validate.is_empty() {
            return Ok(());
        }
        let check_path = self.check_path();
        let file = match check_wrapper {
            Some(wrapper) => {
                let text = wrapper.as_ref().map_err(|e| e.to_string())?;
                write_file_atomic(&check_path, text.as_bytes(), self.file_mode)
                    .map_err(|e| format!("{e:#}"))?;
                check_path.as_path()
            }
            None => candidate,
        };
        let result = async {
            let argv = Placeholders {
                file,
                candidate,
                live: &self.live,
                pid_file: &self.pid_file,
            }
            .expand(&self.validate)
            .map_err(|e| format!("{e:#}"))?;
            let out = run_command(&argv, self.timeout)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{}: {}", out.status, out.diagnostics()))
            }
        }
        .await;
        if check_wrapper.is_some() {
            let _ = std::fs::remove_file(&check_path);
        }
        result
    }

    async fn reload_lb(&self) -> Result<()> {
        match &self.reload {
            Reload::Signal(signal) => {
                let signal = *signal;
                let pid = read_pid(&self.pid_file)?;
                match &self.confirm {
                    ReloadConfirm::Delivered => send_signal(pid, signal),
                    ReloadConfirm::NewWorkers { error_log } => {
                        self.signal_and_confirm(pid, signal, error_log.as_deref())
                            .await
                    }
                }
            }
            Reload::Command(argv) => {
                let argv = Placeholders {
                    file: &self.live,
                    candidate: &self.candidate_path(),
                    live: &self.live,
                    pid_file: &self.pid_file,
                }
                .expand(argv)?;
                let out = run_command(&argv, self.timeout).await?;
                if !out.status.success() {
                    bail!("reload command {}: {}", out.status, out.diagnostics());
                }
                Ok(())
            }
        }
    }

    /// Signals nginx's master and waits until it has started a new worker process, the sign
    /// that the new config is in effect. See [`ReloadConfirm::NewWorkers`].
    async fn signal_and_confirm(
        &self,
        pid: i32,
        signal: Signal,
        error_log: Option<&Path>,
    ) -> Result<()> {
        let workers = || {
            child_pids(pid).with_context(|| format!("listing the worker processes of pid {pid}"))
        };
        let before = workers()?;
        if before.is_empty() {
            // No worker to see (`/proc` mounted with hidepid, or nginx without a master
            // process): nothing to compare against, so trust the signal.
            tracing::warn!(
                pid,
                "nginx has no visible worker processes; cannot confirm the reload"
            );
            return send_signal(pid, signal);
        }
        // Only what nginx says about this reload explains its failure.
        let log_from = error_log
            .and_then(|log| std::fs::metadata(log).ok())
            .map_or(0, |m| m.len());
        send_signal(pid, signal)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if workers()?.difference(&before).next().is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let why = error_log
                    .and_then(|log| last_emergency(log, log_from))
                    .map(|line| format!(": {line}"))
                    .unwrap_or_default();
                bail!(
                    "nginx (pid {pid}) started no new worker process within {:?} of {signal}: \
                     it kept its previous config{why}",
                    self.timeout
                );
            }
            tokio::time::sleep(CONFIRM_POLL).await;
        }
    }
}

fn send_signal(pid: i32, signal: Signal) -> Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid), signal)
        .with_context(|| format!("sending {signal} to pid {pid}"))
}

/// How often a signal reload's effect is checked.
const CONFIRM_POLL: Duration = Duration::from_millis(10);

/// The processes whose parent is `parent`, from `/proc/<pid>/stat`.
pub fn child_pids(parent: i32) -> std::io::Result<std::collections::BTreeSet<i32>> {
    let mut children = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Processes come and go while we read: a vanished one is simply not a child.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if parent_pid(&stat) == Some(parent) {
            children.insert(pid);
        }
    }
    Ok(children)
}

/// The parent pid in a `/proc/<pid>/stat` line: the second field after the command name, which
/// is in parentheses and may itself contain spaces and parentheses.
fn parent_pid(stat: &str) -> Option<i32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The last `[emerg]` or `[alert]` line that an nginx error log gained since it was `from` bytes
/// long (at most its last 64 KiB are read).
fn last_emergency(path: &Path, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    // A rotated (shorter) log is read from its start.
    let from = if from > len { 0 } else { from };
    file.seek(SeekFrom::Start(from.max(len.saturating_sub(64 * 1024))))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|line| line.contains("[emerg]") || line.contains("[alert]"))
        .map(|line| line.trim().to_string())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rendering without a check wrapper.
    fn rendered(config: &str) -> Rendered {
        Rendered {
            config: config.to_string(),
            check_wrapper: None,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into(), "sh".into()]
    }

    /// An applier whose validator rejects files containing `BAD` and whose reload fails for files
    /// containing `NORELOAD`, counting reloads in `reloads`.
    fn applier(dir: &Path) -> Applier {
        let count = dir.join("reloads");
        let mut validate = sh("! grep -q BAD \"$1\" || { echo 'bad line' >&2; exit 1; }");
        validate.push("{file}".into());
        let mut reload = sh(&format!(
            "echo x >> {}; ! grep -q NORELOAD \"$1\" || {{ echo 'cannot bind' >&2; exit 1; }}",
            count.display()
        ));
        reload.push("{file}".into());
        Applier {
            live: dir.join("lb.conf"),
            file_mode: 0o644,
            validate,
            reload: Reload::Command(reload),
            pid_file: dir.join("lb.pid"),
            timeout: Duration::from_secs(5),
            confirm: ReloadConfirm::Delivered,
        }
    }

    #[test]
    fn parent_pid_survives_odd_command_names() {
        let stat = "4242 (nginx: ma) (x) y) S 77 4242 4242 0 -1 4194560";
        assert_eq!(parent_pid(stat), Some(77));
        assert_eq!(parent_pid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn emergencies_are_read_from_where_the_reload_began() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("error.log");
        let old = "2026/01/01 [emerg] 1#1: an old failure\n";
        std::fs::write(&log, old).unwrap();
        let from = old.len() as u64;
        assert_eq!(last_emergency(&log, from), None);
        let new = "[notice] 1#1: signal 1 (SIGHUP) received\n\
                   [emerg] 1#1: bind() to 127.0.0.1:9345 failed (98: Address in use)\n\
                   [notice] 1#1: still serving\n";
        std::fs::write(&log, format!("{old}{new}")).unwrap();
        let line = last_emergency(&log, from).unwrap();
        assert!(line.contains("bind() to 127.0.0.1:9345 failed"), "{line}");
    }

    /// A stand-in LB master: on HUP it forks a new "worker" when `$dir/refuse` is absent (a
    /// reload that took), and does nothing otherwise (nginx keeping its old config). Its one
    /// other child lives as long as it does, so no other new child ever appears. The whole
    /// process group goes on drop.
    struct FakeMaster(std::process::Child);

    impl FakeMaster {
        fn start(dir: &Path) -> FakeMaster {
            use std::os::unix::process::CommandExt;
            let script = format!(
                "trap 'if [ -e {d}/refuse ]; then echo \"[emerg] $$#0: bind() to \
                 127.0.0.1:9345 failed (98: Address in use)\" >> {d}/error.log; \
                 else sleep 30 & fi' HUP; sleep 30 & keep=$!; echo $$ > {d}/lb.pid; \
                 while kill -0 $keep 2>/dev/null; do wait $keep; done",
                d = dir.display()
            );
            let child = std::process::Command::new("sh")
                .args(["-c", &script])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap();
            let master = FakeMaster(child);
            let pid_file = dir.join("lb.pid");
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !pid_file.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the fake master wrote no pid file"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            master
        }
    }

    impl Drop for FakeMaster {
        fn drop(&mut self) {
            let group = Pid::from_raw(-(self.0.id() as i32));
            let _ = nix::sys::signal::kill(group, Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn a_signal_reload_counts_only_when_new_workers_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let _master = FakeMaster::start(d);
        let mut a = applier(d);
        a.reload = Reload::Signal(Signal::SIGHUP);
        a.timeout = Duration::from_millis(500);
        a.confirm = ReloadConfirm::NewWorkers {
            error_log: Some(d.join("error.log")),
        };
        a.reload_lb().await.unwrap();

        std::fs::write(d.join("refuse"), "").unwrap();
        std::fs::write(d.join("error.log"), "[emerg] 1#1: an old failure\n").unwrap();
        let err = format!("{:#}", a.reload_lb().await.unwrap_err());
        assert!(
            err.contains("started no new worker process") && err.contains("previous config"),
            "{err}"
        );
        // What nginx said about this reload is in the error; what it said before is not.
        assert!(
            err.ends_with("bind() to 127.0.0.1:9345 failed (98: Address in use)"),
            "{err}"
        );
        assert!(!err.contains("old failure"), "{err}");

        // Delivered-only confirmation trusts the signal.
        a.confirm = ReloadConfirm::Delivered;
        a.reload_lb().await.unwrap();
    }

    fn reloads(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("reloads"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn identical_candidate_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path());
        assert_eq!(
            a.apply(&rendered("one\n")).await.unwrap(),
            Applied::Reloaded
        );
        assert_eq!(
            a.apply(&rendered("one\n")).await.unwrap(),
            Applied::Unchanged
        );
        assert_eq!(reloads(dir.path()), 1);
        assert!(!a.pending_path().exists());
        assert!(!a.candidate_path().exists());
    }

    #[tokio::test]
    async fn swap_keeps_the_previous_file_as_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path());
        a.apply(&rendered("one\n")).await.unwrap();
        a.apply(&rendered("two\n")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&a.live).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_to_string(a.last_good_path()).unwrap(),
            "one\n"
        );
        assert_eq!(reloads(dir.path()), 2);
    }

    #[tokio::test]
    async fn rejected_candidate_leaves_live_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path());
        a.apply(&rendered("one\n")).await.unwrap();
        let err = a.apply(&rendered("BAD\n")).await.unwrap_err();
        assert!(matches!(err, ApplyError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains("bad line"), "{err}");
        assert_eq!(std::fs::read_to_string(&a.live).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(a.rejected_path()).unwrap(), "BAD\n");
        assert_eq!(reloads(dir.path()), 1, "no reload for a rejected file");
    }

    #[tokio::test]
    async fn a_check_wrapper_is_validated_in_place_of_the_candidate_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path());
        let wrapped = |wrapper| Rendered {
            config: "fragment\n".into(),
            check_wrapper: Some(wrapper),
        };
        // The validator sees the wrapper: BAD there is refused although the fragment is fine.
        let err = a.apply(&wrapped(Ok("BAD\n".into()))).await.unwrap_err();
        assert!(matches!(err, ApplyError::Rejected { .. }), "{err}");
        assert!(!a.check_path().exists(), "wrapper cleaned up");
        // A wrapper that could not be rendered is the validator's refusal, as it always was.
        let unrenderable = RenderError::InvalidValue {
            what: "pid file",
            value: "/x y".into(),
            reason: "contains whitespace",
        };
        let err = a.apply(&wrapped(Err(unrenderable))).await.unwrap_err();
        assert!(matches!(err, ApplyError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains("pid file"), "{err}");
        assert_eq!(
            std::fs::read_to_string(a.rejected_path()).unwrap(),
            "fragment\n"
        );
        assert_eq!(
            a.apply(&wrapped(Ok("ok\n".into()))).await.unwrap(),
            Applied::Reloaded
        );
        assert_eq!(std::fs::read_to_string(&a.live).unwrap(), "fragment\n");
        assert!(!a.check_path().exists(), "wrapper cleaned up");
    }

    #[tokio::test]
    async fn failed_reload_rolls_back_and_reloads_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path());
        a.apply(&rendered("one\n")).await.unwrap();
        let err = a.apply(&rendered("NORELOAD\n")).await.unwrap_err();
        assert!(matches!(err, ApplyError::RolledBack { .. }), "{err}");
        assert!(err.to_string().contains("cannot bind"), "{err}");
        assert_eq!(std::fs::read_to_string(&a.live).unwrap(), "one\n");
        assert_eq!(reloads(dir.path()), 3, "initial, failed, rollback");
        assert!(!a.pending_path().exists());
    }

    #[tokio::test]
    async fn first_file_failing_reload_cannot_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path());
        let err = a.apply(&rendered("NORELOAD\n")).await.unwrap_err();
        assert!(matches!(err, ApplyError::RollbackFailed { .. }), "{err}");
        assert!(a.pending_path().exists(), "next start must reload");
    }

    #[tokio::test]
    async fn pending_reload_is_retried_for_an_identical_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path());
        a.apply(&rendered("one\n")).await.unwrap();
        // As if the sidecar died between the swap and the reload.
        std::fs::write(&a.live, "two\n").unwrap();
        std::fs::write(a.pending_path(), "").unwrap();
        assert_eq!(
            a.apply(&rendered("two\n")).await.unwrap(),
            Applied::ReloadedPending
        );
        assert_eq!(
            a.apply(&rendered("two\n")).await.unwrap(),
            Applied::Unchanged
        );
        assert_eq!(reloads(dir.path()), 2);
    }

    #[tokio::test]
    async fn commands_time_out_and_do_not_wait_for_inherited_pipes() {
        let argv: Vec<OsString> = sh("sleep 5").into_iter().map(OsString::from).collect();
        let started = std::time::Instant::now();
        let err = run_command(&argv, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not finish within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The shell exits at once but a background child keeps stdout open.
        let argv: Vec<OsString> = sh("sleep 3 & echo started")
            .into_iter()
            .map(OsString::from)
            .collect();
        let started = std::time::Instant::now();
        let out = run_command(&argv, Duration::from_secs(5)).await.unwrap();
        assert!(out.status.success());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn placeholders_expand_and_pid_is_read_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("x.pid");
        let p = Placeholders {
            file: Path::new("/f"),
            candidate: Path::new("/c"),
            live: Path::new("/l"),
            pid_file: &pid_file,
        };
        let argv = vec!["-c".to_string(), "{file}".into(), "x={live}".into()];
        assert_eq!(p.expand(&argv).unwrap(), ["-c", "/f", "x=/l"]);
        assert!(p.expand(&["{pid}".to_string()]).is_err(), "no pid file");
        std::fs::write(&pid_file, "1234\n").unwrap();
        assert_eq!(
            p.expand(&["-sf".into(), "{pid}".into()]).unwrap(),
            ["-sf", "1234"]
        );
        std::fs::write(&pid_file, "1\n").unwrap();
        assert!(read_pid(&pid_file).is_err());
    }

    #[test]
    fn diagnostics_keep_the_error_lines() {
        let out = |stderr: &str| CommandOutput {
            status: std::process::ExitStatus::default(),
            stdout: "stdout text".into(),
            stderr: stderr.into(),
        };
        let noisy = "[NOTICE]   (1) : haproxy version is 2.6\n[ALERT]    (1) : cannot bind socket\n[ALERT]    (1) : Exiting.\n";
        assert_eq!(
            out(noisy).diagnostics(),
            "[ALERT]    (1) : cannot bind socket; [ALERT]    (1) : Exiting."
        );
        assert_eq!(out("  plain failure\n").diagnostics(), "plain failure");
        assert_eq!(out("").diagnostics(), "stdout text");
    }
}
