//! Pure decisions of the bring-up that follow the election: where to join, with which token,
//! whose turn it is, and what goes into RKE2's config.yaml; and the bring-up's persisted steps
//! ([`progress`]). The runtime ([`crate::daemon`]) does the I/O around them.

pub mod progress;

use std::net::IpAddr;
use std::time::Duration;

use crate::config::AgentConfig;
use crate::election::PeerView;
use crate::gossip::schema::{Liveness, Member, Phase, Role};
use crate::secret::Secret;

/// What a joiner needs from the existing cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMaterial {
    /// The cluster identity: SHA-256 of the cluster CA, pinned before any secret is sent.
    pub ca_hash: String,
    /// The shared secret part of the token.
    pub secret: Secret,
    /// A ready server to register through when no registration address is configured.
    pub fallback_server: IpAddr,
}

/// Finds the join material for the cluster `identity`: a ready server of that cluster that
/// publishes the token, the initializer first.
pub fn join_material(members: &[Member], identity: &str) -> Option<JoinMaterial> {
    let mut candidates: Vec<&Member> = members
        .iter()
        .filter(|m| {
            m.is_routable_server()
                && m.announced.ca_hash.as_deref() == Some(identity)
                && m.announced.token.is_some()
        })
        .collect();
    candidates.sort_by_key(|m| (!m.announced.initializer, m.name.clone()));
    let source = candidates.first()?;
    Some(JoinMaterial {
        ca_hash: identity.to_string(),
        secret: source.announced.token.clone()?,
        fallback_server: source.announced.node_addr,
    })
}

/// Why a joiner still has no join material, in words: the first server is not ready yet, and
/// when the initializer is not alive, what an operator may have to do. A joiner that settled on
/// an initializer which then lost power for good waits for it forever (it cannot know whether
/// RKE2 started there); this is where the operator learns so.
pub fn waiting_for_first_server(members: &[Member]) -> String {
    let gone: Vec<&str> = members
        .iter()
        .filter(|m| m.announced.initializer && m.liveness != Liveness::Alive)
        .map(|m| m.name.as_str())
        .collect();
    match gone.as_slice() {
        [] => "waiting for the first server to be ready".to_string(),
        names => format!(
            "waiting for the first server to be ready; the initializer {} is not alive: if it is \
             gone for good and never started RKE2, an operator must step in: rke2-bootstrap \
             election release",
            names.join(", ")
        ),
    }
}

/// How long a server that was joining or waiting to join keeps its place after the failure
/// detector calls it dead. The detector answers in well under a second, so a peer that is only
/// stalled (a starved CPU, a slow disk, a VM pause) looks dead for a moment; taking its turn then
/// would start two etcd joins at once. A joiner that really died costs the next one this long.
pub const JOIN_LEASE_SILENCE: Duration = Duration::from_secs(5);

/// Servers join etcd one at a time: simultaneous joins fail with "too many learner members"
/// (k3s#4335). The lease is implicit in gossip: it is `me`'s turn when no other server is
/// `joining` and `me` is the lowest-named server waiting to join, counting servers that are
/// alive or have looked dead for less than [`JOIN_LEASE_SILENCE`] (never ones that left).
///
/// Two hosts with different views may both think it is their turn; that costs an etcd retry,
/// never safety, because joining never creates a cluster.
pub fn join_turn(me: &str, peers: &[PeerView]) -> Result<(), String> {
    let present = |p: &&PeerView| !p.left && (p.alive || p.dead_for < JOIN_LEASE_SILENCE);
    let servers = peers
        .iter()
        .filter(|p| p.name != me && p.role == Role::Server)
        .filter(present);
    let mut ahead = Vec::new();
    for p in servers {
        match p.phase {
            Phase::Joining if p.alive => {
                return Err(format!("waiting for {} to finish joining", p.name))
            }
            Phase::Joining => {
                return Err(format!(
                    "waiting for {} to finish joining, silent for {} ms",
                    p.name,
                    p.dead_for.as_millis()
                ))
            }
            Phase::WaitingToJoin if p.name.as_str() < me => ahead.push(p.name.as_str()),
            _ => {}
        }
    }
    match ahead.iter().min() {
        Some(first) => Err(format!(
            "waiting for {} to join first ({} ahead)",
            first,
            ahead.len()
        )),
        None => Ok(()),
    }
}

