//! Formation: N members start and every one of them sees all N up. Gossip only (our agents wait
//! for an election that cannot complete, so no RKE2 work is involved), polled on every member (on
//! an evenly spread sample of 50 in larger clusters, see [`crate::bench::swarm`]).
//!
//! The first repetition at the bandwidth size also counts, once converged, the bytes the members
//! send and the CPU they use; then one more run of ours with a longer gossip interval shows what
//! that knob buys.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bench::proc::{cpu_ticks, rss_kib, ticks_per_second};
use crate::bench::report::{Report, Target, Unit};
use crate::bench::sniff::{ByteCounter, Traffic};
use crate::bench::swarm::{wait_converged, OurSwarm, SerfSwarm, Swarm};
use crate::bench::{nap, Ctx, Kind};
use crate::progress;
use rke2_bootstrap_tests::blocks;

/// Address blocks (second octet) of formation runs; the third octet is the repetition.
const OURS_BLOCK: u8 = blocks::BENCH_FORMATION.id(0);
const SERF_BLOCK: u8 = blocks::BENCH_FORMATION.id(1);

/// A size that failed this many times in a row for one side is not repeated for it (at N=200 on
/// two cores a failed run costs most of a minute, and the next one fails the same way).
const GIVE_UP_AFTER: u32 = 2;

/// Members that kept this share of the machine's cores busy and still did not converge were
/// starved of CPU: a property of the machine, not a figure of the implementation.
const SATURATED: f64 = 0.85;

/// A run that failed on a saturated machine.
#[derive(Debug)]
struct Saturated {
    cores: f64,
    cpus: f64,
    failure: String,
}

impl std::fmt::Display for Saturated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "saturated: the members kept {:.2} of {} cores busy: {}",
            self.cores, self.cpus, self.failure
        )
    }
}

impl std::error::Error for Saturated {}

/// The gossip interval of the variant run (the shipped default is 100 ms).
const VARIANT_INTERVAL: &str = "1s";

/// What one run measured.
struct Outcome {
    converged: Duration,
    /// CPU used by all members from start to convergence, in cores.
    cores: f64,
    /// Measured when asked for; its failure (no packet socket, say) does not void the run.
    steady: Option<Result<Steady>>,
}

/// The converged cluster over a measurement window.
struct Steady {
    traffic: Traffic,
    window: Duration,
    nodes: usize,
    /// Our own datagram counters over the same window, as a cross-check of the packet count.
    datagrams: Option<u64>,
    cpu_pct: Vec<f64>,
    rss_mib: Vec<f64>,
}

impl Steady {
    fn kbit_per_node(&self) -> f64 {
        self.traffic.bytes() as f64 * 8.0 / 1000.0 / self.window.as_secs_f64() / self.nodes as f64
    }

    fn packets_per_node(&self) -> f64 {
        (self.traffic.udp_packets + self.traffic.tcp_packets) as f64
            / self.window.as_secs_f64()
            / self.nodes as f64
    }
}

