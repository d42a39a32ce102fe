//! First-server election: which one host runs `rke2 server` without `server:`.
//!
//! RKE2 cannot merge two clusters, so the one property that matters is that **at most one host
//! ever initializes**, under message loss, delay, partitions, crashes and reboots. This module is
//! the pure core of that decision: [`decide`] maps the persisted [`ElectionState`] and an
//! [`Observation`] (local facts plus a typed gossip view) to a [`Decision`]. It has no sockets, no
//! clock and no randomness; the driver gathers the inputs, fsyncs any state a decision carries
//! *before* it publishes anything derived from it, and acts.
//!
//! # Protocol
//!
//! The *electorate* is the set of server candidates (configured `server` or `auto`).
//! `bootstrap_expect` is the operator's promise of its size, exactly as with Consul's
//! `bootstrap_expect`; `majority = bootstrap_expect / 2 + 1`. Sorted by name (byte order), the
//! electorate gives every candidate a *rank*, and **round r is the round whose candidate is the
//! host of rank r**. A vote is `Vote { round: rank(c), candidate: c }`.
//!
//! In priority order, [`decide`]:
//! 1. resumes an initializer: a persisted `initializer_of` always yields
//!    [`Decision::BecomeInitializer`] again (idempotent after a crash or reboot);
//! 2. joins ([`Decision::JoinExisting`]) when a cluster exists or is being created: the RKE2 data
//!    dir is present, the registration address answers, a peer publishes a CA hash, or any entry
//!    (even a stale one of this host, whose state dir then was lost) claims `initializer`;
//! 3. waits unless the view holds exactly `bootstrap_expect` candidates. Fewer: not everyone is
//!    seen yet. More: the promise is broken and voting could make two majorities, so it refuses
//!    loudly. Dead candidates count (gossip keeps their state, and round 0 must not depend on a
//!    failure detector); a candidate that *left* counts only if it voted or abdicated, because
//!    then it committed something that stays on its disk;
//! 4. votes for the lowest name that has not abdicated. Round 0 ignores aliveness on purpose: once
//!    all names are seen, every host computes the same candidate, so round 0 cannot split;
//! 5. keeps its vote until it sees that candidate abdicate, then votes for the lowest
//!    non-abdicated name *above* it (every name below was seen abdicated before). Rounds therefore
//!    only go up, one vote per round;
//! 6. as the candidate, asks the driver to install RKE2 without starting it
//!    ([`Decision::Prepare`]), and once installed and holding a majority of votes for its own
//!    round, becomes initializer. A node that abdicated never does;
//! 7. abdication is explicit ([`abdicate`]): the driver gives up when the candidate cannot install
//!    RKE2. It is refused to an initializer and permanent: that name is never a candidate again;
//! 8. never starts a new round because the candidate looks dead: a dead winner may be merely
//!    partitioned away and already initializing. Everyone waits for it, and the wait reason says
//!    so. Only its own abdication moves the election on; if the host is gone for good, an
//!    operator must step in. This trades liveness for safety, deliberately;
//! 9. for `auto` hosts, resolves `server` or `agent` when they join (see [`auto_role`]).
//!
//! # Why at most one host initializes
//!
//! Facts the code enforces: (F1) a vote, an abdication and `initializer` are on the author's disk
//! before any peer can see them; (F2) a node replaces its vote for `X` only after seeing `X`
//! abdicate, and only with a higher name; (F3) in one node's persisted state, abdication and
//! initialization exclude each other ([`Lifecycle`] refuses both orders); (F4) a node initializes
//! only with a majority of votes naming it, counted once per electorate name, for its own round.
//!
//! *Argument A (majorities).* Suppose `X != Y` both initialize. Their voter sets are majorities of
//! the same `bootstrap_expect` names, so some voter published a vote for both. By F2, whichever it
//! backed first abdicated before it moved on, and by F3 that one never initialized. Contradiction.
//!
//! *Argument B (order), which does not need votes to survive a crash.* Any vote for `Y` was cast
//! from a view holding the whole electorate with every name below `Y` abdicated (F2, rule 4). So if
//! `Y` initializes, every lower name abdicated and never initializes (F3); and a higher `Z` would
//! need a voter that saw `Y` abdicate, which an initializer never does (F3).
//!
//! Both arguments need the electorate promise: if more than `bootstrap_expect` candidates exist
//! while the election runs, two hosts can each see a different "complete" set. That is why rule 3
//! refuses as soon as it sees too many, and why `bootstrap_expect` must count `auto` hosts too.
//! Rule 2 is a third, independent guard for clusters that did not come from this election.
//!
//! # Departures from the original design, and why
//!
//! - *Rounds are ranks.* With rounds counted `r -> r+1` per abdication seen, two voters that see
//!   the same abdications at different moments (one at a time, or several at once) back the same
//!   candidate in different rounds; a candidate counting one round's votes can then never reach a
//!   majority (a deadlock). Indexing rounds by the candidate's rank gives every vote for a candidate
//!   the same round, keeps one vote per round, and leaves the safety argument unchanged.
//! - *Abdication is absolute.* Being excluded "from that round on" would let a laggard still in an
//!   older round elect a host that already gave up; excluding it from every round is simpler and
//!   is what the arguments above use.
//! - *Prepare before winning.* "The winner cannot install RKE2" must be detectable before the win
//!   is declared, because an initializer may not abdicate (peers may already be joining it).
//!   The candidate installs first ([`LocalFacts::rke2_installed`]); only then can it win.
//! - *A host whose gossip shows a vote or abdication its state dir lacks refuses to vote*: its
//!   state dir was lost, and voting again could break F2.

