//! Five hosts (three servers, two workers) and a load-balancer host that keeps an nginx upstream
//! file: ours with the RKE2 stand-ins and the real sidecar, Serf's with the event handler on an
//! observing agent. Both LB hosts are the seed every host joins, and start first.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster, GOSSIP_PORT};
use rke2_bootstrap_tests::loopback_ip;

use crate::bench::ours::{self, OurBinaries, Sidecar, SidecarSetup};
use crate::bench::registry::{interrupted, Tracked};
use crate::bench::serf::{SerfNode, SerfSetup};

/// Host names, in start order: servers first.
pub const HOSTS: [(&str, &str); 5] = [
    ("server-1", "server"),
    ("server-2", "server"),
    ("server-3", "server"),
    ("agent-1", "agent"),
    ("agent-2", "agent"),
];
pub const SERVERS: usize = 3;

/// A cluster behind an LB whose upstream file can be read.
pub trait LbCluster {
    /// How many LB hosts there are (each with its own file and view).
    fn lbs(&self) -> usize;
    /// Server addresses LB host `lb`'s file routes the supervisor port to.
    fn lb_servers(&self, lb: usize) -> Vec<String>;
    /// Whether LB host `lb`'s membership view no longer counts host `i` as a live server
    /// (dead, left or leaving), if the LB host answers.
    fn lb_view_says_gone(&mut self, lb: usize, i: usize) -> Option<bool>;
    fn host_ip(&self, i: usize) -> IpAddr;
    /// `kill -9` of host `i` (for ours: the agent and its RKE2 stand-in, a power cut).
    fn crash(&mut self, i: usize) -> Result<()>;
    /// The implementation's graceful leave of host `i`.
    fn leave(&mut self, i: usize) -> Result<()>;
    fn host_pids(&self) -> Vec<u32>;
    fn lb_pid(&self) -> Option<u32>;

    fn server_ips(&self) -> Vec<String> {
        let mut ips: Vec<String> = (0..SERVERS).map(|i| self.host_ip(i).to_string()).collect();
        ips.sort();
        ips
    }
}