pub fn run(ctx: &Ctx, report: &mut Report, n: usize) {
    let scenario = format!("formation N={n}");
    let target = match n {
        5 => Target::below(250.0),
        200 => Target::below(2000.0),
        _ => None,
    };
    // Far above any target: a run that has not converged by then is a failure, not a figure.
    // Up to 50 members the wait is long enough for Serf's periodic full-state exchange (every
    // 30 s, doubled above 32 members) to repair a join that gossip missed; beyond, the machine is
    // saturated anyway and a long wait only costs time.
    let timeout = if n <= 50 {
        Duration::from_secs(45)
    } else {
        Duration::from_secs(15) + Duration::from_millis(50) * n as u32
    };
    let bandwidth_here = ctx.plan.bandwidth_n == Some(n);
    // Steady-state figures come from the first repetition of each side that converged.
    let mut steady_done = [!bandwidth_here; 2];
    let mut failures_in_a_row = [0u32; 2];
    for rep in 0..ctx.plan.reps {
        for (k, kind) in Kind::BOTH.into_iter().enumerate() {
            if failures_in_a_row[k] >= GIVE_UP_AFTER {
                continue;
            }
            let steady = !steady_done[k];
            let result = run_one(ctx, kind, &[], n, rep, timeout, steady);
            match &result {
                Ok(_) => {
                    steady_done[k] = true;
                    failures_in_a_row[k] = 0;
                }
                // Members that could not run cannot converge the next time either.
                Err(err) if err.downcast_ref::<Saturated>().is_some() => {
                    failures_in_a_row[k] = GIVE_UP_AFTER
                }
                Err(_) => failures_in_a_row[k] += 1,
            }
            let row = report.row(&scenario, CONVERGED_METRIC, Unit::Ms, target, true);
            match result {
                Ok(outcome) => {
                    progress!(
                        "{scenario} rep {}/{} {}: {} ms ({:.2} cores busy)",
                        rep + 1,
                        ctx.plan.reps,
                        kind.name(),
                        outcome.converged.as_millis(),
                        outcome.cores
                    );
                    row.samples_mut(kind).values.push(ms(outcome.converged));
                    report
                        .row(
                            &scenario,
                            "CPU used by all members while forming",
                            Unit::Cores,
                            None,
                            true,
                        )
                        .samples_mut(kind)
                        .values
                        .push(outcome.cores);
                    record_steady(
                        report,
                        &format!("steady N={n}"),
                        kind,
                        outcome.steady,
                        n == 50,
                    );
                }
                Err(err) => {
                    progress!(
                        "{scenario} rep {} {}: failed: {err:#}",
                        rep + 1,
                        kind.name()
                    );
                    row.samples_mut(kind)
                        .failures
                        .push(format!("rep {}: {err:#}", rep + 1));
                    if failures_in_a_row[k] >= GIVE_UP_AFTER && rep + 1 < ctx.plan.reps {
                        row.notes.push(format!(
                            "{}: not repeated (the machine was saturated, or {GIVE_UP_AFTER} \
                             failures in a row)",
                            kind.name()
                        ));
                    }
                }
            }
        }
    }
    if bandwidth_here {
        let extra = [("gossip-interval".to_string(), VARIANT_INTERVAL.to_string())];
        let scenario = format!("steady N={n}, ours with gossip-interval {VARIANT_INTERVAL}");
        match run_one(ctx, Kind::Ours, &extra, n, ctx.plan.reps, timeout, true) {
            Ok(outcome) => {
                report
                    .row(&scenario, CONVERGED_METRIC, Unit::Ms, None, false)
                    .ours
                    .values
                    .push(ms(outcome.converged));
                record_steady(report, &scenario, Kind::Ours, outcome.steady, n == 50)
            }
            Err(err) => {
                progress!("{scenario}: failed: {err:#}");
                report
                    .row(&scenario, BANDWIDTH_METRIC, Unit::KbitPerSec, None, false)
                    .ours
                    .failures
                    .push(format!("{err:#}"));
            }
        }
    }
}

fn run_one(
    ctx: &Ctx,
    kind: Kind,
    extra: &[(String, String)],
    n: usize,
    rep: usize,
    timeout: Duration,
    steady: bool,
) -> Result<Outcome> {
    let dir = ctx.scratch(&format!("formation-{n}-{}-{rep}", kind.name()))?;
    let block = match kind {
        Kind::Ours => OURS_BLOCK,
        Kind::Serf => SERF_BLOCK,
    };
    let ips: Vec<IpAddr> = (1..=n)
        .map(|h| IpAddr::from([127, block, (rep % 250) as u8, h as u8]))
        .collect();
    let (mut swarm, t0): (Box<dyn Swarm>, _) = match kind {
        Kind::Ours => {
            let (s, t0) = OurSwarm::start(&ctx.ours, &ips, &dir, extra, timeout)?;
            (Box::new(s), t0)
        }
        Kind::Serf => {
            let (s, t0) = SerfSwarm::start(&ctx.serf, &ips, &dir, timeout)?;
            (Box::new(s), t0)
        }
    };
    let converged = wait_converged(swarm.as_mut(), t0, timeout);
    // The members are fresh processes: all their CPU time was spent since t0.
    let cores = total_ticks(&swarm.pids()) as f64 / ticks_per_second() / t0.elapsed().as_secs_f64();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let converged = match converged {
        Ok(converged) => converged,
        Err(err) if cores >= SATURATED * cpus => {
            return Err(Saturated {
                cores,
                cpus,
                failure: format!("{err:#}"),
            }
            .into())
        }
        Err(err) => return Err(err.context(format!("the members kept {cores:.2} cores busy"))),
    };
    let steady = steady.then(|| {
        measure_steady(
            swarm.as_mut(),
            ctx.plan.steady_after,
            ctx.plan.bandwidth_window,
        )
    });
    drop(swarm);
    ctx.discard(&dir);
    Ok(Outcome {
        converged,
        cores,
        steady,
    })
}

