//! First-server election: which one host runs `rke2 server` without `server:`.
//!
//! RKE2 cannot merge two clusters, so the one property that matters is that **at most one host
//! ever initializes**, under message loss, delay, partitions from the first instant, crashes,
//! reboots, more hosts than anyone counted and hosts that never boot. This module is the pure core
//! of that decision: [`decide`] maps the persisted [`ElectionState`] and an [`Observation`] (local
//! facts plus a typed gossip view) to a [`Decision`]. It has no sockets, no clock and no
//! randomness; the driver gathers the inputs, fsyncs any state a decision carries *before* it
//! publishes anything derived from it, and acts.
//!
//! # Protocol
//!
//! The *electorate* is a list of `n` seats ([`Electorate`]): pinned by configuration every host
//! shares (`initial-servers`, by default the literal seed addresses), or, in count-only mode, the
//! names of the first `bootstrap_expect` server candidates. `quorum = n / 2 + 1`. Hosts outside the
//! electorate take no part: they never vote, acknowledge or initialize, and never block anyone.
//! Round `r`'s candidate is the host on seat `r mod n` (seats in sorted order). Two kinds of
//! commitment are published, each persisted first:
//!
//! - a *vote* `(r, c)`: at most one per round, rounds only go up. Votes only steer who tries;
//!   safety does not rest on them.
//! - an *acknowledgement* `(r, c)` of `c`'s claim of round `r`: **at most one per host, ever**.
//!   A *claim* is a candidate acknowledging itself.
//!
//! In priority order, [`decide`]:
//! 1. resumes an initializer: a persisted `initializer_of` always yields
//!    [`Decision::BecomeInitializer`] again (idempotent after a crash or reboot);
//! 2. joins ([`Decision::JoinExisting`]) when a cluster exists or is being created: the RKE2 data
//!    dir is present, the registration address answers, a peer publishes a CA hash, or any entry
//!    (even a stale one of this host, whose state dir then was lost) claims `initializer`;
//! 3. waits when this host is not a server candidate, not on a seat, or its seat shows a vote or
//!    acknowledgement its state dir lacks (the state dir was lost: committing again could
//!    contradict what it committed before); in count-only mode, waits until exactly
//!    `bootstrap_expect` candidates are seen, and refuses loudly when it sees more;
//! 4. as a claimant, becomes initializer once a quorum of seats acknowledges its claim;
//! 5. having acknowledged another host's claim, waits for it for good (see "Liveness");
//! 6. acknowledges a live claim it sees (the highest round, then the lowest name), never two;
//!    not one of a round below its own vote while that vote's candidate can still win (a claimant
//!    that was cut off or rebooted while the others moved on: acknowledging it could split the
//!    acknowledgements between two claims);
//! 7. votes: starting from the highest round it or any live seat voted in, the first round whose
//!    candidate is *viable* (alive, or dead or unseen for less than the *lease*, a server
//!    candidate, not abdicated). A pending candidate (unseen or dead for less than the lease) is
//!    waited for, so a rack booting together agrees on round 0; one gone for longer than the lease
//!    is passed over, so a minority that never boots, a winner that died while installing, or one
//!    cut off by a partition, is replaced;
//! 8. as the candidate of its vote's round with a quorum of live votes, asks the driver to install
//!    RKE2 without starting it ([`Decision::Prepare`]), then claims ([`Decision::Claim`]); a
//!    candidate whose installer keeps failing abdicates ([`abdicate`]) and is passed over;
//! 9. for `auto` hosts, resolves `server` or `agent` when they join (see [`auto_role`]).
//!
//! # Why at most one host initializes
//!
//! Facts the code enforces: (F1) a vote, an acknowledgement, an abdication and `initializer` are
//! on the author's disk before any peer can see them; (F2) in one host's persisted state there is
//! at most one acknowledgement, ever ([`Lifecycle::acknowledge`] refuses a second); (F3) a host
//! becomes initializer only from its own claim of that round, with acknowledgements of that claim
//! from a quorum of distinct seats of the electorate; (F4) every host computes the same seats
//! (pinned: from shared configuration; counted: see the limit below).
//!
//! Suppose `X != Y` both initialize. By F3 each holds a quorum of acknowledging seats; two
//! quorums of the same `n` seats share a seat `s`. The host on `s` published an acknowledgement of
//! `X`'s claim and one of `Y`'s. By F1 both were on its disk, and by F2 its disk holds one. So two
//! different hosts sat on `s`, one of which lost or never had the other's state: a reinstalled
//! host on the same address (rule 3 refuses to commit while gossip still remembers the seat's
//! old commitment), or, in count-only mode, two hosts with different seat lists, which only a
//! broken count can cause. Contradiction otherwise.
//!
//! The argument uses **no clock and no failure detector**: the lease (rule 7) decides only who
//! tries next and when, never whether two can win. A clock that runs fast or slow (bounded or
//! not), a failure detector that calls a live host dead, a partition from the first instant:
//! each can cost time, never a second initializer. Votes are not needed either: a host that
//! forgot its votes stays safe (the simulation checks this).
//!
//! Count-only mode relies on F4, which holds only while exactly `bootstrap_expect` server
//! candidates exist: with more, two hosts can each see a different complete set. That is why it
//! refuses as soon as it sees too many, why it accepts only `server` hosts (an `auto` fleet of
//! any size would break the count), and why a pinned electorate is the default.
//!
//! # Liveness, and what needs a human
//!
//! With a quorum of seats up and connected long enough, one host initializes within a bounded
//! number of rounds: every live seat converges on the highest round voted in, candidates that
//! are gone are passed over after the lease, the candidate of a round with a quorum of votes
//! claims, and every live seat acknowledges the first live claim it sees. The lease assumes only
//! that each host's clock advances at a bounded rate (no synchronised clocks): a host measures the
//! lease on its own clock, from its own observations.
//!
//! Acknowledgements are for good, so a claimant that dies after claiming can leave the
//! acknowledging seats waiting for it (rule 5): they cannot know whether it started the first
//! server. If it comes back, it finishes. If it is gone for good, an operator releases its claim
//! on the hosts that acknowledged it (`rke2-bootstrap election release`, with a confirmation;
//! [`ElectionState::release`]): their acknowledgement is void, they never acknowledge that claim
//! again, and its claimant is passed over; should the claimant have become initializer, its flag
//! is no longer evidence of a cluster on those hosts (rule 2), so hosts that settled to join it
//! (the operator releases on them too) take part in the election again. This breaks F2 for that
//! one claim on purpose, so it is
//! safe exactly when the claimant never started the first server and never will with its disk
//! (powered off for good, or wiped): a quorum of acknowledgements of it is then never used. If it
//! did start RKE2 (it had its quorum and died after), a release makes a second cluster possible:
//! that is what the confirmation asks the operator to rule out. The same command resolves two
//! claims that split the live seats so that neither reaches a quorum (it needs two candidates
//! with a quorum of votes each, in different rounds, the earlier one cut off while it claims);
//! rule 6 and the standing of a seat that acknowledged another's claim make this rare, and the
//! simulation's liveness check has not met it since.

