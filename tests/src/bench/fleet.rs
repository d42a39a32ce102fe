//! Gossip at fleet scale: N members of our gossip layer in this process (up to a thousand, each
//! with its own sealed UDP socket on its own loopback address, see [`InProcessSwarm`]) and, where
//! Serf can run on this machine (N <= 50), as many Serf agents side by side. Measured: formation
//! (start -> every member sees all N) and, once converged, the steady state: bytes sent per
//! member (packet socket, as for the formation rows), our own byte counters as a cross-check, and
//! CPU per member.
//!
//! Every member of ours is polled (reading an in-process view is cheap), so "every member sees
//! all" means all N of them, not a sample; Serf's members are polled over RPC, all of them up to
//! 50.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rke2_bootstrap::gossip::GossipConfig;

use crate::bench::formation::ms;
use crate::bench::proc::{cpu_ticks, ticks_per_second};
use crate::bench::registry::interrupted;
use crate::bench::report::{Report, Target, Unit};
use crate::bench::sniff::{ByteCounter, Traffic};
use crate::bench::swarm::{
    wait_converged, InProcessSwarm, SerfSwarm, Swarm, SwarmProgress, IN_PROCESS_PORT,
};
use crate::bench::{nap, Ctx, Kind};
use crate::progress;

/// Serf runs as one process per member: above this, two cores cannot hold the swarm.
pub const MAX_SERF: usize = 50;
/// Sizes above this run once (a run takes minutes).
const LARGE: usize = 50;
/// Address blocks (second octet): the first of the bench's fleet blocks + 2 * (repetition % 10),
/// + 1 for Serf.
const BLOCK_BASE: u8 = rke2_bootstrap_tests::blocks::BENCH_FLEET.first;

/// The steady-state targets of issue 20, per member.
fn bandwidth_target(n: usize) -> Option<Target> {
    match n {
        50 => Target::below(25.0),
        1000 => Target::below(250.0),
        _ => None,
    }
}

fn cpu_target(n: usize) -> Option<Target> {
    (n == 50).then_some(Target {
        max: 0.2,
        inclusive: false,
    })
}

/// The address of member `i` (0-based) of a run: 127.block.(slot * 8 + i / 250).(i % 250 + 1).
pub fn member_ip(kind: Kind, rep: usize, slot: usize, i: usize) -> Ipv4Addr {
    let block = BLOCK_BASE + 2 * (rep % 10) as u8 + u8::from(kind == Kind::Serf);
    Ipv4Addr::new(127, block, (slot * 8 + i / 250) as u8, (i % 250 + 1) as u8)
}

/// What one run measured.
struct Outcome {
    converged: Duration,
    /// Ours: from convergence until every member gossips at its slow interval.
    idle_after: Option<Duration>,
    steady: Option<Result<Steady>>,
}

struct Steady {
    traffic: Traffic,
    window: Duration,
    nodes: usize,
    /// CPU per member, percent of one core (one value per process, or the mean of an
    /// in-process swarm's members).
    cpu_pct: Vec<f64>,
    /// Our transport counters over the window: datagrams, UDP payload bytes, send failures.
    own: Option<(u64, u64, u64)>,
}

impl Steady {
    fn kbit_per_node(&self) -> f64 {
        self.traffic.bytes() as f64 * 8.0 / 1000.0 / self.window.as_secs_f64() / self.nodes as f64
    }
}

/// The variant run at large sizes: rounds `interval` apart in motion (the fast end still grows
/// with N, up to the slow end), ten times that once steady. A thousand members in this process
/// cannot keep the shipped pace on two shared cores (docs/benchmarks.md: each datagram costs the
/// swarm about 2 ms of CPU at N=1,000, the shipped pace asks for about 9,000 a second); a pace
/// matched to the CPU the swarm gets (`--fleet-variant-interval`) measures whether the protocol
/// converges when rounds run on time.
fn variant_name(interval: Duration) -> String {
    format!(
        "ours with gossip-interval {}, gossip-idle-interval {}",
        humantime::format_duration(interval),
        humantime::format_duration(interval * 10)
    )
}