mod role;
mod roster;
mod state;

#[cfg(test)]
mod tests;

pub use role::{auto_role, AutoRole, UNDECIDED_DEAD_WAIT};
pub use state::{ElectionState, Lifecycle, TransitionError};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::gossip::schema::{Liveness, Member, Phase, Role, Vote};
use roster::Roster;

/// The configuration the election depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// This host's configured role.
    pub role: Role,
    /// How many server candidates (`server` or `auto`) form the cluster initially.
    pub bootstrap_expect: usize,
    /// How many servers `auto` hosts aim for (odd, for etcd).
    pub servers_target: usize,
}

/// What this host can tell about itself without gossip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalFacts {
    /// The RKE2 data dir shows this host already joined a cluster.
    pub data_dir_present: bool,
    /// The cluster registration address already answers.
    pub registration_answers: bool,
    /// RKE2 is installed and only needs starting. The candidate must get here before it may win,
    /// so that an installer failure can still end in an abdication.
    pub rke2_installed: bool,
}

/// One gossip entry as the election sees it. There may be several per name (generations), and
/// this host's own entry may or may not be among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub name: String,
    /// The failure detector's current opinion.
    pub alive: bool,
    /// Announced a graceful departure.
    pub left: bool,
    pub role: Role,
    pub phase: Phase,
    pub vote: Option<Vote>,
    pub initializer: bool,
    pub abdicated: Option<u32>,
    /// Publishes a cluster CA hash: it belongs to a cluster.
    pub has_cluster_identity: bool,
    /// How long this host's view has shown the entry dead without a break (zero while alive; see
    /// [`DeathClock`]). "Dead" is an opinion that can be wrong for a moment: a generation heard
    /// of only once has no heartbeat history yet, and a stalled peer looks dead until it resumes.
    pub dead_for: Duration,
}

impl From<&Member> for PeerView {
    fn from(m: &Member) -> Self {
        PeerView {
            name: m.name.clone(),
            alive: m.liveness == Liveness::Alive,
            left: m.liveness == Liveness::Left,
            role: m.role,
            phase: m.phase,
            vote: m.vote.clone(),
            initializer: m.initializer,
            abdicated: m.abdicated,
            has_cluster_identity: m.ca_hash.is_some(),
            dead_for: Duration::ZERO,
        }
    }
}

/// Remembers since when each gossip entry (name and generation) has looked dead, so that a
/// decision can tell a momentary "dead" from a host that is gone. The caller owns the clock.
#[derive(Debug, Default)]
pub struct DeathClock {
    since: HashMap<(String, u64), Instant>,
}

impl DeathClock {
    /// The election's view of `members` at `now`, with [`PeerView::dead_for`] filled in.
    pub fn peer_views(&mut self, now: Instant, members: &[Member]) -> Vec<PeerView> {
        let dead: HashSet<(&str, u64)> = members
            .iter()
            .filter(|m| m.liveness == Liveness::Dead)
            .map(|m| (m.name.as_str(), m.generation))
            .collect();
        // Entries alive again, left or forgotten start over.
        self.since
            .retain(|(name, generation), _| dead.contains(&(name.as_str(), *generation)));
        members
            .iter()
            .map(|m| {
                let mut view = PeerView::from(m);
                if m.liveness == Liveness::Dead {
                    let since = *self
                        .since
                        .entry((m.name.clone(), m.generation))
                        .or_insert(now);
                    view.dead_for = now.saturating_duration_since(since);
                }
                view
            })
            .collect()
    }
}

