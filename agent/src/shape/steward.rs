//! The steward's loop on a ready server: reads etcd's member list, publishes it to gossip while
//! this server is the steward, and carries out [`super::next_removal`].
//!
//! Every ready server runs the loop; only the steward ([`super::steward_of`]) reads etcd and acts,
//! so a fleet's servers do not all poll etcd for the same list.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{next_removal, steward_of, surplus, EtcdRoster, EtcdSeat, HostSeen, Removal};
use crate::gossip::schema::{Liveness, Member};
use crate::rke2::kube::{KubeAdmin, NodeDeletion};
use crate::rke2::rejoin::{node_password_key, Etcd, EtcdMember};
use crate::since::Since;

/// How often the steward reads etcd's member list. The list changes only when servers come or
/// go; a few seconds is quick next to the departed grace, and one local call per interval costs
/// nothing.
const STEWARD_INTERVAL: Duration = Duration::from_secs(3);

/// When this host's gossip first saw each member gone (dead or left), so that the departed grace
/// is measured on this host's clock and starts over whenever the member is seen alive.
#[derive(Debug, Default)]
pub struct GoneClock {
    since: Since<String>,
}

impl GoneClock {
    /// The view as the shape policy reads it, with each member's time gone.
    pub fn observe(&mut self, now: Instant, members: &[Member]) -> Vec<HostSeen> {
        self.since.observe(
            now,
            members
                .iter()
                .filter(|m| m.liveness != Liveness::Alive)
                .map(|m| m.name.clone()),
        );
        members
            .iter()
            .map(|m| HostSeen {
                name: m.name.clone(),
                role: m.announced.role,
                phase: m.announced.phase,
                liveness: m.liveness,
                ready: m.announced.ready,
                gone_for: self.since.duration(now, &m.name),
                promotable: m.announced.promotable,
            })
            .collect()
    }
}

/// What the steward needs to reach this server's etcd.
#[derive(Debug, Clone)]
pub struct StewardSettings {
    pub self_name: String,
    pub etcd_client: SocketAddr,
    /// This server's Kubernetes API (RKE2's 6443 on the node address).
    pub api: SocketAddr,
    /// Where RKE2's files are (`/` on a real host).
    pub root: PathBuf,
    pub departed_grace: Duration,
    /// The `servers` target, to say when etcd has more voters than it.
    pub servers_target: usize,
}

/// Runs the steward loop for as long as the agent runs; the roster to publish (or `None` when
/// this server is not the steward) goes to `roster`.
pub fn spawn(
    view: watch::Receiver<Arc<Vec<Member>>>,
    settings: StewardSettings,
    roster: watch::Sender<Option<EtcdRoster>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut clock = GoneClock::default();
        // How long this steward has seen each etcd member not answer. It starts over with a new
        // steward, which only ever delays a removal.
        let mut silence = Since::default();
        let mut last_wait = String::new();
        let mut last_surplus = None;
        loop {
            tokio::time::sleep(STEWARD_INTERVAL).await;
            let members = view.borrow().clone();
            let hosts = clock.observe(Instant::now(), &members);
            if steward_of(&hosts) != Some(settings.self_name.as_str()) {
                roster.send_if_modified(|r| r.take().is_some());
                continue;
            }
            match steward_round(&settings, &hosts, &mut silence).await {
                Ok((current, wait)) => {
                    let now_surplus = surplus(&current, settings.servers_target);
                    roster.send_if_modified(|r| {
                        let changed = r.as_ref() != Some(&current);
                        *r = Some(current);
                        changed
                    });
                    if let Some(why) = wait.filter(|w| *w != last_wait) {
                        info!(reason = %why, "etcd removal deferred");
                        last_wait = why;
                    }
                    if now_surplus != last_surplus {
                        if let Some(what) = &now_surplus {
                            warn!(reason = %what, "more servers than the target");
                        }
                        last_surplus = now_surplus;
                    }
                }
                Err(err) => {
                    warn!(error = %format!("{err:#}"), "steward cannot read etcd");
                }
            }
        }
    })
}

/// One round: the roster as etcd reports it, and the removal the policy asks for, carried out.
/// Returns the roster to publish (re-read after a removal) and why a removal waits, if it does.
async fn steward_round(
    settings: &StewardSettings,
    hosts: &[HostSeen],
    silence: &mut Since<String>,
) -> Result<(EtcdRoster, Option<String>)> {
    // Loaded afresh each round: RKE2 renews its etcd client certificate.
    let etcd = Etcd::new(settings.etcd_client, &settings.root)?;
    let members = etcd.members().await?;
    let current = roster_of(&members);
    let now = Instant::now();
    silence.observe(
        now,
        current
            .seats()
            .iter()
            .filter(|s| !s.answering)
            .map(|s| s.node.clone()),
    );
    let quorum = etcd.has_quorum().await;
    let silent_for = |node: &str| silence.duration(now, &node.to_string());
    match next_removal(hosts, &current, silent_for, quorum, settings.departed_grace) {
        Removal::Nothing => Ok((current, None)),
        Removal::Wait(why) => Ok((current, Some(why))),
        Removal::Remove(node) => {
            delete_node_object(settings, &node).await;
            // RKE2 removes the member as it deletes the Node; whatever it has not removed yet
            // (or, on an older RKE2, never will) goes directly.
            let members = etcd.members().await?;
            remove_departed(&etcd, &members, &node).await;
            let after = roster_of(&etcd.members().await?);
            Ok((after, None))
        }
    }
}

