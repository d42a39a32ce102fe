//! The gossip key schema: the one place that knows which keys a node publishes and how each value
//! is spelled on the wire. Everything else works with [`Announcement`] (what this node says about
//! itself) and [`Member`] (what we know about a peer).
//!
//! Values are short ASCII strings so that a `chitchat` dump stays readable while debugging.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::gossip::etcd_roster::EtcdRoster;
use crate::secret::Secret;

/// Raw key names. Private on purpose: callers go through [`Announcement::to_key_values`] and
/// [`Member::from_key_values`].
mod key {
    pub const ROLE: &str = "role";
    pub const PHASE: &str = "phase";
    pub const NODE_ADDR: &str = "node-addr";
    pub const READY: &str = "ready";
    pub const CA_HASH: &str = "ca-hash";
    pub const VOTE: &str = "vote";
    pub const INITIALIZER: &str = "initializer";
    pub const ABDICATED: &str = "abdicated";
    pub const ACK: &str = "ack";
    pub const TOKEN: &str = "token";
    pub const LEAVING: &str = "leaving";
    pub const AGENT_VERSION: &str = "agent-version";
    pub const RKE2_VERSION: &str = "rke2-version";
    pub const PROMOTABLE: &str = "promotable";
    pub const RKE2_DATA: &str = "rke2-data";
    pub const ETCD_MEMBERS: &str = "etcd-members";
    /// Written last when a node joins gossip: until it is present the node is "half-announced"
    /// and hidden from the live view (chitchat's `extra_liveness_predicate`).
    pub const ANNOUNCED: &str = "announced";
    /// The node's slow gossip interval in milliseconds while it gossips at that pace, `0` (or
    /// absent) while it gossips fast: see `gossip::pacing`. Not part of [`super::Member`].
    pub const PACE: &str = "pace";
}

/// The key whose presence marks a node as fully announced; used by the liveness predicate.
pub const ANNOUNCED_KEY: &str = key::ANNOUNCED;

/// The key a node publishes its gossip pace in (see `gossip::pacing`).
pub const PACE_KEY: &str = key::PACE;

/// The value of [`PACE_KEY`]: a slow interval, or `None` for fast rounds.
pub fn pace_value(slow: Option<std::time::Duration>) -> String {
    slow.map_or(0, |d| d.as_millis() as u64).to_string()
}

/// Reads a [`PACE_KEY`] value: the announced slow interval, `None` for fast rounds (or a value
/// this version cannot read, which then counts as fast: chitchat's detector alone).
pub fn parse_pace(value: &str) -> Option<std::time::Duration> {
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Some(std::time::Duration::from_millis(ms)),
        _ => None,
    }
}

/// What a host is, as published in gossip.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs `rke2-server`: control plane and etcd.
    Server,
    /// Runs `rke2-agent`: a worker.
    Agent,
    /// Configured `auto` and not yet decided: counts as a server candidate.
    Auto,
    /// The LB sidecar: observes, never a candidate, never routed to.
    Observer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Auto => "auto",
            Role::Observer => "observer",
        }
    }

    /// Hosts that take part in the first-server election.
    pub fn is_server_candidate(self) -> bool {
        matches!(self, Role::Server | Role::Auto)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Role::Server),
            "agent" => Ok(Role::Agent),
            "auto" => Ok(Role::Auto),
            "observer" => Ok(Role::Observer),
            other => Err(SchemaError::bad(key::ROLE, other)),
        }
    }
}

/// Where a host is in its bring-up. Published so that `members` shows progress and so that peers
/// (join lease, election) can reason about each other.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Looking for peers; waiting for `bootstrap-expect` candidates or for an existing cluster.
    Discovering,
    /// Has voted in the first-server election and waits for its outcome.
    Voting,
    /// Won the election: writing config, installing and starting the first server.
    Initializing,
    /// A cluster exists; waiting for its turn to join (servers join one at a time).
    WaitingToJoin,
    /// Writing config, installing and starting RKE2 to join the existing cluster.
    Joining,
    /// RKE2 is up and passed its readiness probes.
    Ready,
    /// A step failed in a way that needs an operator (the reason is in the log).
    Failed,
    /// Shutting down gracefully; peers and the LB drop it at once.
    Leaving,
    /// The LB sidecar's steady state.
    Observing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Discovering => "discovering",
            Phase::Voting => "voting",
            Phase::Initializing => "initializing",
            Phase::WaitingToJoin => "waiting-to-join",
            Phase::Joining => "joining",
            Phase::Ready => "ready",
            Phase::Failed => "failed",
            Phase::Leaving => "leaving",
            Phase::Observing => "observing",
        }
    }

    const ALL: [Phase; 9] = [
        Phase::Discovering,
        Phase::Voting,
        Phase::Initializing,
        Phase::WaitingToJoin,
        Phase::Joining,
        Phase::Ready,
        Phase::Failed,
        Phase::Leaving,
        Phase::Observing,
    ];
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|phase| phase.as_str() == s)
            .ok_or_else(|| SchemaError::bad(key::PHASE, s))
    }
}

