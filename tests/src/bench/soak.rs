//! The false-positive soak (opt-in): N gossip-only members for minutes with a share of UDP
//! datagrams dropped, and one observing member paused (SIGSTOP) for 2 s a few times. Every member's
//! view is polled; a live member that any view stops counting as up is a false removal.
//!
//! Loss cannot be injected per address on the shared loopback, so the soak runs in a child process
//! of the benchmark inside a network namespace of its own (its own loopback, where an nftables
//! rule drops a random share of UDP packets). The namespace, the rule and every process in it go
//! away when that child exits.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::cli::{Args, SoakPlan};
use crate::bench::ours::OurBinaries;
use crate::bench::registry::{self, interrupted, Tracked};
use crate::bench::report::{Report, Target, Unit};
use crate::bench::swarm::{wait_converged, OurSwarm, SerfSwarm, Swarm};
use crate::bench::{bin_path, nap, Ctx, Kind};
use crate::progress;
use rke2_bootstrap_tests::blocks;

/// How long starting the members may take.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How often every member's view is read.
const POLL: Duration = Duration::from_millis(100);

/// What one implementation's soak saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakResult {
    /// A member that was never stopped, seen not up by some member's view.
    pub false_removals: u64,
    /// The paused member, seen not up by its peers while it was stopped (or just after).
    pub paused_member_removals: u64,
    /// Handler notices of failed members (Serf only: every notice, however short).
    pub failed_events: Option<u64>,
    pub polls: u64,
    pub pauses: u32,
    pub seconds: f64,
    /// UDP packets the loss rule dropped.
    pub dropped_packets: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SoakOutput {
    ours: SoakResult,
    serf: SoakResult,
}

/// Runs the soak in a child process inside a fresh network namespace and adds its rows.
pub fn run(ctx: &Ctx, report: &mut Report, plan: &SoakPlan) {
    let scenario = format!(
        "soak N={} {}, {}% UDP loss, {} x {} s pause",
        plan.nodes,
        humantime::format_duration(plan.duration),
        plan.loss_pct,
        plan.pauses,
        plan.pause_len.as_secs()
    );
    let result = run_child(ctx, plan);
    let metric = "false removals (live members seen down)";
    match result {
        Ok(out) => {
            for (kind, r) in [(Kind::Ours, &out.ours), (Kind::Serf, &out.serf)] {
                let row = report.row(&scenario, metric, Unit::Count, Target::at_most(0.0), true);
                match &r.error {
                    Some(err) => row.samples_mut(kind).failures.push(err.clone()),
                    None => row.samples_mut(kind).values.push(r.false_removals as f64),
                }
                row.notes.push(format!(
                    "{}: {} polls over {:.0} s, {} pauses, {} loss-rule drops{}",
                    kind.name(),
                    r.polls,
                    r.seconds,
                    r.pauses,
                    r.dropped_packets
                        .map_or_else(|| "unknown".into(), |d| d.to_string()),
                    r.failed_events
                        .map(|e| format!(", {e} member-failed handler notices"))
                        .unwrap_or_default()
                ));
                report
                    .row(
                        &scenario,
                        "paused member seen down by peers",
                        Unit::Count,
                        None,
                        true,
                    )
                    .samples_mut(kind)
                    .values
                    .push(r.paused_member_removals as f64);
            }
        }
        Err(err) => {
            progress!("soak failed: {err:#}");
            let row = report.row(&scenario, metric, Unit::Count, Target::at_most(0.0), true);
            row.notes.push(format!("not run: {err:#}"));
        }
    }
}

