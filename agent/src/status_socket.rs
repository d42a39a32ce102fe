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

use crate::gossip::keyring::KeyringStatus;
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
    /// The serving process, for `reload-keys` to signal (0 from a version that did not say).
    #[serde(default)]
    pub pid: u32,
    /// The gossip keys in use, by id, and how the last reload went.
    #[serde(default)]
    pub keyring: KeyringStatus,
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
            pid: std::process::id(),
            keyring: KeyringStatus::default(),
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
                snapshot.members = MemberSummary::of_view(&view.borrow());
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
        // Rendered first, so that a failed write is an I/O error (the caller tells a reader
        // that went away from a real failure).
        let text = serde_json::to_string_pretty(&report.members)?;
        writeln!(out, "{text}")?;
    } else {
        out.write_all(members_table(&report.members).as_bytes())?;
        // What this host waits for (the election's missing seats and lease, a join turn...):
        // the first thing an operator asks when a cluster does not form.
        let waits = (!report.reason.is_empty())
            .then(|| format!("{} is {}: {}", report.node, report.phase, report.reason));
        // During a key rotation: which keys this host uses, and whether its last reload failed.
        let footer: Vec<String> = waits
            .into_iter()
            .chain(keyring_line(&report.keyring))
            .collect();
        if !footer.is_empty() {
            writeln!(out, "\n{}", footer.join("\n"))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The keys line under the `members` table (ids only); nothing from an agent that did not say.
fn keyring_line(keys: &KeyringStatus) -> Option<String> {
    if keys.primary.is_empty() {
        return None;
    }
    let mut line = format!(
        "gossip keys: primary {}, {} accepted",
        keys.primary, keys.keys
    );
    if let Some(why) = &keys.last_error {
        line.push_str(&format!("; the last reload failed, keys kept: {why}"));
    }
    Some(line)
}

/// The `members` table: a header and one row per member, each column as wide as its widest
/// cell (names and addresses have no fixed length), two spaces between columns.
///
/// READY says whether the member can be used now: a member that left or is dead is not, whatever
/// it last reported.
pub fn members_table(members: &[MemberSummary]) -> String {
    const HEADER: [&str; 7] = [
        "NAME",
        "GOSSIP ADDR",
        "ROLE",
        "PHASE",
        "STATUS",
        "READY",
        "ETCD",
    ];
    let rows: Vec<[String; 8]> = members
        .iter()
        .map(|m| {
            let status = if m.left {
                "left"
            } else if m.alive {
                "alive"
            } else {
                "dead"
            };
            let ready = m.ready && m.alive && !m.left;
            [
                m.name.clone(),
                m.gossip_addr.to_string(),
                m.role.to_string(),
                m.phase.to_string(),
                status.to_string(),
                if ready { "yes" } else { "no" }.to_string(),
                m.etcd.clone().unwrap_or_else(|| "-".to_string()),
                if m.initializer { "(first server)" } else { "" }.to_string(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            line.push_str(&format!("{cell:<width$}  "));
        }
        format!("{}\n", line.trim_end())
    };
    let mut table = line(&HEADER);
    for row in &rows {
        table.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Role, phase: Phase) -> MemberSummary {
        MemberSummary {
            name: name.to_string(),
            generation: 1,
            gossip_addr: "10.0.0.1:7947".parse().unwrap(),
            node_addr: "10.0.0.1".parse().unwrap(),
            role,
            phase,
            alive: true,
            left: false,
            ready: true,
            initializer: false,
            ca_hash: None,
            vote: None,
            ack: None,
            agent_version: None,
            rke2_version: None,
            etcd: None,
        }
    }

    /// Every cell of a column starts where its header does, however long the values.
    #[test]
    fn columns_line_up_with_their_headers() {
        let mut long = member(
            "a-rather-long-host-name-01",
            Role::Observer,
            Phase::WaitingToJoin,
        );
        long.gossip_addr = "[fd00:1234:5678::101]:7947".parse().unwrap();
        long.initializer = true;
        long.etcd = Some("learner,silent".into());
        let table = members_table(&[member("s1", Role::Server, Phase::Ready), long]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let starts = |line: &str| -> Vec<usize> {
            let mut starts = vec![0];
            let bytes = line.as_bytes();
            for i in 2..bytes.len() {
                if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
                    starts.push(i);
                }
            }
            starts
        };
        let header = starts(lines[0]);
        assert_eq!(header.len(), 7, "{table}");
        for row in &lines[1..] {
            assert_eq!(starts(row)[..7], header[..], "{table}");
        }
        assert!(lines[2].ends_with("  (first server)"), "{table}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{table}");
    }

    #[test]
    fn the_keys_in_use_are_shown_under_the_table_and_a_failed_reload_with_them() {
        let mut report = StatusReport::new("s1");
        let printed = |report: &StatusReport| {
            let mut out = Vec::new();
            print_members(report, false, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        // An agent that did not say (an older version): no line.
        assert!(!printed(&report).contains("gossip keys"));
        report.keyring = KeyringStatus {
            primary: "0e3b3723".into(),
            keys: 2,
            reloads: 1,
            last_error: None,
        };
        assert!(
            printed(&report).contains("gossip keys: primary 0e3b3723, 2 accepted\n"),
            "{}",
            printed(&report)
        );
        report.keyring.last_error = Some("line 1: not valid base64".into());
        assert!(
            printed(&report).contains("the last reload failed, keys kept: line 1"),
            "{}",
            printed(&report)
        );
    }

    #[test]
    fn a_member_that_left_or_died_is_not_shown_ready() {
        let mut left = member("gone", Role::Server, Phase::Leaving);
        left.left = true;
        let mut dead = member("dead", Role::Server, Phase::Ready);
        dead.alive = false;
        let alive = member("up", Role::Server, Phase::Ready);
        let table = members_table(&[left, dead, alive]);
        let ready = |name: &str| {
            let row = table.lines().find(|l| l.starts_with(name)).unwrap();
            row.split_whitespace().nth(5).unwrap().to_string()
        };
        assert_eq!(ready("gone"), "no", "{table}");
        assert_eq!(ready("dead"), "no", "{table}");
        assert_eq!(ready("up"), "yes", "{table}");
        assert!(table.contains(" left "), "{table}");
    }
}