fn total_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| cpu_ticks(p)).sum()
}

/// Bytes sent by the members, their CPU and memory, over `window`, after a settling time.
fn measure_steady(swarm: &mut dyn Swarm, settle: Duration, window: Duration) -> Result<Steady> {
    // Our agents gossip fast for 10 s after the last change, then announce their slow pace for
    // 2 s before slowing down (see the agent's `gossip::pacing`): the steady state starts after.
    nap(settle);
    let sources: HashSet<_> = swarm.ips().into_iter().collect();
    let pids = swarm.pids();
    let counter = ByteCounter::start(sources)?;
    let sent_before = swarm.datagrams_sent();
    let ticks_before: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let start = Instant::now();
    nap(window);
    let elapsed = start.elapsed();
    let ticks_after: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let sent_after = swarm.datagrams_sent();
    let traffic = counter.finish()?;
    let hz = ticks_per_second();
    let cpu_pct = ticks_before
        .iter()
        .zip(&ticks_after)
        .filter_map(|(b, a)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?)))
        .map(|t| t as f64 / hz / elapsed.as_secs_f64() * 100.0)
        .collect();
    let rss_mib = pids
        .iter()
        .filter_map(|&p| rss_kib(p))
        .map(|k| k as f64 / 1024.0)
        .collect();
    Ok(Steady {
        traffic,
        window: elapsed,
        nodes: swarm.len(),
        datagrams: sent_before
            .zip(sent_after)
            .map(|(b, a)| a.saturating_sub(b)),
        cpu_pct,
        rss_mib,
    })
}

const BANDWIDTH_METRIC: &str = "sent per member, IP bytes";
const CONVERGED_METRIC: &str = "start -> every member sees all N";

fn record_steady(
    report: &mut Report,
    scenario: &str,
    kind: Kind,
    steady: Option<Result<Steady>>,
    targeted: bool,
) {
    let compared = !scenario.contains("ours with");
    let bandwidth_target = if targeted { Target::below(100.0) } else { None };
    let s = match steady {
        None => return,
        Some(Ok(s)) => s,
        Some(Err(err)) => {
            progress!("{scenario} {}: not measured: {err:#}", kind.name());
            report
                .row(
                    scenario,
                    BANDWIDTH_METRIC,
                    Unit::KbitPerSec,
                    bandwidth_target,
                    compared,
                )
                .samples_mut(kind)
                .failures
                .push(format!("{err:#}"));
            return;
        }
    };
    let detail = format!(
        "{}: {}{}",
        kind.name(),
        s.traffic.summary(s.window),
        s.datagrams
            .map(|d| format!(", own counters: {d} datagrams sent"))
            .unwrap_or_default()
    );
    let row = report.row(
        scenario,
        BANDWIDTH_METRIC,
        Unit::KbitPerSec,
        bandwidth_target,
        compared,
    );
    row.samples_mut(kind).values.push(s.kbit_per_node());
    row.notes.push(detail);
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
        .push(s.packets_per_node());
    report
        .row(scenario, "CPU per member", Unit::PctCore, None, compared)
        .samples_mut(kind)
        .values
        .extend_from_slice(&s.cpu_pct);
    report
        .row(scenario, "RSS per member", Unit::MiB, None, compared)
        .samples_mut(kind)
        .values
        .extend_from_slice(&s.rss_mib);
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
