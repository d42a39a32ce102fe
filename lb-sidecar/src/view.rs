//! From a gossip membership view to the set of servers the LB may route to.
//!
//! Pure: no clock, no I/O. The caller logs what comes out (alarms at error level).
//!
//! Routing to the wrong server is worse than routing to too few: a joiner sent to a server of a
//! stray second cluster joins *that* cluster, and RKE2 cannot merge clusters afterwards. So a
//! server is routable only when it is ready by its own account *and* carries the cluster's CA hash.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use rke2_bootstrap::gossip::schema::{cluster_identity, Liveness, Member, Phase, Role};
use serde::{Deserialize, Serialize};

use crate::upstream::{Upstream, UpstreamError};

/// Why a server-role member is not in the routable set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Exclusion {
    /// Announced it is leaving.
    Left,
    /// The failure detector gave up on it.
    Dead,
    /// Alive but not (yet, or no longer) ready.
    NotReady { phase: Phase },
    /// Ready but publishes no CA hash, so we cannot tell which cluster it serves.
    NoCaHash,
    /// No cluster identity is known yet, so no server can be vouched for.
    NoClusterIdentity,
    /// Ready, but a member of another cluster (another CA). Also reported as an [`Alarm`].
    ForeignCa { ca_hash: String },
    /// Its name could end up in the LB config and does not pass validation (see
    /// [`crate::upstream`]).
    InvalidName { detail: String },
    /// Its address is not a usable unicast address.
    InvalidAddr { detail: String },
    /// Another routable member with the same name has a newer generation.
    OlderGeneration,
    /// Another routable member (the one named) already uses this address.
    DuplicateAddr { kept: String },
    /// Ready in gossip, but it answered the LB host's health checks before and stopped (see
    /// [`crate::health`]).
    Unreachable,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Left => f.write_str("left"),
            Exclusion::Dead => f.write_str("dead"),
            Exclusion::NotReady { phase } => write!(f, "not ready ({phase})"),
            Exclusion::NoCaHash => f.write_str("no ca hash"),
            Exclusion::NoClusterIdentity => f.write_str("no cluster identity yet"),
            Exclusion::ForeignCa { ca_hash } => write!(f, "foreign ca {}", short(ca_hash)),
            Exclusion::InvalidName { detail } => write!(f, "invalid name: {detail}"),
            Exclusion::InvalidAddr { detail } => write!(f, "invalid address: {detail}"),
            Exclusion::OlderGeneration => f.write_str("superseded by a newer generation"),
            Exclusion::DuplicateAddr { kept } => write!(f, "address already used by {kept}"),
            Exclusion::Unreachable => f.write_str("not answering health checks"),
        }
    }
}

/// A server that looks ready but belongs to another cluster: someone started a second cluster
/// (or pointed a host at the wrong gossip ring). Never routed to; the caller logs it at error level.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Alarm {
    pub name: String,
    pub addr: IpAddr,
    pub ca_hash: String,
}

impl fmt::Display for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} serves a foreign cluster (ca {})",
            self.name,
            self.addr,
            short(&self.ca_hash)
        )
    }
}

/// What the LB should route to, and what it must not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutableView {
    /// Sorted by name; names and addresses unique.
    pub upstreams: Vec<Upstream>,
    /// Server-role members left out, by name, with the reason.
    pub excluded: BTreeMap<String, Exclusion>,
    /// Ready servers of another cluster.
    pub alarms: Vec<Alarm>,
}

impl RoutableView {
    pub fn names(&self) -> Vec<&str> {
        self.upstreams.iter().map(|u| u.name.as_str()).collect()
    }
}

/// Picks the CA hash the LB serves.
///
/// Order: an operator-pinned hash; else the one this sidecar already committed to (so that a
/// stray cluster appearing later, or the initializer's record vanishing from gossip, never flips
/// the LB to other servers); else the hash [`cluster_identity`] elects; else, when no initializer
/// is visible at all (the sidecar restarted after the first server was gone), the hash every
/// routable server agrees on. Disagreement without an initializer yields `None`: route nowhere
/// new rather than guess.
pub fn resolve_identity(
    members: &[Member],
    pinned: Option<&str>,
    committed: Option<&str>,
) -> Option<String> {
    if let Some(hash) = pinned.or(committed) {
        return Some(hash.to_string());
    }
    if let (Some(hash), _) = cluster_identity(members) {
        return Some(hash);
    }
    let mut hashes = members
        .iter()
        .filter(|m| m.is_routable_server())
        .filter_map(|m| m.announced.ca_hash.as_deref());
    let first = hashes.next()?;
    hashes.all(|h| h == first).then(|| first.to_string())
}

