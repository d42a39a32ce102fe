//! Direct checks of the servers the LB lists: a TCP connect to each one's supervisor port, every
//! `interval`. Gossip stays the source of which servers exist and are ready; the checks only take
//! a server out early when it stops answering, so a crashed server leaves the LB file in about a
//! second even while gossip runs at its slow, steady-state pace (where its failure detector needs
//! tens of seconds, see the agent's `gossip::pacing`).
//!
//! Only a server that answered at least once and then failed `fall` checks in a row is vetoed: a
//! server the LB host never reached (a firewall between them, a test without listeners) is
//! routed exactly as gossip says, as it was before checks existed, and a check can never empty an
//! LB that gossip would fill. One success lifts the veto (gossip already vouched for readiness).
//!
//! [`HealthBook`] is the pure core; [`run_checks`] is the I/O edge, a task that probes the
//! targets it is handed and publishes the vetoed names.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::upstream::Upstream;
use crate::view::{Exclusion, RoutableView};

/// Health-check knobs (`health-check` in the sidecar's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    /// Time between two checks of a server.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one connect may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed checks in a row that take a server out.
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    /// A crash on the same network answers a connect with a reset at once: two failed checks
    /// 250 ms apart take the server out within about 0.5 s; a host that lost power lets each
    /// connect time out, about 1.25 s. Both well under the 2 s the LB has.
    fn default() -> Self {
        HealthCheckConfig {
            enabled: true,
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(500),
            fall: 2,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Record {
    ever_up: bool,
    failures: u32,
}

/// Check results per server, and the verdict.
#[derive(Debug, Default)]
pub struct HealthBook {
    fall: u32,
    records: BTreeMap<Upstream, Record>,
}

impl HealthBook {
    pub fn new(fall: u32) -> HealthBook {
        HealthBook {
            fall: fall.max(1),
            records: BTreeMap::new(),
        }
    }

    /// Forgets servers that are no longer targets (gone from gossip, or a new address).
    pub fn retain(&mut self, targets: &[Upstream]) {
        self.records.retain(|u, _| targets.contains(u));
    }

    /// Records one check of `server`.
    pub fn observe(&mut self, server: &Upstream, ok: bool) {
        let record = self.records.entry(server.clone()).or_default();
        if ok {
            record.ever_up = true;
            record.failures = 0;
        } else {
            record.failures = record.failures.saturating_add(1);
        }
    }

    /// Servers that answered once and then failed `fall` checks in a row.
    pub fn vetoed(&self) -> BTreeSet<String> {
        self.records
            .iter()
            .filter(|(_, r)| r.ever_up && r.failures >= self.fall)
            .map(|(u, _)| u.name.clone())
            .collect()
    }
}

/// Moves the vetoed servers of a gossip-routable view to its exclusions.
pub fn apply_veto(mut view: RoutableView, vetoed: &BTreeSet<String>) -> RoutableView {
    if vetoed.is_empty() {
        return view;
    }
    let (out, kept): (Vec<Upstream>, Vec<Upstream>) = std::mem::take(&mut view.upstreams)
        .into_iter()
        .partition(|u| vetoed.contains(&u.name));
    view.upstreams = kept;
    for u in out {
        view.excluded.insert(u.name, Exclusion::Unreachable);
    }
    view
}

/// Probes the servers in `targets` every `config.interval` (connect to `port`), publishing the
/// vetoed names on `vetoed` whenever they change. Ends when either channel closes.
pub async fn run_checks(
    config: HealthCheckConfig,
    port: u16,
    mut targets: watch::Receiver<Vec<Upstream>>,
    vetoed: watch::Sender<BTreeSet<String>>,
) {
    let mut book = HealthBook::new(config.fall);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = targets.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new target is checked at once, not one interval later.
            }
        }
        let current = targets.borrow_and_update().clone();
        book.retain(&current);
        let mut checks = JoinSet::new();
        for server in current {
            let addr = SocketAddr::new(server.addr, port);
            let timeout = config.timeout;
            checks.spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                );
                (server, ok)
            });
        }
        while let Some(result) = checks.join_next().await {
            if let Ok((server, ok)) = result {
                book.observe(&server, ok);
            }
        }
        let now_vetoed = book.vetoed();
        if *vetoed.borrow() != now_vetoed {
            for name in now_vetoed.difference(&vetoed.borrow()) {
                warn!(server = %name, port, "server stopped answering health checks");
            }
            for name in vetoed.borrow().difference(&now_vetoed) {
                info!(server = %name, port, "server answers health checks again");
            }
            if vetoed.send(now_vetoed).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, host: u8) -> Upstream {
        Upstream {
            name: name.into(),
            addr: std::net::IpAddr::from([10, 0, 0, host]),
        }
    }

    #[test]
    fn vetoed_after_fall_failures_once_it_answered() {
        let mut book = HealthBook::new(2);
        let (a, b) = (up("a", 1), up("b", 2));
        // b never answered: failures alone never veto it.
        for _ in 0..5 {
            book.observe(&b, false);
        }
        book.observe(&a, true);
        book.observe(&a, false);
        assert!(book.vetoed().is_empty(), "one failure is not enough");
        book.observe(&a, false);
        assert_eq!(book.vetoed(), BTreeSet::from(["a".to_string()]));
        book.observe(&a, true);
        assert!(book.vetoed().is_empty(), "one success lifts the veto");
    }

    #[test]
    fn forgotten_targets_start_over() {
        let mut book = HealthBook::new(1);
        let a = up("a", 1);
        book.observe(&a, true);
        book.observe(&a, false);
        assert_eq!(book.vetoed().len(), 1);
        book.retain(&[]);
        assert!(book.vetoed().is_empty());
        // the same name at a new address is a new server
        let moved = up("a", 9);
        book.observe(&moved, false);
        assert!(book.vetoed().is_empty());
    }
}