mod electorate;
mod role;
mod roster;
mod state;

#[cfg(test)]
mod tests;

pub use electorate::{Electorate, ElectorateError, Seat};
pub use role::{auto_role, AutoRole, UNDECIDED_DEAD_WAIT};
pub use state::{ElectionState, Lifecycle, TransitionError};

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::gossip::schema::{Liveness, Member, Phase, Role, Vote};
use crate::since::Since;
use electorate::{SeatView, Standing};
use roster::Roster;

/// How long a candidate that is unseen or looks dead is waited for before the next round's
/// candidate is backed, unless configured otherwise. Long against a false death on a busy host
/// (about a second of silence), short against an installer run.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The configuration the election depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// This host's configured role.
    pub role: Role,
    /// Who may initialize.
    pub electorate: Electorate,
    /// How many servers `auto` hosts aim for (odd, for etcd).
    pub servers_target: usize,
    /// How long an unseen or dead-looking candidate is waited for (rule 7).
    pub lease: Duration,
}

/// What this host can tell about itself without gossip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalFacts {
    /// The RKE2 data dir shows this host already joined a cluster.
    pub data_dir_present: bool,
    /// The cluster registration address already answers.
    pub registration_answers: bool,
    /// RKE2 is installed and only needs starting. The candidate must get here before it may
    /// claim, so that an installer failure can still end in an abdication.
    pub rke2_installed: bool,
}

