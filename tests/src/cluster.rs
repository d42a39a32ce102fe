//! [`TestCluster`]: several simulated hosts, each a real `rke2-bootstrap agent` process on its own
//! loopback address with its own [`HostRoot`], sharing one gossip key and one installer server,
//! optionally behind a real `rke2-lb-sidecar`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use rke2_bootstrap::gossip::schema::{MemberSummary, Phase, Role};
use rke2_bootstrap::status::{self, StatusReport};

use crate::{
    loopback_ip, standin_bin, wait_until, workspace_bin, ChildGuard, HostRoot, InstallerServer,
};

/// Gossip port of every simulated host (each has its own address).
pub const GOSSIP_PORT: u16 = 7947;

/// One simulated host.
pub struct TestHost {
    pub name: String,
    pub ip: IpAddr,
    pub root: HostRoot,
    /// Extra `--key value` arguments of this host.
    pub extra: Vec<(String, String)>,
    pub role: &'static str,
    child: Option<ChildGuard>,
    restarts: u32,
}

impl TestHost {
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("/var/lib/rke2-bootstrap")
    }

    pub fn status_socket(&self) -> PathBuf {
        self.state_dir().join("status.sock")
    }

    /// The agent's status document, when it is running and answering.
    pub fn status(&self) -> Option<StatusReport> {
        self.child.as_ref()?;
        status::fetch(&self.status_socket()).ok()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root
            .join(format!("/var/log/rke2-bootstrap.{}.log", self.restarts))
    }
}

/// How the cluster under test is laid out.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Distinct per test (see [`loopback_ip`]).
    pub test_id: u8,
    /// `(name, role)` of each host, in start order.
    pub hosts: Vec<(String, &'static str)>,
    pub bootstrap_expect: u32,
    pub servers: u32,
    /// Registration address for every host (the LB), if any.
    pub registration_address: Option<IpAddr>,
    /// Gossip seeds; default: every host.
    pub seeds: Option<Vec<String>>,
}

