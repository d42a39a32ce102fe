//! The peer we compare against: Debian's Serf agent, one process per simulated host, each with
//! the classic event handler that rewrites an nginx upstream file (`handler.sh`).

pub mod msgpack;
pub mod rpc;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bench::registry::Tracked;
use anyhow::{Context, Result};
use base64::Engine;
use nix::sys::signal::Signal;
use rpc::{RpcClient, SerfMember};

/// Serf's default gossip port (memberlist, UDP and TCP).
pub const SERF_PORT: u16 = 7946;
/// Serf's default RPC port; every simulated host has its own address.
pub const RPC_PORT: u16 = 7373;

const HANDLER: &str = include_str!("handler.sh");
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// What every Serf agent of one cluster shares.
pub struct SerfSetup {
    pub binary: PathBuf,
    pub handler: PathBuf,
    /// Serf's own encryption (AES-GCM, like ours seals every datagram).
    pub key: String,
}

impl SerfSetup {
    /// Writes the handler script into `dir`.
    pub fn new(binary: &Path, dir: &Path) -> Result<SerfSetup> {
        let handler = dir.join("serf-handler.sh");
        rke2_bootstrap::fsutil::write_file_atomic(&handler, HANDLER.as_bytes(), 0o755)?;
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        Ok(SerfSetup {
            binary: binary.to_path_buf(),
            handler,
            key: base64::engine::general_purpose::STANDARD.encode(key),
        })
    }
}

/// One Serf agent process.
pub struct SerfNode {
    pub name: String,
    pub ip: IpAddr,
    pub dir: PathBuf,
    child: Option<Tracked>,
    rpc: Option<RpcClient>,
}

impl SerfNode {
    /// Starts `serf agent` on `ip` with tag `role`, joining `seed` if given.
    pub fn start(
        setup: &SerfSetup,
        name: &str,
        ip: IpAddr,
        role: &str,
        seed: Option<IpAddr>,
        parent: &Path,
    ) -> Result<SerfNode> {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir)?;
        let rpc_addr = SocketAddr::new(ip, RPC_PORT).to_string();
        let mut cmd = Command::new(&setup.binary);
        cmd.arg("agent")
            .arg(format!("-node={name}"))
            .arg(format!("-bind={}", SocketAddr::new(ip, SERF_PORT)))
            .arg(format!("-rpc-addr={rpc_addr}"))
            .arg(format!("-tag=role={role}"))
            .arg(format!("-encrypt={}", setup.key))
            .arg(format!("-event-handler={}", setup.handler.display()))
            .arg("-log-level=warn")
            .env("LB_SERF", &setup.binary)
            .env("LB_RPC_ADDR", &rpc_addr)
            .env("LB_UPSTREAMS", dir.join("upstreams.conf"))
            .env("LB_EVENTS", dir.join("events.log"));
        if let Some(seed) = seed {
            // Not `-join`, which exits when the seed is briefly unreachable.
            cmd.arg(format!("-retry-join={}", SocketAddr::new(seed, SERF_PORT)))
                .arg("-retry-interval=1s");
        }
        let child = Tracked::spawn_logged(&mut cmd, &dir.join("serf.log"))
            .with_context(|| format!("starting serf {name}"))?;
        Ok(SerfNode {
            name: name.to_string(),
            ip,
            dir,
            child: Some(child),
            rpc: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Tracked::id)
    }

    /// The upstream file this agent's handler maintains.
    pub fn upstreams(&self) -> PathBuf {
        self.dir.join("upstreams.conf")
    }

    /// The handler's event log.
    pub fn events(&self) -> PathBuf {
        self.dir.join("events.log")
    }

    /// The agent's member list, over a connection kept open between calls.
    pub fn members(&mut self) -> Result<Vec<SerfMember>> {
        if self.child.is_none() {
            anyhow::bail!("{} is not running", self.name);
        }
        if self.rpc.is_none() {
            self.rpc = Some(RpcClient::connect(
                SocketAddr::new(self.ip, RPC_PORT),
                RPC_TIMEOUT,
            )?);
        }
        let result = self.rpc.as_mut().expect("connected").members();
        if result.is_err() {
            self.rpc = None;
        }
        result
    }

    /// `kill -9`.
    pub fn crash(&mut self) -> Result<()> {
        self.rpc = None;
        if let Some(mut child) = self.child.take() {
            child.kill_group()?;
        }
        Ok(())
    }

    /// Serf's graceful leave: SIGINT (with its default settings SIGTERM does not leave). The
    /// process is reaped later, when the node drops.
    pub fn leave(&mut self) {
        self.rpc = None;
        if let Some(child) = &self.child {
            child.signal(Signal::SIGINT);
        }
    }

    pub fn pause(&self, on: bool) {
        if let Some(child) = &self.child {
            child.pause(on);
        }
    }
}