/// One gossip entry as the election sees it. There may be several per name (generations), and
/// this host's own entry may or may not be among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub name: String,
    /// The address the host advertises (its seat, in an electorate pinned by address).
    pub addr: Option<IpAddr>,
    /// The failure detector's current opinion.
    pub alive: bool,
    /// Announced a graceful departure.
    pub left: bool,
    pub role: Role,
    pub phase: Phase,
    pub vote: Option<Vote>,
    /// The claim this host acknowledged (its own claim if `candidate == name`).
    pub ack: Option<Vote>,
    pub initializer: bool,
    pub abdicated: Option<u32>,
    /// Publishes a cluster CA hash: it belongs to a cluster.
    pub has_cluster_identity: bool,
    /// How long this host's view has shown the entry dead without a break (zero while alive; see
    /// [`DeathClock`]). "Dead" is an opinion that can be wrong for a moment: a generation heard
    /// of only once has no heartbeat history yet, and a stalled peer looks dead until it resumes.
    pub dead_for: Duration,
}

impl PeerView {
    /// The claim this entry makes, if its acknowledgement is of itself.
    fn claim(&self) -> Option<&Vote> {
        self.ack.as_ref().filter(|a| a.candidate == self.name)
    }
}

impl From<&Member> for PeerView {
    fn from(m: &Member) -> Self {
        PeerView {
            name: m.name.clone(),
            alive: m.liveness == Liveness::Alive,
            left: m.liveness == Liveness::Left,
            role: m.announced.role,
            phase: m.announced.phase,
            vote: m.announced.vote.clone(),
            initializer: m.announced.initializer,
            abdicated: m.announced.abdicated,
            ack: m.announced.ack.clone(),
            addr: Some(m.announced.node_addr),
            has_cluster_identity: m.announced.ca_hash.is_some(),
            dead_for: Duration::ZERO,
        }
    }
}

/// Remembers since when each gossip entry (name and generation) has looked dead, so that a
/// decision can tell a momentary "dead" from a host that is gone. The caller owns the clock.
#[derive(Debug, Default)]
pub struct DeathClock {
    since: Since<(String, u64)>,
}

impl DeathClock {
    /// The election's view of `members` at `now`, with [`PeerView::dead_for`] filled in.
    pub fn peer_views(&mut self, now: Instant, members: &[Member]) -> Vec<PeerView> {
        // Entries alive again, left or forgotten start over.
        self.since.observe(
            now,
            members
                .iter()
                .filter(|m| m.liveness == Liveness::Dead)
                .map(|m| (m.name.clone(), m.generation)),
        );
        members
            .iter()
            .map(|m| PeerView {
                dead_for: if m.liveness == Liveness::Dead {
                    self.since.duration(now, &(m.name.clone(), m.generation))
                } else {
                    Duration::ZERO
                },
                ..PeerView::from(m)
            })
            .collect()
    }
}

/// Everything one [`decide`] step looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub self_name: String,
    /// The address this host advertises (its seat, in an electorate pinned by address).
    pub self_addr: Option<IpAddr>,
    pub config: ElectionConfig,
    pub local: LocalFacts,
    pub peers: Vec<PeerView>,
    /// How long this host has been watching gossip since it started: the lease clock of a seat
    /// nobody has been seen on.
    pub observing_for: Duration,
}

