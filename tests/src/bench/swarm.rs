//! Gossip-only clusters of N members, ours or Serf's, started the same way: the seed (member 1)
//! first, and once it answers locally, every other member with the seed as its only join address.
//! The clock starts before the seed is spawned, so start-up time counts for both.
//!
//! [`InProcessSwarm`] runs our gossip layer (the agent library's `gossip::Cluster`, the same code
//! the agent runs) for N members inside this process, each with its own sealed UDP socket on its
//! own loopback address: a thousand agent processes do not fit on a two-core machine, a thousand
//! sockets and gossip loops on one runtime do (the seed, everybody's first contact, on a thread of
//! its own).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rke2_bootstrap::gossip::{Announcement, Cluster, GossipConfig, Keyring, Member, Phase, Role};
use tokio::sync::watch;

use crate::bench::ours::{self, MemberAgent, MemberSetup, OurBinaries};
use crate::bench::registry::interrupted;
use crate::bench::serf::{SerfNode, SerfSetup};
use rke2_bootstrap_tests::wait_until;

/// A running gossip-only cluster.
pub trait Swarm {
    fn len(&self) -> usize;
    /// The names of the members member `i` sees up (itself included), if it answers.
    fn up_seen_by(&mut self, i: usize) -> Option<Vec<String>>;
    /// How many members member `i` sees up, if it answers.
    fn up_count(&mut self, i: usize) -> Option<usize> {
        self.up_seen_by(i).map(|up| up.len())
    }
    fn name(&self, i: usize) -> String;
    fn ips(&self) -> Vec<Ipv4Addr>;
    fn pids(&self) -> Vec<u32>;
    /// How many members share one of [`Swarm::pids`] (N for an in-process swarm).
    fn members_per_process(&self) -> usize {
        1
    }
    /// Datagrams sent by all members, by their own count, if they keep one.
    fn datagrams_sent(&mut self) -> Option<u64>;
    /// SIGSTOP / SIGCONT of member `i`.
    fn pause(&self, i: usize, on: bool);
}

/// How long the seed may take to answer before the start counts as failed.
const SEED_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits for `ready`, giving up early when the run is interrupted.
fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let answered = wait_until(timeout, Duration::from_millis(5), || {
        ready() || interrupted()
    });
    if answered.is_err() || interrupted() {
        bail!("{what} did not answer within {timeout:?}");
    }
    Ok(())
}

pub struct OurSwarm {
    members: Vec<MemberAgent>,
}

impl OurSwarm {
    /// Starts `ips.len()` agents with the given extra flags; returns the swarm and the instant
    /// the clock started.
    pub fn start(
        bins: &OurBinaries,
        ips: &[IpAddr],
        dir: &Path,
        extra: &[(String, String)],
        timeout: Duration,
    ) -> Result<(OurSwarm, Instant)> {
        let key_file = ours::write_key_file(dir)?;
        let setup = MemberSetup {
            bins,
            cluster: "bench".into(),
            key_file: &key_file,
            seed: ips[0],
            dir,
            extra,
        };
        let t0 = Instant::now();
        let seed = MemberAgent::start(&setup, "node-1", ips[0])?;
        wait_for("the seed agent", SEED_TIMEOUT, || seed.status().is_some())?;
        let mut members = vec![seed];
        for (i, ip) in ips.iter().enumerate().skip(1) {
            check_start_time(t0, timeout, i, ips.len())?;
            members.push(MemberAgent::start(&setup, &format!("node-{}", i + 1), *ip)?);
        }
        Ok((OurSwarm { members }, t0))
    }
}

impl Swarm for OurSwarm {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn up_seen_by(&mut self, i: usize) -> Option<Vec<String>> {
        let status = self.members[i].status()?;
        Some(
            status
                .members
                .into_iter()
                .filter(|m| m.is_up())
                .map(|m| m.name)
                .collect(),
        )
    }

    fn name(&self, i: usize) -> String {
        self.members[i].name.clone()
    }

    fn ips(&self) -> Vec<Ipv4Addr> {
        self.members.iter().filter_map(|m| v4(m.ip)).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(MemberAgent::pid).collect()
    }

    fn datagrams_sent(&mut self) -> Option<u64> {
        let mut total = 0;
        for m in &self.members {
            total += m.status()?.sent()?;
        }
        Some(total)
    }

    fn pause(&self, i: usize, on: bool) {
        self.members[i].pause(on);
    }
}

