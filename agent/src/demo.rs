//! `rke2-bootstrap demo`: a whole zero-touch cluster on one machine, with no root-only paths.
//!
//! Every "host" is a real agent process on its own loopback address (127.x.y.z) with its own
//! `root` under a temp dir and sealed gossip; the LB host runs the real sidecar (and real nginx or
//! HAProxy when installed); a local HTTP server stands in for get.rke2.io and its installer
//! installs a stand-in RKE2 whose "service" (started through the configurable service-manager
//! command) answers the supervisor and API probes on the host's address. Only the RKE2 binaries
//! are stand-ins: election, config, installer download and run, service start, readiness, LB
//! rendering and reloads are the production code paths.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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
    /// Leave the cluster running (explore with `rke2-bootstrap members --status-socket ...`).
    #[arg(long)]
    pub keep: bool,
    /// Print the summary as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// First three octets of the loopback addresses: the LB is .10, hosts are .11 and up.
    #[arg(long, default_value = "127.77.0")]
    pub ip_prefix: String,
    /// Working directory (default: a fresh temp dir, removed at the end unless --keep).
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
    /// False when the LB program is not installed: the config is rendered but nothing serves it.
    pub live: bool,
    pub config_path: Option<PathBuf>,
    pub servers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub formed: u64,
    pub all_ready: u64,
    pub lb_updated_after_kill: Option<u64>,
}

struct Host {
    name: String,
    ip: IpAddr,
    root: PathBuf,
    state_dir: PathBuf,
    child: Option<Child>,
}

/// Every process the demo started, stopped on drop (unless kept).
struct Processes {
    hosts: Vec<Host>,
    sidecar: Option<Child>,
    lb_pid_file: Option<PathBuf>,
    systemctl: PathBuf,
    standin: PathBuf,
    keep: bool,
}

impl Drop for Processes {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for host in &mut self.hosts {
            stop_child(host.child.take());
            for unit in ["rke2-server.service", "rke2-agent.service"] {
                let _ = Command::new(&self.systemctl)
                    .args([
                        "--root",
                        &host.root.to_string_lossy(),
                        "--standin",
                        &self.standin.to_string_lossy(),
                        "stop",
                        unit,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        stop_child(self.sidecar.take());
        if let Some(pid) = self
            .lb_pid_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

fn stop_child(child: Option<Child>) {
    if let Some(mut child) = child {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Progress lines go to stderr so that `--json` keeps stdout machine-readable.
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("demo: {}", format!($($arg)*)) };
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.nodes == 0 || args.servers == 0 || args.servers % 2 == 0 || args.servers > args.nodes {
        bail!(
            "--servers must be odd and at most --nodes (got {} of {})",
            args.servers,
            args.nodes
        );
    }
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

    let (_tmp, dir) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (None, dir.clone())
        }
        None => {
            let tmp = tempdir()?;
            let path = tmp.clone();
            (Some(TempDir(tmp)), path)
        }
    };
    let dir = dir.canonicalize()?;
    let lb_program = match args.lb {
        LbKind::Nginx => which("nginx"),
        LbKind::Haproxy => which("haproxy"),
        LbKind::None => None,
    };
    if args.lb != LbKind::None && lb_program.is_none() {
        progress!("{:?} is not installed: the LB config is rendered and checked by the sidecar, but nothing serves it", args.lb);
    }

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
    let seed = format!("{lb_ip}:7947");
    let mut procs = Processes {
        hosts: Vec::new(),
        sidecar: None,
        lb_pid_file: None,
        systemctl: systemctl.clone(),
        standin: standin_bin.clone(),
        keep: args.keep,
    };

    // The LB host: the sidecar joins gossip as an observer and is every agent's seed.
    let lb_dir = dir.join("lb");
    std::fs::create_dir_all(&lb_dir)?;
    let lb_config_path =
        (args.lb != LbKind::None).then(|| lb_dir.join(format!("{}.conf", lb_kind_name(args.lb))));
    if let Some(path) = &lb_config_path {
        let mut sidecar = Command::new(&sidecar_bin);
        sidecar
            .args([
                "--cluster-name",
                "demo",
                "--node-name",
                "lb",
                "--bind-addr",
                &seed,
                "--seeds",
                &seed,
            ])
            .arg("--gossip-key-file")
            .arg(&key_file)
            .arg("--state-dir")
            .arg(lb_dir.join("state"))
            .args([
                "--lb",
                lb_kind_name(args.lb),
                "--lb-addr",
                &lb_ip.to_string(),
            ])
            .arg("--config-file")
            .arg(path);
        let lb = lb_dir.display();
        match args.lb {
            LbKind::Nginx => sidecar.args([
                "--nginx",
                &format!("{{prefix: {lb}, pid-file: {lb}/nginx.pid, error-log: {lb}/error.log, worker-processes: 1, worker-connections: 256}}"),
            ]),
            _ => sidecar.args(["--haproxy", &format!("{{run-dir: {lb}}}")]),
        };
        match &lb_program {
            Some(program) => {
                procs.lb_pid_file = Some(start_lb(args.lb, program, &lb_dir, lb_ip, path)?)
            }
            None => {
                sidecar.args(["--validate", "[]", "--reload", "{command: [\"true\"]}"]);
            }
        }
        procs.sidecar = Some(spawn_logged(&mut sidecar, &lb_dir.join("sidecar.log"))?);
    }

    // Every host is given the same seed list: the LB host when there is one (as in production,
    // where it is the one stable address), else every host.
    let agent_seeds = if args.lb == LbKind::None {
        (0..args.nodes)
            .map(|i| format!("{}.{}:7947", args.ip_prefix, 11 + i))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        seed.clone()
    };
    for i in 0..args.nodes {
        let name = format!("node-{}", i + 1);
        let ip: IpAddr = format!("{}.{}", args.ip_prefix, 11 + i).parse()?;
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
            .args([
                "--bind-addr",
                &format!("{ip}:7947"),
                "--seeds",
                &agent_seeds,
            ])
            .arg("--gossip-key-file")
            .arg(&key_file)
            .arg("--root")
            .arg(&root)
            .args([
                "--bootstrap-expect",
                &args.nodes.to_string(),
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
        if args.lb != LbKind::None {
            cmd.args(["--registration-address", &lb_ip.to_string()]);
        }
        let child = spawn_logged(&mut cmd, &root.join("agent.log"))?;
        procs.hosts.push(Host {
            name,
            ip,
            root,
            state_dir,
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
        if all_ready {
            let ready_servers = server_ips(&reports);
            let lb_ok = match &lb_config_path {
                Some(path) => lb_servers(path, lb_ip) == ready_servers,
                None => true,
            };
            if lb_ok {
                let init = initializers
                    .iter()
                    .next()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                break (init, started.elapsed(), reports);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not form within {:?}; logs are under {}",
                args.timeout,
                dir.display()
            );
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
            let client = crate::rke2::rejoin::Etcd::new(std::net::SocketAddr::new(
                h.ip,
                crate::rke2::rejoin::ETCD_CLIENT_PORT,
            ))?;
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
            eprintln!(
                "--- {} ({}) {}\n{}",
                node.name,
                node.role,
                node.config_path.display(),
                redact_token(&config)
            );
        }
        if let Some(path) = &lb_config_path {
            eprintln!(
                "--- lb {}\n{}",
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
            live: lb_program.is_some(),
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
        dir: dir.clone(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
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
        std::mem::forget(_tmp);
    }
    Ok(())
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

fn which(program: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(program))
    .find(|p| p.exists())
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

fn tempdir() -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("rke2-bootstrap-demo-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}