/// What the driver does next. Variants carrying a `state` change the persisted state: the driver
/// fsyncs it first, then publishes, then acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do yet. The reason is for logs and `members`: it names what is waited for.
    Wait { reason: String },
    /// Persist `state`, then publish `vote`.
    CastVote { vote: Vote, state: ElectionState },
    /// This host is the candidate of `round` with a quorum of votes: install RKE2 (server)
    /// without starting it, then decide again. If installing keeps failing, call [`abdicate`].
    Prepare {
        round: u32,
        votes: usize,
        needed: usize,
    },
    /// Persist `state` (this host's claim of `round`), then publish it.
    Claim { round: u32, state: ElectionState },
    /// Persist `state` (the acknowledgement of `claim`, for good), then publish it.
    Acknowledge { claim: Vote, state: ElectionState },
    /// Persist `state`, publish `initializer=true` (and role `server`), then start the first
    /// server. Returned again on every later step: resuming is idempotent.
    BecomeInitializer { round: u32, state: ElectionState },
    /// A cluster exists or is being created: join it as `role` (`server` or `agent`), never
    /// initialize. This ends the election for this boot.
    JoinExisting { role: Role, reason: String },
}

impl Decision {
    /// The state the driver must fsync before acting, if this decision changes it.
    fn state_to_persist_mut(&mut self) -> Option<&mut ElectionState> {
        match self {
            Decision::CastVote { state, .. }
            | Decision::Claim { state, .. }
            | Decision::Acknowledge { state, .. }
            | Decision::BecomeInitializer { state, .. } => Some(state),
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
                "candidate of round {round} ({votes} of {needed} votes): installing RKE2 before claiming"
            ),
            Decision::Claim { round, .. } => format!("claiming round {round}"),
            Decision::Acknowledge { claim, .. } => format!(
                "acknowledging the claim of {} in round {}",
                claim.candidate, claim.round
            ),
            Decision::BecomeInitializer { round, .. } => {
                format!("initializer (won round {round}): bringing up the first server")
            }
            Decision::JoinExisting { role, reason } => format!("joining as {role}: {reason}"),
        }
    }
}

/// Gives up winning: the driver calls this when the candidate cannot install RKE2 (before it
/// claimed). Returns the state to fsync before publishing the abdication; refused once this host
/// claimed or acknowledged a claim. From then on this host never claims, in any round.
pub fn abdicate(state: &ElectionState, round: u32) -> Result<ElectionState, TransitionError> {
    let mut next: ElectionState = state.lifecycle()?.abdicate(round)?.into();
    next.released = state.released.clone();
    Ok(next)
}

/// The next step of this host in the election. Pure: same inputs, same decision.
///
/// Claims an operator released on this host ([`ElectionState::release`]) are never
/// acknowledged, and their claimants are passed over as if they had abdicated. A released
/// claimant that had become initializer is no evidence of a cluster either: the operator asserts
/// it never started RKE2 (what it publishes as a member, a CA hash, still is).
///
/// A claimant is known by name, not only by the claim it publishes: a host that restarts after
/// the release learns the dead claimant's entry from its peers key by key, and may see its
/// `initializer` flag before its claim. Abdication is for good, so a released host stays passed
/// over in every round.
pub fn decide(state: &ElectionState, obs: &Observation) -> Decision {
    let released = |p: &PeerView| {
        p.claim().is_some_and(|c| state.released.contains(c))
            || state.released.iter().any(|c| c.candidate == p.name)
    };
    let decision = if obs.peers.iter().any(released) {
        let mut obs = obs.clone();
        for p in obs.peers.iter_mut().filter(|p| released(p)) {
            let round = p.ack.as_ref().map_or(0, |c| c.round);
            p.abdicated.get_or_insert(round);
            p.initializer = false;
        }
        decide_step(state, &obs)
    } else {
        decide_step(state, obs)
    };
    keep_released(state, decision)
}

