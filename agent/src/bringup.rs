//! Pure decisions of the bring-up that follow the election: where to join, with which token,
//! whose turn it is, and what goes into RKE2's config.yaml. The runtime ([`crate::agent`]) does
//! the I/O around them.

use std::net::IpAddr;

use crate::config::AgentConfig;
use crate::gossip::schema::{Liveness, Member, Phase, Role};

/// Taint of a dedicated control plane, as in the manual procedure.
pub const CONTROL_PLANE_TAINT: &str = "CriticalAddonsOnly=true:NoExecute";

/// What a joiner needs from the existing cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinMaterial {
    /// The cluster identity: SHA-256 of the cluster CA, pinned before any secret is sent.
    pub ca_hash: String,
    /// The shared secret part of the token.
    pub secret: String,
    /// A ready server to register through when no registration address is configured.
    pub fallback_server: IpAddr,
}

impl std::fmt::Debug for JoinMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinMaterial")
            .field("ca_hash", &self.ca_hash)
            .field("secret", &"<redacted>")
            .field("fallback_server", &self.fallback_server)
            .finish()
    }
}

/// Finds the join material for the cluster `identity`: a ready server of that cluster that
/// publishes the token, the initializer first.
pub fn join_material(members: &[Member], identity: &str) -> Option<JoinMaterial> {
    let mut candidates: Vec<&Member> = members
        .iter()
        .filter(|m| {
            m.is_routable_server() && m.ca_hash.as_deref() == Some(identity) && m.token.is_some()
        })
        .collect();
    candidates.sort_by_key(|m| (!m.initializer, m.name.clone()));
    let source = candidates.first()?;
    Some(JoinMaterial {
        ca_hash: identity.to_string(),
        secret: source.token.clone()?,
        fallback_server: source.node_addr,
    })
}

/// Servers join etcd one at a time: simultaneous joins fail with "too many learner members"
/// (k3s#4335). The lease is implicit in gossip: it is `me`'s turn when no other live server is
/// `joining` and `me` is the lowest-named live server waiting to join.
///
/// Two hosts with different views may both think it is their turn; that costs an etcd retry,
/// never safety, because joining never creates a cluster.
pub fn join_turn(me: &str, members: &[Member]) -> Result<(), String> {
    let live_servers = members
        .iter()
        .filter(|m| m.name != me && m.liveness == Liveness::Alive && m.role == Role::Server);
    let mut ahead = Vec::new();
    for m in live_servers {
        match m.phase {
            Phase::Joining => return Err(format!("waiting for {} to finish joining", m.name)),
            Phase::WaitingToJoin if m.name.as_str() < me => ahead.push(m.name.as_str()),
            _ => {}
        }
    }
    match ahead.first() {
        Some(first) => Err(format!(
            "waiting for {} to join first ({} ahead)",
            first,
            ahead.len()
        )),
        None => Ok(()),
    }
}

/// The candidate that would take over if first-server candidate `me` abdicated: the lowest-named
/// live server candidate above it that has not abdicated (the election's next round). `None`
/// means abdicating would leave no candidate at all, for good, over what may be a passing outage
/// (every host has the same installer URL): the candidate keeps retrying instead.
pub fn successor_candidate(me: &str, members: &[Member]) -> Option<String> {
    members
        .iter()
        .filter(|m| {
            m.name.as_str() > me
                && m.liveness == Liveness::Alive
                && matches!(m.role, Role::Server | Role::Auto)
                && m.abdicated.is_none()
        })
        .map(|m| m.name.clone())
        .min()
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

    #[test]
    fn one_server_joins_at_a_time_lowest_name_first() {
        let members = vec![
            member("a", Role::Server, Phase::Ready),
            member("b", Role::Server, Phase::WaitingToJoin),
            member("c", Role::Server, Phase::WaitingToJoin),
        ];
        assert_eq!(join_turn("b", &members), Ok(()));
        assert!(join_turn("c", &members).unwrap_err().contains("b"));
        let members = vec![
            member("b", Role::Server, Phase::Joining),
            member("c", Role::Server, Phase::WaitingToJoin),
        ];
        assert!(join_turn("c", &members)
            .unwrap_err()
            .contains("finish joining"));
        // A dead joiner does not hold the lease forever.
        let mut dead = member("b", Role::Server, Phase::Joining);
        dead.liveness = Liveness::Dead;
        assert_eq!(join_turn("c", &[dead]), Ok(()));
    }

    #[test]
    fn only_a_live_candidate_above_that_has_not_abdicated_can_take_over() {
        let mut gave_up = member("c", Role::Server, Phase::Failed);
        gave_up.abdicated = Some(2);
        let mut dead = member("d", Role::Server, Phase::Voting);
        dead.liveness = Liveness::Dead;
        let members = vec![
            member("a", Role::Server, Phase::Voting),
            member("b", Role::Server, Phase::Voting),
            gave_up,
            dead,
            member("e", Role::Agent, Phase::Discovering),
        ];
        assert_eq!(successor_candidate("a", &members).as_deref(), Some("b"));
        assert_eq!(successor_candidate("b", &members), None);
        let mut members = members;
        members.push(member("f", Role::Auto, Phase::Voting));
        assert_eq!(successor_candidate("b", &members).as_deref(), Some("f"));
    }

    #[test]
    fn join_material_prefers_the_initializer_and_needs_a_token() {
        let hash = "a".repeat(64);
        let mut first = member("z", Role::Server, Phase::Ready);
        first.initializer = true;
        first.ca_hash = Some(hash.clone());
        first.token = Some("secret".into());
        let mut other = member("b", Role::Server, Phase::Ready);
        other.ca_hash = Some(hash.clone());
        other.token = Some("secret".into());
        let got = join_material(&[other.clone(), first], &hash).unwrap();
        assert_eq!(got.secret, "secret");
        other.token = None;
        assert!(join_material(&[other], &hash).is_none());
        assert!(!format!("{got:?}").contains("secret\""));
    }
}
