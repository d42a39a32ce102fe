//! Churn behind the LB: five hosts (three servers) and an LB host keeping an nginx upstream
//! file. Per repetition and implementation, a fresh cluster:
//!
//! 1. bring-up: from the first process started until the LB file lists the three servers (ours:
//!    the whole zero-touch bring-up with the RKE2 stand-ins; Serf's: gossip and the handler);
//! 2. footprint (first repetition only): idle RSS and CPU of every host's agent and the LB host's;
//! 3. crash: `kill -9` of server-2; until the LB file drops it, and how much of that came after
//!    the LB host's own view had dropped it (the LB pipeline);
//! 4. graceful leave of server-3 (ours: SIGTERM; Serf: SIGINT, its leave signal), timed the same way.
//!
//! Our cluster also runs a second sidecar with `debounce.quiet: 0s`, timed on the same events,
//! to show what the debounce costs.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::bench::footprint::{measure_idle, Idle};
use crate::bench::formation::ms;
use crate::bench::lbcluster::{
    time_removal, wait_lb_lists_all, LbCluster, OurLbCluster, Removal, SerfLbCluster,
};
use crate::bench::report::{Report, Target, Unit};
use crate::bench::{nap, Ctx, Kind};
use crate::progress;
use rke2_bootstrap_tests::blocks;

/// Harness test ids (second octet) for our clusters: one per repetition, cycling.
const OURS_FIRST_ID: u8 = blocks::BENCH_CHURN.first;
const OURS_IDS: u8 = blocks::BENCH_CHURN.count;
/// Serf clusters live in `127.<block>.<rep>.x`.
const SERF_BLOCK: u8 = blocks::BENCH_CHURN_SERF.id(0);

const CRASHED: usize = 1;
const LEAVING: usize = 2;

/// The debounce variant of our sidecar.
const VARIANT_FLAGS: (&str, &str) = ("debounce", "{quiet: 0s}");

struct Outcome {
    bring_up: Duration,
    idle: Option<(Idle, Idle)>,
    crash: Vec<Removal>,
    leave: Vec<Removal>,
}

pub fn run(ctx: &Ctx, report: &mut Report) {
    for rep in 0..ctx.plan.reps {
        for kind in Kind::BOTH {
            let measure_idle = rep == 0;
            let result = match kind {
                Kind::Ours => run_ours(ctx, rep, measure_idle),
                Kind::Serf => run_serf(ctx, rep, measure_idle),
            };
            match result {
                Ok(outcome) => {
                    progress!(
                        "churn rep {}/{} {}: bring-up {} ms, crash {} ms, leave {} ms",
                        rep + 1,
                        ctx.plan.reps,
                        kind.name(),
                        outcome.bring_up.as_millis(),
                        outcome.crash[0].to_file.as_millis(),
                        outcome.leave[0].to_file.as_millis()
                    );
                    record(report, kind, &outcome);
                }
                Err(err) => {
                    progress!("churn rep {} {}: failed: {err:#}", rep + 1, kind.name());
                    bring_up_row(report)
                        .samples_mut(kind)
                        .failures
                        .push(format!("rep {}: {err:#}", rep + 1));
                }
            }
        }
    }
}

fn run_ours(ctx: &Ctx, rep: usize, idle: bool) -> Result<Outcome> {
    let dir = ctx.scratch(&format!("churn-ours-{rep}"))?;
    let test_id = OURS_FIRST_ID + (rep % OURS_IDS as usize) as u8;
    let (mut c, t0) = OurLbCluster::start(&ctx.ours, test_id, &dir)?;
    let bring_up =
        wait_lb_lists_all(&c, 0, t0, Duration::from_secs(90)).with_context(|| c.logs_tail())?;
    let idle = idle.then(|| footprint(ctx, &c));
    c.start_variant(vec![(VARIANT_FLAGS.0.into(), VARIANT_FLAGS.1.into())])?;
    wait_lb_lists_all(&c, 1, std::time::Instant::now(), Duration::from_secs(30))?;
    let outcome = churn(
        &mut c,
        bring_up,
        idle,
        Duration::from_secs(30),
        ctx.plan.steady_after,
    )?;
    drop(c);
    ctx.discard(&dir);
    Ok(outcome)
}

