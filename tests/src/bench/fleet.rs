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

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rke2_bootstrap::gossip::GossipConfig;

use crate::bench::formation::ms;
use crate::bench::proc::{cpu_ticks, ticks_per_second};
use crate::bench::registry::interrupted;
use crate::bench::report::{Report, Target, Unit};
use crate::bench::sniff::{ByteCounter, Traffic};
use crate::bench::swarm::{wait_converged, InProcessSwarm, SerfSwarm, Swarm};
use crate::bench::{nap, Ctx, Kind};
use crate::progress;

/// Serf runs as one process per member: above this, two cores cannot hold the swarm.
pub const MAX_SERF: usize = 50;
/// Sizes above this run once (a run takes minutes).
const LARGE: usize = 50;
/// Address blocks (second octet): 210 + 2 * (repetition % 10), + 1 for Serf.
const BLOCK_BASE: u8 = 210;

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

/// The knobs of the variant run at large sizes: what the shipped fast end costs a thousand
/// members forming on two cores, against rounds ten times slower.
const VARIANT: &str = "ours with gossip-interval 1s, gossip-idle-interval 10s";

fn variant(config: &mut GossipConfig) {
    config.gossip_interval = Duration::from_secs(1);
    config.idle_gossip_interval = Duration::from_secs(10);
}

pub fn run(ctx: &Ctx, report: &mut Report, slot: usize, n: usize) {
    run_with(ctx, report, slot, n, "", &shipped);
    if n > LARGE {
        run_with(ctx, report, slot, n, &format!(", {VARIANT}"), &variant);
    }
}

fn run_with(
    ctx: &Ctx,
    report: &mut Report,
    slot: usize,
    n: usize,
    suffix: &str,
    configure: &dyn Fn(&mut GossipConfig),
) {
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
            let result = run_one(ctx, kind, rep, slot, n, !steady_done[k], configure);
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
    configure: &dyn Fn(&mut GossipConfig),
) -> Result<Outcome> {
    let timeout = timeout(n);
    let ips: Vec<Ipv4Addr> = (0..n).map(|i| member_ip(kind, rep, slot, i)).collect();
    match kind {
        Kind::Ours => {
            let (mut swarm, t0) = InProcessSwarm::start(&ips, configure, timeout)?;
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
/// last one did.
fn wait_all_converged(
    swarm: &mut InProcessSwarm,
    t0: Instant,
    timeout: Duration,
    period: Duration,
) -> Result<Duration> {
    let n = swarm.len();
    let mut pending: Vec<usize> = (0..n).collect();
    let mut next_report = t0 + Duration::from_secs(10);
    loop {
        pending.retain(|&i| swarm.up_count(i) != Some(n));
        let elapsed = t0.elapsed();
        if pending.is_empty() {
            return Ok(elapsed);
        }
        if elapsed > timeout || interrupted() {
            bail!(
                "{} of {n} members saw all {n} within {timeout:?} ({} datagrams too large to \
                 seal or refused)",
                n - pending.len(),
                swarm.send_failed()
            );
        }
        if Instant::now() >= next_report {
            // The laggard's count tells a slow spread from a view that flaps.
            let fewest = pending
                .iter()
                .filter_map(|&i| swarm.up_count(i))
                .min()
                .unwrap_or(n);
            progress!(
                "  {} of {n} members see all {n} after {:.0} s (the fewest any sees: {fewest}, \
                 {} datagrams too large to seal or refused)",
                n - pending.len(),
                elapsed.as_secs_f64(),
                swarm.send_failed()
            );
            next_report += Duration::from_secs(10);
        }
        std::thread::sleep(period);
    }
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
    fn addresses_stay_in_the_bench_blocks_and_apart() {
        let mut seen = HashSet::new();
        for rep in 0..12 {
            for kind in Kind::BOTH {
                for (slot, n) in [5usize, 50, 1000].into_iter().enumerate() {
                    for i in 0..n {
                        let ip = member_ip(kind, rep % 10, slot, i);
                        let [a, b, _, d] = ip.octets();
                        assert_eq!(a, 127);
                        assert!((210..=239).contains(&b), "{ip}");
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