pub struct SerfSwarm {
    nodes: Vec<SerfNode>,
}

impl SerfSwarm {
    pub fn start(
        serf: &Path,
        ips: &[IpAddr],
        dir: &Path,
        timeout: Duration,
    ) -> Result<(SerfSwarm, Instant)> {
        let setup = SerfSetup::new(serf, dir)?;
        let t0 = Instant::now();
        let mut seed = SerfNode::start(&setup, "node-1", ips[0], "server", None, dir)?;
        wait_for("the seed serf agent", SEED_TIMEOUT, || {
            seed.members().is_ok()
        })?;
        let mut nodes = vec![seed];
        for (i, ip) in ips.iter().enumerate().skip(1) {
            check_start_time(t0, timeout, i, ips.len())?;
            nodes.push(SerfNode::start(
                &setup,
                &format!("node-{}", i + 1),
                *ip,
                "server",
                Some(ips[0]),
                dir,
            )?);
        }
        Ok((SerfSwarm { nodes }, t0))
    }
}

impl SerfSwarm {
    /// How many `member-failed` notices the event handlers received, over all members.
    pub fn failed_events(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                std::fs::read_to_string(n.events())
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.split_whitespace().nth(1) == Some("member-failed"))
                    .count()
            })
            .sum()
    }
}

impl Swarm for SerfSwarm {
    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn up_seen_by(&mut self, i: usize) -> Option<Vec<String>> {
        let members = self.nodes[i].members().ok()?;
        Some(
            members
                .into_iter()
                .filter(|m| m.is_alive())
                .map(|m| m.name)
                .collect(),
        )
    }

    fn name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    fn ips(&self) -> Vec<Ipv4Addr> {
        self.nodes.iter().filter_map(|n| v4(n.ip)).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(SerfNode::pid).collect()
    }

    fn datagrams_sent(&mut self) -> Option<u64> {
        None
    }

    fn pause(&self, i: usize, on: bool) {
        self.nodes[i].pause(on);
    }
}

/// N members of our gossip layer in this process, on a runtime of their own (the seed on a
/// thread of its own).
pub struct InProcessSwarm {
    // Field order: the members (and their tasks) go before the runtime that runs them.
    members: Vec<Cluster>,
    views: Vec<watch::Receiver<Arc<Vec<Member>>>>,
    ips: Vec<Ipv4Addr>,
    /// Each member's slow gossip interval.
    idle: Vec<Duration>,
    /// How late each [`LAG_PROBE`] timer fired on the runtime, since the last [`progress`].
    ///
    /// [`progress`]: InProcessSwarm::progress
    lags: Arc<Mutex<Vec<Duration>>>,
    runtime: tokio::runtime::Runtime,
    /// The seed's own thread; see [`InProcessSwarm::start`].
    seed_runtime: tokio::runtime::Runtime,
}

/// What every member of an in-process swarm knows at one instant, and the transport counters
/// summed over all members: the progress lines of a swarm that has not converged yet.
#[derive(Debug, Default)]
pub struct SwarmProgress {
    /// How many members each member lists up (itself included).
    pub listed: Vec<usize>,
    /// How many nodes each member's chitchat knows (listed or not yet).
    pub known: Vec<usize>,
    /// The gossip interval each member uses now.
    pub paces: Vec<Duration>,
    pub sent: u64,
    pub sent_bytes: u64,
    /// Datagrams that authenticated and parsed.
    pub received: u64,
    /// Datagrams refused by the transport (malformed, wrong key, replayed, undecodable).
    pub rejected: u64,
    pub send_failed: u64,
    /// Datagrams the seed (member 1) received.
    pub seed_received: u64,
    /// Datagrams each member sent and received.
    pub sent_each: Vec<u64>,
    pub received_each: Vec<u64>,
    /// How late the runtime's probe timer fired, since the previous snapshot.
    pub lags: Vec<Duration>,
}

/// Period of the timer that measures how late the swarm's runtime runs what is due.
const LAG_PROBE: Duration = Duration::from_millis(100);

/// A timer on the swarm's runtime that records how late it fires: when the runtime's threads
/// cannot keep up, every member's rounds, answers and view refreshes are late by about as much,
/// so this is the swarm's per-round delay as the members experience it.
async fn probe_lag(lags: Arc<Mutex<Vec<Duration>>>) {
    loop {
        let start = tokio::time::Instant::now();
        tokio::time::sleep(LAG_PROBE).await;
        let late = start.elapsed().saturating_sub(LAG_PROBE);
        if let Ok(mut lags) = lags.lock() {
            lags.push(late);
        }
    }
}

