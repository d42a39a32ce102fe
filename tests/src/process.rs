//! Processes started by tests never outlive them: [`ChildGuard`] kills its child's whole process
//! group on drop, and [`kill_standins_under`] kills the stand-ins that the fake service manager
//! started (they run in their own sessions, so they are not in any test child's group).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Owns a child process started in its own process group; on drop, SIGKILLs the group and reaps
/// the child. Stand-ins under the roots given to [`ChildGuard::with_root`] are killed too.
pub struct ChildGuard {
    child: Child,
    reaped: Option<ExitStatus>,
    /// Whether the child leads its own process group (only then is the group signalled).
    own_group: bool,
    roots: Vec<PathBuf>,
}

impl ChildGuard {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> Result<ChildGuard> {
        use std::os::unix::process::CommandExt;
        let child = command
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        Ok(ChildGuard::new(child))
    }

    /// Wraps a child; its group is killed too if it leads one (spawned with `process_group(0)`),
    /// else only the child itself, since its group would be the test's own.
    pub fn new(child: Child) -> ChildGuard {
        let pid = Pid::from_raw(child.id() as i32);
        let own_group = nix::unistd::getpgid(Some(pid)).is_ok_and(|pgid| pgid == pid);
        ChildGuard {
            child,
            reaped: None,
            own_group,
            roots: Vec::new(),
        }
    }

    /// Also kill the stand-ins started under `root` when this guard drops.
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> ChildGuard {
        self.roots.push(root.into());
        self
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the child has exited (reaping it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait()?;
        }
        Ok(self.reaped)
    }

    /// Waits up to `timeout` for the child to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        // An error of `try_wait` ends the wait at once: ready, with the error.
        let waited = crate::wait_until(timeout, Duration::from_millis(20), || {
            self.try_wait().transpose()
        });
        waited.ok().transpose()
    }

    /// Graceful stop: SIGTERM to the child, then SIGKILL to its group after `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill_group();
        self.wait()
    }

    /// `kill -9` of the child alone (its own children, like an installer it runs, live on as a
    /// real crash would leave them, until the guard drops); waits for it.
    pub fn kill_process(&mut self) -> Result<ExitStatus> {
        if self.try_wait()?.is_none() {
            let _ = kill(self.pid(), Signal::SIGKILL);
        }
        self.wait()
    }

    /// SIGKILL to the child's whole process group (to the child alone if it leads none).
    pub fn kill_group(&mut self) {
        if self.own_group {
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        if self.reaped.is_none() {
            let _ = kill(self.pid(), Signal::SIGKILL);
        }
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.reaped {
            return Ok(status);
        }
        let status = self.child.wait()?;
        self.reaped = Some(status);
        Ok(status)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // The group may outlive its leader (an installer the child ran): kill it regardless.
        if self.own_group {
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for root in &self.roots {
            kill_standins_under(root);
        }
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z') | Some('X') | Some('x') | None)
        }
        Err(_) => false,
    }
}

/// The arguments of `pid`'s command line.
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose command line has `--root <root>`: the stand-ins of that host (whatever
/// started them), plus fake service manager calls in flight.
pub fn processes_under(root: &Path) -> Vec<i32> {
    let root = canonical(root);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pid_alive(pid))
        .filter(|&pid| {
            let args = cmdline(pid);
            args.windows(2)
                .any(|w| w[0] == "--root" && Path::new(&w[1]) == root.as_path())
                || args.iter().any(|a| {
                    a.strip_prefix("--root=")
                        .is_some_and(|r| Path::new(r) == root.as_path())
                })
        })
        .collect()
}

/// SIGKILLs every process running with `--root <root>` (the stand-ins a fake service manager
/// started under that host root, in their own sessions) and waits briefly until they are gone.
/// The pid files under `<root>/run` name the same processes; the command-line scan also finds
/// ones whose pid file was lost.
pub fn kill_standins_under(root: &Path) {
    let mut pids = processes_under(root);
    let root = canonical(root);
    if let Ok(entries) = std::fs::read_dir(root.join("run")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid") {
                if let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    // Only if it is still ours: a recycled pid is left alone.
                    if cmdline(pid).iter().any(|a| Path::new(a) == root.as_path())
                        && !pids.contains(&pid)
                    {
                        pids.push(pid);
                    }
                }
            }
        }
    }
    for &pid in &pids {
        // A stand-in leads its own session and group; take anything it started with it.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = crate::wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
        pids.iter().all(|&p| !pid_alive(p))
    });
}

pub(crate) fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
