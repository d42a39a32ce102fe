//! No process the benchmark starts outlives it. Every child is a [`Tracked`] (a [`ChildGuard`]
//! registered here): dropping it kills its process group, and SIGINT or SIGTERM to the benchmark
//! kills every registered group (and the RKE2 stand-ins under registered host roots) before it
//! exits, since the children lead their own groups and a terminal's Ctrl-C does not reach them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{killpg, SigHandler, Signal};
use nix::unistd::Pid;
use rke2_bootstrap_tests::{kill_standins_under, ChildGuard};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static GROUPS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static ROOTS: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A directory to remove when interrupted (the normal path removes it by dropping its guard).
pub fn remove_on_interrupt(dir: Option<&Path>) {
    *lock(&SCRATCH) = dir.map(Path::to_path_buf);
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handlers and the thread that cleans up after them.
pub fn install_signal_cleanup() -> Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::signal(sig, SigHandler::Handler(on_signal)) }
            .context("installing a signal handler")?;
    }
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(50));
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("bench: interrupted, stopping every process it started");
            kill_everything();
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived (long waits give up early).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn kill_everything() {
    let groups: Vec<u32> = lock(&GROUPS).iter().copied().collect();
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
    let roots: Vec<PathBuf> = lock(&ROOTS).keys().cloned().collect();
    for root in roots {
        kill_standins_under(&root);
        // The host roots live outside the scratch directory; nothing will drop their guards.
        let _ = std::fs::remove_dir_all(&root);
    }
    if let Some(dir) = lock(&SCRATCH).take() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a host root whose stand-ins must die with the benchmark; unregistered on drop.
pub struct RootGuard(PathBuf);

impl RootGuard {
    pub fn new(root: &Path) -> RootGuard {
        *lock(&ROOTS).entry(root.to_path_buf()).or_default() += 1;
        RootGuard(root.to_path_buf())
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        // Once interrupted, the main thread unwinds its scopes while the cleanup thread kills
        // what is registered; unregistering here would race it and leave the host's processes
        // running (seen: a whole soak cluster survived a SIGINT).
        if interrupted() {
            return;
        }
        let mut roots = lock(&ROOTS);
        if let Some(n) = roots.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                roots.remove(&self.0);
            }
        }
    }
}

/// A child process leading its own group, registered for cleanup.
pub struct Tracked {
    // Dropped first: the guard kills the group (SIGKILL ends stopped processes too) and reaps.
    guard: ChildGuard,
    _entry: GroupEntry,
    _root: Option<RootGuard>,
}

/// The registration of one process group; removed on drop.
pub struct GroupEntry(u32);

impl GroupEntry {
    /// Registers the group led by `pgid` (a process started elsewhere, e.g. by a test harness
    /// guard that made it a group leader), so an interruption kills it.
    pub fn new(pgid: u32) -> GroupEntry {
        lock(&GROUPS).insert(pgid);
        GroupEntry(pgid)
    }
}

impl Drop for GroupEntry {
    fn drop(&mut self) {
        lock(&GROUPS).remove(&self.0);
    }
}

impl Tracked {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Tracked> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        Tracked::spawn(cmd)
    }

    pub fn spawn(cmd: &mut Command) -> Result<Tracked> {
        use std::os::unix::process::CommandExt;
        if interrupted() {
            anyhow::bail!("interrupted");
        }
        // Should the benchmark itself be killed outright, its children follow (everything is
        // spawned from the main thread, whose exit is what the kernel watches).
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let guard = ChildGuard::spawn(cmd)?;
        Ok(Tracked {
            _entry: GroupEntry::new(guard.id()),
            guard,
            _root: None,
        })
    }

    /// Also kill the stand-ins under `root` when this drops (or on interruption).
    pub fn with_root(self, root: &Path) -> Tracked {
        Tracked {
            guard: self.guard.with_root(root),
            _entry: self._entry,
            _root: Some(RootGuard::new(root)),
        }
    }

    pub fn id(&self) -> u32 {
        self.guard.id()
    }

    /// `kill -9` of the process alone (what it started lives on, like a crashed agent's RKE2).
    pub fn crash(&mut self) -> Result<()> {
        self.guard.kill_process()?;
        Ok(())
    }

    /// `kill -9` of the whole process group (a host losing power), waiting for the process.
    pub fn kill_group(&mut self) -> Result<()> {
        self.guard.kill_group();
        self.guard.wait()?;
        Ok(())
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        crate::bench::proc::signal(self.id(), sig);
    }

    pub fn pause(&self, on: bool) {
        self.signal(if on { Signal::SIGSTOP } else { Signal::SIGCONT });
    }

    pub fn try_wait(&mut self) -> bool {
        matches!(self.guard.try_wait(), Ok(Some(_)))
    }
}