/// Waits until LB host `lb`'s file lists every server; returns the time since `t0`.
pub fn wait_lb_lists_all(
    c: &dyn LbCluster,
    lb: usize,
    t0: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let want = c.server_ips();
    loop {
        let got = c.lb_servers(lb);
        if got == want {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout || interrupted() {
            bail!("the LB file lists {got:?} after {timeout:?}, expected {want:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct OurLbCluster {
    cluster: TestCluster,
    agents: Vec<Option<Tracked>>,
    pub sidecar: Sidecar,
    /// A second sidecar with another configuration, for a variant measured alongside.
    pub variant: Option<Sidecar>,
    bins: OurBinaries,
    dir: PathBuf,
}

impl OurLbCluster {
    /// Starts the sidecar, then the five agents; returns the cluster and when the clock started.
    pub fn start(bins: &OurBinaries, test_id: u8, dir: &Path) -> Result<(OurLbCluster, Instant)> {
        let lb_ip = loopback_ip(test_id, 10);
        let mut spec = ClusterSpec::new(test_id, &HOSTS);
        spec.seeds = Some(vec![SocketAddr::new(lb_ip, GOSSIP_PORT).to_string()]);
        let cluster = TestCluster::new(spec)?;
        let setup = SidecarSetup {
            bins,
            cluster: format!("test-{test_id}"),
            key_file: &cluster.key_file,
            seeds: vec![SocketAddr::new(lb_ip, GOSSIP_PORT)],
            extra: Vec::new(),
        };
        let t0 = Instant::now();
        let sidecar = Sidecar::start(&setup, "lb", lb_ip, &dir.join("lb"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while sidecar.status().is_none() {
            if Instant::now() > deadline || interrupted() {
                bail!("the sidecar did not answer on its status socket");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut agents = Vec::new();
        for host in &cluster.hosts {
            let cmd = cluster.agent_command(host);
            let log = dir.join(format!("{}.log", host.name));
            agents.push(Some(ours::spawn_harness_agent(
                cmd,
                &log,
                host.root.path(),
            )?));
        }
        Ok((
            OurLbCluster {
                cluster,
                agents,
                sidecar,
                variant: None,
                bins: bins.clone(),
                dir: dir.to_path_buf(),
            },
            t0,
        ))
    }

    /// Starts a second sidecar (another LB host) with extra flags.
    pub fn start_variant(&mut self, extra: Vec<(String, String)>) -> Result<()> {
        let lb_ip = loopback_ip(self.cluster.spec.test_id, 9);
        let setup = SidecarSetup {
            bins: &self.bins,
            cluster: format!("test-{}", self.cluster.spec.test_id),
            key_file: &self.cluster.key_file,
            seeds: vec![SocketAddr::new(self.sidecar.ip, GOSSIP_PORT)],
            extra,
        };
        self.variant = Some(Sidecar::start(
            &setup,
            "lb-variant",
            lb_ip,
            &self.dir.join("lb-variant"),
        )?);
        Ok(())
    }

    /// The tail of every agent's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for host in &self.cluster.hosts {
            let log = std::fs::read_to_string(self.dir.join(format!("{}.log", host.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            out.push_str(&format!("\n--- {}\n", host.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl OurLbCluster {
    fn lb(&self, lb: usize) -> &Sidecar {
        match (lb, &self.variant) {
            (1, Some(variant)) => variant,
            _ => &self.sidecar,
        }
    }
}

impl LbCluster for OurLbCluster {
    fn lbs(&self) -> usize {
        1 + self.variant.is_some() as usize
    }

    fn lb_servers(&self, lb: usize) -> Vec<String> {
        self.lb(lb).lb_servers()
    }

    fn lb_view_says_gone(&mut self, lb: usize, i: usize) -> Option<bool> {
        let status = self.lb(lb).status()?;
        let name = &self.cluster.hosts[i].name;
        Some(
            status
                .members
                .iter()
                .find(|m| &m.name == name)
                .is_none_or(|m| !m.is_up() || !m.ready),
        )
    }

    fn host_ip(&self, i: usize) -> IpAddr {
        self.cluster.hosts[i].ip
    }

    fn crash(&mut self, i: usize) -> Result<()> {
        if let Some(mut agent) = self.agents[i].take() {
            agent.crash()?;
            // The guard's drop would also kill the stand-ins; keep that for the power cut below.
            drop(agent);
        }
        self.cluster.hosts[i].root.kill_standins();
        Ok(())
    }

    fn leave(&mut self, i: usize) -> Result<()> {
        if let Some(agent) = &self.agents[i] {
            agent.signal(Signal::SIGTERM);
        }
        Ok(())
    }

    fn host_pids(&self) -> Vec<u32> {
        self.agents.iter().flatten().map(Tracked::id).collect()
    }

    fn lb_pid(&self) -> Option<u32> {
        self.sidecar.pid()
    }
}

pub struct SerfLbCluster {
    hosts: Vec<SerfNode>,
    lb: SerfNode,
}

impl SerfLbCluster {
    /// `block.rep.10` is the LB host, `.11` to `.15` the hosts.
    pub fn start(serf: &Path, block: u8, rep: u8, dir: &Path) -> Result<(SerfLbCluster, Instant)> {
        let ip = |host: u8| IpAddr::from([127, block, rep, host]);
        let setup = SerfSetup::new(serf, dir)?;
        let t0 = Instant::now();
        let mut lb = SerfNode::start(&setup, "lb", ip(10), "lb", None, dir)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while lb.members().is_err() {
            if Instant::now() > deadline || interrupted() {
                bail!("the LB host's serf agent did not answer");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut hosts = Vec::new();
        for (i, (name, role)) in HOSTS.iter().enumerate() {
            hosts.push(SerfNode::start(
                &setup,
                name,
                ip(11 + i as u8),
                role,
                Some(ip(10)),
                dir,
            )?);
        }
        Ok((SerfLbCluster { hosts, lb }, t0))
    }
}

impl LbCluster for SerfLbCluster {
    fn lbs(&self) -> usize {
        1
    }

    fn lb_servers(&self, _lb: usize) -> Vec<String> {
        rke2_bootstrap_tests::cluster::lb_servers(&self.lb.upstreams(), self.lb.ip)
    }

    fn lb_view_says_gone(&mut self, _lb: usize, i: usize) -> Option<bool> {
        let name = self.hosts[i].name.clone();
        let members = self.lb.members().ok()?;
        Some(
            members
                .iter()
                .find(|m| m.name == name)
                .is_none_or(|m| !m.is_alive()),
        )
    }

    fn host_ip(&self, i: usize) -> IpAddr {
        self.hosts[i].ip
    }

    fn crash(&mut self, i: usize) -> Result<()> {
        self.hosts[i].crash()
    }

    fn leave(&mut self, i: usize) -> Result<()> {
        self.hosts[i].leave();
        Ok(())
    }

    fn host_pids(&self) -> Vec<u32> {
        self.hosts.iter().filter_map(SerfNode::pid).collect()
    }

    fn lb_pid(&self) -> Option<u32> {
        self.lb.pid()
    }
}

/// What one removal took.
#[derive(Debug, Clone, Copy)]
pub struct Removal {
    /// From the action to the LB file no longer listing the host.
    pub to_file: Duration,
    /// From the action to the LB host's membership view dropping it (first poll that saw it).
    pub known: Duration,
}

impl Removal {
    /// From "the LB host knows" to "the LB file says so".
    pub fn pipeline(&self) -> Duration {
        self.to_file.saturating_sub(self.known)
    }
}

/// Runs `action` on host `i` and times, for every LB host, how long until it knows and its file
/// drops the host.
pub fn time_removal(
    c: &mut dyn LbCluster,
    i: usize,
    action: fn(&mut dyn LbCluster, usize) -> Result<()>,
    timeout: Duration,
) -> Result<Vec<Removal>> {
    let victim = c.host_ip(i).to_string();
    let lbs = c.lbs();
    for lb in 0..lbs {
        if !c.lb_servers(lb).contains(&victim) {
            bail!("LB host {lb}'s file does not list {victim} before the removal");
        }
    }
    let mut known: Vec<Option<Duration>> = vec![None; lbs];
    let mut done: Vec<Option<Removal>> = vec![None; lbs];
    let t0 = Instant::now();
    action(c, i)?;
    loop {
        for lb in 0..lbs {
            if done[lb].is_some() {
                continue;
            }
            // View first, then the file: a file that changed implies a view that had.
            if known[lb].is_none() && c.lb_view_says_gone(lb, i) == Some(true) {
                known[lb] = Some(t0.elapsed());
            }
            if !c.lb_servers(lb).contains(&victim) {
                let to_file = t0.elapsed();
                done[lb] = Some(Removal {
                    to_file,
                    known: known[lb].unwrap_or(to_file),
                });
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(done.into_iter().flatten().collect());
        }
        if t0.elapsed() > timeout || interrupted() {
            bail!("an LB file still lists {victim} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
