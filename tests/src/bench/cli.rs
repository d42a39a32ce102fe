//! Flags, and the plan they make.

use rke2_bootstrap_tests::blocks::BENCH_CHURN_SOAK as CHURN_SOAK;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;

/// Our agents and LB sidecar against Serf agents with an LB event handler, on loopback: same N,
/// same machine, runs interleaved. Prints a table (stdout); progress goes to stderr.
#[derive(Debug, Parser)]
#[command(name = "bench")]
pub struct Args {
    /// N=5 only, one repetition, short measurement windows (for CI: about a minute).
    #[arg(long)]
    pub quick: bool,
    /// Also write every sample as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Repetitions of every scenario and implementation (default 5; 1 with --quick).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Formation cluster sizes (default 5,50,200; 5 with --quick). At most 250.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Gossip-at-fleet-scale sizes: ours in this process, Serf side by side up to N=50 (default
    /// 5,50,1000; 5 with --quick). At most 2000.
    #[arg(long, value_delimiter = ',')]
    pub fleet_sizes: Option<Vec<usize>>,
    /// The gossip interval of the variant run above N=50 (its idle interval is ten times that):
    /// a pace matched to the CPU the in-process swarm gets (see docs/benchmarks.md).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub fleet_variant_interval: Duration,
    /// How long the shipped-defaults run above N=50 gets to converge (default 30 s + 120 ms per
    /// member: 150 s at N=1,000). Longer lets a swarm starved of CPU show whether it converges at
    /// all.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub fleet_timeout: Option<Duration>,
    /// Skip the variant run above N=50 (the shipped defaults only).
    #[arg(long)]
    pub no_fleet_variant: bool,
    /// Run only these scenarios: formation, fleet, churn, soak, churn-soak (default: formation,
    /// fleet and churn, plus soak with --soak and churn-soak with --churn-soak).
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    /// Opt in to the false-positive soak (minutes; runs in a network namespace it creates, needs
    /// root and nft).
    #[arg(long)]
    pub soak: bool,
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub soak_duration: Duration,
    #[arg(long, default_value_t = 20)]
    pub soak_nodes: usize,
    /// Percentage of gossip datagrams dropped during the soak.
    #[arg(long, default_value_t = 1.0)]
    pub soak_loss: f64,
    /// How many times the soak pauses one observing member (SIGSTOP) for 2 s.
    #[arg(long, default_value_t = 5)]
    pub soak_pauses: u32,
    /// Opt in to the churn soak: 20 hosts behind nginx and the sidecar while hosts go away and
    /// come back (30 minutes by default; uses the shared loopback, block 174).
    #[arg(long)]
    pub churn_soak: bool,
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub churn_soak_duration: Duration,
    /// How often (on average) a host goes away during the churn soak.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub churn_every: Duration,
    /// The agents' and the sidecar's `dead-member-grace-period` during the churn soak. Memory is
    /// judged after a warm-up of one grace period (every departure leaves its old generation
    /// behind until then), so the soak's default is 5m, not the daemons' 1h; pass 1h, and a
    /// duration of well over an hour, to soak the daemons' default.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub churn_soak_grace_period: Duration,
    /// The loopback block (127.N.0.x) of the churn soak. Another block (175 to 179: no test uses
    /// them) lets two soaks run side by side, e.g. to compare two builds over the same minutes.
    #[arg(long, default_value_t = CHURN_SOAK.first, value_parser = clap::value_parser!(u8).range(CHURN_SOAK.first as i64..=CHURN_SOAK.last() as i64))]
    pub churn_soak_block: u8,
    /// The serf binary (default: from PATH).
    #[arg(long)]
    pub serf: Option<PathBuf>,
    /// Where our binaries are (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the scratch directory (every process's log) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Internal: run the soak inside the network namespace, writing its result to this file.
    #[arg(long, hide = true, value_name = "FILE")]
    pub soak_inner: Option<PathBuf>,
}

/// The false-positive soak.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    pub duration: Duration,
    pub nodes: usize,
    pub loss_pct: f64,
    pub pauses: u32,
    pub pause_len: Duration,
}

