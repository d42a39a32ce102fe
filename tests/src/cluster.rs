//! [`TestCluster`]: several simulated hosts, each a real `rke2-bootstrap agent` process on its own
//! loopback address with its own [`HostRoot`], sharing one gossip key and one installer server,
//! optionally behind a real `rke2-lb-sidecar` and nginx ([`LbHost`]), with loopback partitions
//! ([`Partition`]).
//!
//! Every cluster lives in the loopback block of its test (`ClusterSpec::new(test_id, ..)`, the
//! id taken from [`crate::blocks`], where the table of every test's ids is): hosts are
//! `127.<test_id>.0.11` and up, the LB host `.10`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use rke2_bootstrap::gossip::schema::{MemberSummary, Phase, Role};
use rke2_bootstrap::status::{self, StatusReport};

use crate::standin::etcd;
use crate::{
    loopback_ip, standin_bin, wait_until, workspace_bin, ChildGuard, HostRoot, InstallerServer,
};

/// Gossip port of every simulated host (each has its own address).
pub const GOSSIP_PORT: u16 = 7947;
/// The ports the LB host listens on: RKE2's supervisor and the Kubernetes API.
const LB_PORTS: [u16; 2] = [9345, 6443];

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
    /// The electorate (`initial-servers`); default: the addresses of the `server` and `auto`
    /// hosts, as an operator who reserved their addresses would write it.
    pub initial_servers: Option<Vec<String>>,
    pub servers: u32,
    /// Registration address for every host (the LB), if any.
    pub registration_address: Option<IpAddr>,
    /// Gossip seeds; default: every host.
    pub seeds: Option<Vec<String>>,
    /// Whether the cluster has an LB host (see [`TestCluster::start_lb`]); then it is every
    /// host's registration address.
    pub lb: bool,
    /// Gossip settings (`--<key> <value>`) of every agent and of the LB host's sidecar.
    pub gossip_settings: Vec<(String, String)>,
    /// The cluster name of the LB host's sidecar and of agents without a config file; default
    /// `test-<id>`.
    pub cluster_name: Option<String>,
}

impl ClusterSpec {
    pub fn new(test_id: u8, hosts: &[(&str, &'static str)]) -> ClusterSpec {
        let servers = hosts.iter().filter(|(_, r)| *r != "agent").count() as u32;
        ClusterSpec {
            test_id,
            hosts: hosts.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
            initial_servers: None,
            servers: if servers % 2 == 1 {
                servers
            } else {
                servers.saturating_sub(1).max(1)
            },
            registration_address: None,
            seeds: None,
            lb: false,
            gossip_settings: Vec::new(),
            cluster_name: None,
        }
    }

    /// Adds a gossip setting (such as `dead-member-grace-period`) for every agent and the sidecar.
    pub fn with_gossip_setting(mut self, key: &str, value: &str) -> ClusterSpec {
        self.gossip_settings
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Puts an LB host (real sidecar and nginx, on `127.<id>.0.10`) in front of the servers: it
    /// is every host's registration address and `tls-san`.
    pub fn with_lb(mut self) -> ClusterSpec {
        self.lb = true;
        self.registration_address = Some(lb_ip(self.test_id));
        self
    }
}

/// The LB host's address in test `test_id`.
pub fn lb_ip(test_id: u8) -> IpAddr {
    loopback_ip(test_id, 10)
}

/// A set of agent processes forming (or failing to form) one cluster.
pub struct TestCluster {
    pub spec: ClusterSpec,
    pub hosts: Vec<TestHost>,
    pub installer: InstallerServer,
    pub key_file: PathBuf,
    /// The LB host, once started.
    pub lb: Option<LbHost>,
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
                    env: Vec::new(),
                    config_file: None,
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
            lb: None,
            _keys: keys,
        })
    }