fn run_serf(ctx: &Ctx, rep: usize, idle: bool) -> Result<Outcome> {
    let dir = ctx.scratch(&format!("churn-serf-{rep}"))?;
    let (mut c, t0) = SerfLbCluster::start(&ctx.serf, SERF_BLOCK, (rep % 250) as u8, &dir)?;
    let bring_up = wait_lb_lists_all(&c, 0, t0, Duration::from_secs(60))?;
    let idle = idle.then(|| footprint(ctx, &c));
    let outcome = churn(
        &mut c,
        bring_up,
        idle,
        Duration::from_secs(60),
        ctx.plan.steady_after,
    )?;
    drop(c);
    ctx.discard(&dir);
    Ok(outcome)
}

// Our agents gossip fast for 10 s after the last change, announce their slow pace for 2 s, then
// slow down: footprint and crash are measured `plan.steady_after` later, in that steady state
// (the crash is then noticed by the sidecar's health checks, not by gossip's fast detector).
/// Idle footprint of the hosts' agents and of the LB host's process, after a settling time.
fn footprint(ctx: &Ctx, c: &dyn LbCluster) -> (Idle, Idle) {
    nap(ctx.plan.steady_after);
    let mut pids = c.host_pids();
    let lb = c.lb_pid();
    pids.extend(lb);
    let mut all = measure_idle(&pids, ctx.plan.idle_window);
    let mut lb_idle = Idle::default();
    if lb.is_some() {
        lb_idle.rss_mib.extend(all.rss_mib.pop());
        lb_idle.cpu_pct.extend(all.cpu_pct.pop());
    }
    (all, lb_idle)
}

fn churn(
    c: &mut dyn LbCluster,
    bring_up: Duration,
    idle: Option<(Idle, Idle)>,
    timeout: Duration,
    settle: Duration,
) -> Result<Outcome> {
    nap(settle);
    let crash = time_removal(c, CRASHED, |c, i| c.crash(i), timeout).context("crash")?;
    nap(Duration::from_secs(1));
    let leave = time_removal(c, LEAVING, |c, i| c.leave(i), timeout).context("leave")?;
    Ok(Outcome {
        bring_up,
        idle,
        crash,
        leave,
    })
}

fn bring_up_row(report: &mut Report) -> &mut crate::bench::report::Row {
    report.row(
        "bring-up N=5",
        "start -> LB file lists the 3 servers",
        Unit::Ms,
        None,
        true,
    )
}

fn record(report: &mut Report, kind: Kind, o: &Outcome) {
    let ms_target = |max| Target::below(max);
    bring_up_row(report)
        .samples_mut(kind)
        .values
        .push(ms(o.bring_up));
    if let Some((hosts, lb)) = &o.idle {
        let footprint = [
            (
                "idle RSS per host agent",
                Unit::MiB,
                Target::below(8.0),
                &hosts.rss_mib,
            ),
            (
                "idle CPU per host agent",
                Unit::PctCore,
                Target::below(0.2),
                &hosts.cpu_pct,
            ),
            (
                "idle RSS of the LB host's process",
                Unit::MiB,
                None,
                &lb.rss_mib,
            ),
            (
                "idle CPU of the LB host's process",
                Unit::PctCore,
                None,
                &lb.cpu_pct,
            ),
        ];
        for (metric, unit, target, values) in footprint {
            report
                .row("footprint N=5", metric, unit, target, true)
                .samples_mut(kind)
                .values
                .extend_from_slice(values);
        }
    }
    let events = [
        (
            "crash",
            "kill -9 of a server -> LB file drops it",
            1500.0,
            &o.crash,
        ),
        (
            "graceful leave",
            "leave signal -> LB file drops it",
            300.0,
            &o.leave,
        ),
    ];
    for (scenario, metric, max, removals) in events {
        // The main LB host, then (ours only) the variant.
        for (i, removal) in removals.iter().enumerate() {
            let (scenario, compared) = match i {
                0 => (scenario.to_string(), true),
                _ => (format!("{scenario}, debounce quiet 0s"), false),
            };
            report
                .row(&scenario, metric, Unit::Ms, ms_target(max), compared)
                .samples_mut(kind)
                .values
                .push(ms(removal.to_file));
            report
                .row(
                    &scenario,
                    PIPELINE_METRIC,
                    Unit::Ms,
                    ms_target(100.0),
                    compared,
                )
                .samples_mut(kind)
                .values
                .push(ms(removal.pipeline()));
        }
    }
}

const PIPELINE_METRIC: &str = "LB host knows -> LB file rewritten";