/// Lifecycle transitions know nothing of released claims: carry them over.
fn keep_released(state: &ElectionState, mut decision: Decision) -> Decision {
    if let Some(next) = decision.state_to_persist_mut() {
        next.released = state.released.clone();
    }
    decision
}

fn decide_step(state: &ElectionState, obs: &Observation) -> Decision {
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
    // Rule 3.
    match obs.config.role {
        Role::Server | Role::Auto => {}
        Role::Agent => return wait("agent: waiting for a cluster to join".into()),
        Role::Observer => return wait("observer: takes no part in the election".into()),
    }
    let seats = match seat_views(obs, &roster) {
        Ok(seats) => seats,
        Err(reason) => return wait(reason),
    };
    let Some(my_seat) = seats.iter().position(|s| s.mine) else {
        return wait(format!(
            "not in the electorate ({}): waiting for a cluster to join",
            list(seats.iter().map(|s| s.seat.to_string()))
        ));
    };
    if let Some(why) = lost_state(state, &roster, &seats[my_seat]) {
        return wait(why);
    }
    // Rules 4 and 5: this host acknowledged a claim.
    if let Some(ack) = life.ack().cloned() {
        return follow_acknowledged(&life, ack, me, &seats, &roster);
    }
    // Rule 6: a live claim from a seat of the electorate.
    if let Some(claim) = live_claim(state, &life, me, &seats, obs) {
        return match life.acknowledge(claim.clone()) {
            Ok(acked) => Decision::Acknowledge {
                claim,
                state: acked.into(),
            },
            Err(err) => wait(format!("cannot acknowledge: {err}")),
        };
    }
    // Rule 7: which round to back.
    let target = match round_to_back(&life, me, &seats, obs) {
        Ok(target) => target,
        Err(why) => return wait(why),
    };
    // Rule 8: the candidate's own path, or a vote for the target.
    back(life, target, me, &seats, obs)
}

/// Rules 4 and 5: a host that acknowledged `ack` only ever follows it: as its candidate, it
/// becomes initializer once a quorum acknowledged it; otherwise it waits for the candidate.
fn follow_acknowledged(
    life: &Lifecycle,
    ack: Vote,
    me: &str,
    seats: &[SeatView],
    roster: &Roster,
) -> Decision {
    let quorum = Electorate::quorum(seats.len());
    if ack.candidate == me {
        let (acks, missing) = tally(seats, |p| p.ack.as_ref() == Some(&ack));
        if acks >= quorum {
            return match life.clone().become_initializer(me, ack.round) {
                Ok(won) => Decision::BecomeInitializer {
                    round: ack.round,
                    state: won.into(),
                },
                Err(err) => wait(format!("cannot win: {err}")),
            };
        }
        return wait(format!(
            "claimed round {}: {acks} of {quorum} acknowledgements (not yet: {})",
            ack.round,
            list(missing)
        ));
    }
    let alive = roster.alive(&ack.candidate);
    wait(format!(
        "acknowledged the claim of {} in round {}; waiting for it to initialize{}",
        ack.candidate,
        ack.round,
        if alive {
            ""
        } else {
            " (it is not alive: if it is gone for good, an operator must step in: rke2-bootstrap \
             election release)"
        }
    ))
}

/// Rule 6: the live claim of another seat to acknowledge, the highest round first. Not one of a
/// round below this host's vote while that vote can still win: that is a claimant that was cut
/// off or rebooted while the others moved on, and acknowledging it would split the
/// acknowledgements between two claims that may then both fall short of a quorum.
fn live_claim(
    state: &ElectionState,
    life: &Lifecycle,
    me: &str,
    seats: &[SeatView],
    obs: &Observation,
) -> Option<Vote> {
    let n = seats.len() as u32;
    let quorum = Electorate::quorum(seats.len());
    let timing = (obs.observing_for, obs.config.lease);
    let my_candidate_can_win = life.vote().is_some_and(|v| {
        let candidate_stands = !matches!(
            seats[(v.round % n) as usize].standing(
                me,
                life.abdicated().is_some(),
                timing.0,
                timing.1
            ),
            Standing::Skip(_)
        );
        let could_back_it = seats
            .iter()
            .filter(|s| s.mine || s.could_still_vote_for(v, timing.0, timing.1))
            .count();
        candidate_stands && could_back_it >= quorum
    });
    let floor = match life.vote() {
        Some(v) if my_candidate_can_win => v.round,
        _ => 0,
    };
    seats
        .iter()
        .filter(|s| !s.mine)
        .flat_map(|s| s.entries.iter())
        .filter(|p| p.alive && !p.left)
        .filter_map(|p| p.claim())
        .filter(|c| c.round >= floor && !state.released.contains(c))
        .max_by(|a, b| {
            a.round
                .cmp(&b.round)
                .then_with(|| b.candidate.cmp(&a.candidate))
        })
        .cloned()
}