/// How the members of a run are configured, and how long they get to converge.
struct Setup<'a> {
    configure: &'a dyn Fn(&mut GossipConfig),
    timeout: Duration,
}

/// Rounds a large variant run gets to converge: formation takes a number of rounds, not seconds.
const VARIANT_ROUNDS: u32 = 20;

pub fn run(ctx: &Ctx, report: &mut Report, slot: usize, n: usize) {
    let shipped_setup = Setup {
        configure: &shipped,
        timeout: match ctx.plan.fleet_timeout {
            Some(timeout) if n > LARGE => timeout,
            _ => timeout(n),
        },
    };
    run_with(ctx, report, slot, n, "", &shipped_setup);
    if let (true, Some(interval)) = (n > LARGE, ctx.plan.fleet_variant_interval) {
        let variant = move |config: &mut GossipConfig| {
            config.gossip_interval = interval;
            config.idle_gossip_interval = interval * 10;
        };
        // The fast end at N nodes (see the agent's pacing: one interval per 100 nodes).
        let fast = (interval * n.div_ceil(100) as u32).min(interval * 10);
        let timeout = timeout(n).max(fast * VARIANT_ROUNDS);
        let suffix = format!(", {}", variant_name(interval));
        let setup = Setup {
            configure: &variant,
            timeout,
        };
        run_with(ctx, report, slot, n, &suffix, &setup);
    }
}

fn run_with(ctx: &Ctx, report: &mut Report, slot: usize, n: usize, suffix: &str, setup: &Setup) {
    let scenario = format!("fleet N={n}{suffix}");
    let reps = if n > LARGE { 1 } else { ctx.plan.reps };
    let kinds: &[Kind] = if n <= MAX_SERF && suffix.is_empty() {
        &Kind::BOTH
    } else {
        &[Kind::Ours]
    };
    let mut steady_done = [!ctx.plan.fleet_steady; 2];
    let mut failures = [0u32; 2];
    for rep in 0..reps {
        for (k, &kind) in kinds.iter().enumerate() {
            if failures[k] >= 2 {
                continue;
            }
            // The variant takes the next repetition's addresses: a runtime that was still busy
            // when the previous swarm shut down can keep a few of its sockets bound a while.
            let block = rep + usize::from(!suffix.is_empty());
            let result = run_one(ctx, kind, block, slot, n, !steady_done[k], setup);
            let row = report.row(
                &scenario,
                "start -> every member sees all N",
                Unit::Ms,
                None,
                n <= MAX_SERF,
            );
            match result {
                Ok(outcome) => {
                    failures[k] = 0;
                    progress!(
                        "{scenario} rep {}/{reps} {}: {} ms",
                        rep + 1,
                        kind.name(),
                        outcome.converged.as_millis()
                    );
                    row.samples_mut(kind).values.push(ms(outcome.converged));
                    if kind == Kind::Ours && outcome.steady.is_some() {
                        let idle = report.row(
                            &scenario,
                            "converged -> every member at the slow pace",
                            Unit::Ms,
                            None,
                            false,
                        );
                        match outcome.idle_after {
                            Some(after) => idle.ours.values.push(ms(after)),
                            None => idle
                                .ours
                                .failures
                                .push(format!("rep {}: not within {IDLE_TIMEOUT:?}", rep + 1)),
                        }
                    }
                    if let Some(steady) = outcome.steady {
                        steady_done[k] = true;
                        record_steady(
                            report,
                            &format!("fleet steady N={n}{suffix}"),
                            n,
                            kind,
                            steady,
                        );
                    }
                }
                Err(err) => {
                    failures[k] += 1;
                    progress!(
                        "{scenario} rep {} {}: failed: {err:#}",
                        rep + 1,
                        kind.name()
                    );
                    row.samples_mut(kind)
                        .failures
                        .push(format!("rep {}: {err:#}", rep + 1));
                }
            }
        }
    }
    if n > LARGE {
        report
            .row(
                &scenario,
                "start -> every member sees all N",
                Unit::Ms,
                None,
                false,
            )
            .notes
            .push(format!(
                "one repetition; Serf is not run above N={MAX_SERF} (one process per member)"
            ));
    }
}