/// The name of an in-process swarm's runtime threads (their CPU time is the swarm's).
pub const IN_PROCESS_THREAD: &str = "swarm";

/// Gossip port of every in-process member (each has its own address).
pub const IN_PROCESS_PORT: u16 = 7946;

impl InProcessSwarm {
    /// Joins `ips.len()` members, the first one being everybody's seed, each configured by
    /// `configure` after the defaults; returns the swarm and the instant the clock started.
    pub fn start(
        ips: &[Ipv4Addr],
        configure: &dyn Fn(&mut GossipConfig),
        timeout: Duration,
    ) -> Result<(InProcessSwarm, Instant)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
            .thread_name(IN_PROCESS_THREAD)
            .enable_all()
            .build()
            .context("starting the swarm's runtime")?;
        // The seed is everybody's first contact: every joiner's first SYN goes to it, and in a
        // fleet it answers them on a host of its own. On the shared runtime it got one
        // N-thousandth of the swarm's turns; at N=1,000 its socket's queue stayed full (every
        // datagram the kernel dropped in the swarm was dropped at the seed) and 600 members
        // never heard back. Its own thread gives it about what one host's core would, against
        // the same OS scheduler as the rest of the swarm.
        let seed_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(IN_PROCESS_THREAD)
            .enable_all()
            .build()
            .context("starting the seed's runtime")?;
        let lags = Arc::new(Mutex::new(Vec::new()));
        runtime.spawn(probe_lag(lags.clone()));
        let key: [u8; 32] = rand::random();
        let seed = SocketAddr::new(IpAddr::V4(ips[0]), IN_PROCESS_PORT);
        let t0 = Instant::now();
        let mut members = Vec::with_capacity(ips.len());
        let mut idle = Vec::with_capacity(ips.len());
        for (i, ip) in ips.iter().enumerate() {
            check_start_time(t0, timeout, i, ips.len())?;
            let addr = SocketAddr::new(IpAddr::V4(*ip), IN_PROCESS_PORT);
            let mut config =
                GossipConfig::new("bench", format!("node-{}", i + 1), addr, Keyring::new(key));
            if i > 0 {
                config.seeds = vec![seed.to_string()];
            }
            configure(&mut config);
            idle.push(config.pacing().slow);
            let announcement = Announcement::new(Role::Server, IpAddr::V4(*ip));
            let on = if i == 0 { &seed_runtime } else { &runtime };
            let member = on
                .block_on(Cluster::join(config, &announcement))
                .with_context(|| format!("joining member {} on {ip}", i + 1))?;
            members.push(member);
        }
        let views = members.iter().map(Cluster::watch).collect();
        Ok((
            InProcessSwarm {
                members,
                views,
                ips: ips.to_vec(),
                idle,
                lags,
                runtime,
                seed_runtime,
            },
            t0,
        ))
    }

    /// Whether every member gossips at its slow interval.
    pub fn all_idle(&self) -> bool {
        self.members
            .iter()
            .zip(&self.idle)
            .all(|(m, idle)| m.gossip_pace() == *idle)
    }

    /// Datagrams and bytes sealed and sent by all members, by their own counters.
    pub fn sent(&self) -> (u64, u64) {
        self.members.iter().fold((0, 0), |(d, b), m| {
            let s = m.stats().snapshot();
            (d + s.sent, b + s.sent_bytes)
        })
    }

    /// What every member knows now, the transport counters so far, and the runtime's lateness
    /// since the previous call.
    pub fn progress(&self) -> SwarmProgress {
        let mut p = SwarmProgress::default();
        for (member, view) in self.members.iter().zip(&self.views) {
            p.listed
                .push(view.borrow().iter().filter(|m| is_up(m)).count());
            p.known.push(member.known_nodes());
            p.paces.push(member.gossip_pace());
            let s = member.stats().snapshot();
            p.sent_each.push(s.sent);
            p.received_each.push(s.received);
            p.sent += s.sent;
            p.sent_bytes += s.sent_bytes;
            p.received += s.received;
            p.rejected +=
                s.rejected_malformed + s.rejected_auth + s.rejected_replay + s.rejected_decode;
            p.send_failed += s.send_failed;
        }
        if let Some(seed) = self.members.first() {
            p.seed_received = seed.stats().snapshot().received;
        }
        if let Ok(mut lags) = self.lags.lock() {
            p.lags = std::mem::take(&mut *lags);
        }
        p
    }

    /// Datagrams not sent because they were too large to seal or the socket refused them.
    pub fn send_failed(&self) -> u64 {
        self.members
            .iter()
            .map(|m| m.stats().snapshot().send_failed)
            .sum()
    }

    /// Leaves gracefully, one member at a time, and stops the runtime.
    pub fn shutdown(self) {
        let InProcessSwarm {
            members,
            runtime,
            seed_runtime,
            ..
        } = self;
        drop(members);
        runtime.shutdown_timeout(Duration::from_secs(2));
        seed_runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

impl Swarm for InProcessSwarm {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn up_seen_by(&mut self, i: usize) -> Option<Vec<String>> {
        let view = self.views[i].borrow();
        Some(
            view.iter()
                .filter(|m| is_up(m))
                .map(|m| m.name.clone())
                .collect(),
        )
    }

    fn up_count(&mut self, i: usize) -> Option<usize> {
        Some(self.views[i].borrow().iter().filter(|m| is_up(m)).count())
    }

    fn name(&self, i: usize) -> String {
        self.members[i].self_name().to_string()
    }

    fn ips(&self) -> Vec<Ipv4Addr> {
        self.ips.clone()
    }

    fn pids(&self) -> Vec<u32> {
        vec![std::process::id()]
    }

    fn members_per_process(&self) -> usize {
        self.members.len()
    }

    fn datagrams_sent(&mut self) -> Option<u64> {
        Some(self.sent().0)
    }

    /// Not possible for one member of a process: the soak, which pauses members, runs process
    /// swarms.
    fn pause(&self, _i: usize, _on: bool) {}
}

/// Alive and not leaving, as the agent's status socket reports "up".
fn is_up(m: &Member) -> bool {
    m.is_alive() && m.announced.phase != Phase::Leaving
}

/// On a saturated machine even starting the members can take minutes: past the run's timeout,
/// give up.
fn check_start_time(t0: Instant, timeout: Duration, started: usize, n: usize) -> Result<()> {
    if t0.elapsed() > timeout {
        bail!("only {started} of {n} members started within {timeout:?}");
    }
    Ok(())
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

/// Up to this many members are polled; in larger clusters an evenly spread sample (always with
/// the seed and the last member started) stands for all, so that polling hundreds of members does
/// not itself load the machine the members share.
pub const MAX_POLLED: usize = 50;

/// The members whose views are polled.
pub fn polled_members(n: usize) -> Vec<usize> {
    if n <= MAX_POLLED {
        return (0..n).collect();
    }
    let mut picked: Vec<usize> = (0..MAX_POLLED)
        .map(|k| k * (n - 1) / (MAX_POLLED - 1))
        .collect();
    picked.dedup();
    picked
}

/// Polls the (sampled) members until each has seen all `len()` members up at least once; returns
/// the time from `t0` until the last one did. Members already converged are not asked again, so
/// the cost of polling shrinks as the cluster converges.
pub fn wait_converged(swarm: &mut dyn Swarm, t0: Instant, timeout: Duration) -> Result<Duration> {
    let n = swarm.len();
    let polled = polled_members(n);
    let mut converged: Vec<Option<Duration>> = vec![None; polled.len()];
    let mut next_report = t0 + Duration::from_secs(10);
    loop {
        for (slot, &i) in converged.iter_mut().zip(&polled) {
            if slot.is_none() && swarm.up_count(i) == Some(n) {
                *slot = Some(t0.elapsed());
            }
        }
        if converged.iter().all(Option::is_some) {
            return Ok(converged.into_iter().flatten().max().unwrap_or_default());
        }
        let done = converged.iter().filter(|c| c.is_some()).count();
        if t0.elapsed() > timeout || interrupted() {
            bail!(
                "{done} of {} polled members saw all {n} within {timeout:?}",
                polled.len()
            );
        }
        if Instant::now() >= next_report {
            crate::progress!(
                "  {done} of {} polled members see all {n} after {:.0} s",
                polled.len(),
                t0.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_large_clusters_evenly() {
        assert_eq!(polled_members(5), vec![0, 1, 2, 3, 4]);
        let p = polled_members(200);
        assert_eq!(p.len(), MAX_POLLED);
        assert_eq!((p[0], p[MAX_POLLED - 1]), (0, 199));
        assert!(p.windows(2).all(|w| w[0] < w[1]));
    }
}
