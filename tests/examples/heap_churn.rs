//! Fast-churn heap probe: how an observer's glibc heap evolves when members keep leaving and
//! coming back, in minutes instead of the churn soak's hours.
//!
//! One observer (a child process running only the gossip layer, one thread, as the sidecar
//! does) and, in this process, `--stable` members that stay and `--churners` that each live 3 to
//! 6 s, go away (half by a graceful leave, half by vanishing) and come back 1 to 3 s later as a
//! new generation: about one departure a second, some 30 times the soak's rate. Every
//! `--sample` the observer reports glibc's bytes in use and bytes held by its heap
//! (`mallinfo2`), the resident `[heap]` mapping and its anonymous RSS; the probe prints them with
//! the departures so far, and at the end the growth per departure after the warm-up (one grace
//! period plus the 120 s replay window, when the dead generations and the replay guard are at
//! their steady size).
//!
//! ```text
//! cargo run --release -p rke2-bootstrap-tests --example heap_churn -- --grace 120 --minutes 10
//! ```
//!
//! Traffic stays on `127.0.<block>.0/24` (`--block`, 60..=99 so as not to meet the tests' or the
//! soak's addresses), UDP port 7946.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rke2_bootstrap::gossip::{Announcement, Cluster, GossipConfig, Keyring, Role};
use tokio::io::{AsyncBufReadExt, BufReader};

// The benchmark's readers of /proc; the rest of that module is not used here.
#[allow(dead_code)]
#[path = "../src/bench/proc.rs"]
mod proc;

const GOSSIP_PORT: u16 = 7946;
const REPLAY_WINDOW: Duration = Duration::from_secs(120);

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Run as the observer (started by the probe itself).
    #[arg(long, hide = true)]
    observer: bool,
    /// Dead-member grace period of every member, in seconds.
    #[arg(long, default_value_t = 120)]
    grace: u64,
    /// Members that never leave.
    #[arg(long, default_value_t = 8)]
    stable: u8,
    /// Members that keep leaving and coming back.
    #[arg(long, default_value_t = 8)]
    churners: u8,
    /// How long to churn, in minutes.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Seconds between two samples of the observer.
    #[arg(long, default_value_t = 30)]
    sample: u64,
    /// Third octet of the loopback block.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(60..=99))]
    block: u8,
    /// The seed of the churn's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sampling window of the failure detector (the agents' default when not given).
    #[arg(long)]
    sampling_window: Option<usize>,
}

fn addr(block: u8, host: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, block, host)), GOSSIP_PORT)
}

fn config(args: &Args, name: &str, host: u8) -> GossipConfig {
    // The generation is the join's unix time in milliseconds: a churner comes back a second or
    // more after it left, so each comeback is a newer generation.
    let mut config = GossipConfig::new(
        "heap-churn",
        name,
        addr(args.block, host),
        Keyring::new([7; 32]),
    );
    config.seeds = vec![
        addr(args.block, 1).to_string(),
        addr(args.block, 2).to_string(),
    ];
    config.replay_window = REPLAY_WINDOW;
    config.failure_detector.dead_node_grace_period = Duration::from_secs(args.grace);
    if let Some(window) = args.sampling_window {
        config.failure_detector.sampling_window_size = window;
    }
    config
}

/// One reading of the observer's memory, in bytes (glibc) and KiB (kernel).
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_secs: u64,
    members: usize,
    in_use: u64,
    held: u64,
    heap_kib: u64,
    anon_kib: u64,
}

impl Sample {
    fn to_line(self) -> String {
        format!(
            "sample {} {} {} {} {} {}",
            self.at_secs, self.members, self.in_use, self.held, self.heap_kib, self.anon_kib
        )
    }

    fn parse(line: &str) -> Option<Sample> {
        let mut fields = line.strip_prefix("sample ")?.split(' ');
        let mut next = || fields.next()?.parse::<u64>().ok();
        Some(Sample {
            at_secs: next()?,
            members: usize::try_from(next()?).ok()?,
            in_use: next()?,
            held: next()?,
            heap_kib: next()?,
            anon_kib: next()?,
        })
    }
}

fn read_self_memory() -> (u64, u64) {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks as u64, info.arena as u64)
}

/// The resident `[heap]` mapping and the anonymous RSS of this process, in KiB.
fn kernel_kib() -> (u64, u64) {
    let pid = std::process::id();
    (
        proc::heap_rss_kib(pid).unwrap_or(0),
        proc::rss_anon_kib(pid).unwrap_or(0),
    )
}

