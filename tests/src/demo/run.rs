//! The demo's course: start the hosts behind the LB host, watch the cluster form, stop one
//! server and watch the LB follow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rke2_bootstrap::config::AGENT_KEYS;
use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap::status_socket::StatusReport;

use super::lb::{self, LbState};
use super::summary::{self, DemoSummary, LbSummary, NodeSummary, Timings};
use super::{host_name, interrupted, roots, DemoArgs, Sweep};
use crate::cluster::{ClusterSpec, TestCluster, GOSSIP_PORT};
use crate::find_workspace_bin;

/// How many lines of a failed host's log the demo prints.
const LOG_TAIL_LINES: usize = 15;

/// The whole demo in `dir`. Every process it starts belongs to the cluster (and the sweep after
/// it), so an error, an interruption or the end of a demo without `--keep` stops them all.
pub(super) fn run_in(args: &DemoArgs, prefix: [u8; 3], dir: &Path) -> Result<()> {
    // Declared first, dropped last: after the cluster.
    let sweep = Sweep(roots(dir, args.nodes));
    let mut cluster = TestCluster::new(spec(args, prefix, dir))?;
    progress!("installer stand-in at {}", cluster.installer.url());
    // The production grace, not the harness's short one: a demo kept running behaves as a
    // real cluster would once a server is gone.
    let grace = AGENT_KEYS
        .iter()
        .find(|k| k.name == "departed-server-grace-period")
        .and_then(|k| k.default_text())
        .unwrap_or("15m")
        .to_string();
    let names: Vec<String> = (0..args.nodes).map(host_name).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster.set_on_hosts(&names, "departed-server-grace-period", &grace);

    let lb = lb::start(args, &mut cluster, dir)?;
    // Hosts register through the LB only when it serves: otherwise with the first server, as
    // they do without an LB.
    if lb.live() {
        cluster.spec.registration_address = Some(lb.ip);
    }
    interrupted()?;
    cluster.start_all()?;
    let [a, b, c] = prefix;
    progress!(
        "started {} hosts on {a}.{b}.{c}.11-{} and the LB host on {}",
        args.nodes,
        10 + args.nodes,
        lb.ip
    );

    let formed = watch_formation(args, &mut cluster, &lb)?;
    progress!(
        "all {} hosts ready in {} ms",
        cluster.hosts.len(),
        formed.all_ready.as_millis()
    );
    let lb_before = lb.servers();
    if let Some(path) = &lb.config_path {
        progress!("lb config {} lists {:?}", path.display(), lb_before);
    }
    let nodes = summary::nodes(&cluster, &formed.reports);
    if !args.json {
        summary::print_configs(&nodes, &lb);
    }
    let stop = stop_one_server(&mut cluster, &nodes, &formed.initializer, &lb)?;
    let summary = DemoSummary {
        initializer: formed.initializer,
        nodes,
        lb: LbSummary::new(args.lb, &lb, lb_before),
        lb_servers_after_kill: stop.lb_after,
        stopped_server: stop.victim.unwrap_or_default(),
        timings_ms: Timings {
            formed: formed.formed.as_millis() as u64,
            all_ready: formed.all_ready.as_millis() as u64,
            lb_updated_after_kill: stop.lb_updated,
        },
        dir: dir.to_path_buf(),
    };
    summary::print(&summary, args.json)?;
    if args.keep {
        progress!(
            "left running under {}; try: {} members --status-socket {}",
            dir.display(),
            find_workspace_bin("rke2-bootstrap")?.display(),
            cluster.hosts[0].status_socket().display()
        );
        // Nothing stops what runs: the processes live in their own process groups.
        std::mem::forget(cluster);
        std::mem::forget(sweep);
    }
    Ok(())
}