/// A vote in the first-server election: "in `round`, I back `candidate`".
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Vote {
    pub round: u32,
    pub candidate: String,
}

impl Vote {
    fn encode(&self) -> String {
        format!("{}:{}", self.round, self.candidate)
    }

    fn decode(value: &str) -> Result<Self, SchemaError> {
        let (round, candidate) = value
            .split_once(':')
            .ok_or_else(|| SchemaError::bad(key::VOTE, value))?;
        let round = round
            .parse()
            .map_err(|_| SchemaError::bad(key::VOTE, value))?;
        if candidate.is_empty() {
            return Err(SchemaError::bad(key::VOTE, value));
        }
        Ok(Vote {
            round,
            candidate: candidate.to_string(),
        })
    }
}

/// A value in gossip that does not follow the schema (a newer or broken peer). The member is
/// still listed, with the field treated as absent, and the error is logged by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gossip key {key:?} has an invalid value {value:?}")]
pub struct SchemaError {
    pub key: &'static str,
    pub value: String,
}

impl SchemaError {
    fn bad(key: &'static str, value: &str) -> Self {
        // Bound what we keep of a hostile value: it ends up in logs.
        let value = value.chars().take(64).collect();
        SchemaError { key, value }
    }
}

/// What this node publishes about itself. The agent owns one and republishes it whenever it
/// changes; [`Announcement::to_key_values`] is the complete set of keys, so a field set to `None`
/// removes its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub role: Role,
    pub phase: Phase,
    /// The address RKE2 on this host listens on (supervisor 9345, API 6443).
    pub node_addr: IpAddr,
    pub ready: bool,
    /// SHA-256 (hex) of the cluster CA this node belongs to: the cluster's identity.
    pub ca_hash: Option<String>,
    pub vote: Option<Vote>,
    /// Set (and fsynced) by the election winner before it starts the first server.
    pub initializer: bool,
    /// Highest round this node gave up winning in (it will never initialize for it).
    pub abdicated: Option<u32>,
    /// The one claim this node acknowledged, for good (its own claim when the candidate is this
    /// node): see the election module.
    pub ack: Option<Vote>,
    /// The cluster join secret; published only by servers that are part of the cluster. Gossip
    /// is sealed, so it reaches members holding the cluster key and no one else.
    pub token: Option<Secret>,
    pub leaving: bool,
    pub rke2_version: Option<String>,
    /// A worker that may become a server when the cluster is short of one (`role: auto`).
    pub promotable: bool,
    /// RKE2 on this host holds data of its own (an etcd member's, or an agent's join): it
    /// restarts as what it was. Without it, a host joining under a name the cluster knows was
    /// wiped or reinstalled, and what its old self left behind may be cleared.
    pub rke2_data: bool,
    /// The etcd member list, published by the steward server only (see [`crate::shape`]).
    pub etcd_members: Option<EtcdRoster>,
}

impl Announcement {
    pub fn new(role: Role, node_addr: IpAddr) -> Self {
        Announcement {
            role,
            phase: if role == Role::Observer {
                Phase::Observing
            } else {
                Phase::Discovering
            },
            node_addr,
            ready: false,
            ca_hash: None,
            vote: None,
            initializer: false,
            abdicated: None,
            ack: None,
            token: None,
            leaving: false,
            rke2_version: None,
            promotable: false,
            rke2_data: false,
            etcd_members: None,
        }
    }

