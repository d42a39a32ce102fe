//! [`TestHost`]: one simulated host (its root, its agent process, its logs), and what its
//! service manager and RKE2 stand-in recorded.

use super::*;

/// One simulated host.
pub struct TestHost {
    pub name: String,
    pub ip: IpAddr,
    pub root: HostRoot,
    /// Extra `--key value` arguments of this host.
    pub extra: Vec<(String, String)>,
    pub role: &'static str,
    /// Extra environment of this host's agent process (the installer it runs inherits it).
    pub env: Vec<(String, String)>,
    /// The agent's config file, as a shipped recipe installs it (`--config`): then the file is
    /// the configuration, and only what the harness must set on one machine is given as flags
    /// (see [`TestCluster::agent_command`]).
    pub config_file: Option<PathBuf>,
    /// Where every run of the agent logs (else one file per run under the root's `/var/log`).
    log_file: Option<PathBuf>,
    pub(super) child: Option<ChildGuard>,
    pub(super) restarts: u32,
}

impl TestHost {
    /// Host number `number` of the cluster `spec` lays out (nothing started).
    pub(super) fn new(
        spec: &ClusterSpec,
        name: &str,
        role: &'static str,
        number: u8,
    ) -> Result<TestHost> {
        let (root, log_file) = match &spec.dir {
            Some(dir) => {
                let root = HostRoot::at(name, &dir.join(name))?;
                let log = root.path().join("agent.log");
                (root, Some(log))
            }
            None => (HostRoot::new(name)?, None),
        };
        Ok(TestHost {
            name: name.to_string(),
            ip: spec.address(number),
            root,
            extra: Vec::new(),
            role,
            env: Vec::new(),
            config_file: None,
            log_file,
            child: None,
            restarts: 0,
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("/var/lib/rke2-bootstrap")
    }

    pub fn status_socket(&self) -> PathBuf {
        self.state_dir().join("status.sock")
    }

    /// The agent's status document, when it is running and answering.
    pub fn status(&self) -> Option<StatusReport> {
        self.child.as_ref()?;
        status_socket::fetch(&self.status_socket()).ok()
    }

    /// The agent's gossip transport counters (datagrams sent, received, rejected by reason), as
    /// its status reports them; panics when it does not answer.
    pub fn transport(&self) -> serde_json::Value {
        self.status()
            .unwrap_or_else(|| panic!("{} does not answer on its status socket", self.name))
            .transport
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether this host's agent was started and has since exited (or died) on its own.
    pub fn agent_exited(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|child| !crate::process::pid_alive(child.id() as i32))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The logs of every run of this host's agent so far, oldest first.
    pub fn all_logs(&self) -> String {
        if self.log_file.is_some() {
            return self.log();
        }
        (1..=self.restarts)
            .map(|n| {
                std::fs::read_to_string(self.root.join(format!("/var/log/rke2-bootstrap.{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("")
    }

    /// `<root>/var/lib/rke2-bootstrap/state.json`, parsed, if present.
    pub fn persisted_state(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The log of the agent's current run.
    pub fn log_path(&self) -> PathBuf {
        match &self.log_file {
            Some(path) => path.clone(),
            None => self
                .root
                .join(format!("/var/log/rke2-bootstrap.{}.log", self.restarts)),
        }
    }
}

impl TestHost {
    /// `(unix ms, arguments)` of every service-manager call this host's agent made, without
    /// `--no-block` (whether a call waits is not what the tests compare).
    pub fn service_calls(&self) -> Vec<(u64, String)> {
        self.root
            .systemctl_log()
            .into_iter()
            .map(|(ms, args)| {
                let args: Vec<&str> = args
                    .split_whitespace()
                    .filter(|a| *a != "--no-block")
                    .collect();
                (ms, args.join(" "))
            })
            .collect()
    }

    /// When the service manager was first asked to `enable --now` `unit`, in unix ms.
    pub fn enabled_at(&self, unit: &str) -> Option<u64> {
        self.service_calls()
            .into_iter()
            .find(|(_, args)| args == &format!("enable --now {unit}"))
            .map(|(ms, _)| ms)
    }

    /// Unix ms of the RKE2 stand-in's log lines (of `unit`) that end with `message`, such as
    /// `api is ready`.
    pub fn unit_events(&self, unit: &str, message: &str) -> Vec<u64> {
        self.root
            .unit_log(unit)
            .lines()
            .filter(|l| l.ends_with(message))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

/// SIGKILLs (with their process groups) the processes whose command line names a file under
/// `root`: an installer script run from the agent's state dir, and what it started.
pub(super) fn kill_programs_run_from(root: &Path) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let prefix = format!("{}/", root.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                raw.split(|b| *b == 0)
                    .any(|arg| String::from_utf8_lossy(arg).starts_with(&prefix))
            })
        })
        .collect();
    for &pid in &pids {
        let pid = Pid::from_raw(pid);
        if nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g == pid) {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
    let _ = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
        pids.iter().all(|&p| !crate::pid_alive(p))
    });
}

/// One counter of a [`TestHost::transport`] document.
pub fn transport_counter(transport: &serde_json::Value, name: &str) -> u64 {
    transport[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {transport}"))
}
