//! What the demo reports at the end: one JSON object (`--json`), or each host's config.yaml, the
//! LB's config and a one-line summary.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap::status_socket::StatusReport;
use serde::Serialize;

use super::lb::LbState;
use super::LbChoice;
use crate::cluster::TestCluster;

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
    pub kind: LbChoice,
    /// False when the LB program is missing or cannot run here: the config is rendered but
    /// nothing checks or serves it.
    pub live: bool,
    /// Why the LB is not live, when it is not.
    pub not_live_reason: Option<String>,
    pub config_path: Option<PathBuf>,
    pub servers: Vec<String>,
}

impl LbSummary {
    pub(super) fn new(kind: LbChoice, lb: &LbState, servers: Vec<String>) -> LbSummary {
        LbSummary {
            kind,
            live: lb.live(),
            not_live_reason: lb.not_live_reason.clone(),
            config_path: lb.config_path.clone(),
            servers,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub formed: u64,
    pub all_ready: u64,
    pub lb_updated_after_kill: Option<u64>,
}

/// Every host as its own status report says, servers with what their etcd says.
pub(super) fn nodes(
    cluster: &TestCluster,
    reports: &BTreeMap<String, StatusReport>,
) -> Vec<NodeSummary> {
    cluster
        .hosts
        .iter()
        .map(|h| {
            let report = &reports[&h.name];
            let etcd = (report.role == Role::Server)
                .then(|| match cluster.etcd_views(&[&h.name]) {
                    Ok(views) => Some(EtcdSummary {
                        cluster_id: views[0].1.cluster_id.to_string(),
                        members: views[0].1.members.len(),
                    }),
                    Err(err) => {
                        progress!("{}: etcd did not answer: {err:#}", h.name);
                        None
                    }
                })
                .flatten();
            NodeSummary {
                name: h.name.clone(),
                address: h.ip,
                role: report.role,
                phase: report.phase,
                config_path: h.root.rke2().config_yaml(),
                etcd,
            }
        })
        .collect()
}

/// Each host's config.yaml (token redacted) and the LB's config, on stderr.
pub(super) fn print_configs(nodes: &[NodeSummary], lb: &LbState) {
    for node in nodes {
        let config = std::fs::read_to_string(&node.config_path).unwrap_or_default();
        say!(
            "--- {} ({}) {}\n{}",
            node.name,
            node.role,
            node.config_path.display(),
            redact_token(&config)
        );
    }
    if let Some(path) = &lb.config_path {
        let served = if lb.live() {
            ""
        } else {
            " (rendered only: nothing serves it)"
        };
        say!(
            "--- lb {}{served}\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }
}

/// The summary: one JSON object on stdout, or one line on stderr.
pub(super) fn print(summary: &DemoSummary, json: bool) -> Result<()> {
    if json {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string_pretty(summary)?)
            .and_then(|()| out.flush())
            .context("writing the summary")?;
    } else {
        say!(
            "summary: first server {}, formed in {} ms, all ready in {} ms, lb followed the stop in {} ms",
            summary.initializer,
            summary.timings_ms.formed,
            summary.timings_ms.all_ready,
            summary
                .timings_ms
                .lb_updated_after_kill
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
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