    /// Every key this schema owns, with `None` for keys that must be absent.
    pub fn to_key_values(&self) -> Vec<(&'static str, Option<String>)> {
        let flag = |b: bool| b.then(|| "true".to_string());
        vec![
            (key::ROLE, Some(self.role.as_str().to_string())),
            (key::PHASE, Some(self.phase.as_str().to_string())),
            (key::NODE_ADDR, Some(self.node_addr.to_string())),
            (key::READY, flag(self.ready)),
            (key::CA_HASH, self.ca_hash.clone()),
            (key::VOTE, self.vote.as_ref().map(Vote::encode)),
            (key::INITIALIZER, flag(self.initializer)),
            (key::ABDICATED, self.abdicated.map(|r| r.to_string())),
            (key::ACK, self.ack.as_ref().map(Vote::encode)),
            (
                key::TOKEN,
                self.token.as_ref().map(|t| t.expose().to_string()),
            ),
            (key::LEAVING, flag(self.leaving)),
            (
                key::AGENT_VERSION,
                Some(env!("CARGO_PKG_VERSION").to_string()),
            ),
            (key::RKE2_VERSION, self.rke2_version.clone()),
            (key::PROMOTABLE, flag(self.promotable)),
            (key::RKE2_DATA, flag(self.rke2_data)),
            (
                key::ETCD_MEMBERS,
                self.etcd_members.as_ref().map(EtcdRoster::encode),
            ),
            (key::ANNOUNCED, Some("true".to_string())),
        ]
    }
}

impl Announcement {
    /// The announcement of a node of `role` from its gossip key-values; an invalid optional value
    /// is dropped and reported in `errors`. The node address defaults to the gossip address.
    fn from_key_values(
        role: Role,
        kv: &BTreeMap<&str, &str>,
        gossip_addr: SocketAddr,
        errors: &mut Vec<SchemaError>,
    ) -> Announcement {
        let parse = |k: &'static str| -> Option<String> { kv.get(k).map(|v| v.to_string()) };
        let flag = |k: &'static str| kv.get(k) == Some(&"true");
        let bad = |k: &'static str, v: &str| SchemaError::bad(k, v);
        let phase = parse(key::PHASE).and_then(|v| keep(errors, v.parse::<Phase>()));
        let node_addr = parse(key::NODE_ADDR).and_then(|v| {
            keep(
                errors,
                v.parse::<IpAddr>().map_err(|_| bad(key::NODE_ADDR, &v)),
            )
        });
        let vote = parse(key::VOTE).and_then(|v| keep(errors, Vote::decode(&v)));
        let ack = parse(key::ACK)
            .and_then(|v| keep(errors, Vote::decode(&v).map_err(|_| bad(key::ACK, &v))));
        let abdicated = parse(key::ABDICATED).and_then(|v| {
            keep(
                errors,
                v.parse::<u32>().map_err(|_| bad(key::ABDICATED, &v)),
            )
        });
        let ca_hash = parse(key::CA_HASH).and_then(|v| {
            let ok = v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
            keep(
                errors,
                if ok {
                    Ok(v)
                } else {
                    Err(bad(key::CA_HASH, &v))
                },
            )
        });
        // A token RKE2 would refuse is dropped; its value is never kept, not even in the error.
        let token = parse(key::TOKEN).and_then(|v| {
            keep(
                errors,
                Secret::new(v).map_err(|_| bad(key::TOKEN, "<redacted>")),
            )
        });
        let etcd_members = parse(key::ETCD_MEMBERS).and_then(|v| {
            keep(
                errors,
                EtcdRoster::decode(&v).map_err(|_| bad(key::ETCD_MEMBERS, &v)),
            )
        });
        Announcement {
            role,
            phase: phase.unwrap_or(Phase::Discovering),
            node_addr: node_addr.unwrap_or(gossip_addr.ip()),
            ready: flag(key::READY),
            ca_hash,
            vote,
            initializer: flag(key::INITIALIZER),
            abdicated,
            ack,
            token,
            leaving: flag(key::LEAVING),
            rke2_version: parse(key::RKE2_VERSION),
            promotable: flag(key::PROMOTABLE),
            rke2_data: flag(key::RKE2_DATA),
            etcd_members,
        }
    }
}

/// The value, or nothing with the reason recorded in `errors`.
fn keep<T>(errors: &mut Vec<SchemaError>, value: Result<T, SchemaError>) -> Option<T> {
    value.map_err(|e| errors.push(e)).ok()
}

/// Liveness of a member as seen by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    Alive,
    /// Announced it was leaving: drop it at once, it is not coming back in this generation.
    Left,
    /// The failure detector gave up on it.
    Dead,
}