fn run_child(ctx: &Ctx, plan: &SoakPlan) -> Result<SoakOutput> {
    let dir = ctx.scratch("soak")?;
    let out = dir.join("result.json");
    let bin_dir = ctx
        .ours
        .agent
        .parent()
        .context("locating our binaries")?
        .to_path_buf();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--soak-inner")
        .arg(&out)
        .arg("--soak-duration")
        .arg(humantime::format_duration(plan.duration).to_string())
        .args(["--soak-nodes", &plan.nodes.to_string()])
        .args(["--soak-loss", &plan.loss_pct.to_string()])
        .args(["--soak-pauses", &plan.pauses.to_string()])
        .arg("--serf")
        .arg(&ctx.serf)
        .arg("--bin-dir")
        .arg(bin_dir)
        .stdin(Stdio::null());
    let mut child = Tracked::spawn(&mut cmd)?;
    while !child.try_wait() {
        if interrupted() {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&out).context("the soak wrote no result")?;
    Ok(serde_json::from_str(&text)?)
}

/// The child's entry point: enter a new network namespace, add the loss rule, soak ours then
/// Serf's, write the result.
pub fn inner_main(args: &Args, out: &Path) -> ExitCode {
    match inner(args, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench soak: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn inner(args: &Args, out: &Path) -> Result<()> {
    registry::install_signal_cleanup()?;
    enter_private_network(args.soak_loss)?;
    let plan = SoakPlan {
        duration: args.soak_duration,
        nodes: args.soak_nodes,
        loss_pct: args.soak_loss,
        pauses: args.soak_pauses,
        pause_len: Duration::from_secs(2),
    };
    let bins = OurBinaries {
        agent: bin_path(args, "rke2-bootstrap")?,
        sidecar: bin_path(args, "rke2-lb-sidecar")?,
    };
    let serf = args.serf.clone().context("--serf is required")?;
    let work = tempfile::Builder::new().prefix("rke2-soak-").tempdir()?;
    registry::remove_on_interrupt(Some(work.path()));
    let mut output = SoakOutput::default();
    for kind in Kind::BOTH {
        let dir = work.path().join(kind.name());
        std::fs::create_dir_all(&dir)?;
        let block = match kind {
            Kind::Ours => blocks::BENCH_SOAK.id(0),
            Kind::Serf => blocks::BENCH_SOAK.id(1),
        };
        let ips: Vec<IpAddr> = (1..=plan.nodes)
            .map(|h| IpAddr::from([127, block, 0, h as u8]))
            .collect();
        let dropped_before = dropped_packets();
        let result = match kind {
            Kind::Ours => OurSwarm::start(&bins, &ips, &dir, &[], START_TIMEOUT)
                .and_then(|(mut s, t0)| soak(&mut s, t0, &plan, kind)),
            Kind::Serf => {
                SerfSwarm::start(&serf, &ips, &dir, START_TIMEOUT).and_then(|(mut s, t0)| {
                    let mut r = soak(&mut s, t0, &plan, kind)?;
                    r.failed_events = Some(s.failed_events() as u64);
                    Ok(r)
                })
            }
        };
        let mut result = result.unwrap_or_else(|err| SoakResult {
            error: Some(format!("{err:#}")),
            ..SoakResult::default()
        });
        result.dropped_packets = dropped_before
            .zip(dropped_packets())
            .map(|(b, a)| a.saturating_sub(b));
        progress!("soak {}: {result:?}", kind.name());
        match kind {
            Kind::Ours => output.ours = result,
            Kind::Serf => output.serf = result,
        }
    }
    std::fs::write(out, serde_json::to_vec_pretty(&output)?)?;
    Ok(())
}

const LOSS_TABLE: &str = "bench_loss";

/// A new network namespace for this process (and what it starts), its loopback up, and the loss
/// rule in it.
fn enter_private_network(loss_pct: f64) -> Result<()> {
    // SAFETY: unshare(2) with a flag; affects this (still single-threaded for networking) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("creating a network namespace (needs root)");
    }
    run_tool("ip", &["link", "set", "lo", "up"], None)?;
    let per_10k = (loss_pct * 100.0).round() as u32;
    let rules = format!(
        "table inet {LOSS_TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    meta l4proto udp numgen random mod 10000 < {per_10k} counter drop\n  }}\n}}\n"
    );
    run_tool("nft", &["-f", "-"], Some(&rules))?;
    Ok(())
}

fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Packets the loss rule dropped so far.
fn dropped_packets() -> Option<u64> {
    let listing = run_tool("nft", &["list", "table", "inet", LOSS_TABLE], None).ok()?;
    let words: Vec<&str> = listing.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "packets")
        .and_then(|w| w[1].parse().ok())
}

fn soak(swarm: &mut dyn Swarm, t0: Instant, plan: &SoakPlan, kind: Kind) -> Result<SoakResult> {
    let n = swarm.len();
    wait_converged(swarm, t0, Duration::from_secs(120))?;
    progress!(
        "soak {}: {n} members converged; soaking for {:?}",
        kind.name(),
        plan.duration
    );
    let names: Vec<String> = (0..n).map(|i| swarm.name(i)).collect();
    let observer = n - 1;
    let pause_every = plan.duration / (plan.pauses + 1);
    let mut next_pause = Instant::now() + pause_every;
    let mut paused_until: Option<Instant> = None;
    let mut pauses = 0;
    // (viewer, member) pairs currently seen down.
    let mut down: HashSet<(usize, usize)> = HashSet::new();
    let mut result = SoakResult::default();
    let start = Instant::now();
    while start.elapsed() < plan.duration && !interrupted() {
        let now = Instant::now();
        if let Some(until) = paused_until {
            if now >= until {
                swarm.pause(observer, false);
                paused_until = None;
            }
        } else if pauses < plan.pauses && now >= next_pause {
            swarm.pause(observer, true);
            paused_until = Some(now + plan.pause_len);
            pauses += 1;
            next_pause += pause_every;
        }
        for viewer in 0..n {
            if viewer == observer && paused_until.is_some() {
                continue;
            }
            let Some(up) = swarm.up_seen_by(viewer) else {
                continue;
            };
            result.polls += 1;
            for (member, name) in names.iter().enumerate() {
                let is_down = !up.contains(name);
                let newly = is_down && down.insert((viewer, member));
                if !is_down {
                    down.remove(&(viewer, member));
                }
                if newly {
                    if member == observer {
                        result.paused_member_removals += 1;
                    } else {
                        result.false_removals += 1;
                        progress!(
                            "soak {}: {} saw {} down at {:.1} s",
                            kind.name(),
                            names[viewer],
                            name,
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        }
        std::thread::sleep(POLL);
    }
    if paused_until.is_some() {
        swarm.pause(observer, false);
    }
    nap(Duration::from_millis(100));
    result.pauses = pauses;
    result.seconds = start.elapsed().as_secs_f64();
    Ok(result)
}