/// The servers of a view, one `name liveness phase` each, for a log line.
pub fn servers_summary(peers: &[PeerView]) -> String {
    peers
        .iter()
        .filter(|p| p.role == Role::Server)
        .map(|p| {
            let liveness = match (p.left, p.alive) {
                (true, _) => "left".to_string(),
                (false, true) => "alive".to_string(),
                (false, false) => format!("dead for {} ms", p.dead_for.as_millis()),
            };
            format!("{} {liveness} {}", p.name, p.phase)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Failed install rounds (each with its own download retries) before a first-server candidate
/// gives up its candidacy for good.
pub const MAX_INSTALL_FAILURES_BEFORE_ABDICATING: u32 = 3;

/// What a first-server candidate does after its installer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterInstallFailure {
    /// Try again after this long.
    Retry(Duration),
    /// Give up the candidacy for good ([`crate::election::abdicate`]).
    Abdicate,
}

/// The install-failure policy. Abdication is forever, so a flaky network gets a few chances
/// first (with a growing pause), and a candidate never abdicates when no other could take over:
/// every host has the same installer URL, and giving up then would strand the cluster for good.
pub fn after_install_failure(failures: u32, successor: Option<&str>) -> AfterInstallFailure {
    if failures < MAX_INSTALL_FAILURES_BEFORE_ABDICATING || successor.is_none() {
        AfterInstallFailure::Retry(Duration::from_secs(5 * u64::from(failures.min(12))))
    } else {
        AfterInstallFailure::Abdicate
    }
}

/// The host nodes register through: the configured LB, or a ready server of the cluster.
pub fn registration_host(cfg: &AgentConfig, material: &JoinMaterial) -> String {
    cfg.registration_address
        .clone()
        .unwrap_or_else(|| material.fallback_server.to_string())
}

/// `tls-san` for servers: the registration address and the LB's IP, as in the manual procedure.
pub fn tls_sans(cfg: &AgentConfig) -> Vec<String> {
    let mut sans: Vec<String> = cfg.registration_address.iter().cloned().collect();
    if let Some(ip) = cfg.registration_ip {
        let ip = ip.to_string();
        if !sans.contains(&ip) {
            sans.push(ip);
        }
    }
    sans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::schema::Announcement;

    fn member(name: &str, role: Role, phase: Phase) -> Member {
        let mut a = Announcement::new(role, "127.0.0.1".parse().unwrap());
        a.phase = phase;
        a.ready = phase == Phase::Ready;
        Member::from_announcement(name, 1, "127.0.0.1:7947".parse().unwrap(), true, &a)
    }

    fn peer(name: &str, role: Role, phase: Phase) -> PeerView {
        PeerView::from(&member(name, role, phase))
    }

    fn dead_for(secs: f64, mut p: PeerView) -> PeerView {
        p.alive = false;
        p.dead_for = Duration::from_secs_f64(secs);
        p
    }

    #[test]
    fn one_server_joins_at_a_time_lowest_name_first() {
        let peers = vec![
            peer("a", Role::Server, Phase::Ready),
            peer("c", Role::Server, Phase::WaitingToJoin),
            peer("b", Role::Server, Phase::WaitingToJoin),
            peer("w", Role::Agent, Phase::WaitingToJoin),
        ];
        assert_eq!(join_turn("b", &peers), Ok(()));
        let c = join_turn("c", &peers).unwrap_err();
        assert!(c.contains("waiting for b to join first (1 ahead)"), "{c}");
        let peers = vec![
            peer("b", Role::Server, Phase::Joining),
            peer("c", Role::Server, Phase::WaitingToJoin),
        ];
        assert!(join_turn("c", &peers)
            .unwrap_err()
            .contains("finish joining"));
        // Whoever is joining holds the lease, whatever its name.
        assert!(join_turn("a", &peers).is_err());
    }

    #[test]
    fn a_stalled_joiner_keeps_the_lease_for_a_while_but_not_forever() {
        let joining = peer("b", Role::Server, Phase::Joining);
        // Looks dead for a moment (a stall, not a death): still joining.
        let stalled = join_turn("c", &[dead_for(1.1, joining.clone())]).unwrap_err();
        assert!(
            stalled.contains("finish joining, silent for 1100 ms"),
            "{stalled}"
        );
        let secs = JOIN_LEASE_SILENCE.as_secs_f64();
        assert!(join_turn("c", &[dead_for(secs - 0.1, joining.clone())]).is_err());
        // Silent long enough: the lease is released.
        assert_eq!(join_turn("c", &[dead_for(secs, joining.clone())]), Ok(()));
        // A joiner that left is gone at once.
        let mut left = dead_for(0.0, joining);
        left.left = true;
        assert_eq!(join_turn("c", &[left]), Ok(()));
        // The same for a waiter ahead in line.
        let waiting = peer("b", Role::Server, Phase::WaitingToJoin);
        assert!(join_turn("c", &[dead_for(1.0, waiting.clone())]).is_err());
        assert_eq!(join_turn("c", &[dead_for(secs, waiting)]), Ok(()));
    }

    #[test]
    fn install_failures_retry_with_a_growing_pause_and_abdicate_only_with_a_successor() {
        use AfterInstallFailure::*;
        let cases = [
            (1, Some("b"), Retry(Duration::from_secs(5))),
            (2, Some("b"), Retry(Duration::from_secs(10))),
            (3, Some("b"), Abdicate),
            (3, None, Retry(Duration::from_secs(15))),
            (40, None, Retry(Duration::from_secs(60))),
        ];
        for (failures, successor, want) in cases {
            assert_eq!(
                after_install_failure(failures, successor),
                want,
                "{failures} failures, successor {successor:?}"
            );
        }
    }

    #[test]
    fn a_joiner_waiting_on_a_dead_initializer_says_what_an_operator_can_do() {
        let mut first = member("a", Role::Server, Phase::Initializing);
        first.announced.initializer = true;
        let alive = waiting_for_first_server(std::slice::from_ref(&first));
        assert_eq!(alive, "waiting for the first server to be ready");
        first.liveness = Liveness::Dead;
        let dead = waiting_for_first_server(&[first, member("b", Role::Server, Phase::Ready)]);
        assert!(
            dead.contains("the initializer a is not alive") && dead.contains("election release"),
            "{dead}"
        );
    }

    #[test]
    fn join_material_prefers_the_initializer_and_needs_a_token() {
        let hash = "a".repeat(64);
        let mut first = member("z", Role::Server, Phase::Ready);
        first.announced.initializer = true;
        first.announced.ca_hash = Some(hash.clone());
        first.announced.token = Some(Secret::new("secret").unwrap());
        let mut other = member("b", Role::Server, Phase::Ready);
        other.announced.ca_hash = Some(hash.clone());
        other.announced.token = Some(Secret::new("secret").unwrap());
        let got = join_material(&[other.clone(), first], &hash).unwrap();
        assert_eq!(got.secret.expose(), "secret");
        other.announced.token = None;
        assert!(join_material(&[other], &hash).is_none());
        assert!(!format!("{got:?}").contains("secret\""));
    }
}