/// Rule 7: the first round, from the highest live vote on, whose seat can win; why to wait when
/// one must be waited for, or when no seat can win.
fn round_to_back(
    life: &Lifecycle,
    me: &str,
    seats: &[SeatView],
    obs: &Observation,
) -> Result<Vote, String> {
    let n = seats.len() as u32;
    let live_rounds = seats
        .iter()
        .filter(|s| !s.mine)
        .flat_map(|s| s.entries.iter())
        .filter(|p| p.alive && !p.left)
        .filter_map(|p| p.vote.as_ref().map(|v| v.round));
    let base = live_rounds
        .chain(life.vote().map(|v| v.round))
        .max()
        .unwrap_or(0);
    let mut passed = Vec::new();
    for round in base..base.saturating_add(n) {
        let seat = &seats[(round % n) as usize];
        match seat.standing(
            me,
            life.abdicated().is_some(),
            obs.observing_for,
            obs.config.lease,
        ) {
            Standing::Viable(candidate) => return Ok(Vote { round, candidate }),
            Standing::Pending(why) => {
                return Err(with_passed(
                    format!("waiting for the candidate of round {round}: {why}"),
                    &passed,
                ))
            }
            Standing::Skip(why) => passed.push(why),
        }
    }
    Err(with_passed(
        "no seat of the electorate can win: an operator must step in".into(),
        &passed,
    ))
}

/// Rule 8: the candidate of `target` that this host voted for claims once a quorum voted for
/// it (and RKE2 is installed); any other host votes for `target`, once.
fn back(
    life: Lifecycle,
    target: Vote,
    me: &str,
    seats: &[SeatView],
    obs: &Observation,
) -> Decision {
    let quorum = Electorate::quorum(seats.len());
    if target.candidate == me && life.vote() == Some(&target) {
        let (votes, missing) = tally(seats, |p| p.vote.as_ref() == Some(&target) && p.alive);
        if votes < quorum {
            return wait(format!(
                "candidate of round {}: {votes} of {quorum} votes (not yet: {})",
                target.round,
                list(missing)
            ));
        }
        if !obs.local.rke2_installed {
            return Decision::Prepare {
                round: target.round,
                votes,
                needed: quorum,
            };
        }
        return match life.claim(me, target.round) {
            Ok(claimed) => Decision::Claim {
                round: target.round,
                state: claimed.into(),
            },
            Err(err) => wait(format!("cannot claim: {err}")),
        };
    }
    if life.vote() == Some(&target) {
        return wait(format!(
            "voted for {} in round {}; waiting for it to claim",
            target.candidate, target.round
        ));
    }
    match life.cast_vote(target.clone()) {
        Ok(voted) => Decision::CastVote {
            vote: target,
            state: voted.into(),
        },
        Err(err) => wait(format!("cannot vote: {err}")),
    }
}

