//! `rke2-bootstrap demo`: a whole zero-touch cluster on one machine, with no root-only paths.
//!
//! Every "host" is a real agent process on its own loopback address (127.x.y.z) with its own
//! `root` under a temp dir and sealed gossip; the LB host runs the real sidecar (and real nginx or
//! HAProxy when installed); a local HTTP server stands in for get.rke2.io and its installer
//! installs a stand-in RKE2 whose "service" (started through the configurable service-manager
//! command) answers the supervisor and API probes on the host's address. Only the RKE2 binaries
//! are stand-ins: election, config, installer download and run, service start, readiness, LB
//! rendering and reloads are the production code paths.
//!
//! The demo must work on a bare machine, so nothing depends on the LB host running its LB: the
//! hosts' gossip seeds are the server hosts, and when nginx (or HAProxy) is missing or cannot
//! start, the sidecar still renders the config it would serve, without validating or serving it.
//! A failed demo keeps its directory and prints the last lines of the host that failed; Ctrl-C or
//! SIGTERM stops every process it started.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fsutil::{self, SECRET_FILE_MODE};
use crate::gossip::schema::{Phase, Role};
use crate::status;

/// The installer and service-manager stand-ins, shipped inside the binary so that the demo needs
/// nothing but the workspace's own binaries.
const INSTALL_SCRIPT: &str = include_str!("../../tests/fixtures/install.sh");
const FAKE_SYSTEMCTL: &str = include_str!("../../tests/fixtures/fake-systemctl");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbKind {
    Nginx,
    Haproxy,
    None,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of hosts (all with role `auto`).
    #[arg(long, default_value_t = 5)]
    pub nodes: u32,
    /// How many of them become servers (odd).
    #[arg(long, default_value_t = 3)]
    pub servers: u32,
    /// The load balancer in front of the servers.
    #[arg(long, value_enum, default_value = "nginx")]
    pub lb: LbKind,
    /// Leave the cluster running once it formed (explore with `rke2-bootstrap members
    /// --status-socket ...`).
    #[arg(long)]
    pub keep: bool,
    /// Print the summary as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// First three octets of the loopback addresses: the LB is .10, hosts are .11 and up.
    #[arg(long, default_value = "127.77.0")]
    pub ip_prefix: String,
    /// Working directory (default: a fresh temp dir, removed at the end unless --keep or the demo
    /// failed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Give up when the cluster has not formed within this time.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct DemoSummary {
    pub initializer: String,
    pub nodes: Vec<NodeSummary>,
    pub lb: LbSummary,
    pub lb_servers_after_kill: Vec<String>,
    pub stopped_server: String,
    pub timings_ms: Timings,
    pub dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub address: IpAddr,
    pub role: Role,
    pub phase: Phase,
    pub config_path: PathBuf,
    /// Servers: the etcd cluster their member belongs to, as their etcd reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSummary>,
}

/// What a server's etcd says about its cluster, so "one cluster" is something to read.
#[derive(Debug, Serialize)]
pub struct EtcdSummary {
    pub cluster_id: String,
    pub members: usize,
}

#[derive(Debug, Serialize)]
pub struct LbSummary {
    pub kind: LbKind,
    /// False when the LB program is missing or cannot run here: the config is rendered but
    /// nothing checks or serves it.
    pub live: bool,
    /// Why the LB is not live, when it is not.
    pub not_live_reason: Option<String>,
    pub config_path: Option<PathBuf>,
    pub servers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub formed: u64,
    pub all_ready: u64,
    pub lb_updated_after_kill: Option<u64>,
}

/// Where Debian's `libnginx-mod-stream` puts the module: named in the config the sidecar renders
/// when nginx is not there to be asked.
const DEBIAN_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// How many lines of a failed host's log the demo prints.
const LOG_TAIL_LINES: usize = 15;