/// A peer (or this node) as the rest of the program sees it: typed, validated, no raw keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Incarnation: a restarted agent comes back with a higher generation.
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub liveness: Liveness,
    /// The agent version it runs (every agent sets it; not part of [`Announcement`]).
    pub agent_version: Option<String>,
    /// What it announced, typed and validated. Its token is never printed: redacted by its type,
    /// and left out of [`MemberSummary`].
    pub announced: Announcement,
}

impl Member {
    /// Builds a member from its gossip key-values. Returns `None` for a half-announced node (no
    /// role yet). Invalid optional values are dropped and reported in the error list.
    pub fn from_key_values<'a>(
        name: &str,
        generation: u64,
        gossip_addr: SocketAddr,
        alive: bool,
        key_values: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<(Member, Vec<SchemaError>)> {
        let kv: BTreeMap<&str, &str> = key_values.into_iter().collect();
        kv.get(key::ANNOUNCED)?;
        let mut errors = Vec::new();
        let role = match kv.get(key::ROLE)?.parse::<Role>() {
            Ok(role) => role,
            Err(err) => {
                errors.push(err);
                return Some((Member::unknown(name, generation, gossip_addr), errors));
            }
        };
        let announced = Announcement::from_key_values(role, &kv, gossip_addr, &mut errors);
        let liveness = match (alive, announced.leaving) {
            (_, true) => Liveness::Left,
            (true, false) => Liveness::Alive,
            (false, false) => Liveness::Dead,
        };
        let member = Member {
            name: name.to_string(),
            generation,
            gossip_addr,
            liveness,
            agent_version: kv.get(key::AGENT_VERSION).map(|v| v.to_string()),
            announced,
        };
        Some((member, errors))
    }

    /// What peers see of `announcement`: the same key-value round trip gossip makes. For tests
    /// and for showing this node in its own view.
    pub fn from_announcement(
        name: &str,
        generation: u64,
        gossip_addr: SocketAddr,
        alive: bool,
        announcement: &Announcement,
    ) -> Member {
        let kvs: Vec<(&str, String)> = announcement
            .to_key_values()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let (member, _) = Member::from_key_values(
            name,
            generation,
            gossip_addr,
            alive,
            kvs.iter().map(|(k, v)| (*k, v.as_str())),
        )
        .expect("an announcement always carries the announced key");
        member
    }

    /// An alive member of `role` that announced nothing else yet (generation 1, its node address
    /// its gossip address): the base every hand-built member starts from (struct update syntax),
    /// so that a new field is added in one place.
    pub fn new(name: &str, gossip_addr: SocketAddr, role: Role) -> Member {
        Member {
            name: name.to_string(),
            generation: 1,
            gossip_addr,
            liveness: Liveness::Alive,
            agent_version: None,
            announced: Announcement::new(role, gossip_addr.ip()),
        }
    }

    /// The same member with its announcement edited: `Member::new(..).announcing(|a| a.ready =
    /// true)`.
    pub fn announcing(mut self, edit: impl FnOnce(&mut Announcement)) -> Member {
        edit(&mut self.announced);
        self
    }

    /// A member whose role we cannot read: listed (so an operator sees it) but never trusted.
    fn unknown(name: &str, generation: u64, gossip_addr: SocketAddr) -> Member {
        Member {
            generation,
            ..Member::new(name, gossip_addr, Role::Observer)
        }
        .announcing(|a| a.phase = Phase::Failed)
    }

    pub fn is_alive(&self) -> bool {
        self.liveness == Liveness::Alive
    }

    /// A server the LB may route to: alive, ready, not leaving.
    pub fn is_routable_server(&self) -> bool {
        let a = &self.announced;
        a.role == Role::Server && self.is_alive() && a.ready && a.phase == Phase::Ready
    }
}

/// The public face of a member: what `members`, `members --json` and the status endpoint show.
/// The join token is deliberately not part of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberSummary {
    pub name: String,
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub node_addr: IpAddr,
    pub role: Role,
    pub phase: Phase,
    pub alive: bool,
    pub left: bool,
    pub ready: bool,
    pub initializer: bool,
    pub ca_hash: Option<String>,
    pub vote: Option<String>,
    /// The claim this member acknowledged (`round:candidate`), if any.
    #[serde(default)]
    pub ack: Option<String>,
    pub agent_version: Option<String>,
    pub rke2_version: Option<String>,
    /// A server's etcd membership as the steward last published it: `voter`, `learner`
    /// (joining), `removed` (not in the list), with `,silent` when its member does not answer.
    /// `None` for other roles, or while no server publishes the list.
    #[serde(default)]
    pub etcd: Option<String>,
}

