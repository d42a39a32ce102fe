//! The benchmark: our agents and LB sidecar against Serf agents with the classic event-handler
//! recipe, on loopback, same N, same machine, runs interleaved (ours, Serf, ours, Serf, ...).
//!
//! Modules, by concept:
//! - [`cli`]: flags and the plan they make.
//! - [`swarm`]: gossip-only clusters of N members (formation, bandwidth, the soak), as processes
//!   or, for ours, in this process.
//! - [`lbcluster`]: five hosts behind an LB host that keeps an upstream file (churn, footprint).
//! - [`formation`], [`fleet`], [`churn`], [`soak`], [`churn_soak`]: the scenarios, each adding rows to the
//!   [`report`].
//! - [`ours`], [`serf`]: how each side's processes are started and read.
//! - [`sniff`], [`footprint`], [`proc`]: what is measured from outside the processes.
//! - [`registry`]: every started process dies with the benchmark, even on Ctrl-C.

pub mod churn;
pub mod churn_soak;
pub mod cli;
pub mod fleet;
pub mod footprint;
pub mod formation;
pub mod lbcluster;
pub mod ours;
pub mod proc;
pub mod registry;
pub mod report;
pub mod serf;
pub mod sniff;
pub mod soak;
pub mod stats;
pub mod swarm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use cli::{Args, Plan};
use ours::OurBinaries;
use report::{Report, Target, Unit};

/// Formation sizes above this run after the churn scenario.
const LARGE_CLUSTER: usize = 100;

/// Which implementation a run is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Serf,
}

impl Kind {
    /// The interleaving order within one repetition.
    pub const BOTH: [Kind; 2] = [Kind::Ours, Kind::Serf];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Serf => "serf",
        }
    }
}

/// What every scenario needs.
pub struct Ctx {
    pub plan: Plan,
    pub ours: OurBinaries,
    pub serf: PathBuf,
    work: tempfile::TempDir,
}

impl Ctx {
    /// A fresh directory for one run.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Removes a run's directory (logs of failed runs are kept until the end, for a look).
    pub fn discard(&self, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Progress lines go to stderr, the table to stdout.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("bench: {}", format!($($arg)*)) };
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(inner) = &args.soak_inner {
        return soak::inner_main(&args, inner);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    registry::install_signal_cleanup()?;
    let started = Instant::now();
    let plan = args.plan()?;
    let ours = OurBinaries {
        agent: bin_path(&args, "rke2-bootstrap")?,
        sidecar: bin_path(&args, "rke2-lb-sidecar")?,
    };
    let serf = args
        .serf
        .clone()
        .or_else(|| find_in_path("serf"))
        .context("serf not found: install it (Debian package serf) or pass --serf")?;
    let work = tempfile::Builder::new().prefix("rke2-bench-").tempdir()?;
    registry::remove_on_interrupt((!args.keep).then(|| work.path()));
    let ctx = Ctx {
        plan,
        ours,
        serf,
        work,
    };
    let mut report = Report {
        machine: proc::Machine::read(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        repetitions: ctx.plan.reps,
        binaries: binaries_json(&ctx),
        rows: Vec::new(),
        elapsed_s: 0.0,
    };
    progress!(
        "{} x {} ({}), reps {}, scratch {}",
        report.machine.cpus,
        report.machine.cpu_model,
        report.machine.kernel,
        ctx.plan.reps,
        ctx.work.path().display()
    );
    sizes(&ctx, &mut report);
    // Large clusters last: the load they leave behind (hundreds of exiting processes) must not
    // reach the latency figures of the smaller scenarios.
    let (small, large): (Vec<usize>, Vec<usize>) = ctx
        .plan
        .formation_sizes
        .iter()
        .partition(|&&n| n <= LARGE_CLUSTER);
    for n in small {
        formation::run(&ctx, &mut report, n);
    }
    if ctx.plan.churn {
        churn::run(&ctx, &mut report);
    }
    for n in large {
        formation::run(&ctx, &mut report, n);
    }
    for (slot, &n) in ctx.plan.fleet_sizes.iter().enumerate() {
        fleet::run(&ctx, &mut report, slot, n);
    }
    if let Some(soak) = &ctx.plan.soak {
        soak::run(&ctx, &mut report, soak);
    }
    if let Some(plan) = &ctx.plan.churn_soak {
        churn_soak::run(&mut report, plan);
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    println!("{}", report.table());
    println!(
        "machine: {} CPUs, {}; binaries: {}; total {:.0} s",
        report.machine.cpus,
        report.machine.cpu_model,
        profile_of(&ctx.ours.agent),
        report.elapsed_s
    );
    if args.keep {
        let kept = ctx.work.keep();
        progress!("kept the scratch directory {}", kept.display());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        progress!("wrote {}", path.display());
    }
    Ok(())
}

/// Our binaries: from `--bin-dir`, or next to this one (a release `bench` measures release
/// binaries).
fn bin_path(args: &Args, name: &str) -> Result<PathBuf> {
    let dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("locating the benchmark binary")?
            .to_path_buf(),
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build the workspace's binaries first (cargo build --release --bins)",
        path.display()
    );
    Ok(path)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// `release` or `debug`, from the directory cargo built the binaries into; for a copy elsewhere
/// (a long run measures copies, so a rebuild cannot swap them mid-run), from the file: only our
/// release profile strips the symbol table.
fn profile_of(path: &Path) -> &'static str {
    match path.parent().and_then(Path::file_name) {
        Some(dir) if dir == "release" => "release",
        Some(dir) if dir == "debug" => "debug",
        _ => match footprint::has_symbols(path) {
            Some(false) => "release",
            Some(true) => "unstripped build",
            None => "unknown profile",
        },
    }
}

fn binaries_json(ctx: &Ctx) -> serde_json::Value {
    serde_json::json!({
        "agent": ctx.ours.agent,
        "sidecar": ctx.ours.sidecar,
        "serf": ctx.serf,
        "profile": profile_of(&ctx.ours.agent),
    })
}

/// Binary sizes: the stripped release binaries are what ships.
fn sizes(ctx: &Ctx, report: &mut Report) {
    let release = profile_of(&ctx.ours.agent) == "release";
    for (metric, ours, serf) in [
        ("agent binary size", &ctx.ours.agent, Some(&ctx.serf)),
        ("LB sidecar binary size", &ctx.ours.sidecar, None),
    ] {
        let row = report.row(
            "footprint",
            metric,
            Unit::MiB,
            if release { Target::below(8.0) } else { None },
            serf.is_some(),
        );
        if let Some(size) = footprint::size_mib(ours) {
            row.ours.values.push(size);
        }
        if let (Some(samples), Some(serf)) = (row.serf.as_mut(), serf) {
            if let Some(size) = footprint::size_mib(serf) {
                samples.values.push(size);
            }
        }
        if !release {
            row.notes
                .push("not a release build: the shipped size is the release one".into());
        }
        if footprint::has_symbols(ours) == Some(true) {
            row.notes.push("this binary is not stripped".into());
        }
    }
}

/// Sleeps, giving up early on interruption.
pub fn nap(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !registry::interrupted() {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}