/// Computes the routable set for a given cluster identity (see [`resolve_identity`]).
pub fn routable_view(members: &[Member], identity: Option<&str>) -> RoutableView {
    let mut view = RoutableView::default();
    // Candidates by name: the newest generation wins, ties broken by the lower address, so the
    // result does not depend on the order gossip listed the members in.
    let rank = |m: &Member| (m.generation, std::cmp::Reverse(m.announced.node_addr));
    let mut by_name: BTreeMap<&str, (&Member, Upstream)> = BTreeMap::new();
    let mut rejected: BTreeMap<&str, (&Member, Exclusion)> = BTreeMap::new();
    for m in members.iter().filter(|m| m.announced.role == Role::Server) {
        match routable_upstream(m, identity) {
            Err(reason) => {
                if let Exclusion::ForeignCa { ca_hash } = &reason {
                    view.alarms.push(Alarm {
                        name: m.name.clone(),
                        addr: m.announced.node_addr,
                        ca_hash: ca_hash.clone(),
                    });
                }
                // Two entries of one generation and address that disagree (seen through
                // different peers) are rare; any choice will do as long as it does not depend
                // on gossip's listing order: the newest, then the reason that prints first.
                let key = |m: &Member, reason: &Exclusion| {
                    (rank(m), std::cmp::Reverse(format!("{reason:?}")))
                };
                let replaces = rejected
                    .get(m.name.as_str())
                    .is_none_or(|(other, kept)| key(m, &reason) > key(other, kept));
                if replaces {
                    rejected.insert(&m.name, (m, reason));
                }
            }
            Ok(upstream) => match by_name.get(m.name.as_str()) {
                Some((other, _)) if rank(other) >= rank(m) => {}
                _ => {
                    by_name.insert(&m.name, (m, upstream));
                }
            },
        }
    }
    // A routable generation of a name is not shadowed by a stale one.
    for (name, (_, reason)) in rejected {
        if !by_name.contains_key(name) {
            view.excluded.insert(name.to_string(), reason);
        }
    }
    // Names are unique now; make addresses unique too, the lowest name keeping an address.
    let mut by_addr: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for (name, (_, upstream)) in by_name {
        if let Some(kept) = by_addr.get(&upstream.addr) {
            view.excluded.insert(
                name.to_string(),
                Exclusion::DuplicateAddr {
                    kept: kept.to_string(),
                },
            );
            continue;
        }
        by_addr.insert(upstream.addr, name);
        view.upstreams.push(upstream);
    }
    view.alarms.sort();
    view.alarms.dedup();
    view
}