/// The churn soak.
#[derive(Debug, Clone)]
pub struct ChurnSoakPlan {
    pub duration: Duration,
    /// Mean time between two hosts going away.
    pub every: Duration,
    /// `dead-member-grace-period` of every gossip member.
    pub grace_period: Duration,
    /// Loopback block of the hosts: 127.`block`.0.x.
    pub block: u8,
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub reps: usize,
    pub formation_sizes: Vec<usize>,
    /// Sizes of the fleet rows (ours in process).
    pub fleet_sizes: Vec<usize>,
    /// The variant's gossip interval above N=50, if the variant runs.
    pub fleet_variant_interval: Option<Duration>,
    /// The shipped run's convergence timeout above N=50, when not the default.
    pub fleet_timeout: Option<Duration>,
    /// Whether the fleet rows measure the steady state (a settled swarm takes 12 s to slow
    /// down: not in the quick run).
    pub fleet_steady: bool,
    /// The formation size whose first repetition also measures bandwidth.
    pub bandwidth_n: Option<usize>,
    pub bandwidth_window: Duration,
    /// How long after convergence or bring-up the steady state starts: our agents slow their
    /// gossip down 12 s after the last change. Short in the quick run (CI), which then measures
    /// the fast pace.
    pub steady_after: Duration,
    pub churn: bool,
    /// How long idle CPU is measured (in the first churn repetition).
    pub idle_window: Duration,
    pub soak: Option<SoakPlan>,
    pub churn_soak: Option<ChurnSoakPlan>,
}

/// Scenario names for `--only`.
const SCENARIOS: [&str; 5] = ["formation", "fleet", "churn", "soak", "churn-soak"];

/// The largest in-process fleet: eight address blocks of 250 per run.
pub const MAX_FLEET: usize = 2000;

/// The largest cluster: one address block per run, hosts .1 to .250.
pub const MAX_NODES: usize = 250;

