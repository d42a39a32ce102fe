//! Formation: N members start and every one of them sees all N up. Gossip only (our agents wait
//! for an election that cannot complete, so no RKE2 work is involved), polled on every member.
//! The first repetition at the bandwidth size also counts bytes on the wire once converged.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;

use crate::bench::report::{Report, Target, Unit};
use crate::bench::sniff::{ByteCounter, Traffic};
use crate::bench::swarm::{wait_converged, OurSwarm, SerfSwarm, Swarm};
use crate::bench::{nap, Ctx, Kind};
use crate::progress;

/// Address blocks (second octet) of formation runs; the third octet is the repetition.
const OURS_BLOCK: u8 = 140;
const SERF_BLOCK: u8 = 141;

/// What one run measured.
struct Outcome {
    converged: Duration,
    bandwidth: Option<Bandwidth>,
}

struct Bandwidth {
    traffic: Traffic,
    window: Duration,
    nodes: usize,
    /// Our own datagram counters over the same window, as a cross-check of the packet count.
    datagrams: Option<u64>,
}

impl Bandwidth {
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
    let timeout = Duration::from_secs(30) + Duration::from_millis(300) * n as u32;
    for rep in 0..ctx.plan.reps {
        for kind in Kind::BOTH {
            let measure_bandwidth = rep == 0 && ctx.plan.bandwidth_n == Some(n);
            let result = run_one(ctx, kind, n, rep, timeout, measure_bandwidth);
            let row = report.row(
                &scenario,
                "start -> every member sees all N",
                Unit::Ms,
                target,
                true,
            );
            let samples = row.samples_mut(kind);
            match result {
                Ok(outcome) => {
                    progress!(
                        "{scenario} rep {}/{} {}: {} ms",
                        rep + 1,
                        ctx.plan.reps,
                        kind.name(),
                        outcome.converged.as_millis()
                    );
                    samples.values.push(ms(outcome.converged));
                    if let Some(bw) = outcome.bandwidth {
                        record_bandwidth(report, n, kind, &bw);
                    }
                }
                Err(err) => {
                    progress!(
                        "{scenario} rep {} {}: failed: {err:#}",
                        rep + 1,
                        kind.name()
                    );
                    samples.failures.push(format!("rep {}: {err:#}", rep + 1));
                }
            }
        }
    }
}

fn run_one(
    ctx: &Ctx,
    kind: Kind,
    n: usize,
    rep: usize,
    timeout: Duration,
    measure_bandwidth: bool,
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
            let (s, t0) = OurSwarm::start(&ctx.ours, &ips, &dir)?;
            (Box::new(s), t0)
        }
        Kind::Serf => {
            let (s, t0) = SerfSwarm::start(&ctx.serf, &ips, &dir)?;
            (Box::new(s), t0)
        }
    };
    let converged = wait_converged(swarm.as_mut(), t0, timeout)?;
    let bandwidth = if measure_bandwidth {
        Some(measure(swarm.as_mut(), ctx.plan.bandwidth_window)?)
    } else {
        None
    };
    drop(swarm);
    ctx.discard(&dir);
    Ok(Outcome {
        converged,
        bandwidth,
    })
}

/// Bytes sent by the members over `window`, after a short settling time.
fn measure(swarm: &mut dyn Swarm, window: Duration) -> Result<Bandwidth> {
    nap(Duration::from_secs(2));
    let sources: HashSet<_> = swarm.ips().into_iter().collect();
    let counter = ByteCounter::start(sources)?;
    let sent_before = swarm.datagrams_sent();
    nap(window);
    let sent_after = swarm.datagrams_sent();
    let traffic = counter.finish()?;
    Ok(Bandwidth {
        traffic,
        window,
        nodes: swarm.len(),
        datagrams: sent_before
            .zip(sent_after)
            .map(|(b, a)| a.saturating_sub(b)),
    })
}

fn record_bandwidth(report: &mut Report, n: usize, kind: Kind, bw: &Bandwidth) {
    let scenario = format!("bandwidth N={n}");
    let target = if n == 50 { Target::below(100.0) } else { None };
    let rows = [
        (
            "sent per node, IP bytes",
            Unit::KbitPerSec,
            target,
            bw.kbit_per_node(),
        ),
        (
            "packets sent per node per s",
            Unit::Count,
            None,
            bw.packets_per_node(),
        ),
    ];
    for (metric, unit, target, value) in rows {
        let row = report.row(&scenario, metric, unit, target, true);
        row.samples_mut(kind).values.push(value);
        let t = &bw.traffic;
        row.notes.push(format!(
            "{}: {:.0} s window, udp {} B / {} pkts, tcp {} B / {} pkts{}{}",
            kind.name(),
            bw.window.as_secs_f64(),
            t.udp_bytes,
            t.udp_packets,
            t.tcp_bytes,
            t.tcp_packets,
            if t.dropped > 0 {
                format!(", {} packets missed by the counter", t.dropped)
            } else {
                String::new()
            },
            bw.datagrams
                .map(|d| format!(", own counters: {d} datagrams sent"))
                .unwrap_or_default()
        ));
        if metric.starts_with("packets") {
            // The detail note is on the bytes row already.
            row.notes.pop();
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
