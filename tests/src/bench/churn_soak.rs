//! The churn soak (opt-in, `--churn-soak`): 20 hosts (5 servers, 15 workers) with the RKE2
//! stand-ins behind an LB host running real nginx and the real sidecar, for 30 minutes, while one
//! host after another shuts down gracefully or loses power and comes back.
//!
//! What a long run must show, and how it is judged:
//! - the LB follows the servers exactly: a server that went away is dropped from the upstream
//!   file (else a *missed* change) and put back once it is running again; nothing else is ever
//!   dropped or added (else a *spurious* change); the file is never empty and its 9345 and 6443
//!   upstreams always agree; the sidecar never fails a render, validation or reload;
//! - every host that comes back reaches `ready` again;
//! - resident memory and open descriptors of the sidecar, nginx's master and the agents that
//!   never churn stay flat: the median of the first window against the median of the last.
//!
//! Only our side runs: Serf has no whole system (election, RKE2, LB) to compare. The hosts use
//! loopback block 174 of the shared loopback (or `--churn-soak-block`), which no test or other
//! scenario uses (`blocks::BENCH_CHURN_SOAK`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rke2_bootstrap::gossip::schema::Phase;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};
use serde::Deserialize;

use crate::bench::cli::ChurnSoakPlan;
use crate::bench::proc::{fd_count, heap_rss_kib, rss_anon_kib, rss_kib};
use crate::bench::registry::{interrupted, GroupEntry, RootGuard};
use crate::bench::report::{Report, Target, Unit};
use crate::bench::stats::summarize;
use crate::progress;

const SERVERS: usize = 5;
const WORKERS: usize = 15;
/// The first servers and workers never churn: their agents are the ones "flat" is judged on
/// (a restarted process starts its memory over).
const STABLE_SERVERS: usize = 2;
const STABLE_WORKERS: usize = 7;

const FORMATION_TIMEOUT: Duration = Duration::from_secs(300);
/// A server still in the LB file this long after it went away is a missed change.
const REMOVE_DEADLINE: Duration = Duration::from_secs(20);
/// A restarted server not back in the LB file (or a host not `ready`) this long after its
/// restart is a missed change (a host that did not come back).
const BACK_DEADLINE: Duration = Duration::from_secs(120);
/// How long a churned host stays down.
const DOWN_FOR: (Duration, Duration) = (Duration::from_secs(20), Duration::from_secs(60));
/// At most this many hosts are away at once, and at most one server (the LB always keeps a
/// majority of etcd members to route to).
const MAX_AWAY: usize = 2;
/// How often the LB file is read. Well under the sidecar's debounce plus a reload, so two
/// changes the sidecar applies one after the other are seen as two.
const POLL: Duration = Duration::from_millis(20);
/// After the churn, no host goes away or comes back for this long while the LB file is still
/// read: a change in flight at the end (a power cut the detector has not yet noticed) is seen
/// before the sidecar's reloads are counted.
const SETTLE: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How a host goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// SIGTERM to the agent (it leaves gossip), then the host powers down (RKE2 stops).
    Shutdown,
    /// Everything on the host dies at once.
    PowerCut,
}

#[derive(Debug, Clone, Copy)]
enum HostState {
    Up,
    Away {
        back_at: Instant,
    },
    /// Restarted, not `ready` yet.
    Back {
        since: Instant,
        late: bool,
    },
}

/// What a server's LB entry is expected to do next.
#[derive(Debug, Clone, Copy, Default)]
struct LbExpectation {
    /// Went away at, by: the LB must drop it.
    removal: Option<(Instant, Departure)>,
    /// Restarted at: the LB must list it again once it is ready.
    addition: Option<Instant>,
}

#[derive(Debug, Default)]
struct Tally {
    departures: BTreeMap<&'static str, u64>,
    lb_changes: u64,
    /// nginx reloads the sidecar made during the soak.
    reloads: u64,
    missed: u64,
    spurious: u64,
    empty_or_inconsistent: u64,
    not_back: u64,
    drop_after_shutdown_ms: Vec<f64>,
    drop_after_power_cut_ms: Vec<f64>,
    back_in_lb_ms: Vec<f64>,
    host_back_ready_ms: Vec<f64>,
}