    /// Adds a host that was not in the spec (a late joiner), on the next free address; it is
    /// not started.
    pub fn add_host(&mut self, name: &str, role: &'static str) -> Result<()> {
        anyhow::ensure!(
            self.hosts.iter().all(|h| h.name != name),
            "host {name} exists"
        );
        let ip = loopback_ip(self.spec.test_id, 11 + self.hosts.len() as u8);
        self.hosts.push(TestHost {
            name: name.to_string(),
            ip,
            root: HostRoot::new(name)?,
            extra: Vec::new(),
            role,
            env: Vec::new(),
            config_file: None,
            child: None,
            restarts: 0,
        });
        Ok(())
    }

    pub fn host_mut(&mut self, name: &str) -> &mut TestHost {
        let i = self.index(name);
        &mut self.hosts[i]
    }

    /// Starts the LB host: nginx (stream module) on its bootstrap config and the real
    /// `rke2-lb-sidecar`, which rewrites nginx.conf from gossip and reloads it.
    pub fn start_lb(&mut self) -> Result<()> {
        anyhow::ensure!(self.spec.lb, "the spec has no LB (ClusterSpec::with_lb)");
        let seeds: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("{}:{GOSSIP_PORT}", h.ip))
            .collect();
        let lb = LbHost::start(
            lb_ip(self.spec.test_id),
            &self.cluster_name(),
            &self.key_file,
            &seeds,
            &self.spec.gossip_settings,
        )?;
        self.lb = Some(lb);
        Ok(())
    }

    /// The LB host (panics when it was not started).
    pub fn lb(&self) -> &LbHost {
        self.lb.as_ref().expect("the LB host was not started")
    }

    /// Waits until the LB's nginx.conf routes exactly to the addresses of `names` (on both ports).
    #[track_caller]
    pub fn wait_for_lb_servers(&self, names: &[&str], timeout: Duration) -> Result<()> {
        let mut want: Vec<IpAddr> = names.iter().map(|n| self.host(n).ip).collect();
        want.sort();
        let lb = self.lb();
        wait_until(timeout, Duration::from_millis(50), || {
            let got = lb.upstream_addrs();
            if got == want {
                Ok(())
            } else {
                Err(format!("lb routes to {got:?}, want {want:?}"))
            }
        })
        .with_context(|| format!("{}\n--- lb\n{}", self.logs_tail(), lb.log_tail()))
    }

    /// Waits for a host's agent to exit on its own (a fatal error), returning its exit status.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> Result<ExitStatus> {
        let i = self.index(name);
        let child = self.hosts[i]
            .child
            .as_mut()
            .with_context(|| format!("{name} is not running"))?;
        match child.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => anyhow::bail!(
                "{name} still running after {timeout:?}:\n{}",
                self.hosts[i].log()
            ),
        }
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

    /// The electorate every host is given.
    pub fn initial_servers(&self) -> Vec<String> {
        self.spec.initial_servers.clone().unwrap_or_else(|| {
            self.hosts
                .iter()
                .filter(|h| h.role != "agent")
                .map(|h| h.ip.to_string())
                .collect()
        })
    }

    fn cluster_name(&self) -> String {
        self.spec
            .cluster_name
            .clone()
            .unwrap_or_else(|| format!("test-{}", self.spec.test_id))
    }

    /// The agent command line of a host. With a config file ([`TestHost::config_file`]), only
    /// what differs between simulated hosts on one machine is a flag: the node name (real hosts
    /// have their own hostname), the root, the installer (the harness serves it) and the service
    /// manager (the stand-in's); everything else comes from the file.
    pub fn agent_command(&self, host: &TestHost) -> Command {
        self.host_command(host, &["agent"])
    }

    /// `rke2-bootstrap <subcommand>` with the flags `host`'s agent runs with (an operator's
    /// command on that host sees the same configuration).
    pub fn host_command(&self, host: &TestHost, subcommand: &[&str]) -> Command {
        if let Some(config) = &host.config_file {
            let flags = [
                ("node-name", host.name.clone()),
                ("root", host.root.path().display().to_string()),
                ("installer-url", self.installer.url()),
                ("allow-insecure-installer-url", "true".to_string()),
                (
                    "service-manager",
                    host.root.service_manager_command(&standin_bin()).join(" "),
                ),
            ];
            let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
            cmd.args(subcommand).arg("--config").arg(config);
            for (key, value) in flags.iter().map(|(k, v)| (k.to_string(), v.clone())) {
                cmd.arg(format!("--{key}")).arg(value);
            }
            for (key, value) in &host.extra {
                cmd.arg(format!("--{key}")).arg(value);
            }
            cmd.env("RKE2_BOOTSTRAP_LOG", "info,rke2_bootstrap=debug");
            cmd.envs(host.env.iter().map(|(k, v)| (k, v)));
            return cmd;
        }
        let seeds = self.spec.seeds.clone().unwrap_or_else(|| {
            self.hosts
                .iter()
                .map(|h| format!("{}:{GOSSIP_PORT}", h.ip))
                .collect()
        });
        let mut flags: Vec<(String, String)> = [
            ("cluster-name", self.cluster_name()),
            ("node-name", host.name.clone()),
            ("role", host.role.to_string()),
            ("bind-addr", format!("{}:{GOSSIP_PORT}", host.ip)),
            ("seeds", seeds.join(",")),
            ("gossip-key-file", self.key_file.display().to_string()),
            ("root", host.root.path().display().to_string()),
            ("initial-servers", self.initial_servers().join(",")),
            ("servers", self.spec.servers.to_string()),
            ("installer-url", self.installer.url()),
            // What the sweep waited before the grace became a setting: short, so tests that
            // replace a dead server do not wait the production 15 minutes.
            ("departed-server-grace-period", "30s".to_string()),
            ("allow-insecure-installer-url", "true".to_string()),
            (
                "service-manager",
                host.root.service_manager_command(&standin_bin()).join(" "),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(lb) = self.spec.registration_address {
            flags.push(("registration-address".into(), lb.to_string()));
        }
        // A host's own settings replace the defaults above (a flag may be given only once).
        for (key, value) in self.spec.gossip_settings.iter().chain(&host.extra) {
            match flags.iter_mut().find(|(k, _)| k == key) {
                Some(flag) => flag.1 = value.clone(),
                None => flags.push((key.clone(), value.clone())),
            }
        }
        let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
        cmd.args(subcommand);
        for (key, value) in &flags {
            cmd.arg(format!("--{key}")).arg(value);
        }
        cmd.env("RKE2_BOOTSTRAP_LOG", "info,rke2_bootstrap=debug");
        cmd.envs(host.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts (or restarts) one host's agent.
    pub fn start(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        // A previous run that exited on its own: its guard must not be dropped, which would kill
        // whatever runs with this root (this host's RKE2, and the new agent).
        if let Some(mut old) = self.hosts[i].child.take() {
            anyhow::ensure!(old.try_wait()?.is_some(), "{name} is already running");
            std::mem::forget(old);
        }
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

    /// The agent crashes (`kill -9`) and its service manager cleans up what the agent had
    /// running, such as an installer (systemd kills the rest of the unit's cgroup before the
    /// restart). RKE2, in its own unit, keeps running.
    pub fn crash_agent(&mut self, name: &str) -> Result<()> {
        self.kill_agent(name)?;
        kill_programs_run_from(self.hosts[self.index(name)].root.path());
        Ok(())
    }

    /// A power cut: the agent and everything it started die at once.
    pub fn power_off(&mut self, name: &str) -> Result<()> {
        self.crash_agent(name)?;
        self.hosts[self.index(name)].root.kill_standins();
        Ok(())
    }

    /// `rke2-bootstrap election release --claim <claim> --confirm` on a host, as its operator
    /// runs it (the host's agent stopped first).
    pub fn election_release(&self, name: &str, claim: &str) -> Result<String> {
        let host = self.host(name);
        let out = Command::new(workspace_bin("rke2-bootstrap"))
            .args(["election", "release", "--claim", claim, "--confirm"])
            .args(["--kernel-cmdline", "/nonexistent", "--node-name", name])
            .arg("--root")
            .arg(host.root.path())
            .env_remove("RKE2_BOOTSTRAP_CONFIG")
            .output()
            .context("running election release")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "election release on {name} failed ({}): {}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    /// The one host that ever created a cluster: exactly one host's disk says it initialized,
    /// and its RKE2 stand-in created a cluster exactly once (no other did). Panics otherwise,
    /// with the agents' log tails.
    #[track_caller]
    pub fn the_only_initialization(&self) -> String {
        let initialized = self.hosts_that_initialized();
        assert_eq!(initialized.len(), 1, "{initialized:?}{}", self.logs_tail());
        let events = self.new_cluster_events();
        assert_eq!(
            events,
            [(initialized[0].clone(), 1)],
            "one cluster, created once"
        );
        initialized[0].clone()
    }

    /// Hosts whose RKE2 (stand-in) created a new cluster, with how many times: the ground truth
    /// for "exactly one initialization, ever", across restarts.
    pub fn new_cluster_events(&self) -> Vec<(String, usize)> {
        self.hosts
            .iter()
            .map(|h| {
                let n = h
                    .root
                    .unit_log("rke2-server.service")
                    .lines()
                    .filter(|l| l.contains("initializing a new cluster"))
                    .count();
                (h.name.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// `systemctl stop rke2-bootstrap`: SIGTERM, the agent leaves gossip gracefully, and RKE2, in
    /// its own unit, keeps running (the host root stops it when the test ends).
    pub fn stop_agent(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        if let Some(mut child) = self.hosts[i].child.take() {
            child.terminate(Duration::from_secs(10))?;
            std::mem::forget(child);
        }
        Ok(())
    }

    /// SIGTERM: the agent leaves gossip gracefully, and the host's RKE2 is stopped with it.
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
            // One status fetch per host and poll: the same report decides and explains.
            let pending: Vec<(&str, Option<StatusReport>)> = names
                .iter()
                .map(|n| (*n, self.host(n).status()))
                .filter(|(_, s)| s.as_ref().map(|s| s.phase) != Some(phase))
                .collect();
            if pending.is_empty() {
                return Ok(Ok(()));
            }
            // An agent that has exited will never get there: settle now with that reason (the
            // outer `Ok`), rather than sit out the timeout (a config error exits in milliseconds).
            let exited: Vec<&str> = pending
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| self.host(n).agent_exited())
                .collect();
            if !exited.is_empty() {
                return Ok(Err(anyhow::anyhow!(
                    "waiting for {phase:?}: the agent of {} exited",
                    exited.join(", ")
                )));
            }
            Err(pending
                .into_iter()
                .map(|(n, s)| {
                    format!(
                        "{n}: {:?} ({})",
                        s.as_ref().map(|s| s.phase),
                        s.map(|s| s.reason).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "))
        })
        .and_then(|settled| settled)
        // Joiners register through the LB: when they never get there, the LB is often why.
        .with_context(|| match &self.lb {
            Some(lb) => format!("{}\n--- lb\n{}", self.logs_tail(), lb.log_tail()),
            None => self.logs_tail(),
        })
    }

    /// etcd itself, asked on each of `servers`: the cluster ID each belongs to and the member list
    /// it reports.
    pub fn etcd_views(&self, servers: &[&str]) -> Result<Vec<(String, etcd::MemberList)>> {
        servers
            .iter()
            .map(|name| {
                let host = self.host(name);
                let client = etcd::Client::for_host(
                    SocketAddr::new(host.ip, etcd::CLIENT_PORT),
                    &host.root.rke2(),
                )
                .with_context(|| format!("etcd credentials of {name}"))?;
                let list = client
                    .member_list()
                    .with_context(|| format!("asking etcd on {name} for its members"))?;
                Ok((name.to_string(), list))
            })
            .collect()
    }

    /// "One cluster", as etcd sees it: every one of `servers` belongs to the same etcd cluster,
    /// whose members are exactly those servers (by node name), none of them a learner. Waits up
    /// to `timeout` for it (a promotion or a removal may be in flight), then fails with what etcd
    /// said.
    pub fn wait_for_one_etcd_cluster(&self, servers: &[&str], timeout: Duration) -> Result<()> {
        let mut want: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_until(
            timeout,
            Duration::from_millis(200),
            || -> Result<(), String> {
                let views = self.etcd_views(servers).map_err(|e| format!("{e:#}"))?;
                let ids: Vec<u64> = views.iter().map(|(_, l)| l.cluster_id).collect();
                if ids.windows(2).any(|w| w[0] != w[1]) {
                    return Err(format!("several etcd clusters: {ids:?}"));
                }
                for (name, list) in &views {
                    let mut names: Vec<String> = list
                        .members
                        .iter()
                        .map(|m| etcd::member_node_name(&m.name).to_string())
                        .collect();
                    names.sort();
                    if names != want {
                        return Err(format!("etcd on {name} lists {names:?}, expected {want:?}"));
                    }
                    if let Some(learner) = list.members.iter().find(|m| m.is_learner) {
                        return Err(format!("a learner is left behind: {learner:?}"));
                    }
                }
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs_tail()))
    }

    /// Starts every host with an installer slowed by `seconds` and returns the first-server
    /// candidate once it is installing (the installer records its run before it sleeps, so the
    /// first host with a record is the candidate). Panics with the logs after `timeout`.
    pub fn start_with_a_slow_installer(&mut self, seconds: u32, timeout: Duration) -> String {
        for host in &mut self.hosts {
            host.env
                .push(("STANDIN_INSTALL_SLEEP".into(), seconds.to_string()));
        }
        self.start_all().unwrap();
        wait_until(timeout, Duration::from_millis(20), || {
            self.hosts
                .iter()
                .find(|h| !h.root.install_env_records().is_empty())
                .map(|h| h.name.clone())
        })
        .unwrap_or_else(|e| panic!("{e:#}{}", self.logs_tail()))
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

    /// Everything that could show a second first server: the flag in any running host's view,
    /// the disks, and the RKE2 stand-ins' own logs (which survive restarts). Panics on two;
    /// returns the name seen, if any.
    #[track_caller]
    pub fn assert_at_most_one_initializer(&self) -> Vec<String> {
        let flagged = self.initializers();
        let on_disk = self.hosts_that_initialized();
        let created = self.new_cluster_events();
        assert!(flagged.len() <= 1, "two initializers flagged: {flagged:?}");
        assert!(on_disk.len() <= 1, "two initialized disks: {on_disk:?}");
        assert!(
            created.len() <= 1 && created.iter().all(|(_, n)| *n == 1),
            "clusters created: {created:?}"
        );
        let mut names: Vec<String> = flagged
            .into_iter()
            .chain(on_disk)
            .chain(created.into_iter().map(|(n, _)| n))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() <= 1, "different initializers: {names:?}");
        names
    }

    /// Every file a host's bring-up writes once and must never be seen half-written: config.yaml,
    /// RKE2's server token, the agent's generated token.
    pub fn written_once_files(&self) -> Vec<PathBuf> {
        self.hosts
            .iter()
            .flat_map(|h| {
                [
                    h.root.rke2().config_yaml(),
                    h.root.rke2().token(),
                    h.state_dir().join("token"),
                ]
            })
            .collect()
    }

    /// The gossip addresses of every host and of the LB host (whether started or not).
    pub fn gossip_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.hosts.iter().map(|h| h.ip).collect();
        if self.spec.lb {
            ips.push(lb_ip(self.spec.test_id));
        }
        ips
    }

    /// The hosts among `names` that settled on `role`.
    pub fn hosts_with_role<'a>(&self, names: &[&'a str], role: Role) -> Vec<&'a str> {
        names
            .iter()
            .copied()
            .filter(|n| self.role_of(n) == Some(role))
            .collect()
    }

    /// Waits until every one of `hosts` is ready, `servers` of them servers and the rest workers,
    /// the servers one etcd cluster behind the LB. Returns the servers and the workers; panics
    /// with the logs otherwise.
    #[track_caller]
    pub fn wait_formed<'a>(
        &self,
        hosts: &[&'a str],
        servers: usize,
        timeout: Duration,
    ) -> (Vec<&'a str>, Vec<&'a str>) {
        self.wait_for_phase(hosts, Phase::Ready, timeout).unwrap();
        let (formed, workers) = (
            self.hosts_with_role(hosts, Role::Server),
            self.hosts_with_role(hosts, Role::Agent),
        );
        assert_eq!(
            (formed.len(), workers.len()),
            (servers, hosts.len() - servers),
            "servers {formed:?}, workers {workers:?}"
        );
        self.wait_for_one_etcd_cluster(&formed, Duration::from_secs(30))
            .unwrap();
        if self.lb.is_some() {
            self.wait_for_lb_servers(&formed, Duration::from_secs(30))
                .unwrap();
        }
        (formed, workers)
    }

    /// Gives each of `names` the agent setting `key` (the LB host's sidecar does not get it,
    /// unlike [`ClusterSpec::with_gossip_setting`]).
    pub fn set_on_hosts(&mut self, names: &[&str], key: &str, value: &str) {
        for name in names {
            self.host_mut(name)
                .extra
                .push((key.to_string(), value.to_string()));
        }
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

    /// The pid of a host's agent process, while it runs.
    pub fn agent_pid(&self, name: &str) -> Option<u32> {
        self.host(name).child.as_ref().map(ChildGuard::id)
    }

    pub fn root_of(&self, name: &str) -> &Path {
        self.host(name).root.path()
    }
}

/// The LB host of the manual procedure: real nginx with the stream module, whose nginx.conf is
/// owned by the real `rke2-lb-sidecar` (an observing gossip member). Both die with the guard.
pub struct LbHost {
    pub ip: IpAddr,
    /// nginx.conf, as the sidecar writes it.
    pub config_file: PathBuf,
    bootstrap: String,
    dir: tempfile::TempDir,
    sidecar: Option<ChildGuard>,
    nginx: ChildGuard,
}

impl LbHost {
    fn start(
        ip: IpAddr,
        cluster_name: &str,
        key_file: &Path,
        seeds: &[String],
        gossip_settings: &[(String, String)],
    ) -> Result<LbHost> {
        let nginx_bin = find_program("nginx").context(
            "nginx is not installed (tests/run.sh installs nginx-light and libnginx-mod-stream)",
        )?;
        ensure_lb_addresses_free(ip)?;
        let dir = tempfile::Builder::new().prefix("rke2-lb-").tempdir()?;
        let d = crate::process::canonical(dir.path());
        let config_file = d.join("nginx.conf");
        let pid_file = d.join("nginx.pid");
        let error_log = d.join("error.log");
        // Routes nothing yet: an empty upstream is invalid, so the sidecar's first render is a
        // reload, as on a real LB host that was set up before the cluster.
        let bootstrap = format!(
            "pid {};\nerror_log {};\nevents {{}}\n",
            pid_file.display(),
            error_log.display()
        );
        rke2_bootstrap::fsutil::write_file_atomic(&config_file, bootstrap.as_bytes(), 0o644)?;
        let out = std::fs::File::create(d.join("nginx.out"))?;
        let mut nginx_cmd = Command::new(&nginx_bin);
        nginx_cmd
            .arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(&config_file)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let nginx = ChildGuard::spawn(&mut nginx_cmd).context("starting nginx")?;
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            pid_file.is_file()
        })
        .context("nginx did not write its pid file")?;

        let log = std::fs::File::create(d.join("sidecar.log"))?;
        let mut cmd = Command::new(workspace_bin("rke2-lb-sidecar"));
        cmd.args(["--cluster-name", cluster_name, "--node-name", "lb"])
            .args(["--bind-addr", &format!("{ip}:{GOSSIP_PORT}")])
            .args(["--seeds", &seeds.join(",")])
            .arg("--gossip-key-file")
            .arg(key_file)
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--lb", "nginx", "--lb-addr", &ip.to_string()])
            .arg("--config-file")
            .arg(&config_file)
            .args([
                "--nginx",
                &format!(
                    "{{prefix: {}, pid-file: {}, error-log: {}, worker-processes: 1, worker-connections: 256}}",
                    d.display(),
                    pid_file.display(),
                    error_log.display()
                ),
            ])
            .args(["--retry", "{initial: 200ms, max: 2s}"])
            .args(
                gossip_settings
                    .iter()
                    .flat_map(|(key, value)| [format!("--{key}"), value.clone()]),
            )
            .env("RKE2_LB_SIDECAR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let sidecar = ChildGuard::spawn(&mut cmd).context("starting the lb sidecar")?;
        Ok(LbHost {
            ip,
            config_file,
            bootstrap,
            dir,
            sidecar: Some(sidecar),
            nginx,
        })
    }

    /// Process ids of the sidecar (while it runs) and of nginx's master process.
    pub fn pids(&self) -> (Option<u32>, u32) {
        (self.sidecar.as_ref().map(ChildGuard::id), self.nginx.id())
    }

    /// The sidecar's status socket (its JSON status document).
    pub fn status_socket(&self) -> PathBuf {
        self.prefix().join("state").join("status.sock")
    }

    /// The nginx.conf currently in place.
    pub fn nginx_conf(&self) -> String {
        std::fs::read_to_string(&self.config_file).unwrap_or_default()
    }

    /// `(supervisor, api)`: the backend addresses of the upstreams on 9345 and 6443, sorted.
    pub fn upstreams(&self) -> (Vec<IpAddr>, Vec<IpAddr>) {
        parse_upstreams(&self.nginx_conf())
    }

    /// The nginx.conf the LB host started with, before the sidecar's first render.
    pub fn bootstrap_conf(&self) -> &str {
        &self.bootstrap
    }

    /// nginx's prefix directory (where nginx.conf and its logs live).
    pub fn prefix(&self) -> &Path {
        self.config_file
            .parent()
            .expect("nginx.conf has a directory")
    }

    /// The servers the LB routes to, when both upstreams agree (else the difference is shown).
    pub fn upstream_addrs(&self) -> Vec<IpAddr> {
        let (supervisor, api) = self.upstreams();
        assert_eq!(
            supervisor,
            api,
            "the 9345 and 6443 upstreams differ:\n{}",
            self.nginx_conf()
        );
        supervisor
    }

    /// Whether the nginx started by this guard still runs.
    pub fn nginx_running(&mut self) -> bool {
        matches!(self.nginx.try_wait(), Ok(None))
    }

    /// The last lines of the sidecar's and nginx's logs.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for file in ["sidecar.log", "nginx.out", "error.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {file}\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Fails, naming the address, when something already holds one of the LB host's ports. An nginx
/// or sidecar left over from an earlier run on the same loopback block would otherwise keep the
/// LB ports, and every reload of the new nginx would fail for as long as the run lasts (a soak
/// once reported hours of empty upstream files and spurious changes for that reason alone).
fn ensure_lb_addresses_free(ip: IpAddr) -> Result<()> {
    let bind_error = |addr: SocketAddr, err: std::io::Error| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{addr} is already bound: a process of an earlier run on this loopback block \
                 (an nginx or a sidecar) is still up; stop it or use another block"
            )
        } else {
            anyhow::Error::new(err).context(format!("binding {addr}"))
        }
    };
    for port in LB_PORTS {
        let addr = SocketAddr::new(ip, port);
        std::net::TcpListener::bind(addr).map_err(|err| bind_error(addr, err))?;
    }
    let gossip = SocketAddr::new(ip, GOSSIP_PORT);
    std::net::UdpSocket::bind(gossip).map_err(|err| bind_error(gossip, err))?;
    Ok(())
}

/// `(supervisor, api)`: the backend addresses of the upstreams on 9345 and 6443 of an nginx.conf,
/// sorted.
pub fn parse_upstreams(conf: &str) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let by_port = |port: &str| {
        let mut addrs: Vec<IpAddr> = conf
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix("server "))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(|addr| addr.trim_end_matches(';').strip_suffix(port))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        addrs.sort();
        addrs
    };
    (by_port(":9345"), by_port(":6443"))
}

impl Drop for LbHost {
    fn drop(&mut self) {
        // The sidecar first, so it never signals an nginx that is gone.
        drop(self.sidecar.take());
        self.nginx.kill_group();
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.is_file())
}

/// Whether `nft` (Debian package `nftables`) is installed.
pub fn nft_available() -> bool {
    find_program("nft").is_some()
}

/// `servers` then `agents`, as the `(name, role)` pairs of [`ClusterSpec::new`].
pub fn layout<'a>(servers: &[&'a str], agents: &[&'a str]) -> Vec<(&'a str, &'static str)> {
    servers
        .iter()
        .map(|n| (*n, "server"))
        .chain(agents.iter().map(|n| (*n, "agent")))
        .collect()
}