/// The observer: joins, reads the whole member list on every view change, and reports its memory
/// on stdout.
fn observer(args: &Args) -> Result<()> {
    let runtime = rke2_bootstrap::process::daemon_runtime()?;
    runtime.block_on(async {
        let announcement = Announcement::new(Role::Observer, addr(args.block, 1).ip());
        let cluster = Cluster::join(config(args, "observer", 1), &announcement).await?;
        let mut view = cluster.watch();
        let start = Instant::now();
        let period = Duration::from_secs(args.sample);
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                changed = view.changed() => {
                    changed.context("the view task stopped")?;
                    let _ = cluster.members().await;
                }
                _ = tokio::time::sleep_until(next) => {
                    next += period;
                    let members = cluster.members().await.len();
                    let (in_use, held) = read_self_memory();
                    let (heap_kib, anon_kib) = kernel_kib();
                    let sample = Sample {
                        at_secs: start.elapsed().as_secs(),
                        members,
                        in_use,
                        held,
                        heap_kib,
                        anon_kib,
                    };
                    println!("{}", sample.to_line());
                }
            }
        }
    })
}

async fn churn_slot(args: Arc<Args>, slot: u8, departures: Arc<AtomicU64>) -> Result<()> {
    let host = 2 + args.stable + slot;
    let name = format!("churner-{slot}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ u64::from(slot) << 32);
    loop {
        let announcement = Announcement::new(Role::Agent, addr(args.block, host).ip());
        let member = Cluster::join(config(&args, &name, host), &announcement).await?;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(3_000..6_000))).await;
        if rng.gen_bool(0.5) {
            member.leave().await?;
        } else {
            drop(member);
        }
        departures.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..3_000))).await;
    }
}

fn per_departure(from: &Sample, to: &Sample, departed: u64, field: fn(&Sample) -> u64) -> String {
    if departed == 0 {
        return "-".into();
    }
    let delta = field(to) as f64 - field(from) as f64;
    format!("{:+.0} B", delta / departed as f64)
}

async fn probe(args: Args) -> Result<()> {
    if args.stable == 0 || args.churners == 0 {
        bail!("--stable (the second seed) and --churners must each be at least 1");
    }
    if u16::from(args.stable) + u16::from(args.churners) > 250 {
        bail!("--stable plus --churners must fit in one /24");
    }
    let args = Arc::new(args);
    let mut observer = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--observer")
        .args(["--grace", &args.grace.to_string()])
        .args(["--sample", &args.sample.to_string()])
        .args(["--block", &args.block.to_string()])
        .args(
            args.sampling_window
                .map(|w| vec!["--sampling-window".to_string(), w.to_string()])
                .unwrap_or_default(),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the observer")?;
    let mut lines = BufReader::new(observer.stdout.take().context("observer stdout")?).lines();

    let mut stable = Vec::new();
    for i in 0..args.stable {
        let host = 2 + i;
        let announcement = Announcement::new(Role::Agent, addr(args.block, host).ip());
        stable
            .push(Cluster::join(config(&args, &format!("stable-{i}"), host), &announcement).await?);
    }
    let departures = Arc::new(AtomicU64::new(0));
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..args.churners {
        slots.spawn(churn_slot(args.clone(), slot, departures.clone()));
    }

    let warm_up = Duration::from_secs(args.grace) + REPLAY_WINDOW;
    println!(
        "{:>6} {:>10} {:>7} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "secs", "departures", "members", "in use", "held", "free", "heap KiB", "anon KiB"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.minutes * 60);
    let mut baseline: Option<(Sample, u64)> = None;
    let mut last: Option<(Sample, u64)> = None;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = line?.context("the observer exited")?;
                let Some(sample) = Sample::parse(&line) else { continue };
                let departed = departures.load(Ordering::Relaxed);
                println!(
                    "{:>6} {:>10} {:>7} {:>10} {:>10} {:>10} {:>9} {:>9}",
                    sample.at_secs, departed, sample.members, sample.in_use, sample.held,
                    sample.held.saturating_sub(sample.in_use), sample.heap_kib, sample.anon_kib
                );
                if baseline.is_none() && Duration::from_secs(sample.at_secs) >= warm_up {
                    baseline = Some((sample, departed));
                }
                last = Some((sample, departed));
            }
            joined = slots.join_next() => {
                if let Some(result) = joined {
                    result.context("a churn slot panicked")??;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = observer.kill().await;
    match (baseline, last) {
        (Some((from, d0)), Some((to, d1))) if d1 > d0 => {
            let departed = d1 - d0;
            println!(
                "after the warm-up ({} s): {departed} departures from {} s to {} s; per departure: \
                 in use {}, held {}, [heap] {}, anonymous {}",
                warm_up.as_secs(),
                from.at_secs,
                to.at_secs,
                per_departure(&from, &to, departed, |s| s.in_use),
                per_departure(&from, &to, departed, |s| s.held),
                per_departure(&from, &to, departed, |s| s.heap_kib * 1024),
                per_departure(&from, &to, departed, |s| s.anon_kib * 1024),
            );
        }
        _ => println!(
            "the run ended before the warm-up ({} s) did: no growth to report",
            warm_up.as_secs()
        ),
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.observer {
        return observer(&args);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(probe(args))
}