/// Everything one [`decide`] step looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub self_name: String,
    pub config: ElectionConfig,
    pub local: LocalFacts,
    pub peers: Vec<PeerView>,
}

/// What the driver does next. Variants carrying a `state` change the persisted state: the driver
/// fsyncs it first, then publishes, then acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do yet. The reason is for logs and `members`.
    Wait { reason: String },
    /// Persist `state`, then publish `vote`.
    CastVote { vote: Vote, state: ElectionState },
    /// This host is the candidate of `round`: install RKE2 (server) without starting it, then
    /// decide again. If installing keeps failing, call [`abdicate`] instead.
    Prepare {
        round: u32,
        votes: usize,
        needed: usize,
    },
    /// Persist `state`, publish `initializer=true` (and role `server`), then start the first
    /// server. Returned again on every later step: resuming is idempotent.
    BecomeInitializer { round: u32, state: ElectionState },
    /// A cluster exists or is being created: join it as `role` (`server` or `agent`), never
    /// initialize. This ends the election for this boot.
    JoinExisting { role: Role, reason: String },
}

impl Decision {
    /// The state the driver must fsync before acting, if this decision changes it.
    pub fn state_to_persist(&self) -> Option<&ElectionState> {
        match self {
            Decision::CastVote { state, .. } | Decision::BecomeInitializer { state, .. } => {
                Some(state)
            }
            _ => None,
        }
    }

    /// One line for logs and `members`.
    pub fn reason(&self) -> String {
        match self {
            Decision::Wait { reason } => reason.clone(),
            Decision::CastVote { vote, .. } => {
                format!("voting for {} in round {}", vote.candidate, vote.round)
            }
            Decision::Prepare {
                round,
                votes,
                needed,
            } => format!(
                "candidate of round {round} ({votes} of {needed} votes): installing RKE2 before claiming the win"
            ),
            Decision::BecomeInitializer { round, .. } => {
                format!("initializer (won round {round}): bringing up the first server")
            }
            Decision::JoinExisting { role, reason } => format!("joining as {role}: {reason}"),
        }
    }
}

/// Gives up winning: the driver calls this when the candidate cannot install RKE2 (before it
/// became initializer). Returns the state to fsync before publishing the abdication; refused to
/// an initializer. From then on this host never initializes, in any round.
pub fn abdicate(state: &ElectionState, round: u32) -> Result<ElectionState, TransitionError> {
    Ok(state.lifecycle()?.abdicate(round)?.into())
}

/// The next step of this host in the election. Pure: same inputs, same decision.
pub fn decide(state: &ElectionState, obs: &Observation) -> Decision {
    let life = match state.lifecycle() {
        Ok(life) => life,
        Err(err) => return wait(format!("refusing to take part: {err}")),
    };
    // Rule 1.
    if let Lifecycle::Initializer { round, .. } = life {
        return Decision::BecomeInitializer {
            round,
            state: state.clone(),
        };
    }
    let me = obs.self_name.as_str();
    let roster = Roster::new(me, &obs.peers);
    // Rule 2.
    if let Some(evidence) = cluster_evidence(&obs.local, &roster) {
        return join(obs, evidence);
    }
    match obs.config.role {
        Role::Server | Role::Auto => {}
        Role::Agent => return wait("agent: waiting for a cluster to join".into()),
        Role::Observer => return wait("observer: takes no part in the election".into()),
    }
    let expect = obs.config.bootstrap_expect;
    if expect == 0 {
        return wait("bootstrap-expect is 0: refusing to vote".into());
    }
    if let Some(why) = lost_state(state, &roster) {
        return wait(why);
    }
    // Rule 3.
    let electorate: BTreeSet<&str> = roster.candidates().chain([me]).collect();
    let list = || electorate.iter().copied().collect::<Vec<_>>().join(", ");
    if electorate.len() < expect {
        return wait(format!(
            "waiting for {} of {expect} server candidates (seen: {})",
            electorate.len(),
            list()
        ));
    }
    if electorate.len() > expect {
        return wait(format!(
            "SAW {} SERVER CANDIDATES BUT BOOTSTRAP-EXPECT IS {expect}: refusing to vote; fix \
             bootstrap-expect or the roles (seen: {})",
            electorate.len(),
            list()
        ));
    }
    let rank = |name: &str| electorate.iter().position(|n| *n == name).unwrap_or(0) as u32;
    let abdicated = |name: &str| {
        if name == me {
            life.abdicated().is_some()
        } else {
            roster.abdicated(name)
        }
    };
    let needed = expect / 2 + 1;

    // Rules 6 and 7: the candidate's own path.
    let my_vote = Vote {
        round: rank(me),
        candidate: me.to_string(),
    };
    let votes = electorate
        .iter()
        .filter(|&&n| {
            if n == me {
                life.vote() == Some(&my_vote)
            } else {
                roster.voted(n, &my_vote)
            }
        })
        .count();
    if life.abdicated().is_none() && (life.vote() == Some(&my_vote) || votes >= needed) {
        if !obs.local.rke2_installed {
            return Decision::Prepare {
                round: my_vote.round,
                votes,
                needed,
            };
        }
        if votes >= needed {
            return match life.become_initializer(my_vote.round) {
                Ok(won) => Decision::BecomeInitializer {
                    round: my_vote.round,
                    state: won.into(),
                },
                Err(err) => wait(format!("cannot win: {err}")),
            };
        }
        return wait(format!(
            "candidate of round {}: {votes} of {needed} votes",
            my_vote.round
        ));
    }

    // Rules 4, 5 and 8: voting.
    let floor = match life.vote() {
        Some(v) if !abdicated(&v.candidate) => return waiting_on(v, &roster, me),
        Some(v) => Some(v.candidate.as_str()),
        None => None,
    };
    let Some(next) = electorate
        .iter()
        .copied()
        .find(|&n| floor.is_none_or(|f| n > f) && !abdicated(n))
    else {
        return wait(format!(
            "every server candidate above {} abdicated: an operator must step in",
            floor.unwrap_or("none")
        ));
    };
    let vote = Vote {
        round: rank(next),
        candidate: next.to_string(),
    };
    match life.cast_vote(vote.clone()) {
        Ok(voted) => Decision::CastVote {
            vote,
            state: voted.into(),
        },
        Err(err) => wait(format!("cannot vote: {err}")),
    }
}