fn run_one(
    ctx: &Ctx,
    kind: Kind,
    rep: usize,
    slot: usize,
    n: usize,
    steady: bool,
    setup: &Setup,
) -> Result<Outcome> {
    let timeout = setup.timeout;
    let ips: Vec<Ipv4Addr> = (0..n).map(|i| member_ip(kind, rep, slot, i)).collect();
    match kind {
        Kind::Ours => {
            let (mut swarm, t0) = InProcessSwarm::start(&ips, setup.configure, timeout)?;
            let period = if n <= LARGE {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(50)
            };
            let converged = wait_all_converged(&mut swarm, t0, timeout, period);
            let outcome = converged.map(|converged| {
                let idle_after = steady.then(|| wait_idle(&swarm, IDLE_TIMEOUT)).flatten();
                Outcome {
                    converged,
                    idle_after,
                    steady: steady.then(|| measure(&mut swarm, ctx.plan.bandwidth_window)),
                }
            });
            swarm.shutdown();
            outcome
        }
        Kind::Serf => {
            let dir = ctx.scratch(&format!("fleet-{n}-serf-{rep}"))?;
            let addrs: Vec<_> = ips.iter().map(|ip| (*ip).into()).collect();
            let (mut swarm, t0) = SerfSwarm::start(&ctx.serf, &addrs, &dir, timeout)?;
            let converged = wait_converged(&mut swarm, t0, timeout)?;
            let steady = steady.then(|| measure(&mut swarm, ctx.plan.bandwidth_window));
            drop(swarm);
            ctx.discard(&dir);
            Ok(Outcome {
                converged,
                idle_after: None,
                steady,
            })
        }
    }
}