impl ClusterSpec {
    pub fn new(test_id: u8, hosts: &[(&str, &'static str)]) -> ClusterSpec {
        let servers = hosts.iter().filter(|(_, r)| *r != "agent").count() as u32;
        ClusterSpec {
            test_id,
            hosts: hosts.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
            bootstrap_expect: servers,
            servers: if servers % 2 == 1 {
                servers
            } else {
                servers.saturating_sub(1).max(1)
            },
            registration_address: None,
            seeds: None,
        }
    }
}

/// A set of agent processes forming (or failing to form) one cluster.
pub struct TestCluster {
    pub spec: ClusterSpec,
    pub hosts: Vec<TestHost>,
    pub installer: InstallerServer,
    pub key_file: PathBuf,
    _keys: tempfile::TempDir,
}

impl TestCluster {
    /// Prepares every host (nothing started yet).
    pub fn new(spec: ClusterSpec) -> Result<TestCluster> {
        let keys = tempfile::tempdir()?;
        let key_file = keys.path().join("gossip.key");
        let key = Command::new(workspace_bin("rke2-bootstrap"))
            .arg("keygen")
            .output()?;
        anyhow::ensure!(key.status.success(), "keygen failed");
        rke2_bootstrap::fsutil::write_file_atomic(&key_file, &key.stdout, 0o600)?;
        let installer = InstallerServer::start(crate::install_script())?;
        let hosts = spec
            .hosts
            .iter()
            .enumerate()
            .map(|(i, (name, role))| {
                Ok(TestHost {
                    name: name.clone(),
                    ip: loopback_ip(spec.test_id, 11 + i as u8),
                    root: HostRoot::new(name)?,
                    extra: Vec::new(),
                    role,
                    child: None,
                    restarts: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TestCluster {
            spec,
            hosts,
            installer,
            key_file,
            _keys: keys,
        })
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The agent command line of a host.
    pub fn agent_command(&self, host: &TestHost) -> Command {
        let seeds = self.spec.seeds.clone().unwrap_or_else(|| {
            self.hosts
                .iter()
                .map(|h| format!("{}:{GOSSIP_PORT}", h.ip))
                .collect()
        });
        let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
        cmd.arg("agent")
            .args(["--cluster-name", &format!("test-{}", self.spec.test_id)])
            .args(["--node-name", &host.name, "--role", host.role])
            .args(["--bind-addr", &format!("{}:{GOSSIP_PORT}", host.ip)])
            .args(["--seeds", &seeds.join(",")])
            .arg("--gossip-key-file")
            .arg(&self.key_file)
            .arg("--root")
            .arg(host.root.path())
            .args([
                "--bootstrap-expect",
                &self.spec.bootstrap_expect.to_string(),
            ])
            .args(["--servers", &self.spec.servers.to_string()])
            .args([
                "--installer-url",
                &self.installer.url(),
                "--allow-insecure-installer-url",
                "true",
            ])
            .args([
                "--service-manager",
                &host.root.service_manager_command(&standin_bin()).join(" "),
            ])
            .env("RKE2_BOOTSTRAP_LOG", "info,rke2_bootstrap=debug");
        if let Some(lb) = self.spec.registration_address {
            cmd.args(["--registration-address", &lb.to_string()]);
        }
        for (key, value) in &host.extra {
            cmd.arg(format!("--{key}")).arg(value);
        }
        cmd
    }

    /// Starts (or restarts) one host's agent.
    pub fn start(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        let mut cmd = self.agent_command(&self.hosts[i]);
        let host = &mut self.hosts[i];
        host.restarts += 1;
        let log_path = host.log_path();
        std::fs::create_dir_all(log_path.parent().expect("log dir"))?;
        let log = std::fs::File::create(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child =
            ChildGuard::spawn(&mut cmd).with_context(|| format!("starting agent {name}"))?;
        host.child = Some(child.with_root(host.root.path()));
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for name in names {
            self.start(&name)?;
        }
        Ok(())
    }

    /// `kill -9` of the agent only (its RKE2 stand-in keeps running, as rke2 would).
    pub fn kill_agent(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        if let Some(mut child) = self.hosts[i].child.take() {
            child.kill_process()?;
            std::mem::forget(child);
        }
        Ok(())
    }

    /// A power cut: the agent and everything it started die at once.
    pub fn power_off(&mut self, name: &str) -> Result<()> {
        self.kill_agent(name)?;
        self.hosts[self.index(name)].root.kill_standins();
        Ok(())
    }

    /// SIGTERM: the agent leaves gossip gracefully.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        if let Some(mut child) = self.hosts[i].child.take() {
            child.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Every running host's status, by host name.
    pub fn statuses(&self) -> Vec<(String, StatusReport)> {
        self.hosts
            .iter()
            .filter_map(|h| Some((h.name.clone(), h.status()?)))
            .collect()
    }

    /// The union of every running host's view: each member as its freshest reporter sees it.
    pub fn members_seen_by(&self, name: &str) -> Vec<MemberSummary> {
        self.host(name)
            .status()
            .map(|s| s.members)
            .unwrap_or_default()
    }

    /// Waits until every named host reports `phase`.
    #[track_caller]
    pub fn wait_for_phase(&self, names: &[&str], phase: Phase, timeout: Duration) -> Result<()> {
        wait_until(timeout, Duration::from_millis(100), || {
            let pending: Vec<String> = names
                .iter()
                .filter(|n| self.host(n).status().map(|s| s.phase) != Some(phase))
                .map(|n| {
                    let s = self.host(n).status();
                    format!(
                        "{n}: {:?} ({})",
                        s.as_ref().map(|s| s.phase),
                        s.map(|s| s.reason).unwrap_or_default()
                    )
                })
                .collect();
            if pending.is_empty() {
                Ok(())
            } else {
                Err(pending.join("; "))
            }
        })
        .with_context(|| self.logs_tail())
    }

    /// Names of members that any host has seen flagged as initializer.
    pub fn initializers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .statuses()
            .into_iter()
            .flat_map(|(_, s)| s.members)
            .filter(|m| m.initializer)
            .map(|m| m.name)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The hosts whose own disk says they initialized a cluster (config without `server:` and an
    /// etcd dir): the ground truth for "never two first servers".
    pub fn hosts_that_initialized(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| {
                let config = h.root.config_yaml();
                let no_server = config.as_ref().is_some_and(|c| c.get("server").is_none());
                no_server && h.root.etcd_dir_exists()
            })
            .map(|h| h.name.clone())
            .collect()
    }

    /// The role each running host settled on.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.host(name).status().map(|s| s.role)
    }

    /// The last lines of every host's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let log = h.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("\n--- {} ({})\n", h.name, h.ip));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub fn root_of(&self, name: &str) -> &Path {
        self.host(name).root.path()
    }
}
