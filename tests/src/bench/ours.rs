//! Our side: `rke2-bootstrap agent` processes and the `rke2-lb-sidecar`, started the way an
//! operator would (flags only, shipped defaults), and read through their status sockets.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::bench::registry::Tracked;

/// The gossip port of every simulated host (each has its own address): the agent's shipped
/// default (`bind-addr: 0.0.0.0:7947`), the one the harness uses too.
pub const GOSSIP_PORT: u16 = rke2_bootstrap_tests::cluster::GOSSIP_PORT;

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct OurBinaries {
    pub agent: PathBuf,
    pub sidecar: PathBuf,
}

/// What a benchmark reads from a status socket: a subset of the status document, so that polling
/// hundreds of sockets stays cheap.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusLite {
    pub members: Vec<MemberLite>,
    #[serde(default)]
    pub transport: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberLite {
    pub name: String,
    pub phase: String,
    pub alive: bool,
    pub left: bool,
    pub ready: bool,
}

impl MemberLite {
    /// Alive and not leaving: what a peer counts as a current member.
    pub fn is_up(&self) -> bool {
        self.alive && !self.left && self.phase != "leaving"
    }
}

impl StatusLite {
    /// The datagrams this node's transport sent.
    pub fn sent(&self) -> Option<u64> {
        self.transport.get("sent")?.as_u64()
    }
}

/// Reads a status socket.
pub fn fetch_status(socket: &Path) -> Result<StatusLite> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut body = Vec::with_capacity(64 << 10);
    stream.read_to_end(&mut body)?;
    serde_json::from_slice(&body).context("decoding a status document")
}

/// One agent that only takes part in gossip: role `server` outside an electorate nobody can
/// reach, so it never votes, installs or starts anything, and waits in `discovering`.
pub struct MemberAgent {
    pub name: String,
    pub ip: IpAddr,
    pub socket: PathBuf,
    child: Option<Tracked>,
}

/// Members of a gossip-only cluster share these.
pub struct MemberSetup<'a> {
    pub bins: &'a OurBinaries,
    pub cluster: String,
    pub key_file: &'a Path,
    pub seed: IpAddr,
    pub dir: &'a Path,
    /// Extra `--key value` flags (e.g. another gossip interval).
    pub extra: &'a [(String, String)],
}

/// The one seat of the benchmark's electorate: an address no member holds, so the election never
/// completes and every member only gossips.
const UNSEATED: &str = "127.255.255.254";

impl MemberAgent {
    pub fn start(setup: &MemberSetup<'_>, name: &str, ip: IpAddr) -> Result<MemberAgent> {
        let root = setup.dir.join(name);
        std::fs::create_dir_all(&root)?;
        let socket = root.join("status.sock");
        let mut cmd = Command::new(&setup.bins.agent);
        cmd.arg("agent")
            .args(["--cluster-name", &setup.cluster, "--node-name", name])
            .args(["--role", "server"])
            .args(["--initial-servers", UNSEATED])
            .args(["--bind-addr", &SocketAddr::new(ip, GOSSIP_PORT).to_string()])
            .args([
                "--seeds",
                &SocketAddr::new(setup.seed, GOSSIP_PORT).to_string(),
            ])
            .arg("--gossip-key-file")
            .arg(setup.key_file)
            .arg("--root")
            .arg(&root)
            .arg("--status-socket")
            .arg(&socket)
            // Never used: nobody wins an election. Set so nothing could reach outside loopback.
            .args(["--installer-url", "http://127.0.0.1:9/"])
            .args(["--allow-insecure-installer-url", "true"])
            .args(["--service-manager", "true"])
            .env_remove(rke2_bootstrap::config::ENV_LOG);
        for (key, value) in setup.extra {
            cmd.arg(format!("--{key}")).arg(value);
        }
        let child = Tracked::spawn_logged(&mut cmd, &root.join("agent.log"))
            .with_context(|| format!("starting agent {name}"))?;
        Ok(MemberAgent {
            name: name.to_string(),
            ip,
            socket,
            child: Some(child),
        })
    }