/// `true` (after saying so loudly) when `nft` is missing, so a test that needs it skips.
pub fn skip_without_nft(test: &str) -> bool {
    if nft_available() {
        return false;
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: `nft` is not installed (Debian package nftables; tests/run.sh \
         installs it) !!!!!\n"
    );
    true
}

/// An nftables table a test owns: `table inet <name> { <body> }`, replacing a table of that name
/// left behind by a run that was killed outright. Deleted on drop, also when the test panics.
pub(crate) struct NftTable {
    name: String,
}

impl NftTable {
    /// `name`: letters, digits and `_` (name it after the test).
    pub(crate) fn install(name: &str, body: &str) -> Result<NftTable> {
        anyhow::ensure!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "bad nftables table name {name:?}"
        );
        let _ = nft(&["delete", "table", "inet", name], None);
        nft(
            &["-f", "-"],
            Some(&format!("table inet {name} {{\n{body}}}\n")),
        )
        .with_context(|| format!("installing nftables table {name}"))?;
        Ok(NftTable {
            name: name.to_string(),
        })
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        if let Err(err) = nft(&["delete", "table", "inet", &self.name], None) {
            eprintln!("could not delete nftables table {}: {err:#}", self.name);
        }
    }
}

/// Addresses as the elements of an nftables set.
pub(crate) fn nft_set(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A network partition on loopback: a dedicated nftables table that drops UDP (gossip) between
/// two groups of addresses, in both directions. Deleted on drop, also when the test panics.
pub struct Partition {
    _table: NftTable,
}

impl Partition {
    /// `table`: letters, digits and `_` (name it after the test).
    pub fn new(table: &str, side_a: &[IpAddr], side_b: &[IpAddr]) -> Result<Partition> {
        let (a, b) = (nft_set(side_a), nft_set(side_b));
        let body = format!(
            "  chain output {{\n    type filter hook output priority 0; policy accept;\n    \
             ip saddr {{ {a} }} ip daddr {{ {b} }} meta l4proto udp drop\n    \
             ip saddr {{ {b} }} ip daddr {{ {a} }} meta l4proto udp drop\n  }}\n"
        );
        Ok(Partition {
            _table: NftTable::install(table, &body).context("installing the partition")?,
        })
    }

    /// Removes the partition now (the same as dropping it).
    pub fn heal(self) {}
}

pub(crate) fn nft(args: &[&str], stdin: Option<&str>) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(find_program("nft").context("nft is not installed")?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(text) = stdin {
        child
            .stdin
            .as_mut()
            .expect("piped stdin")
            .write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
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

/// A seed for a test's random choices: `RKE2_TEST_SEED` to replay a run, else fresh. Printed, so
/// a failing run can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("RKE2_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: random seed {seed} (replay with RKE2_TEST_SEED={seed})");
    seed
}

/// SIGKILLs (with their process groups) the processes whose command line names a file under
/// `root`: an installer script run from the agent's state dir, and what it started.
fn kill_programs_run_from(root: &Path) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lb_port_held_by_an_earlier_run_is_named() {
        let ip = lb_ip(crate::blocks::HARNESS_LB_PORTS.id(0));
        ensure_lb_addresses_free(ip).expect("nothing holds the block yet");
        let api = SocketAddr::new(ip, 6443);
        let leftover = std::net::TcpListener::bind(api).unwrap();
        let err = ensure_lb_addresses_free(ip).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{ip}:6443 is already bound")),
            "unexpected message: {err}"
        );
        drop(leftover);
        let gossip = std::net::UdpSocket::bind(SocketAddr::new(ip, GOSSIP_PORT)).unwrap();
        let err = ensure_lb_addresses_free(ip).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{ip}:7947 is already bound")),
            "{err}"
        );
        drop(gossip);
        ensure_lb_addresses_free(ip).expect("freed again");
    }
}