/// How long a converged swarm may take to settle at the slow pace before it is measured anyway.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Waits until every member gossips at its slow interval; the time it took, or `None` if that
/// did not happen within `timeout` (the steady state is then measured as it is).
fn wait_idle(swarm: &InProcessSwarm, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout && !interrupted() {
        if swarm.all_idle() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// How long a run may take to converge before it counts as failed.
fn timeout(n: usize) -> Duration {
    if n <= LARGE {
        Duration::from_secs(45)
    } else {
        Duration::from_secs(30) + Duration::from_millis(120) * n as u32
    }
}

/// The shipped defaults: the swarm measures what every host would run.
fn shipped(_config: &mut GossipConfig) {}

/// Polls every member that has not yet seen all N up; returns the time from `t0` until the
/// last one did. Every 10 s until then, a progress line (see [`ProgressLog`]) makes a swarm that
/// does not converge show why.
fn wait_all_converged(
    swarm: &mut InProcessSwarm,
    t0: Instant,
    timeout: Duration,
    period: Duration,
) -> Result<Duration> {
    let n = swarm.len();
    let mut pending: Vec<usize> = (0..n).collect();
    let mut next_report = t0 + Duration::from_secs(10);
    let mut log = ProgressLog::new(swarm);
    loop {
        pending.retain(|&i| swarm.up_count(i) != Some(n));
        let elapsed = t0.elapsed();
        if pending.is_empty() {
            return Ok(elapsed);
        }
        if elapsed > timeout || interrupted() {
            let last = log.line(swarm, elapsed);
            bail!(
                "{} of {n} members saw all {n} within {timeout:?} ({} datagrams too large to \
                 seal or refused); at the end: {last}",
                n - pending.len(),
                swarm.send_failed()
            );
        }
        if Instant::now() >= next_report {
            progress!("  {}", log.line(swarm, elapsed));
            next_report += Duration::from_secs(10);
        }
        std::thread::sleep(period);
    }
}

/// The progress of an in-process swarm since the previous line: how many members each member
/// lists up and how many nodes its chitchat knows (a member that never hears of its peers shows
/// a small "known"; one that hears of them but cannot judge them alive, a "known" far above its
/// "listed"), the pace in use, datagrams sent and delivered by the members' own counters, the
/// kernel's drops at full receive buffers, the swarm's CPU and how late its runtime runs what
/// is due (when the runtime cannot keep up, every round is late by about as much).
struct ProgressLog {
    at: Instant,
    ticks: u64,
    udp: Option<KernelUdp>,
    sent: u64,
    sent_bytes: u64,
    received: u64,
    rejected: u64,
    seed_received: u64,
    sent_each: Vec<u64>,
    received_each: Vec<u64>,
}

/// How many of the members that list the fewest a progress line details.
const LAGGARDS: usize = 3;

impl ProgressLog {
    fn new(swarm: &InProcessSwarm) -> ProgressLog {
        ProgressLog::reading(
            Instant::now(),
            threads_ticks(crate::bench::swarm::IN_PROCESS_THREAD),
            kernel_udp(),
            swarm.progress(),
        )
    }

    /// The counters as read at `at`, the base of the next line's rates.
    fn reading(at: Instant, ticks: u64, udp: Option<KernelUdp>, p: SwarmProgress) -> ProgressLog {
        ProgressLog {
            at,
            ticks,
            udp,
            sent: p.sent,
            sent_bytes: p.sent_bytes,
            received: p.received,
            rejected: p.rejected,
            seed_received: p.seed_received,
            sent_each: p.sent_each,
            received_each: p.received_each,
        }
    }

    fn line(&mut self, swarm: &InProcessSwarm, elapsed: Duration) -> String {
        let p = swarm.progress();
        let n = p.listed.len();
        let now = Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64().max(0.001);
        let ticks = threads_ticks(crate::bench::swarm::IN_PROCESS_THREAD);
        let cores = ticks.saturating_sub(self.ticks) as f64 / ticks_per_second() / secs;
        let udp = kernel_udp();
        let kernel = match (self.udp, udp) {
            (Some(before), Some(after)) => {
                let delivered = after.delivered.saturating_sub(before.delivered);
                let dropped = after.rcvbuf_errors.saturating_sub(before.rcvbuf_errors);
                format!(
                    "kernel: {dropped} of {} UDP datagrams dropped at full receive buffers \
                     (whole machine)",
                    delivered + dropped
                )
            }
            _ => "kernel: UDP counters unreadable".into(),
        };
        let sent = p.sent.saturating_sub(self.sent);
        let sent_bytes = p.sent_bytes.saturating_sub(self.sent_bytes);
        let received = p.received.saturating_sub(self.received);
        let rejected = p.rejected.saturating_sub(self.rejected);
        let seed_received = p.seed_received.saturating_sub(self.seed_received);
        let queues = socket_queues(&swarm.ips(), IN_PROCESS_PORT);
        let seed_queue = swarm
            .ips()
            .first()
            .and_then(|ip| queues.get(ip))
            .copied()
            .unwrap_or_default();
        let all_drops: u64 = queues.values().map(|q| q.drops).sum();
        // The members listing the fewest: whether their gossip loops still send and receive
        // tells a starved or stuck member from one that is served but cannot judge its peers.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (p.listed[i], p.known[i]));
        let laggards = order
            .iter()
            .take(LAGGARDS)
            .map(|&i| {
                let delta = |now: &[u64], before: &[u64]| {
                    now[i].saturating_sub(before.get(i).copied().unwrap_or(0))
                };
                format!(
                    "member {} lists {}, knows {}, pace {}, sent {} and got {}",
                    i + 1,
                    p.listed[i],
                    p.known[i],
                    humantime::format_duration(p.paces[i]),
                    delta(&p.sent_each, &self.sent_each),
                    delta(&p.received_each, &self.received_each),
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let mut lags = p.lags.clone();
        lags.sort_unstable();
        let lag = |q: f64| {
            lags.get(((lags.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(0, |d| d.as_millis())
        };
        let line = format!(
            "after {:.0} s: {} of {n} see all; up members listed per member (min/p10/p50/p90/max) \
             {} [{}]; nodes known {}; pace {}; last {:.0} s, per member and second: {:.1} \
             datagrams sent ({} B avg), {:.1} delivered, {:.2} refused; {kernel}; the seed: lists \
             {}, knows {}, {:.1} datagrams delivered per s, {} KiB queued at its socket, {} \
             dropped there of {} at all members' sockets so far; swarm CPU {:.2} cores; a 100 ms \
             timer on the runtime fired {} times, late p50 {} ms, p90 {} ms, max {} ms; the \
             laggards (datagrams in the last {:.0} s): {laggards}",
            elapsed.as_secs_f64(),
            p.listed.iter().filter(|&&c| c == n).count(),
            spread(&p.listed),
            buckets(&p.listed, n),
            spread(&p.known),
            paces(&p.paces),
            secs,
            sent as f64 / secs / n as f64,
            sent_bytes.checked_div(sent).unwrap_or(0),
            received as f64 / secs / n as f64,
            rejected as f64 / secs / n as f64,
            p.listed.first().copied().unwrap_or(0),
            p.known.first().copied().unwrap_or(0),
            seed_received as f64 / secs,
            seed_queue.rx_queue / 1024,
            seed_queue.drops,
            all_drops,
            cores,
            lags.len(),
            lag(0.5),
            lag(0.9),
            lag(1.0),
            secs,
        );
        *self = ProgressLog::reading(now, ticks, udp, p);
        line
    }
}

/// The kernel's UDP counters (`/proc/net/snmp`), for this network namespace: other UDP traffic
/// on the machine counts too.
#[derive(Debug, Clone, Copy)]
struct KernelUdp {
    /// Datagrams delivered to a socket.
    delivered: u64,
    /// Datagrams dropped because the socket's receive buffer was full.
    rcvbuf_errors: u64,
}

fn kernel_udp() -> Option<KernelUdp> {
    parse_snmp_udp(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

fn parse_snmp_udp(snmp: &str) -> Option<KernelUdp> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse::<u64>().ok()
    };
    Some(KernelUdp {
        delivered: get("InDatagrams")?,
        rcvbuf_errors: get("RcvbufErrors")?,
    })
}

/// A UDP socket's receive queue (bytes) and the datagrams dropped at it since it opened.
#[derive(Debug, Clone, Copy, Default)]
struct SocketQueue {
    rx_queue: u64,
    drops: u64,
}

/// The receive queues of the IPv4 UDP sockets bound to `ips` on `port` (`/proc/net/udp`).
fn socket_queues(ips: &[Ipv4Addr], port: u16) -> HashMap<Ipv4Addr, SocketQueue> {
    let wanted: HashSet<&Ipv4Addr> = ips.iter().collect();
    std::fs::read_to_string("/proc/net/udp")
        .map(|table| parse_proc_net_udp(&table, port))
        .unwrap_or_default()
        .into_iter()
        .filter(|(ip, _)| wanted.contains(ip))
        .collect()
}

fn parse_proc_net_udp(table: &str, port: u16) -> Vec<(Ipv4Addr, SocketQueue)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (ip, p) = f.get(1)?.split_once(':')?;
            if u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            // The address is printed as the kernel's 32-bit word: little-endian on x86.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
            let rx_queue = u64::from_str_radix(f.get(4)?.split_once(':')?.1, 16).ok()?;
            let drops = f.get(12)?.parse().ok()?;
            Some((ip, SocketQueue { rx_queue, drops }))
        })
        .collect()
}

/// Minimum, 10th, 50th and 90th percentile and maximum of `values`.
fn spread(values: &[usize]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return "-".into();
    }
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    format!("{}/{}/{}/{}/{}", q(0.0), q(0.1), q(0.5), q(0.9), q(1.0))
}

/// A histogram of how many of `n` members each member lists: itself only, under 10 %, under
/// 50 %, under 90 %, under all, all.
fn buckets(listed: &[usize], n: usize) -> String {
    let mut counts = [0usize; 6];
    for &c in listed {
        let b = if c <= 1 {
            0
        } else if c * 10 < n {
            1
        } else if c * 2 < n {
            2
        } else if c * 10 < n * 9 {
            3
        } else if c < n {
            4
        } else {
            5
        };
        counts[b] += 1;
    }
    format!(
        "self only {}, <10% {}, <50% {}, <90% {}, <all {}, all {}",
        counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]
    )
}

/// How many members use each gossip interval, e.g. `1s x 998, 5s x 2`.
fn paces(paces: &[Duration]) -> String {
    let mut by: std::collections::BTreeMap<Duration, usize> = Default::default();
    for &p in paces {
        *by.entry(p).or_default() += 1;
    }
    by.iter()
        .map(|(p, c)| format!("{} x {c}", humantime::format_duration(*p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU ticks of this process's threads named `name` (an in-process swarm's runtime).
fn threads_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse::<u32>().ok()?;
            cpu_ticks_of_task(tid)
        })
        .sum()
}

fn cpu_ticks_of_task(tid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime (fields 14 and 15); a thread has no waited-for children.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A swarm's CPU ticks so far: its runtime's threads when in process, else its processes'.
fn swarm_ticks(swarm: &dyn Swarm) -> u64 {
    if swarm.members_per_process() > 1 {
        threads_ticks(crate::bench::swarm::IN_PROCESS_THREAD)
    } else {
        swarm.pids().iter().filter_map(|&p| cpu_ticks(p)).sum()
    }
}

/// After a settling time, `window` of traffic, CPU and (ours) transport counters.
fn measure<S: Swarm + OwnCounters>(swarm: &mut S, window: Duration) -> Result<Steady> {
    nap(Duration::from_secs(2));
    let sources: HashSet<_> = swarm.ips().into_iter().collect();
    let counter = ByteCounter::start(sources)?;
    let own_before = swarm.own_counters();
    let per_process: Vec<Option<u64>> = swarm.pids().iter().map(|&p| cpu_ticks(p)).collect();
    let ticks_before = swarm_ticks(swarm);
    let start = Instant::now();
    nap(window);
    let elapsed = start.elapsed();
    let ticks_after = swarm_ticks(swarm);
    let per_process_after: Vec<Option<u64>> = swarm.pids().iter().map(|&p| cpu_ticks(p)).collect();
    let own_after = swarm.own_counters();
    let traffic = counter.finish()?;
    let pct = |ticks: u64| ticks as f64 / ticks_per_second() / elapsed.as_secs_f64() * 100.0;
    let n = swarm.len();
    let cpu_pct = if swarm.members_per_process() > 1 {
        vec![pct(ticks_after.saturating_sub(ticks_before)) / n as f64]
    } else {
        per_process
            .iter()
            .zip(&per_process_after)
            .filter_map(|(b, a)| Some(pct(a.as_ref()?.saturating_sub(*b.as_ref()?))))
            .collect()
    };
    Ok(Steady {
        traffic,
        window: elapsed,
        nodes: n,
        cpu_pct,
        own: own_before.zip(own_after).map(|(b, a)| {
            (
                a.0.saturating_sub(b.0),
                a.1.saturating_sub(b.1),
                a.2.saturating_sub(b.2),
            )
        }),
    })
}

/// Transport counters where the implementation keeps them: datagrams, bytes, send failures.
trait OwnCounters {
    fn own_counters(&self) -> Option<(u64, u64, u64)>;
}

impl OwnCounters for InProcessSwarm {
    fn own_counters(&self) -> Option<(u64, u64, u64)> {
        let (datagrams, bytes) = self.sent();
        Some((datagrams, bytes, self.send_failed()))
    }
}

impl OwnCounters for SerfSwarm {
    fn own_counters(&self) -> Option<(u64, u64, u64)> {
        None
    }
}

fn record_steady(
    report: &mut Report,
    scenario: &str,
    n: usize,
    kind: Kind,
    steady: Result<Steady>,
) {
    let compared = n <= MAX_SERF;
    let targeted = !scenario.contains("ours with");
    let bandwidth_target = |n| if targeted { bandwidth_target(n) } else { None };
    let cpu_target = |n| if targeted { cpu_target(n) } else { None };
    let bandwidth = "sent per member, IP bytes";
    let s = match steady {
        Ok(s) => s,
        Err(err) => {
            progress!("{scenario} {}: not measured: {err:#}", kind.name());
            report
                .row(
                    scenario,
                    bandwidth,
                    Unit::KbitPerSec,
                    bandwidth_target(n),
                    compared,
                )
                .samples_mut(kind)
                .failures
                .push(format!("{err:#}"));
            return;
        }
    };
    let own = s
        .own
        .map(|(d, b, f)| {
            format!(
                ", own counters: {d} datagrams, {b} B of UDP payload ({:.1} kbit/s per member \
                 with 28 B of IP and UDP headers each), {f} not sent (too large to seal or \
                 refused)",
                (b + 28 * d) as f64 * 8.0 / 1000.0 / s.window.as_secs_f64() / s.nodes as f64
            )
        })
        .unwrap_or_default();
    let row = report.row(
        scenario,
        bandwidth,
        Unit::KbitPerSec,
        bandwidth_target(n),
        compared,
    );
    row.samples_mut(kind).values.push(s.kbit_per_node());
    row.notes.push(format!(
        "{}: {}{own}",
        kind.name(),
        s.traffic.summary(s.window)
    ));
    report
        .row(
            scenario,
            "packets sent per member per s",
            Unit::Count,
            None,
            compared,
        )
        .samples_mut(kind)
        .values
        .push(
            (s.traffic.udp_packets + s.traffic.tcp_packets) as f64
                / s.window.as_secs_f64()
                / s.nodes as f64,
        );
    let cpu = report.row(
        scenario,
        "CPU per member",
        Unit::PctCore,
        cpu_target(n),
        compared,
    );
    cpu.samples_mut(kind).values.extend_from_slice(&s.cpu_pct);
    if kind == Kind::Ours && !cpu.notes.iter().any(|n| n.starts_with("ours:")) {
        cpu.notes.push(
            "ours: the CPU time of the swarm's runtime threads divided by N (one sample)".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_helpers() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 120 3 7 130 5 0\n";
        let udp = parse_snmp_udp(snmp).unwrap();
        assert_eq!((udp.delivered, udp.rcvbuf_errors), (120, 5));
        assert_eq!(spread(&[5, 1, 3]), "1/1/3/5/5");
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   \
                     uid  timeout inode ref pointer drops\n\
                     1: 0100D27F:1F0A 00000000:0000 07 00000000:006CFA40 00:00000000 00000000     \
                     0        0 1 2 0000000000000000 8809\n\
                     2: 0200D27F:1F0B 00000000:0000 07 00000000:00000000 00:00000000 00000000     \
                     0        0 1 2 0000000000000000 0\n";
        let parsed = parse_proc_net_udp(table, 7946);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, Ipv4Addr::new(127, 210, 0, 1));
        assert_eq!((parsed[0].1.rx_queue, parsed[0].1.drops), (0x6CFA40, 8809));
        assert_eq!(
            buckets(&[1, 5, 40, 60, 95, 100], 100),
            "self only 1, <10% 1, <50% 1, <90% 1, <all 1, all 1"
        );
        let ms = Duration::from_millis;
        assert_eq!(paces(&[ms(100), ms(5000), ms(100)]), "100ms x 2, 5s x 1");
    }

    #[test]
    fn addresses_stay_in_the_bench_blocks_and_apart() {
        let mut seen = HashSet::new();
        for rep in 0..12 {
            for kind in Kind::BOTH {
                for (slot, n) in [5usize, 50, 1000].into_iter().enumerate() {
                    for i in 0..n {
                        let ip = member_ip(kind, rep % 10, slot, i);
                        let [a, b, _, d] = ip.octets();
                        assert_eq!(a, 127);
                        assert!(
                            rke2_bootstrap_tests::blocks::BENCH_FLEET.contains(b),
                            "{ip}"
                        );
                        assert!((1..=250).contains(&d), "{ip}");
                        if rep < 10 {
                            assert!(seen.insert(ip), "{ip} used twice");
                        }
                    }
                }
            }
        }
    }
}