/// Memory and descriptors of one long-lived process over time.
#[derive(Debug)]
struct Track {
    class: &'static str,
    pid: u32,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the soak started.
    t: f64,
    rss_kib: u64,
    /// The anonymous part of `rss_kib` (heap, stacks, arenas), where a leak would show.
    anon_kib: u64,
    /// The part of `anon_kib` in the main heap: small allocations. The rest (stacks, large
    /// allocations with a mapping of their own, such as chitchat's table of collected
    /// generations) is sized when it is made, so growth there is pages of it being touched.
    heap_kib: u64,
    fds: u64,
}

/// Medians of one window of samples.
#[derive(Debug, Clone, Copy)]
struct WindowMedians {
    rss_kib: f64,
    anon_kib: f64,
    heap_kib: f64,
    fds: f64,
}

/// The part of the sidecar's status document this soak reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SidecarStatus {
    #[serde(default)]
    reload_count: u64,
    #[serde(default)]
    failure_count: u64,
    #[serde(default)]
    suppressed: Vec<serde_json::Value>,
}

pub fn run(report: &mut Report, plan: &ChurnSoakPlan) {
    let mut scenario = format!(
        "churn soak {} servers + {} workers, {}, a host every {}",
        SERVERS,
        WORKERS,
        humantime::format_duration(plan.duration),
        humantime::format_duration(plan.every)
    );
    scenario.push_str(&format!(
        ", dead members kept {}",
        humantime::format_duration(plan.grace_period)
    ));
    match soak(plan) {
        Ok((tally, tracks, sidecar_failures)) => {
            add_rows(report, &scenario, plan, &tally, &tracks, sidecar_failures)
        }
        Err(err) => {
            progress!("churn soak failed: {err:#}");
            report
                .row(
                    &scenario,
                    "missed LB changes",
                    Unit::Count,
                    Target::at_most(0.0),
                    false,
                )
                .ours
                .failures
                .push(format!("{err:#}"));
        }
    }
}

fn host_names() -> Vec<(String, &'static str)> {
    (1..=SERVERS)
        .map(|i| (format!("server-{i}"), "server"))
        .chain((1..=WORKERS).map(|i| (format!("worker-{i}"), "agent")))
        .collect()
}