/// `--nodes` hosts of role `auto` in `dir`, the first `--servers` of them the electorate and the
/// gossip seeds: never the LB host alone, since gossip must not depend on it, as it must not in
/// production.
fn spec(args: &DemoArgs, prefix: [u8; 3], dir: &Path) -> ClusterSpec {
    let names: Vec<String> = (0..args.nodes).map(host_name).collect();
    let hosts: Vec<(&str, &'static str)> = names.iter().map(|n| (n.as_str(), "auto")).collect();
    let mut spec = ClusterSpec::new(0, &hosts);
    spec.cluster_name = Some("demo".into());
    spec.ip_prefix = Some(prefix);
    spec.dir = Some(dir.to_path_buf());
    spec.servers = args.servers;
    let seats: Vec<String> = (0..args.servers)
        .map(|i| spec.address(11 + i as u8).to_string())
        .collect();
    spec.seeds = Some(
        seats
            .iter()
            .map(|ip| format!("{ip}:{GOSSIP_PORT}"))
            .collect(),
    );
    spec.initial_servers = Some(seats);
    spec.lb = args.lb.kind().is_some();
    spec
}

/// How the cluster formed.
struct Formed {
    initializer: String,
    /// Since the hosts started: the first server ready, then every host ready and the LB's
    /// config listing exactly the ready servers.
    formed: Duration,
    all_ready: Duration,
    reports: BTreeMap<String, StatusReport>,
}

/// Polls every host's status until all are ready (and the LB lists the ready servers), saying
/// each host's phase changes as they happen. Fails on a second first server, on a process that
/// exits, and at `--timeout`, with the failed hosts' log tails.
fn watch_formation(args: &DemoArgs, cluster: &mut TestCluster, lb: &LbState) -> Result<Formed> {
    let started = Instant::now();
    let mut phases: BTreeMap<String, Phase> = BTreeMap::new();
    let mut formed = None;
    loop {
        interrupted()?;
        if let Some((name, log)) = exited(cluster) {
            let what = format!("{name} exited before the cluster formed");
            return Err(failed(&[(name, log)], what));
        }
        let reports: BTreeMap<String, StatusReport> = cluster.statuses().into_iter().collect();
        for (name, report) in &reports {
            if phases.insert(name.clone(), report.phase) != Some(report.phase) {
                progress!(
                    "{name:<8} {:<16} {}",
                    report.phase.to_string(),
                    report.reason
                );
            }
        }
        let members: Vec<_> = reports.values().flat_map(|r| r.members.iter()).collect();
        let initializers: BTreeSet<&str> = members
            .iter()
            .filter(|m| m.initializer)
            .map(|m| m.name.as_str())
            .collect();
        if initializers.len() > 1 {
            bail!("more than one first server: {initializers:?}");
        }
        let first = initializers.iter().next().map(|s| s.to_string());
        if formed.is_none() && members.iter().any(|m| m.initializer && m.ready) {
            formed = Some(started.elapsed());
            progress!(
                "cluster formed: {} is the first server",
                first.as_deref().unwrap_or("?")
            );
        }
        let all_ready = reports.len() == cluster.hosts.len()
            && reports.values().all(|r| r.phase == Phase::Ready);
        if all_ready && (lb.config_path.is_none() || lb.servers() == server_ips(cluster, &reports))
        {
            let all_ready = started.elapsed();
            return Ok(Formed {
                initializer: first.unwrap_or_default(),
                formed: formed.unwrap_or(all_ready),
                all_ready,
                reports,
            });
        }
        if started.elapsed() > args.timeout {
            return Err(not_formed(args, cluster, &reports));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first demo process that exited on its own (a host's agent or the LB host's sidecar),
/// with its log.
fn exited(cluster: &mut TestCluster) -> Option<(String, PathBuf)> {
    if let Some(host) = cluster.hosts.iter().find(|h| h.agent_exited()) {
        return Some((host.name.clone(), host.log_path()));
    }
    let lb = cluster.lb.as_mut()?;
    lb.sidecar_exited()
        .then(|| ("the LB host's sidecar".into(), lb.sidecar_log()))
}

/// The timeout's error: the hosts that are not ready failed; when they all are, the LB host did.
fn not_formed(
    args: &DemoArgs,
    cluster: &TestCluster,
    reports: &BTreeMap<String, StatusReport>,
) -> anyhow::Error {
    let mut culprits: Vec<(String, PathBuf)> = cluster
        .hosts
        .iter()
        .filter(|h| reports.get(&h.name).map(|r| r.phase) != Some(Phase::Ready))
        .map(|h| (h.name.clone(), h.log_path()))
        .collect();
    if culprits.is_empty() {
        if let Some(lb) = &cluster.lb {
            culprits.push(("the LB host".into(), lb.sidecar_log()));
        }
    }
    failed(
        &culprits,
        format!("the cluster did not form within {:?}", args.timeout),
    )
}

/// Prints the last lines of each failed host's log and returns the error to report.
fn failed(culprits: &[(String, PathBuf)], what: String) -> anyhow::Error {
    for (name, log) in culprits {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        say!("demo: last lines of {name} ({}):", log.display());
        for line in tail {
            say!("    {line}");
        }
    }
    anyhow!(what)
}

/// The addresses of the hosts whose own status says they are servers: once every host is ready,
/// what the LB must list. (Another host's gossip view can lag behind a server that just became
/// ready, and would let an LB config that lacks it pass.)
fn server_ips(cluster: &TestCluster, reports: &BTreeMap<String, StatusReport>) -> Vec<String> {
    let mut ips: Vec<String> = cluster
        .hosts
        .iter()
        .filter(|h| reports.get(&h.name).is_some_and(|r| r.role == Role::Server))
        .map(|h| h.ip.to_string())
        .collect();
    ips.sort();
    ips
}

/// What stopping one server showed.
struct Stopped {
    victim: Option<String>,
    lb_after: Vec<String>,
    /// Milliseconds from the stop until the LB's config no longer listed the server.
    lb_updated: Option<u64>,
}

/// Stops one server that is not the first one, as a host going away would (its agent leaves
/// gossip, its RKE2 stops), and waits up to 30 s for the LB's config to drop it.
fn stop_one_server(
    cluster: &mut TestCluster,
    nodes: &[NodeSummary],
    initializer: &str,
    lb: &LbState,
) -> Result<Stopped> {
    let victim = nodes
        .iter()
        .rfind(|n| n.role == Role::Server && n.name != initializer);
    let mut stopped = Stopped {
        victim: victim.map(|n| n.name.clone()),
        lb_after: lb.servers(),
        lb_updated: None,
    };
    let Some(victim) = victim else {
        return Ok(stopped);
    };
    progress!("stopping {} ({})", victim.name, victim.address);
    let stop_started = Instant::now();
    cluster.stop(&victim.name)?;
    if lb.config_path.is_some() {
        let victim_ip = victim.address.to_string();
        while stop_started.elapsed() < Duration::from_secs(30) {
            interrupted()?;
            stopped.lb_after = lb.servers();
            if !stopped.lb_after.contains(&victim_ip) {
                stopped.lb_updated = Some(stop_started.elapsed().as_millis() as u64);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        progress!(
            "lb config now lists {:?} ({} ms after the stop)",
            stopped.lb_after,
            stopped.lb_updated.unwrap_or(0)
        );
    }
    Ok(stopped)
}