fn wait(reason: String) -> Decision {
    Decision::Wait { reason }
}

/// Why this host must believe a cluster exists, if it must.
fn cluster_evidence(local: &LocalFacts, roster: &Roster) -> Option<String> {
    if local.data_dir_present {
        return Some("this host already joined a cluster (RKE2 data dir present)".into());
    }
    if local.registration_answers {
        return Some("the registration address already answers".into());
    }
    let entries = || roster.entries();
    if let Some(p) = entries().find(|p| p.initializer) {
        return Some(format!("{} is the initializer", p.name));
    }
    if let Some(p) = entries().find(|p| p.has_cluster_identity) {
        return Some(format!("{} belongs to a cluster", p.name));
    }
    None
}

fn join(obs: &Observation, evidence: String) -> Decision {
    let role = match obs.config.role {
        Role::Server => Role::Server,
        Role::Agent => Role::Agent,
        Role::Observer => return wait(format!("observer: {evidence}")),
        Role::Auto => match auto_role(&obs.self_name, &obs.peers, obs.config.servers_target) {
            AutoRole::Decided(role) => role,
            AutoRole::WaitFor(name) => {
                return wait(format!(
                    "{evidence}; waiting for {name} to choose its role first"
                ))
            }
        },
    };
    Decision::JoinExisting {
        role,
        reason: evidence,
    }
}

/// Gossip remembers something of this host that its persisted state does not: the state dir was
/// lost (a reinstall under the same name). Voting again could contradict the earlier vote.
fn lost_state(state: &ElectionState, roster: &Roster) -> Option<String> {
    let own = roster.own();
    if state.abdicated.is_none() && own.iter().any(|p| p.abdicated.is_some()) {
        return Some(
            "gossip shows an abdication of this host that its state dir lacks: refusing to vote"
                .into(),
        );
    }
    let lost = own
        .iter()
        .filter_map(|p| p.vote.as_ref())
        .filter(|seen| match &state.vote {
            None => true,
            Some(mine) => *seen != mine && seen.round >= mine.round,
        })
        .max()?;
    Some(format!(
        "gossip shows a vote of this host for {} in round {} that its state dir lacks: refusing \
         to vote",
        lost.candidate, lost.round
    ))
}

/// The wait reason of a voter whose candidate has not abdicated (rule 8 when it looks dead).
fn waiting_on(vote: &Vote, roster: &Roster, me: &str) -> Decision {
    let c = &vote.candidate;
    if c != me && !roster.alive(c) {
        return wait(format!(
            "voted for {c} in round {}; {c} is not alive: waiting for it, since it may be \
             partitioned and initializing (only its abdication starts a new round)",
            vote.round
        ));
    }
    wait(format!(
        "voted for {c} in round {}; waiting for it to win and initialize",
        vote.round
    ))
}