fn soak(plan: &ChurnSoakPlan) -> Result<(Tally, Vec<Track>, u64)> {
    let names = host_names();
    let layout: Vec<(&str, &'static str)> = names.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    let mut spec = ClusterSpec::new(plan.block, &layout).with_lb();
    let grace = humantime::format_duration(plan.grace_period).to_string();
    spec = spec.with_gossip_setting("dead-member-grace-period", &grace);
    let mut cluster = TestCluster::new(spec)?;
    // An interruption kills whatever runs under a host root (agents and stand-ins) and the LB
    // host's processes; the normal path drops the cluster, which does the same.
    let _roots: Vec<RootGuard> = cluster
        .hosts
        .iter()
        .map(|h| RootGuard::new(h.root.path()))
        .collect();
    cluster.start_lb()?;
    let (sidecar_pid, nginx_pid) = cluster.lb().pids();
    let sidecar_pid = sidecar_pid.context("the sidecar did not start")?;
    let _lb_groups = [GroupEntry::new(sidecar_pid), GroupEntry::new(nginx_pid)];
    cluster.start_all()?;
    let t0 = Instant::now();
    let all: Vec<&str> = layout.iter().map(|(n, _)| *n).collect();
    let servers: Vec<&str> = all[..SERVERS].to_vec();
    cluster
        .wait_for_phase(&all, Phase::Ready, FORMATION_TIMEOUT)
        .context("forming the cluster")?;
    cluster.wait_for_lb_servers(&servers, Duration::from_secs(60))?;
    progress!(
        "churn soak: {} hosts ready, LB lists every server, {:.1} s after start",
        all.len(),
        t0.elapsed().as_secs_f64()
    );

    let seed = std::env::var("RKE2_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    progress!("churn soak: seed {seed} (replay with RKE2_BENCH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut tracks = vec![
        Track::new("sidecar", sidecar_pid),
        Track::new("nginx master", nginx_pid),
    ];
    let stable = all[..STABLE_SERVERS]
        .iter()
        .chain(&all[SERVERS..SERVERS + STABLE_WORKERS]);
    for name in stable {
        tracks.push(Track::new(
            "agent (never restarted)",
            cluster
                .agent_pid(name)
                .context("a stable agent is not running")?,
        ));
    }
    let churnable: Vec<usize> = (STABLE_SERVERS..SERVERS)
        .chain(SERVERS + STABLE_WORKERS..all.len())
        .collect();

    let reloads_before = sidecar_status(&cluster)?.reload_count;
    let mut state = vec![HostState::Up; all.len()];
    let mut expect = vec![LbExpectation::default(); SERVERS];
    let mut tally = Tally::default();
    let mut listed = lb_listed(&cluster, &mut tally);
    let start = Instant::now();
    let mut next_departure = start + jittered(&mut rng, plan.every);
    let mut next_sample = start;
    while start.elapsed() < plan.duration + SETTLE && !interrupted() {
        let now = Instant::now();
        let churning = start.elapsed() < plan.duration;
        if churning && now >= next_sample {
            let t = start.elapsed().as_secs_f64();
            for track in &mut tracks {
                track.sample(t);
            }
            next_sample += SAMPLE_EVERY;
        }
        if churning && now >= next_departure {
            next_departure = now + jittered(&mut rng, plan.every);
            if let Some(i) = pick_departure(&mut rng, &churnable, &state, &listed, &cluster) {
                let how = if rng.gen_bool(0.5) {
                    Departure::Shutdown
                } else {
                    Departure::PowerCut
                };
                let name = all[i];
                progress!(
                    "churn soak: {:.0} s: {name} goes away ({how:?})",
                    start.elapsed().as_secs_f64()
                );
                let since = Instant::now();
                match how {
                    Departure::Shutdown => {
                        cluster.stop(name)?;
                        cluster.host(name).root.kill_standins();
                    }
                    Departure::PowerCut => cluster.power_off(name)?,
                }
                *tally.departures.entry(departure_label(how)).or_default() += 1;
                if i < SERVERS {
                    expect[i].removal = Some((since, how));
                }
                let down_for = rng.gen_range(DOWN_FOR.0..=DOWN_FOR.1);
                state[i] = HostState::Away {
                    back_at: since + down_for,
                };
            }
        }
        for i in 0..all.len() {
            match state[i] {
                HostState::Away { back_at } if churning && now >= back_at => {
                    cluster.start(all[i])?;
                    if i < SERVERS {
                        if expect[i].removal.take().is_some() {
                            tally.missed += 1;
                            progress!(
                                "churn soak: missed: the LB still listed {} when it came back",
                                all[i]
                            );
                        }
                        expect[i].addition = Some(Instant::now());
                    }
                    state[i] = HostState::Back {
                        since: Instant::now(),
                        late: false,
                    };
                }
                HostState::Back { since, late } => {
                    let ready =
                        cluster.host(all[i]).status().map(|s| s.phase) == Some(Phase::Ready);
                    if ready {
                        tally.host_back_ready_ms.push(ms(since.elapsed()));
                        state[i] = HostState::Up;
                    } else if !late && since.elapsed() > BACK_DEADLINE {
                        tally.not_back += 1;
                        progress!(
                            "churn soak: {} is not ready {BACK_DEADLINE:?} after its restart",
                            all[i]
                        );
                        state[i] = HostState::Back { since, late: true };
                    }
                }
                _ => {}
            }
        }
        let now_listed = lb_listed(&cluster, &mut tally);
        if now_listed != listed {
            tally.lb_changes += 1;
            account_lb_change(
                &listed,
                &now_listed,
                &cluster,
                &all,
                &mut expect,
                &mut tally,
            );
            listed = now_listed;
        }
        for (i, e) in expect.iter_mut().enumerate() {
            if let Some((since, _)) = e.removal {
                if since.elapsed() > REMOVE_DEADLINE {
                    e.removal = None;
                    tally.missed += 1;
                    progress!("churn soak: missed: {} still listed {REMOVE_DEADLINE:?} after it went away", all[i]);
                }
            }
            if let Some(since) = e.addition {
                if since.elapsed() > BACK_DEADLINE {
                    e.addition = None;
                    tally.missed += 1;
                    progress!("churn soak: missed: {} not listed again {BACK_DEADLINE:?} after its restart", all[i]);
                }
            }
        }
        std::thread::sleep(POLL);
    }
    if interrupted() {
        bail!("interrupted");
    }
    // Before the hosts still away come back: the reloads of the soak itself.
    let status = sidecar_status(&cluster)?;
    tally.reloads = status.reload_count - reloads_before;

    // Bring every host back and let the LB settle before the last look.
    for (i, s) in state.iter().enumerate() {
        if matches!(s, HostState::Away { .. }) {
            cluster.start(all[i])?;
        }
    }
    cluster
        .wait_for_phase(&all, Phase::Ready, BACK_DEADLINE)
        .context("hosts ready again after the soak")?;
    cluster.wait_for_lb_servers(&servers, BACK_DEADLINE)?;
    let t = start.elapsed().as_secs_f64();
    for track in &mut tracks {
        track.sample(t);
    }
    progress!(
        "churn soak: done: {} LB changes seen, {} sidecar reloads, {} failures, {} suppressed",
        tally.lb_changes,
        tally.reloads,
        status.failure_count,
        status.suppressed.len()
    );
    if !status.suppressed.is_empty() {
        // A server held out for flapping while it was up is a change the LB did not make.
        tally.missed += status.suppressed.len() as u64;
    }
    Ok((tally, tracks, status.failure_count))
}

fn departure_label(how: Departure) -> &'static str {
    match how {
        Departure::Shutdown => "shutdown",
        Departure::PowerCut => "power cut",
    }
}

/// `every` ± 30 %.
fn jittered(rng: &mut StdRng, every: Duration) -> Duration {
    every.mul_f64(rng.gen_range(0.7..1.3))
}

/// A churnable host that is up; a server only when no other host is away and the LB lists every
/// server (never take a second etcd member away).
fn pick_departure(
    rng: &mut StdRng,
    churnable: &[usize],
    state: &[HostState],
    listed: &[IpAddr],
    cluster: &TestCluster,
) -> Option<usize> {
    let away = state.iter().filter(|s| !matches!(s, HostState::Up)).count();
    if away >= MAX_AWAY {
        return None;
    }
    let all_servers_listed = listed.len() == SERVERS;
    let server_away = state[..SERVERS].iter().any(|s| !matches!(s, HostState::Up));
    let (servers, workers): (Vec<usize>, Vec<usize>) = churnable
        .iter()
        .copied()
        .filter(|&i| matches!(state[i], HostState::Up))
        .filter(|&i| i >= SERVERS || (all_servers_listed && !server_away))
        .filter(|&i| cluster.hosts[i].is_running())
        .partition(|&i| i < SERVERS);
    // Servers are what the LB follows: half the departures are theirs whenever one may go.
    let pool = if !servers.is_empty() && (workers.is_empty() || rng.gen_bool(0.5)) {
        servers
    } else {
        workers
    };
    (!pool.is_empty()).then(|| pool[rng.gen_range(0..pool.len())])
}

/// The servers the LB routes to; an empty list or upstreams that disagree are counted.
fn lb_listed(cluster: &TestCluster, tally: &mut Tally) -> Vec<IpAddr> {
    let (supervisor, api) = cluster.lb().upstreams();
    if supervisor.is_empty() || supervisor != api {
        tally.empty_or_inconsistent += 1;
        progress!("churn soak: bad LB file: 9345 {supervisor:?}, 6443 {api:?}");
    }
    supervisor
}

/// Matches one change of the LB file against what was expected of each server.
fn account_lb_change(
    before: &[IpAddr],
    after: &[IpAddr],
    cluster: &TestCluster,
    all: &[&str],
    expect: &mut [LbExpectation],
    tally: &mut Tally,
) {
    let server_of = |ip: &IpAddr| (0..SERVERS).find(|&i| cluster.hosts[i].ip == *ip);
    for ip in before.iter().filter(|ip| !after.contains(ip)) {
        match server_of(ip).map(|i| (i, expect[i].removal.take())) {
            Some((_, Some((since, how)))) => {
                let took = ms(since.elapsed());
                match how {
                    Departure::Shutdown => tally.drop_after_shutdown_ms.push(took),
                    Departure::PowerCut => tally.drop_after_power_cut_ms.push(took),
                }
            }
            other => {
                tally.spurious += 1;
                let who = other.map_or("an unknown address", |(i, _)| all[i]);
                progress!("churn soak: spurious: the LB dropped {who} ({ip})");
            }
        }
    }
    for ip in after.iter().filter(|ip| !before.contains(ip)) {
        match server_of(ip).map(|i| (i, expect[i].addition.take())) {
            Some((_, Some(since))) => tally.back_in_lb_ms.push(ms(since.elapsed())),
            other => {
                tally.spurious += 1;
                let who = other.map_or("an unknown address", |(i, _)| all[i]);
                progress!("churn soak: spurious: the LB added {who} ({ip})");
            }
        }
    }
}

/// The sidecar's own status: the reason line of its status document (the agent's format).
fn sidecar_status(cluster: &TestCluster) -> Result<SidecarStatus> {
    let report = rke2_bootstrap::status_socket::fetch(&cluster.lb().status_socket())?;
    serde_json::from_str(&report.reason).context("decoding the sidecar's status line")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Track {
    fn new(class: &'static str, pid: u32) -> Track {
        Track {
            class,
            pid,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, t: f64) {
        let (Some(rss_kib), Some(anon_kib), Some(heap_kib), Some(fds)) = (
            rss_kib(self.pid),
            rss_anon_kib(self.pid),
            heap_rss_kib(self.pid),
            fd_count(self.pid),
        ) else {
            return;
        };
        self.samples.push(Sample {
            t,
            rss_kib,
            anon_kib,
            heap_kib,
            fds,
        });
    }

    /// Medians over `[from, to)` seconds.
    fn window(&self, from: f64, to: f64) -> Option<WindowMedians> {
        let inside: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.t >= from && s.t < to)
            .collect();
        let median = |f: fn(&Sample) -> u64| {
            let values: Vec<f64> = inside.iter().map(|s| f(s) as f64).collect();
            summarize(&values).map(|s| s.median)
        };
        Some(WindowMedians {
            rss_kib: median(|s| s.rss_kib)?,
            anon_kib: median(|s| s.anon_kib)?,
            heap_kib: median(|s| s.heap_kib)?,
            fds: median(|s| s.fds)?,
        })
    }
}

fn add_rows(
    report: &mut Report,
    scenario: &str,
    plan: &ChurnSoakPlan,
    tally: &Tally,
    tracks: &[Track],
    sidecar_failures: u64,
) {
    let departures: u64 = tally.departures.values().sum();
    let row = report.row(
        scenario,
        "hosts that went away and came back",
        Unit::Count,
        None,
        false,
    );
    row.ours.values.push(departures as f64);
    row.notes.push(
        tally
            .departures
            .iter()
            .map(|(how, n)| format!("{n} by {how}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row.notes.push(format!(
        "{} LB file changes seen, {} nginx reloads by the sidecar",
        tally.lb_changes, tally.reloads
    ));
    for (metric, value) in [
        ("missed LB changes", tally.missed),
        ("spurious LB changes", tally.spurious),
        (
            "empty or inconsistent LB files seen",
            tally.empty_or_inconsistent,
        ),
        (
            "sidecar failures (render, validation, reload)",
            sidecar_failures,
        ),
        ("hosts not ready again within 2 min", tally.not_back),
        (
            "sidecar reloads not matching a seen LB change",
            tally.reloads.abs_diff(tally.lb_changes),
        ),
    ] {
        report
            .row(scenario, metric, Unit::Count, Target::at_most(0.0), false)
            .ours
            .values
            .push(value as f64);
    }
    for (metric, values) in [
        ("LB drops a shut-down server", &tally.drop_after_shutdown_ms),
        (
            "LB drops a powered-off server",
            &tally.drop_after_power_cut_ms,
        ),
        ("LB lists a restarted server again", &tally.back_in_lb_ms),
        ("restarted host ready again", &tally.host_back_ready_ms),
    ] {
        report
            .row(scenario, metric, Unit::Ms, None, false)
            .ours
            .values
            .extend(values.iter().copied());
    }
    // Flatness in the steady state: memory fills by design for a while (the replay guard
    // remembers every datagram for the replay window; a restarted host's old generation stays, a
    // few KB, for the grace period), so the first window wholly after that warm-up is compared
    // with the last one. A warm-up as long as the run leaves nothing to compare: the rows then
    // show first to last, without a target.
    let total = plan.duration.as_secs_f64();
    let window = (total / 6.0).min(300.0).round();
    let span = humantime::format_duration(Duration::from_secs(window as u64));
    let warm_up = plan
        .grace_period
        .max(rke2_bootstrap::gossip::keyring::DEFAULT_REPLAY_WINDOW);
    let steps = (total / window).ceil() as usize;
    let baseline_window = (warm_up.as_secs_f64() / window).ceil() as usize;
    let (baseline_from, baseline_label, target) = if baseline_window + 1 < steps {
        let from = baseline_window as f64 * window;
        let label = format!(
            "{span} from minute {:.0} (after a {} warm-up) to the last {span}",
            from / 60.0,
            humantime::format_duration(warm_up)
        );
        (from, label, Target::at_most(10.0))
    } else {
        let label = format!(
            "first to last {span} (warm-up of {} not over: not judged)",
            humantime::format_duration(warm_up)
        );
        (0.0, label, None)
    };
    for track in tracks {
        // The trend, not just its ends: median RSS of each window in turn (a leak climbs steadily,
        // a cache that fills and stays bounded levels off).
        let windows: Vec<WindowMedians> = (0..steps)
            .filter_map(|k| {
                let from = k as f64 * window;
                track.window(from, from + window)
            })
            .collect();
        let trend = |f: fn(&WindowMedians) -> f64| {
            windows
                .iter()
                .map(|w| format!("{:.2}", f(w) / 1024.0))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let baseline = track.window(baseline_from, baseline_from + window);
        let last = track.window(total - window, f64::INFINITY);
        let Some((baseline, last)) = baseline.zip(last) else {
            continue;
        };
        let class = track.class;
        let growth = |a: f64, b: f64| (b - a) / a * 100.0;
        for (what, from, to) in [
            ("RSS", baseline.rss_kib, last.rss_kib),
            ("anonymous RSS", baseline.anon_kib, last.anon_kib),
        ] {
            report
                .row(
                    scenario,
                    &format!("{class} {what} growth, {baseline_label}"),
                    Unit::Pct,
                    target,
                    false,
                )
                .ours
                .values
                .push(growth(from, to));
        }
        let last_rss = report.row(
            scenario,
            &format!("{class} RSS, last {span}"),
            Unit::MiB,
            None,
            false,
        );
        last_rss.ours.values.push(last.rss_kib / 1024.0);
        last_rss.notes.push(format!(
            "{class} (pid {}), MiB per {span} window: RSS {}; anonymous {}, of which in [heap] {}",
            track.pid,
            trend(|w| w.rss_kib),
            trend(|w| w.anon_kib),
            trend(|w| w.heap_kib)
        ));
        // Descriptors have no warm-up: judged from the first window.
        let fds = format!("{class} open fds growth, first to last {span}");
        let fds_at_start = track.window(0.0, window).map_or(baseline.fds, |w| w.fds);
        report
            .row(scenario, &fds, Unit::Count, Target::at_most(0.0), false)
            .ours
            .values
            .push(last.fds - fds_at_start);
    }
}
