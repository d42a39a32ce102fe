//! The local status endpoint: a unix socket under the state dir (0600: only root reads it) that
//! answers every connection with one JSON document, and the `members` client that prints it.
//!
//! A unix socket, not a TCP port: nothing to firewall, and file permissions are the access
//! control. Secrets never reach it: members are turned into [`MemberSummary`], which has no token.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::gossip::schema::{Member, MemberSummary, Phase, Role};

/// What this node says about itself and its view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: String,
    pub role: Role,
    pub phase: Phase,
    /// Why the node is in its phase (what it waits for), in words.
    pub reason: String,
    pub members: Vec<MemberSummary>,
    /// Transport counters (accepted, rejected by reason).
    pub transport: serde_json::Value,
}

impl StatusReport {
    pub fn new(node: &str) -> Self {
        StatusReport {
            node: node.to_string(),
            role: Role::Auto,
            phase: Phase::Discovering,
            reason: String::new(),
            members: Vec::new(),
            transport: serde_json::Value::Null,
        }
    }
}

/// Serves `report` (with the latest membership view and transport counters) on `path`.
pub fn serve<S>(
    path: &Path,
    report: Arc<Mutex<StatusReport>>,
    view: watch::Receiver<Arc<Vec<Member>>>,
    stats: S,
) -> Result<JoinHandle<()>>
where
    S: Fn() -> serde_json::Value + Send + 'static,
{
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding status socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let snapshot = {
                let mut snapshot = report
                    .lock()
                    .map(|r| r.clone())
                    .unwrap_or_else(|p| p.into_inner().clone());
                snapshot.members = view.borrow().iter().map(MemberSummary::from).collect();
                snapshot.transport = stats();
                snapshot
            };
            let body = serde_json::to_vec(&snapshot).unwrap_or_default();
            if let Err(err) = stream.write_all(&body).await {
                debug!(error = %err, "status client went away");
            }
        }
    }))
}

/// Reads the status document from the socket at `path`.
pub fn fetch(path: &Path) -> Result<StatusReport> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the agent's status socket {} (is the agent running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut body = Vec::new();
    stream
        .read_to_end(&mut body)
        .context("reading the status document")?;
    serde_json::from_slice(&body).context("decoding the status document")
}

/// Prints members like `serf members`: one row per member.
pub fn print_members(report: &StatusReport, json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, &report.members)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<22} {:<9} {:<16} {:<6} {:<6}",
        "NAME", "GOSSIP ADDR", "ROLE", "PHASE", "STATUS", "READY"
    )?;
    for m in &report.members {
        let status = if m.left {
            "left"
        } else if m.alive {
            "alive"
        } else {
            "dead"
        };
        let marker = if m.initializer { " (first server)" } else { "" };
        writeln!(
            out,
            "{:<20} {:<22} {:<9} {:<16} {:<6} {:<6}{}",
            m.name,
            m.gossip_addr,
            m.role,
            m.phase,
            status,
            if m.ready { "yes" } else { "no" },
            marker
        )?;
    }
    Ok(())
}