/// Deletes the Node of a departed server through the API as the cluster admin: RKE2's own
/// controllers then remove its etcd member and node password, and no workload is scheduled on a
/// Node that will never return. A failure is logged and the etcd cleanup goes on regardless: the
/// member is what blocks the cluster.
async fn delete_node_object(settings: &StewardSettings, node: &str) {
    let deleted = match KubeAdmin::new(settings.api, &settings.root) {
        Ok(admin) => admin.delete_node(node).await,
        Err(err) => Err(err),
    };
    match deleted {
        Ok(NodeDeletion::Deleted) => {
            info!(node = %node, "deleted the node object of a server gone for good")
        }
        Ok(NodeDeletion::Absent) => {}
        Err(err) => {
            warn!(node = %node, error = %format!("{err:#}"), "cannot delete the node object of a server gone for good")
        }
    }
}

/// Removes what a departed server left in the cluster: its etcd member (by id, so a member that
/// a returning host has just re-added under a new id is never touched) and its node password.
async fn remove_departed(etcd: &Etcd, members: &[EtcdMember], node: &str) {
    for m in members
        .iter()
        .filter(|m| m.node_name() == node && !m.answering)
    {
        match etcd.remove_member(m.id).await {
            Ok(()) => {
                info!(node = %node, member_id = m.id, "removed the etcd member of a server gone for good")
            }
            Err(err) => {
                warn!(node = %node, member_id = m.id, error = %format!("{err:#}"), "cannot remove the etcd member of a server gone for good")
            }
        }
    }
    match etcd.delete(&node_password_key(node)).await {
        Ok(true) => info!(node = %node, "removed the node password of a server gone for good"),
        Ok(false) => {}
        Err(err) => {
            warn!(node = %node, error = %format!("{err:#}"), "cannot remove the node password")
        }
    }
}

/// The roster of etcd's member list. A learner that never started has no name yet and is listed
/// under its id, so it still counts as a join in flight.
pub fn roster_of(members: &[EtcdMember]) -> EtcdRoster {
    EtcdRoster::new(
        members
            .iter()
            .map(|m| EtcdSeat {
                node: if m.name.is_empty() {
                    format!("unstarted-{:x}", m.id)
                } else {
                    m.node_name().to_string()
                },
                learner: m.learner,
                answering: m.answering,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::schema::{Announcement, Phase, Role};

    fn member(name: &str, liveness: Liveness) -> Member {
        let mut a = Announcement::new(Role::Server, "127.0.0.1".parse().unwrap());
        a.phase = Phase::Ready;
        a.ready = true;
        let mut m = Member::from_announcement(name, 1, "127.0.0.1:7947".parse().unwrap(), true, &a);
        m.liveness = liveness;
        m
    }

    #[test]
    fn time_gone_counts_from_the_first_sight_and_starts_over_on_return() {
        let mut clock = GoneClock::default();
        let t0 = Instant::now();
        let gone = [member("s1", Liveness::Alive), member("s2", Liveness::Dead)];
        let back = [member("s1", Liveness::Alive), member("s2", Liveness::Alive)];
        let gone_for = |hosts: Vec<HostSeen>| hosts[1].gone_for;
        assert_eq!(gone_for(clock.observe(t0, &gone)), Duration::ZERO);
        let later = t0 + Duration::from_secs(600);
        assert_eq!(
            gone_for(clock.observe(later, &gone)),
            Duration::from_secs(600)
        );
        assert_eq!(gone_for(clock.observe(later, &back)), Duration::ZERO);
        let again = later + Duration::from_secs(5);
        assert_eq!(gone_for(clock.observe(again, &gone)), Duration::ZERO);
        assert_eq!(
            gone_for(clock.observe(again + Duration::from_secs(30), &gone)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn the_roster_names_nodes_and_keeps_unstarted_learners() {
        let members = [
            EtcdMember {
                id: 1,
                name: "server-1-0a1b".into(),
                learner: false,
                answering: true,
                client_addrs: Vec::new(),
            },
            EtcdMember {
                id: 0x2a,
                name: String::new(),
                learner: true,
                answering: false,
                client_addrs: Vec::new(),
            },
        ];
        assert_eq!(roster_of(&members).encode(), "server-1:v+,unstarted-2a:l-");
    }
}