impl MemberSummary {
    /// Every member of `view`, each server with its etcd standing from the steward's roster.
    pub fn of_view(view: &[Member]) -> Vec<MemberSummary> {
        let roster = published_etcd_roster(view);
        view.iter()
            .map(|m| {
                let mut summary = MemberSummary::from(m);
                if m.announced.role == Role::Server {
                    summary.etcd = roster.map(|r| etcd_standing(r, &m.name).to_string());
                }
                summary
            })
            .collect()
    }
}

/// The etcd roster the cluster goes by: the one published by the lowest-named live server that
/// publishes one (the steward; during a change of steward, two may publish for a moment).
pub fn published_etcd_roster(view: &[Member]) -> Option<&EtcdRoster> {
    view.iter()
        .filter(|m| m.announced.role == Role::Server && m.is_alive())
        .filter_map(|m| Some((m.name.as_str(), m.announced.etcd_members.as_ref()?)))
        .min_by_key(|(name, _)| *name)
        .map(|(_, roster)| roster)
}

fn etcd_standing(roster: &EtcdRoster, node: &str) -> &'static str {
    match roster.seat(node) {
        None => "removed",
        Some(seat) => match (seat.learner, seat.answering) {
            (false, true) => "voter",
            (false, false) => "voter,silent",
            (true, true) => "learner",
            (true, false) => "learner,silent",
        },
    }
}

impl From<&Member> for MemberSummary {
    fn from(m: &Member) -> Self {
        MemberSummary {
            name: m.name.clone(),
            generation: m.generation,
            gossip_addr: m.gossip_addr,
            node_addr: m.announced.node_addr,
            role: m.announced.role,
            phase: m.announced.phase,
            alive: m.is_alive(),
            left: m.liveness == Liveness::Left,
            ready: m.announced.ready,
            initializer: m.announced.initializer,
            ca_hash: m.announced.ca_hash.clone(),
            vote: m.announced.vote.as_ref().map(Vote::encode),
            ack: m.announced.ack.as_ref().map(Vote::encode),
            agent_version: m.agent_version.clone(),
            rke2_version: m.announced.rke2_version.clone(),
            etcd: None,
        }
    }
}