impl Args {
    pub fn plan(&self) -> Result<Plan> {
        let reps = self.reps.unwrap_or(if self.quick { 1 } else { 5 });
        if reps == 0 {
            bail!("--reps must be at least 1");
        }
        let sizes = self.sizes.clone().unwrap_or_else(|| {
            if self.quick {
                vec![5]
            } else {
                vec![5, 50, 200]
            }
        });
        if let Some(n) = sizes.iter().find(|&&n| !(2..=MAX_NODES).contains(&n)) {
            bail!("cluster size {n} is out of range (2 to {MAX_NODES})");
        }
        let wants = |name: &str, default: bool| match &self.only {
            Some(only) => only.iter().any(|o| o == name),
            None => default,
        };
        let min_grace = rke2_bootstrap::config::MIN_DEAD_MEMBER_GRACE_PERIOD;
        if self.churn_soak_grace_period < min_grace {
            bail!(
                "--churn-soak-grace-period must be at least {} (the daemons refuse less)",
                humantime::format_duration(min_grace)
            );
        }
        if let Some(only) = &self.only {
            if let Some(bad) = only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
                bail!("unknown scenario {bad:?} ({})", SCENARIOS.join(", "));
            }
        }
        let fleet_sizes = self.fleet_sizes.clone().unwrap_or_else(|| {
            if self.quick {
                vec![5]
            } else {
                vec![5, 50, 1000]
            }
        });
        if let Some(n) = fleet_sizes.iter().find(|&&n| !(2..=MAX_FLEET).contains(&n)) {
            bail!("fleet size {n} is out of range (2 to {MAX_FLEET})");
        }
        if fleet_sizes.len() > 30 {
            bail!("at most 30 fleet sizes");
        }
        let fleet_sizes = if wants("fleet", true) {
            fleet_sizes
        } else {
            Vec::new()
        };
        let formation_sizes = if wants("formation", true) {
            sizes
        } else {
            Vec::new()
        };
        // Bandwidth at N=50 (the target's size) when it runs, else at the largest size run.
        let bandwidth_n = if formation_sizes.contains(&50) {
            Some(50)
        } else {
            formation_sizes.iter().copied().max()
        };
        let soak = wants("soak", self.soak).then(|| SoakPlan {
            duration: self.soak_duration,
            nodes: self.soak_nodes.clamp(3, MAX_NODES),
            loss_pct: self.soak_loss.clamp(0.0, 100.0),
            pauses: self.soak_pauses,
            pause_len: Duration::from_secs(2),
        });
        let churn_soak = wants("churn-soak", self.churn_soak).then(|| ChurnSoakPlan {
            duration: self.churn_soak_duration,
            every: self.churn_every.max(Duration::from_secs(1)),
            grace_period: self.churn_soak_grace_period,
            block: self.churn_soak_block,
        });
        Ok(Plan {
            reps,
            formation_sizes,
            fleet_sizes,
            fleet_variant_interval: (!self.no_fleet_variant)
                .then(|| self.fleet_variant_interval.max(Duration::from_millis(10))),
            fleet_timeout: self.fleet_timeout,
            fleet_steady: !self.quick,
            bandwidth_n,
            bandwidth_window: Duration::from_secs(if self.quick { 5 } else { 30 }),
            steady_after: Duration::from_secs(if self.quick { 2 } else { 15 }),
            churn: wants("churn", true),
            idle_window: Duration::from_secs(if self.quick { 5 } else { 20 }),
            soak,
            churn_soak,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("bench").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn default_quick_and_selected_plans() {
        let p = args(&[]).plan().unwrap();
        assert_eq!((p.reps, p.formation_sizes.clone()), (5, vec![5, 50, 200]));
        assert_eq!(p.bandwidth_n, Some(50));
        assert!(p.churn && p.soak.is_none());
        assert_eq!(p.fleet_sizes, vec![5, 50, 1000]);
        let q = args(&["--quick"]).plan().unwrap();
        assert_eq!((q.reps, q.formation_sizes.clone()), (1, vec![5]));
        assert_eq!(q.fleet_sizes, vec![5]);
        let f = args(&["--only", "fleet", "--fleet-sizes", "50,1000"])
            .plan()
            .unwrap();
        assert!(f.formation_sizes.is_empty() && !f.churn);
        assert_eq!(f.fleet_sizes, vec![50, 1000]);
        assert!(args(&["--fleet-sizes", "5000"]).plan().is_err());
        assert_eq!(q.bandwidth_n, Some(5));
        let s = args(&["--only", "soak", "--soak-duration", "30s"])
            .plan()
            .unwrap();
        assert!(s.formation_sizes.is_empty() && !s.churn);
        assert_eq!(s.soak.unwrap().duration, Duration::from_secs(30));
        assert!(args(&["--sizes", "1000"]).plan().is_err());
        assert!(args(&["--only", "nope"]).plan().is_err());
        let c = args(&[
            "--churn-soak",
            "--only",
            "churn-soak",
            "--churn-soak-duration",
            "5m",
        ])
        .plan()
        .unwrap();
        assert!(c.formation_sizes.is_empty() && c.soak.is_none());
        let c = c.churn_soak.unwrap();
        assert_eq!((c.duration, c.block), (Duration::from_secs(300), 174));
        let side_by_side = args(&["--churn-soak", "--churn-soak-block", "175"]).plan();
        assert_eq!(side_by_side.unwrap().churn_soak.unwrap().block, 175);
        for taken in ["10", "171", "180"] {
            let argv = ["bench", "--churn-soak-block", taken];
            assert!(
                Args::try_parse_from(argv).is_err(),
                "block {taken} accepted"
            );
        }
        assert!(args(&[]).plan().unwrap().churn_soak.is_none());
        assert!(args(&["--reps", "0"]).plan().is_err());
        // The soak collects dead generations after 5 minutes unless told otherwise; the daemons
        // refuse less, so the plan does too.
        let soak = args(&["--churn-soak"]).plan().unwrap().churn_soak.unwrap();
        assert_eq!(soak.grace_period, Duration::from_secs(300));
        assert!(args(&["--churn-soak", "--churn-soak-grace-period", "2m"])
            .plan()
            .is_err());
    }
}