/// Another seat's host that could take over this host's candidacy if it abdicated: alive, a
/// server candidate, not abdicated, not committed to another claim. `None` means abdicating
/// would leave no candidate at all (every seat shares the installer URL, so a failure may well
/// be a passing outage): the driver keeps retrying instead.
pub fn successor(obs: &Observation) -> Option<String> {
    let roster = Roster::new(&obs.self_name, &obs.peers);
    let seats = seat_views(obs, &roster).ok()?;
    seats.iter().filter(|s| !s.mine).find_map(|s| {
        match s.standing(&obs.self_name, false, Duration::ZERO, Duration::ZERO) {
            Standing::Viable(name) if s.entries.iter().any(|p| p.alive && !p.left) => Some(name),
            _ => None,
        }
    })
}

fn wait(reason: String) -> Decision {
    Decision::Wait { reason }
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn with_passed(reason: String, passed: &[String]) -> String {
    if passed.is_empty() {
        reason
    } else {
        format!("{reason}; passed over: {}", passed.join(", "))
    }
}

/// The electorate's seats with the entries on each, in seat order; or why there are none yet.
fn seat_views<'a>(obs: &'a Observation, roster: &Roster<'a>) -> Result<Vec<SeatView<'a>>, String> {
    let me = obs.self_name.as_str();
    let seats: Vec<Seat> = match &obs.config.electorate {
        Electorate::Pinned(seats) => seats.clone(),
        Electorate::Counted(0) => return Err("bootstrap-expect is 0: refusing to vote".into()),
        Electorate::Counted(expect) => {
            let expect = *expect;
            let names: BTreeSet<&str> = roster.candidates().chain([me]).collect();
            let seen = || list(names.iter().map(|n| n.to_string()));
            if names.len() < expect {
                return Err(format!(
                    "waiting for {} of {expect} server candidates (count-only mode; seen: {})",
                    names.len(),
                    seen()
                ));
            }
            if names.len() > expect {
                return Err(format!(
                    "SAW {} SERVER CANDIDATES BUT BOOTSTRAP-EXPECT IS {expect}: refusing to vote; \
                     pin the electorate with initial-servers, or fix bootstrap-expect or the roles \
                     (seen: {})",
                    names.len(),
                    seen()
                ));
            }
            names
                .into_iter()
                .map(|n| Seat::Name(n.to_string()))
                .collect()
        }
    };
    Ok(seats
        .into_iter()
        .map(|seat| {
            let entries = roster
                .entries()
                .filter(|p| p.name != me && seat.holds(&p.name, p.addr))
                .collect();
            let mine = seat.holds(me, obs.self_addr);
            SeatView {
                seat,
                entries,
                mine,
            }
        })
        .collect())
}

/// Counts the seats with an entry matching `pred`, this host's own seat included (callers ask
/// about a commitment of its own, which is on its disk), and names the others.
fn tally(seats: &[SeatView], pred: impl Fn(&PeerView) -> bool) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut missing = Vec::new();
    for s in seats {
        if s.mine || s.entries.iter().any(|p| pred(p)) {
            count += 1;
        } else {
            missing.push(s.seat.to_string());
        }
    }
    (count, missing)
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

/// Gossip remembers a commitment of this host's seat that its persisted state does not: the state
/// dir was lost (a reinstall under the same name or on the same address). Committing again could
/// contradict the earlier commitment.
fn lost_state(state: &ElectionState, roster: &Roster, seat: &SeatView) -> Option<String> {
    let own = roster
        .own()
        .iter()
        .copied()
        .chain(seat.entries.iter().copied());
    let own: Vec<&PeerView> = own.collect();
    if state.abdicated.is_none() && own.iter().any(|p| p.abdicated.is_some()) {
        return Some(
            "gossip shows an abdication of this host that its state dir lacks: refusing to vote"
                .into(),
        );
    }
    if let Some(ack) = own
        .iter()
        .filter_map(|p| p.ack.as_ref())
        .find(|a| state.ack.as_ref() != Some(*a) && !state.released.contains(*a))
    {
        if state.initializer_of.is_none() {
            return Some(format!(
                "gossip shows this seat acknowledging the claim of {} in round {} but the state dir \
                 lacks it: refusing to take part",
                ack.candidate, ack.round
            ));
        }
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
