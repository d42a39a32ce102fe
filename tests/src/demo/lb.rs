//! The demo's LB host: live when its program runs here, else the sidecar renders only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::DemoArgs;
use crate::cluster::{lb_servers, LbKind, TestCluster};
use crate::find_on_path;

/// What the demo's LB host turned out to be.
pub(super) struct LbState {
    pub ip: IpAddr,
    /// The config the sidecar renders; `None` with `--lb none`.
    pub config_path: Option<PathBuf>,
    /// Why the LB is not live, when it is not.
    pub not_live_reason: Option<String>,
}

impl LbState {
    /// Whether the LB program serves the rendered config (hosts then register through it).
    pub fn live(&self) -> bool {
        self.config_path.is_some() && self.not_live_reason.is_none()
    }

    /// The servers the rendered config routes to (none without an LB).
    pub fn servers(&self) -> Vec<String> {
        self.config_path
            .as_deref()
            .map(|path| lb_servers(path, self.ip))
            .unwrap_or_default()
    }
}

/// Starts the LB host in `<dir>/lb` with the server hosts as its seeds: the LB program found on
/// PATH and the sidecar, or, when the program is missing or cannot run, the sidecar alone,
/// rendering only.
pub(super) fn start(args: &DemoArgs, cluster: &mut TestCluster, dir: &Path) -> Result<LbState> {
    let ip = cluster.spec.lb_address();
    let Some(kind) = args.lb.kind() else {
        return Ok(LbState {
            ip,
            config_path: None,
            not_live_reason: None,
        });
    };
    let mut setup = cluster.lb_setup(kind, None);
    setup.seeds = cluster.spec.seeds.clone().unwrap_or_default();
    setup.dir = Some(dir.join("lb"));
    let not_live_reason = match find_on_path(kind.name()) {
        None => Some("it is not installed (not on PATH)".to_string()),
        Some(program) => {
            let mut live = setup.clone();
            live.program = Some(program);
            match cluster.start_lb_with(live) {
                Err(err) => Some(format!("{err:#}")),
                Ok(()) => {
                    let lb = cluster.lb.as_mut().expect("the LB host started");
                    let reason = lb.wait_up(Duration::from_secs(30))?;
                    if reason.is_some() {
                        lb.render_only()?;
                    }
                    reason
                }
            }
        }
    };
    if cluster.lb.is_none() {
        cluster.start_lb_with(setup)?;
    }
    if let Some(reason) = &not_live_reason {
        // Said once, here: everything else works without it.
        progress!(
            "{kind} cannot run here: {reason}. The cluster forms without it (hosts register \
             with the first server directly); the sidecar renders the config {kind} would \
             serve, shown at the end, but nothing checks or serves it. For a live LB: {hint}",
            kind = kind.name(),
            hint = install_hint(kind)
        );
    }
    Ok(LbState {
        ip,
        config_path: Some(cluster.lb().config_file.clone()),
        not_live_reason,
    })
}

fn install_hint(kind: LbKind) -> &'static str {
    match kind {
        LbKind::Nginx => {
            "install nginx with its stream module (Debian: apt-get install nginx-light \
             libnginx-mod-stream), or use --lb haproxy with HAProxy installed"
        }
        LbKind::Haproxy => "install HAProxy (Debian: apt-get install haproxy)",
    }
}