/// The member as an upstream, or why it cannot be one.
fn routable_upstream(m: &Member, identity: Option<&str>) -> Result<Upstream, Exclusion> {
    match m.liveness {
        Liveness::Left => return Err(Exclusion::Left),
        Liveness::Dead => return Err(Exclusion::Dead),
        Liveness::Alive => {}
    }
    if !m.is_routable_server() {
        return Err(Exclusion::NotReady {
            phase: if m.announced.phase == Phase::Ready && !m.announced.ready {
                // Phase says ready but the flag does not: report the flag.
                Phase::Joining
            } else {
                m.announced.phase
            },
        });
    }
    let Some(hash) = m.announced.ca_hash.as_deref() else {
        return Err(Exclusion::NoCaHash);
    };
    let Some(identity) = identity else {
        return Err(Exclusion::NoClusterIdentity);
    };
    if hash != identity {
        return Err(Exclusion::ForeignCa {
            ca_hash: hash.to_string(),
        });
    }
    Upstream::new(m.name.clone(), m.announced.node_addr).map_err(|err| match err {
        UpstreamError::InvalidName { .. } => Exclusion::InvalidName {
            detail: err.to_string(),
        },
        UpstreamError::InvalidAddr { .. } => Exclusion::InvalidAddr {
            detail: err.to_string(),
        },
    })
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rke2_bootstrap::gossip::schema::Liveness;
    use rke2_testkit::member;
    use std::net::IpAddr;

    pub(crate) use rke2_testkit::member::{CA, STRAY_CA as OTHER_CA};

    /// A ready server of cluster `CA` at 127.0.0.`last`.
    pub(crate) fn server(name: &str, last: u8) -> Member {
        member::server(name, IpAddr::from([127, 0, 0, last]))
    }

    fn initializer(name: &str, last: u8) -> Member {
        member::initializer(name, IpAddr::from([127, 0, 0, last]))
    }

    fn names(view: &RoutableView) -> Vec<&str> {
        view.names()
    }

    #[test]
    fn only_ready_servers_of_the_cluster_are_routable() {
        let members = vec![
            initializer("m1", 1),
            server("m2", 2),
            server("m3", 3).announcing(|a| {
                a.ready = false;
                a.phase = Phase::Joining;
            }),
            server("w1", 4).announcing(|a| a.role = Role::Agent),
            server("lb", 5).announcing(|a| a.role = Role::Observer),
        ];
        let id = resolve_identity(&members, None, None);
        assert_eq!(id.as_deref(), Some(CA));
        let view = routable_view(&members, id.as_deref());
        assert_eq!(names(&view), ["m1", "m2"]);
        assert_eq!(
            view.excluded.get("m3"),
            Some(&Exclusion::NotReady {
                phase: Phase::Joining
            })
        );
        assert!(!view.excluded.contains_key("w1"), "agents are not listed");
        assert!(view.alarms.is_empty());
    }

    #[test]
    fn left_and_dead_servers_are_excluded_with_their_reason() {
        let members = vec![
            initializer("m1", 1),
            Member {
                liveness: Liveness::Left,
                ..server("m2", 2)
            },
            Member {
                liveness: Liveness::Dead,
                ..server("m3", 3)
            },
        ];
        let view = routable_view(&members, Some(CA));
        assert_eq!(names(&view), ["m1"]);
        assert_eq!(view.excluded["m2"], Exclusion::Left);
        assert_eq!(view.excluded["m3"], Exclusion::Dead);
    }

    #[test]
    fn servers_of_a_stray_cluster_raise_alarms_and_are_never_routed() {
        let members = vec![
            initializer("m1", 1),
            server("m2", 2),
            initializer("x1", 9).announcing(|a| a.ca_hash = Some(OTHER_CA.into())),
        ];
        let id = resolve_identity(&members, None, None);
        assert_eq!(id.as_deref(), Some(CA), "more ready servers back CA");
        let view = routable_view(&members, id.as_deref());
        assert_eq!(names(&view), ["m1", "m2"]);
        assert_eq!(
            view.alarms,
            vec![Alarm {
                name: "x1".into(),
                addr: "127.0.0.9".parse().unwrap(),
                ca_hash: OTHER_CA.into()
            }]
        );
    }

    #[test]
    fn committed_identity_sticks_when_a_bigger_stray_appears() {
        let stray =
            |n: &str, i: u8| initializer(n, i).announcing(|a| a.ca_hash = Some(OTHER_CA.into()));
        let members = vec![
            initializer("m1", 1),
            stray("x1", 7),
            stray("x2", 8),
            stray("x3", 9),
        ];
        assert_eq!(
            resolve_identity(&members, None, None).as_deref(),
            Some(OTHER_CA)
        );
        assert_eq!(
            resolve_identity(&members, None, Some(CA)).as_deref(),
            Some(CA)
        );
        assert_eq!(
            resolve_identity(&members, Some(CA), Some(OTHER_CA)).as_deref(),
            Some(CA),
            "an operator pin wins"
        );
    }

    #[test]
    fn without_initializer_identity_needs_unanimous_servers() {
        let members = vec![server("m2", 2), server("m3", 3)];
        assert_eq!(resolve_identity(&members, None, None).as_deref(), Some(CA));
        let split = vec![
            server("m2", 2),
            server("m3", 3).announcing(|a| a.ca_hash = Some(OTHER_CA.into())),
        ];
        assert_eq!(resolve_identity(&split, None, None), None);
        let view = routable_view(&split, None);
        assert!(view.upstreams.is_empty());
        assert_eq!(view.excluded["m2"], Exclusion::NoClusterIdentity);
    }

    #[test]
    fn ready_server_without_ca_hash_is_not_trusted() {
        let members = vec![
            initializer("m1", 1),
            server("m2", 2).announcing(|a| a.ca_hash = None),
        ];
        let view = routable_view(&members, Some(CA));
        assert_eq!(names(&view), ["m1"]);
        assert_eq!(view.excluded["m2"], Exclusion::NoCaHash);
    }

    #[test]
    fn output_is_sorted_and_deduplicated() {
        let members = vec![
            server("m3", 3),
            server("m1", 1),
            // Same name, newer generation, new address: the newer one wins.
            Member {
                generation: 2,
                ..server("m2", 2)
            }
            .announcing(|a| a.node_addr = "127.0.0.22".parse().unwrap()),
            server("m2", 2),
            // Dead old generation of m1 does not shadow the live one.
            Member {
                generation: 0,
                liveness: Liveness::Dead,
                ..server("m1", 1)
            },
            // Another name on m3's address.
            server("z9", 3),
        ];
        let view = routable_view(&members, Some(CA));
        assert_eq!(
            view.upstreams,
            vec![
                Upstream {
                    name: "m1".into(),
                    addr: "127.0.0.1".parse().unwrap()
                },
                Upstream {
                    name: "m2".into(),
                    addr: "127.0.0.22".parse().unwrap()
                },
                Upstream {
                    name: "m3".into(),
                    addr: "127.0.0.3".parse().unwrap()
                },
            ]
        );
        assert!(!view.excluded.contains_key("m1"));
        assert_eq!(
            view.excluded["z9"],
            Exclusion::DuplicateAddr { kept: "m3".into() }
        );
        let mut reversed = members.clone();
        reversed.reverse();
        assert_eq!(
            routable_view(&reversed, Some(CA)),
            view,
            "order-independent"
        );
    }

    #[test]
    fn hostile_names_and_addresses_are_excluded() {
        let members = vec![
            server("m1", 1),
            server("evil;\n}", 2),
            server("m3", 3).announcing(|a| a.node_addr = "0.0.0.0".parse().unwrap()),
        ];
        let view = routable_view(&members, Some(CA));
        assert_eq!(names(&view), ["m1"]);
        assert!(matches!(
            view.excluded["evil;\n}"],
            Exclusion::InvalidName { .. }
        ));
        assert!(matches!(view.excluded["m3"], Exclusion::InvalidAddr { .. }));
    }
}