/// The cluster's identity: the CA hash published by the elected initializer. `None` until the
/// first server is up. If (against every rule) several initializers publish different hashes, the
/// one backed by the most ready servers wins, ties broken by the lowest initializer name, and the
/// others are returned as strays so callers can refuse them loudly. The answer never depends on
/// the order of `members`.
pub fn cluster_identity(members: &[Member]) -> (Option<String>, Vec<String>) {
    let mut backing: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for m in members.iter().filter(|m| m.announced.initializer) {
        if let Some(hash) = m.announced.ca_hash.as_deref() {
            let entry = backing.entry(hash).or_insert((0, m.name.as_str()));
            entry.1 = entry.1.min(m.name.as_str());
        }
    }
    for m in members.iter().filter(|m| m.is_routable_server()) {
        if let Some(entry) = m
            .announced
            .ca_hash
            .as_deref()
            .and_then(|h| backing.get_mut(h))
        {
            entry.0 += 1;
        }
    }
    let winner = backing
        .iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then_with(|| b.1 .1.cmp(a.1 .1)))
        .map(|(hash, _)| hash.to_string());
    let strays = members
        .iter()
        .filter_map(|m| m.announced.ca_hash.clone())
        .filter(|h| Some(h) != winner.as_ref())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    (winner, strays)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 7946))
    }

    fn roundtrip(a: &Announcement, alive: bool) -> Member {
        let kvs: Vec<(&str, String)> = a
            .to_key_values()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let (member, errors) = Member::from_key_values(
            "n1",
            3,
            addr(1),
            alive,
            kvs.iter().map(|(k, v)| (*k, v.as_str())),
        )
        .expect("announced");
        assert!(errors.is_empty(), "{errors:?}");
        member
    }

    #[test]
    fn announcement_roundtrips_through_key_values() {
        let mut a = Announcement::new(Role::Server, "127.0.0.1".parse().unwrap());
        a.phase = Phase::Ready;
        a.ready = true;
        a.ca_hash = Some("ab".repeat(32));
        a.vote = Some(Vote {
            round: 2,
            candidate: "node-a".into(),
        });
        a.initializer = true;
        a.abdicated = Some(1);
        a.token = Some(Secret::new("secret").unwrap());
        let m = roundtrip(&a, true);
        assert_eq!(m.announced.role, Role::Server);
        assert_eq!(m.announced.phase, Phase::Ready);
        assert!(m.announced.ready && m.announced.initializer && m.is_routable_server());
        assert_eq!(m.announced.vote, a.vote);
        assert_eq!(m.announced.abdicated, Some(1));
        assert_eq!(m.announced.ca_hash, a.ca_hash);
        assert_eq!(
            m.announced.token.as_ref().map(Secret::expose),
            Some("secret")
        );
        assert_eq!(m.generation, 3);
    }

    #[test]
    fn leaving_wins_over_alive_and_is_not_routable() {
        let mut a = Announcement::new(Role::Server, "127.0.0.1".parse().unwrap());
        a.phase = Phase::Ready;
        a.ready = true;
        a.leaving = true;
        let m = roundtrip(&a, true);
        assert_eq!(m.liveness, Liveness::Left);
        assert!(!m.is_routable_server());
        let a = Announcement {
            leaving: false,
            ..a
        };
        assert_eq!(roundtrip(&a, false).liveness, Liveness::Dead);
    }

    #[test]
    fn half_announced_nodes_are_hidden() {
        let kvs = [("role", "server"), ("phase", "ready")];
        assert!(Member::from_key_values("n", 1, addr(2), true, kvs).is_none());
    }

    #[test]
    fn invalid_values_are_reported_and_dropped() {
        let kvs = [
            ("announced", "true"),
            ("role", "server"),
            ("phase", "dancing"),
            ("vote", "x:y"),
            ("ca-hash", "not-hex"),
        ];
        let (m, errors) = Member::from_key_values("n", 1, addr(2), true, kvs).unwrap();
        assert_eq!(m.announced.phase, Phase::Discovering);
        assert_eq!(m.announced.vote, None);
        assert_eq!(m.announced.ca_hash, None);
        let keys: Vec<_> = errors.iter().map(|e| e.key).collect();
        assert_eq!(keys, ["phase", "vote", "ca-hash"]);
    }

    #[test]
    fn unknown_role_is_listed_but_untrusted() {
        let kvs = [("announced", "true"), ("role", "overlord")];
        let (m, errors) = Member::from_key_values("n", 1, addr(2), true, kvs).unwrap();
        assert_eq!(m.announced.role, Role::Observer);
        assert_eq!(m.announced.phase, Phase::Failed);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn summary_never_carries_the_token() {
        let mut a = Announcement::new(Role::Server, "127.0.0.1".parse().unwrap());
        a.token = Some(Secret::new("K10deadbeef::server:topsecret").unwrap());
        let json = serde_json::to_string(&MemberSummary::from(&roundtrip(&a, true))).unwrap();
        assert!(!json.contains("topsecret"), "{json}");
    }

    #[test]
    fn identity_prefers_the_initializer_with_most_ready_servers() {
        let mk = |name: &str, hash: &str, init: bool| {
            let mut a = Announcement::new(Role::Server, "127.0.0.1".parse().unwrap());
            a.phase = Phase::Ready;
            a.ready = true;
            a.initializer = init;
            a.ca_hash = Some(hash.repeat(64));
            let mut m = roundtrip(&a, true);
            m.name = name.into();
            m
        };
        let members = vec![mk("a", "a", true), mk("b", "b", true), mk("c", "b", false)];
        let (identity, strays) = cluster_identity(&members);
        assert_eq!(identity, Some("b".repeat(64)));
        assert_eq!(strays, vec!["a".repeat(64)]);
        assert_eq!(cluster_identity(&[]), (None, vec![]));

        // A tie (two ready servers each): the hash whose lowest initializer name is lowest wins,
        // in whatever order gossip lists them (found by the sidecar's property test).
        let tie = [
            mk("m1", "b", true),
            mk("n", "b", false),
            mk("z", "a", true),
            mk("a", "a", true),
        ];
        for order in [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 2, 1, 0]] {
            let members: Vec<Member> = order.iter().map(|&i| tie[i].clone()).collect();
            assert_eq!(
                cluster_identity(&members).0,
                Some("a".repeat(64)),
                "{order:?}"
            );
        }
    }
}