    pub fn status(&self) -> Option<StatusLite> {
        self.child.as_ref()?;
        fetch_status(&self.socket).ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Tracked::id)
    }

    pub fn pause(&self, on: bool) {
        if let Some(child) = &self.child {
            child.pause(on);
        }
    }
}

/// The LB sidecar: an observing gossip member that renders nginx's config. Validation and reload
/// are disabled (nothing serves the file), so what is timed is gossip plus the sidecar's own
/// pipeline (view, damping, debounce, render, atomic write).
pub struct Sidecar {
    pub ip: IpAddr,
    pub dir: PathBuf,
    child: Option<Tracked>,
}

pub struct SidecarSetup<'a> {
    pub bins: &'a OurBinaries,
    pub cluster: String,
    pub key_file: &'a Path,
    pub seeds: Vec<SocketAddr>,
    /// Extra `--key value` flags (e.g. a debounce setting).
    pub extra: Vec<(String, String)>,
}

impl Sidecar {
    pub fn start(setup: &SidecarSetup<'_>, name: &str, ip: IpAddr, dir: &Path) -> Result<Sidecar> {
        std::fs::create_dir_all(dir)?;
        let bind = SocketAddr::new(ip, GOSSIP_PORT).to_string();
        let seeds: Vec<String> = setup.seeds.iter().map(|s| s.to_string()).collect();
        let d = dir.display();
        let mut cmd = Command::new(&setup.bins.sidecar);
        cmd.args(["--cluster-name", &setup.cluster, "--node-name", name])
            .args(["--bind-addr", &bind, "--seeds", &seeds.join(",")])
            .arg("--gossip-key-file")
            .arg(setup.key_file)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--lb", "nginx", "--lb-addr", &ip.to_string()])
            .arg("--config-file")
            .arg(dir.join("nginx.conf"))
            .args([
                "--nginx",
                &format!("{{prefix: {d}, pid-file: {d}/nginx.pid, error-log: {d}/error.log}}"),
            ])
            .args(["--validate", "[]", "--reload", "{command: [\"true\"]}"])
            .env_remove("RKE2_LB_SIDECAR_LOG");
        for (key, value) in &setup.extra {
            cmd.arg(format!("--{key}")).arg(value);
        }
        let child = Tracked::spawn_logged(&mut cmd, &dir.join("sidecar.log"))
            .with_context(|| format!("starting sidecar {name}"))?;
        Ok(Sidecar {
            ip,
            dir: dir.to_path_buf(),
            child: Some(child),
        })
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("nginx.conf")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("state").join("status.sock")
    }

    pub fn status(&self) -> Option<StatusLite> {
        self.child.as_ref()?;
        fetch_status(&self.socket()).ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Tracked::id)
    }

    /// The servers the rendered file routes 9345 to.
    pub fn lb_servers(&self) -> Vec<String> {
        rke2_bootstrap_tests::cluster::lb_servers(&self.config_file(), self.ip)
    }
}

/// A fresh gossip key file in `dir`.
pub fn write_key_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("gossip.key");
    let key = rke2_bootstrap::gossip::keyring::generate_key();
    rke2_bootstrap::fsutil::write_file_atomic(
        &path,
        format!("{key}\n").as_bytes(),
        rke2_bootstrap::fsutil::SECRET_FILE_MODE,
    )?;
    Ok(path)
}

/// Spawns an agent of a harness cluster with the shipped log level (the harness turns on debug
/// logging, which would inflate CPU figures).
pub fn spawn_harness_agent(mut cmd: Command, log: &Path, root: &Path) -> Result<Tracked> {
    cmd.env_remove(rke2_bootstrap::config::ENV_LOG)
        .stdin(Stdio::null());
    Tracked::spawn_logged(&mut cmd, log).map(|t| t.with_root(root))
}
