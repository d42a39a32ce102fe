//! `rke2-demo`: a whole zero-touch cluster on one machine, with no root-only paths, built on the
//! harness the end-to-end tests use ([`TestCluster`](crate::cluster::TestCluster)).
//!
//! Every "host" is a real agent process on its own loopback address (127.x.y.z) with its own
//! root under the demo's directory and sealed gossip; the LB host runs the real sidecar (and real
//! nginx or HAProxy when installed); a local HTTP server stands in for get.rke2.io and its
//! installer installs a stand-in RKE2 whose "service" (started through the configurable
//! service-manager command) answers the supervisor and API probes on the host's address, its
//! servers backed by a real etcd. Only the RKE2 binaries are stand-ins: election, config,
//! installer download and run, service start, readiness, LB rendering and reloads are the
//! production code paths.
//!
//! The demo must work on a bare machine, so nothing depends on the LB host running its LB: the
//! hosts' gossip seeds are the server hosts, and when nginx (or HAProxy) is missing or cannot
//! start, the sidecar still renders the config it would serve, without validating or serving it.
//! A failed demo keeps its directory and prints the last lines of the hosts that failed; Ctrl-C or
//! SIGTERM stops every process it started.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cluster::LbKind;
use crate::find_on_path;

/// A line on stderr. Unlike `eprintln!` it does not panic when stderr is a closed pipe
/// (`rke2-demo 2>&1 | head`): the demo goes on, and stops what it started, either way.
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

mod lb;
mod run;
mod summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbChoice {
    Nginx,
    Haproxy,
    None,
}

impl LbChoice {
    fn kind(self) -> Option<LbKind> {
        match self {
            LbChoice::Nginx => Some(LbKind::Nginx),
            LbChoice::Haproxy => Some(LbKind::Haproxy),
            LbChoice::None => None,
        }
    }
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "rke2-demo",
    about = "Form a local demo cluster on this machine (no root paths needed)"
)]
pub struct DemoArgs {
    /// Number of hosts (all with role `auto`).
    #[arg(long, default_value_t = 5)]
    pub nodes: u32,
    /// How many of them become servers (odd).
    #[arg(long, default_value_t = 3)]
    pub servers: u32,
    /// The load balancer in front of the servers.
    #[arg(long, value_enum, default_value = "nginx")]
    pub lb: LbChoice,
    /// Leave the cluster running once it formed (explore with the `rke2-bootstrap members
    /// --status-socket ...` command it prints).
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

impl DemoArgs {
    /// The three octets of `--ip-prefix`, checked, with the number of hosts they leave room for.
    fn checked_prefix(&self) -> Result<[u8; 3]> {
        if self.nodes == 0
            || self.servers == 0
            || self.servers % 2 == 0
            || self.servers > self.nodes
        {
            bail!(
                "--servers must be odd and at most --nodes (got {} of {})",
                self.servers,
                self.nodes
            );
        }
        // Hosts are .11 and up: the last one must still be an address.
        if self.nodes > 244 {
            bail!("--nodes must be at most 244 (hosts are .11 to .254)");
        }
        let ip: Ipv4Addr = format!("{}.10", self.ip_prefix)
            .parse()
            .ok()
            .filter(Ipv4Addr::is_loopback)
            .context(
                "--ip-prefix must be the three first octets of a loopback address, e.g. 127.77.0",
            )?;
        let [a, b, c, _] = ip.octets();
        Ok([a, b, c])
    }
}

/// The signal that interrupted the demo, once one did.
static INTERRUPTED: OnceLock<&'static str> = OnceLock::new();

/// The demo was interrupted: every process it started is stopped as the error goes up.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {0}: stopped every process the demo started")]
struct Interrupted(&'static str);

/// Fails once SIGINT or SIGTERM arrived; every wait of the demo asks between polls.
fn interrupted() -> Result<()> {
    match INTERRUPTED.get() {
        Some(signal) => Err(Interrupted(signal).into()),
        None => Ok(()),
    }
}

/// Takes SIGINT and SIGTERM over, before anything starts, so that an interrupted demo stops
/// what it started instead of leaving stand-ins behind (its processes run in their own process
/// groups: a terminal's Ctrl-C reaches the demo alone).
fn watch_signals() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    let (mut int, mut term) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        )
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = runtime.block_on(async {
                tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                }
            });
            let _ = INTERRUPTED.set(name);
        })
        .context("starting the signal watcher")?;
    Ok(())
}

/// Runs the demo. A failed demo keeps its directory for the logs; an interrupted one removes
/// the temp dir it made.
pub fn run(args: DemoArgs) -> Result<()> {
    let prefix = args.checked_prefix()?;
    // What is missing is said before anything is made or started.
    for bin in ["rke2-bootstrap", "rke2-lb-sidecar", "rke2-standin"] {
        crate::find_workspace_bin(bin)?;
    }
    ensure_etcd()?;
    watch_signals()?;
    let (dir, made) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir.clone(), false)
        }
        // A fresh name each time: a later demo must not find a host state dir that says it
        // already joined a cluster.
        None => (
            tempfile::Builder::new()
                .prefix("rke2-demo-")
                .tempdir()
                .context("creating the demo's directory")?
                .keep(),
            true,
        ),
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    match run::run_in(&args, prefix, &dir) {
        Ok(()) => {
            if made && !args.keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        }
        Err(err) if err.downcast_ref::<Interrupted>().is_some() => {
            if made {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(err)
        }
        Err(err) => Err(err.context(format!(
            "the demo failed; its logs and files are kept under {}",
            dir.display()
        ))),
    }
}

/// The stand-in RKE2 servers run a real etcd (Debian's `etcd-server`): without it every server
/// would only time out, so the demo says so before it starts anything.
fn ensure_etcd() -> Result<()> {
    if let Some(etcd) = std::env::var_os("STANDIN_ETCD") {
        let etcd = PathBuf::from(etcd);
        let found = if etcd.components().count() > 1 {
            etcd.is_file()
        } else {
            find_on_path(&etcd.to_string_lossy()).is_some()
        };
        anyhow::ensure!(
            found,
            "STANDIN_ETCD names {}, which is not there",
            etcd.display()
        );
        return Ok(());
    }
    anyhow::ensure!(
        find_on_path("etcd").is_some(),
        "etcd is not installed (not on PATH): the stand-in RKE2 servers run a real etcd. Install \
         Debian's etcd-server package (apt-get install etcd-server), or run `bash tests/demo.sh`, \
         which installs it when it is missing"
    );
    Ok(())
}

/// Host number `i` (from 0) of the demo: `node-<i+1>` on `<prefix>.<11+i>`.
fn host_name(i: u32) -> String {
    format!("node-{}", i + 1)
}

/// Kills what is left under each host root once the cluster is gone: the harness sweeps each
/// root once, and a service-manager call killed between fork and exec can still start a
/// stand-in after that pass.
struct Sweep(Vec<PathBuf>);

impl Drop for Sweep {
    fn drop(&mut self) {
        for root in &self.0 {
            // Best effort: what is still there after 2 s is left to the operator.
            let _ = crate::wait_until(Duration::from_secs(2), Duration::from_millis(50), || {
                crate::kill_standins_under(root);
                crate::process::processes_under(root).is_empty()
            });
        }
    }
}

/// The host roots of a demo in `dir`, as the harness names them.
fn roots(dir: &Path, nodes: u32) -> Vec<PathBuf> {
    (0..nodes).map(|i| dir.join(host_name(i))).collect()
}