struct Host {
    name: String,
    ip: IpAddr,
    root: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Every process the demo started, stopped on drop unless `keep` (set only once the demo
/// succeeded with `--keep`): a failure, an early return and an interrupted demo all stop them.
struct Processes {
    hosts: Vec<Host>,
    sidecar: Option<Child>,
    lb_log: Option<PathBuf>,
    lb_pid_file: Option<PathBuf>,
    keep: bool,
}

impl Processes {
    /// Stops the LB program the demo started (nginx and HAProxy run as daemons, outside our
    /// process tree).
    fn stop_lb_program(&mut self) {
        if let Some(pid) = self
            .lb_pid_file
            .take()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // The agents first, all at once, so that none starts anything new.
        let agents: Vec<Child> = self
            .hosts
            .iter_mut()
            .filter_map(|h| h.child.take())
            .collect();
        stop_children(agents);
        // Then whatever still runs under each host's root: the stand-ins (in their own sessions)
        // and service-manager calls the agents had in flight. Those hold the unit's lock while
        // they wait for a start, so a `stop` through the service manager could wait minutes
        // for them; the stand-ins keep nothing worth a graceful stop.
        for host in &self.hosts {
            let deadline = Instant::now() + Duration::from_secs(2);
            // A call killed between fork and exec can still start one: sweep until none is left.
            while kill_processes_with_root(&host.root) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        stop_children(self.sidecar.take().into_iter().collect());
        self.stop_lb_program();
    }
}

fn stop_child(child: Option<Child>) {
    stop_children(child.into_iter().collect());
}

/// SIGTERM to every child, then up to 5 s for them to exit before SIGKILL.
fn stop_children(mut children: Vec<Child>) {
    for child in &children {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        children.retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
        if children.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGKILLs every process started with `--root <root>` (a demo host's stand-ins and service
/// manager calls), with its process group when it leads one. Returns how many it found.
fn kill_processes_with_root(root: &Path) -> usize {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::{getpgid, Pid};
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let root = root.as_os_str().as_encoded_bytes();
    let mut found = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !args.windows(2).any(|w| w[0] == b"--root" && w[1] == root) {
            continue;
        }
        // A zombie (killed, not yet reaped) still shows its command line, but has no state
        // left to kill; its stat says Z.
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(") ")?;
                rest.chars().next()
            })
            .is_none_or(|state| matches!(state, 'Z' | 'X'));
        if zombie {
            continue;
        }
        found += 1;
        let pid = Pid::from_raw(pid);
        if getpgid(Some(pid)) == Ok(pid) {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
    found
}

/// A line on stderr. Unlike `eprintln!` it does not panic when stderr is a closed pipe
/// (`demo 2>&1 | head`): the demo goes on, and stops what it started, either way.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Progress lines go to stderr so that `--json` keeps stdout machine-readable.
macro_rules! progress {
    ($($arg:tt)*) => { say!("demo: {}", format!($($arg)*)) };
}

/// Runs the demo. Ctrl-C and SIGTERM are taken over before anything starts, so that an
/// interrupted demo stops what it started instead of leaving stand-ins behind; a failed demo
/// keeps its directory for the logs.
pub async fn run(args: DemoArgs) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if args.nodes == 0 || args.servers == 0 || args.servers % 2 == 0 || args.servers > args.nodes {
        bail!(
            "--servers must be odd and at most --nodes (got {} of {})",
            args.servers,
            args.nodes
        );
    }
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (temp, dir) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (None, dir.clone())
        }
        None => {
            let tmp = tempdir()?;
            (Some(TempDir(tmp.clone())), tmp)
        }
    };
    let dir = dir.canonicalize()?;
    // The demo's future owns every process it starts: when a signal wins the race it is dropped
    // here, and dropping it stops them.
    let outcome = tokio::select! {
        biased;
        _ = interrupt.recv() => Err("SIGINT"),
        _ = terminate.recv() => Err("SIGTERM"),
        outcome = run_in(&args, &dir) => Ok(outcome),
    };
    match outcome {
        Err(signal) => {
            drop(temp);
            bail!("interrupted by {signal}: stopped every process the demo started")
        }
        Ok(Ok(())) => {
            if args.keep {
                std::mem::forget(temp);
            }
            Ok(())
        }
        Ok(Err(err)) => {
            std::mem::forget(temp);
            Err(err.context(format!(
                "the demo failed; its logs and files are kept under {}",
                dir.display()
            )))
        }
    }
}

async fn run_in(args: &DemoArgs, dir: &Path) -> Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("locating the binaries")?
        .to_path_buf();
    let binary = |name: &str| -> Result<PathBuf> {
        let path = bin_dir.join(name);
        if !path.exists() {
            bail!("{} not found next to rke2-bootstrap: build the workspace first (cargo build --workspace --bins)", path.display());
        }
        Ok(path)
    };
    let agent_bin = std::env::current_exe()?;
    let sidecar_bin = binary("rke2-lb-sidecar")?;
    let standin_bin = binary("rke2-standin")?;

    // Shared secrets and stand-ins.
    let key_file = dir.join("gossip.key");
    fsutil::write_file_atomic(
        &key_file,
        format!("{}\n", crate::gossip::keyring::generate_key()).as_bytes(),
        SECRET_FILE_MODE,
    )?;
    let systemctl = dir.join("fake-systemctl");
    fsutil::write_file_atomic(&systemctl, FAKE_SYSTEMCTL.as_bytes(), 0o755)?;
    let installer_url = serve_installer().await?;
    progress!("installer stand-in at {installer_url}");

    let lb_ip: IpAddr = format!("{}.10", args.ip_prefix)
        .parse()
        .context("--ip-prefix must be three octets, e.g. 127.77.0")?;
    let host_ip = |i: u32| -> Result<IpAddr> {
        format!("{}.{}", args.ip_prefix, 11 + i)
            .parse()
            .context("--ip-prefix must be three octets, e.g. 127.77.0")
    };
    // The seeds are the hosts that become servers (auto hosts settle lowest name first), never
    // the LB host alone: gossip must not depend on the LB host being up, as it must not in
    // production.
    let seeds = (0..args.servers)
        .map(|i| Ok(format!("{}:7947", host_ip(i)?)))
        .collect::<Result<Vec<_>>>()?
        .join(",");
    let mut procs = Processes {
        hosts: Vec::new(),
        sidecar: None,
        lb_log: None,
        lb_pid_file: None,
        keep: false,
    };

    // The LB host: the sidecar joins gossip as an observer.
    let lb_dir = dir.join("lb");
    std::fs::create_dir_all(&lb_dir)?;
    let lb_config_path =
        (args.lb != LbKind::None).then(|| lb_dir.join(format!("{}.conf", lb_kind_name(args.lb))));
    let mut not_live_reason = None;
    if let Some(path) = &lb_config_path {
        let lb = LbHost {
            kind: args.lb,
            sidecar_bin: &sidecar_bin,
            dir: &lb_dir,
            ip: lb_ip,
            key_file: &key_file,
            seeds: &seeds,
            config_path: path,
        };
        not_live_reason = lb.start(&mut procs).await?;
        if let Some(reason) = &not_live_reason {
            // Said once, here: everything else works without it.
            progress!(
                "{kind} cannot run here: {reason}. The cluster forms without it (hosts register \
                 with the first server directly); the sidecar renders the config {kind} would \
                 serve, shown at the end, but nothing checks or serves it. For a live LB: {hint}",
                kind = lb_kind_name(args.lb),
                hint = install_hint(args.lb)
            );
        }
    }

    // The electorate, named explicitly as an operator would: the seeds' addresses, the hosts
    // that may initialize.
    let electorate = (0..args.servers.min(args.nodes))
        .map(|i| format!("{}.{}", args.ip_prefix, 11 + i))
        .collect::<Vec<_>>()
        .join(",");
    for i in 0..args.nodes {
        let name = format!("node-{}", i + 1);
        let ip = host_ip(i)?;
        let root = dir.join(&name);
        let state_dir = root.join("var/lib/rke2-bootstrap");
        std::fs::create_dir_all(&root)?;
        let service_manager = format!(
            "{} --root {} --standin {}",
            systemctl.display(),
            root.display(),
            standin_bin.display()
        );
        let mut cmd = Command::new(&agent_bin);
        cmd.arg("agent")
            .args([
                "--cluster-name",
                "demo",
                "--node-name",
                &name,
                "--role",
                "auto",
            ])
            .args(["--bind-addr", &format!("{ip}:7947"), "--seeds", &seeds])
            .arg("--gossip-key-file")
            .arg(&key_file)
            .arg("--root")
            .arg(&root)
            .args([
                "--initial-servers",
                &electorate,
                "--servers",
                &args.servers.to_string(),
            ])
            .args([
                "--installer-url",
                &installer_url,
                "--allow-insecure-installer-url",
                "true",
            ])
            .args(["--service-manager", &service_manager]);
        // Hosts register through the LB only when it serves: otherwise with the first server,
        // as they do without an LB.
        if lb_config_path.is_some() && not_live_reason.is_none() {
            cmd.args(["--registration-address", &lb_ip.to_string()]);
        }
        let log = root.join("agent.log");
        let child = spawn_logged(&mut cmd, &log)?;
        procs.hosts.push(Host {
            name,
            ip,
            root,
            state_dir,
            log,
            child: Some(child),
        });
    }
    progress!(
        "started {} hosts on {}.11-{} and the LB host on {lb_ip}",
        args.nodes,
        args.ip_prefix,
        10 + args.nodes
    );

    let started = Instant::now();
    let deadline = started + args.timeout;
    let mut phases: BTreeMap<String, Phase> = BTreeMap::new();
    let mut formed_at = None;
    let (initializer, all_ready_at, reports) = loop {
        if let Some(exited) = procs.exited() {
            let what = format!("{} exited before the cluster formed", exited.0);
            return Err(failed(&[exited], what));
        }
        let reports = poll_reports(&procs.hosts);
        for (name, report) in &reports {
            if phases.get(name) != Some(&report.phase) {
                progress!(
                    "{name:<8} {:<16} {}",
                    report.phase.to_string(),
                    report.reason
                );
                phases.insert(name.clone(), report.phase);
            }
        }
        let members: Vec<_> = reports.values().flat_map(|r| r.members.iter()).collect();
        let initializers: std::collections::BTreeSet<&str> = members
            .iter()
            .filter(|m| m.initializer)
            .map(|m| m.name.as_str())
            .collect();
        if initializers.len() > 1 {
            bail!("more than one first server: {initializers:?}");
        }
        let first_ready = members.iter().any(|m| m.initializer && m.ready);
        if first_ready && formed_at.is_none() {
            formed_at = Some(started.elapsed());
            progress!(
                "cluster formed: {} is the first server",
                initializers.iter().next().unwrap_or(&"?")
            );
        }
        let all_ready =
            reports.len() == procs.hosts.len() && reports.values().all(|r| r.phase == Phase::Ready);
        let lb_ok = || match &lb_config_path {
            Some(path) => lb_servers(path, lb_ip) == server_ips(&reports),
            None => true,
        };
        if all_ready && lb_ok() {
            let init = initializers
                .iter()
                .next()
                .map(|s| s.to_string())
                .unwrap_or_default();
            break (init, started.elapsed(), reports);
        }
        if Instant::now() > deadline {
            // The hosts that are not ready failed; when they all are, the LB host did.
            let mut culprits: Vec<(String, PathBuf)> = procs
                .hosts
                .iter()
                .filter(|h| reports.get(&h.name).map(|r| r.phase) != Some(Phase::Ready))
                .map(|h| (h.name.clone(), h.log.clone()))
                .collect();
            if culprits.is_empty() {
                culprits.push(("the LB host".into(), lb_dir.join("sidecar.log")));
            }
            return Err(failed(
                &culprits,
                format!("the cluster did not form within {:?}", args.timeout),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    progress!(
        "all {} hosts ready in {} ms",
        procs.hosts.len(),
        all_ready_at.as_millis()
    );

    let lb_before = lb_config_path
        .as_ref()
        .map(|p| lb_servers(p, lb_ip))
        .unwrap_or_default();
    if let Some(path) = &lb_config_path {
        progress!("lb config {} lists {:?}", path.display(), lb_before);
    }
    let mut nodes = Vec::new();
    for h in &procs.hosts {
        let report = &reports[&h.name];
        let etcd = if report.role == Role::Server {
            let client = crate::rke2::rejoin::Etcd::new(
                std::net::SocketAddr::new(h.ip, crate::rke2::rejoin::ETCD_CLIENT_PORT),
                &h.root,
            )?;
            match client.cluster_summary().await {
                Ok((cluster_id, members)) => Some(EtcdSummary {
                    cluster_id,
                    members,
                }),
                Err(err) => {
                    progress!("{}: etcd did not answer: {err:#}", h.name);
                    None
                }
            }
        } else {
            None
        };
        nodes.push(NodeSummary {
            name: h.name.clone(),
            address: h.ip,
            role: report.role,
            phase: report.phase,
            config_path: h.root.join("etc/rancher/rke2/config.yaml"),
            etcd,
        });
    }
    if !args.json {
        for node in &nodes {
            let config = std::fs::read_to_string(&node.config_path).unwrap_or_default();
            say!(
                "--- {} ({}) {}\n{}",
                node.name,
                node.role,
                node.config_path.display(),
                redact_token(&config)
            );
        }
        if let Some(path) = &lb_config_path {
            let served = if not_live_reason.is_some() {
                " (rendered only: nothing serves it)"
            } else {
                ""
            };
            say!(
                "--- lb {}{served}\n{}",
                path.display(),
                std::fs::read_to_string(path).unwrap_or_default()
            );
        }
    }

    // Stop one server that is not the first one, as a host going away would.
    let victim = nodes
        .iter()
        .rfind(|n| n.role == Role::Server && n.name != initializer)
        .map(|n| n.name.clone());
    let mut lb_after = lb_before.clone();
    let mut lb_updated_after_kill = None;
    if let Some(victim) = &victim {
        let host = procs
            .hosts
            .iter_mut()
            .find(|h| &h.name == victim)
            .expect("victim is a host");
        progress!("stopping {victim} ({})", host.ip);
        let stop_started = Instant::now();
        stop_child(host.child.take());
        let _ = Command::new(&systemctl)
            .args([
                "--root",
                &host.root.to_string_lossy(),
                "--standin",
                &standin_bin.to_string_lossy(),
                "stop",
                "rke2-server.service",
            ])
            .status();
        if let Some(path) = &lb_config_path {
            let victim_ip = host.ip.to_string();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                lb_after = lb_servers(path, lb_ip);
                if !lb_after.contains(&victim_ip) {
                    lb_updated_after_kill = Some(stop_started.elapsed().as_millis() as u64);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            progress!(
                "lb config now lists {:?} ({} ms after the stop)",
                lb_after,
                lb_updated_after_kill.unwrap_or(0)
            );
        }
    }

    let summary = DemoSummary {
        initializer,
        nodes,
        lb: LbSummary {
            kind: args.lb,
            live: lb_config_path.is_some() && not_live_reason.is_none(),
            not_live_reason,
            config_path: lb_config_path.clone(),
            servers: lb_before,
        },
        lb_servers_after_kill: lb_after,
        stopped_server: victim.unwrap_or_default(),
        timings_ms: Timings {
            formed: formed_at.unwrap_or(all_ready_at).as_millis() as u64,
            all_ready: all_ready_at.as_millis() as u64,
            lb_updated_after_kill,
        },
        dir: dir.to_path_buf(),
    };
    if args.json {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)
            .and_then(|()| out.flush())
            .context("writing the summary")?;
    } else {
        say!(
            "summary: first server {}, formed in {} ms, all ready in {} ms, lb followed the stop in {} ms",
            summary.initializer,
            summary.timings_ms.formed,
            summary.timings_ms.all_ready,
            summary.timings_ms.lb_updated_after_kill.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    if args.keep {
        progress!(
            "left running under {}; try: rke2-bootstrap members --status-socket {}",
            dir.display(),
            procs.hosts[0].state_dir.join("status.sock").display()
        );
        procs.keep = true;
    }
    Ok(())
}

impl Processes {
    /// The first demo process that exited on its own (a host's agent or the LB host's sidecar),
    /// with its log.
    fn exited(&mut self) -> Option<(String, PathBuf)> {
        for host in &mut self.hosts {
            if let Some(child) = host.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some((host.name.clone(), host.log.clone()));
                }
            }
        }
        let sidecar = self.sidecar.as_mut()?;
        match sidecar.try_wait() {
            Ok(Some(_)) => Some((
                "the LB host's sidecar".into(),
                self.lb_log.clone().unwrap_or_default(),
            )),
            _ => None,
        }
    }
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

/// The LB host of the demo: the sidecar, and nginx or HAProxy when they can run here.
struct LbHost<'a> {
    kind: LbKind,
    sidecar_bin: &'a Path,
    dir: &'a Path,
    ip: IpAddr,
    key_file: &'a Path,
    seeds: &'a str,
    config_path: &'a Path,
}

impl LbHost<'_> {
    /// Starts the LB and its sidecar, or, when the LB cannot run here, the sidecar alone in a
    /// render-only mode. Returns why the LB is not live, if it is not.
    async fn start(&self, procs: &mut Processes) -> Result<Option<String>> {
        let name = lb_kind_name(self.kind);
        let program = match find_on_path(name) {
            Some(program) => program,
            None => {
                let reason = "it is not installed (not on PATH)".to_string();
                self.spawn_sidecar(procs, None)?;
                return Ok(Some(reason));
            }
        };
        if let Err(err) = start_lb(self.kind, &program, self.dir, self.ip, self.config_path)
            .map(|pid_file| procs.lb_pid_file = Some(pid_file))
        {
            self.spawn_sidecar(procs, None)?;
            return Ok(Some(format!("{err:#}")));
        }
        self.spawn_sidecar(procs, Some(&program))?;
        // The sidecar checks what the LB needs (nginx's stream module) before it joins gossip
        // and opens its status socket; one that exits instead says why as its last line.
        let socket = self.dir.join("state/status.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sidecar = procs.sidecar.as_mut().expect("sidecar started");
            if let Ok(Some(_)) = sidecar.try_wait() {
                break;
            }
            if status::fetch(&socket).is_ok() {
                return Ok(None);
            }
            if Instant::now() > deadline {
                bail!("the LB host's sidecar did not come up within 30s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("sidecar.log")).unwrap_or_default();
        let reason = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the sidecar exited")
            .trim_start_matches("rke2-lb-sidecar: error: ")
            .to_string();
        procs.sidecar = None;
        procs.stop_lb_program();
        let _ = std::fs::rename(
            self.dir.join("sidecar.log"),
            self.dir.join("sidecar-live.log"),
        );
        self.spawn_sidecar(procs, None)?;
        Ok(Some(reason))
    }

    /// `program`: the LB the sidecar validates and reloads; `None` renders only.
    fn spawn_sidecar(&self, procs: &mut Processes, program: Option<&Path>) -> Result<()> {
        let bind = format!("{}:7947", self.ip);
        let mut sidecar = Command::new(self.sidecar_bin);
        sidecar
            .args([
                "--cluster-name",
                "demo",
                "--node-name",
                "lb",
                "--bind-addr",
                &bind,
                "--seeds",
                self.seeds,
            ])
            .arg("--gossip-key-file")
            .arg(self.key_file)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args([
                "--lb",
                lb_kind_name(self.kind),
                "--lb-addr",
                &self.ip.to_string(),
            ])
            .arg("--config-file")
            .arg(self.config_path);
        let lb = self.dir.display();
        let mut settings = match self.kind {
            LbKind::Nginx => format!("prefix: {lb}, pid-file: {lb}/nginx.pid, error-log: {lb}/error.log, worker-processes: 1, worker-connections: 256"),
            _ => format!("run-dir: {lb}"),
        };
        match program {
            Some(program) => settings.push_str(&format!(", binary: {}", program.display())),
            // Without nginx to ask, name the module where Debian's package puts it.
            None if self.kind == LbKind::Nginx => {
                settings.push_str(&format!(", stream-module: {DEBIAN_STREAM_MODULE}"))
            }
            None => {}
        }
        let flag = match self.kind {
            LbKind::Nginx => "--nginx",
            _ => "--haproxy",
        };
        sidecar.args([flag, &format!("{{{settings}}}")]);
        if program.is_none() {
            sidecar.args(["--validate", "[]", "--reload", "{command: [\"true\"]}"]);
        }
        let log = self.dir.join("sidecar.log");
        procs.sidecar = Some(spawn_logged(&mut sidecar, &log)?);
        procs.lb_log = Some(log);
        Ok(())
    }
}

fn install_hint(kind: LbKind) -> &'static str {
    match kind {
        LbKind::Nginx => {
            "install nginx with its stream module (Debian: apt-get install nginx-light \
             libnginx-mod-stream), or use --lb haproxy with HAProxy installed"
        }
        _ => "install HAProxy (Debian: apt-get install haproxy)",
    }
}

fn poll_reports(hosts: &[Host]) -> BTreeMap<String, status::StatusReport> {
    hosts
        .iter()
        .filter(|h| h.child.is_some())
        .filter_map(|h| {
            Some((
                h.name.clone(),
                status::fetch(&h.state_dir.join("status.sock")).ok()?,
            ))
        })
        .collect()
}

fn server_ips(reports: &BTreeMap<String, status::StatusReport>) -> Vec<String> {
    let mut ips: Vec<String> = reports
        .values()
        .flat_map(|r| r.members.iter())
        .filter(|m| m.role == Role::Server && m.ready && m.alive)
        .map(|m| m.node_addr.to_string())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The server addresses an LB config routes 9345 to (any of our renderers' shapes).
pub fn lb_servers(path: &Path, lb_ip: IpAddr) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ips: Vec<String> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.split_whitespace())
        .filter_map(|word| {
            word.trim_end_matches(';')
                .strip_suffix(":9345")
                .map(str::to_string)
        })
        .filter(|ip| ip.parse::<IpAddr>().is_ok() && *ip != lb_ip.to_string())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn redact_token(config: &str) -> String {
    config
        .lines()
        .map(|line| {
            if line.starts_with("token:") {
                "token: <redacted>"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn lb_kind_name(kind: LbKind) -> &'static str {
    match kind {
        LbKind::Nginx => "nginx",
        LbKind::Haproxy => "haproxy",
        LbKind::None => "none",
    }
}

/// Starts the LB with a config that routes nothing yet (an empty upstream is invalid), so that
/// the sidecar's first render is a plain reload, exactly as on a real LB host. Returns the pid
/// file.
fn start_lb(
    kind: LbKind,
    program: &Path,
    lb_dir: &Path,
    lb_ip: IpAddr,
    config: &Path,
) -> Result<PathBuf> {
    let lb = lb_dir.display();
    let (bootstrap, pid_file, args): (String, PathBuf, Vec<String>) = match kind {
        LbKind::Nginx => (
            format!("pid {lb}/nginx.pid;\nerror_log {lb}/error.log;\nevents {{}}\n"),
            lb_dir.join("nginx.pid"),
            vec!["-p".into(), lb.to_string(), "-c".into(), config.display().to_string()],
        ),
        _ => (
            // HAProxy refuses to run without a listener: hold the supervisor port and turn
            // every connection away until the sidecar's first render takes over.
            format!(
                "global\n    log stderr local0 notice\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\nfrontend placeholder\n    bind {lb_ip}:9345\n    tcp-request connection reject\n"
            ),
            lb_dir.join("haproxy.pid"),
            vec!["-D".into(), "-f".into(), config.display().to_string(), "-p".into(), lb_dir.join("haproxy.pid").display().to_string()],
        ),
    };
    fsutil::write_file_atomic(config, bootstrap.as_bytes(), 0o644)?;
    let status = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("starting {}", program.display()))?;
    if !status.success() {
        bail!(
            "{} exited with {status} on its bootstrap config",
            program.display()
        );
    }
    Ok(pid_file)
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// `program` as the shell would find it: the first executable file of that name on PATH. PATH is
/// the one place a user (or a test) hides an installed program from the demo.
fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The stand-in for get.rke2.io: serves the installer script to every GET on 127.0.0.1.
async fn serve_installer() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/x-shellscript\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    INSTALL_SCRIPT.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(INSTALL_SCRIPT.as_bytes()).await;
            });
        }
    });
    Ok(format!("http://{addr}/"))
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory: failed demos keep theirs, and a later demo that got the same pid must not
/// find a host state dir that says it already joined a cluster.
fn tempdir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let pid = std::process::id();
    for attempt in 0..100u32 {
        let path = base.join(format!("rke2-bootstrap-demo-{pid}-{attempt}"));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => {
                return Err(err).with_context(|| format!("creating {}", path.display()));
            }
        }
    }
    bail!(
        "{} holds 100 kept demo directories for pid {pid}; remove some",
        base.display()
    )
}
