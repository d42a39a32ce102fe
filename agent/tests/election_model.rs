//! Exhaustive model check of the first-server election for small electorates.
//!
//! Where `election_sim.rs` draws random schedules, this test explores **every** interleaving of
//! a small, bounded model, over the same pure core the agent runs: every election step calls
//! [`rke2_bootstrap::election::decide`] on the host's persisted [`ElectionState`] and an
//! [`Observation`] built from what it sees, and an installer failure calls
//! [`rke2_bootstrap::election::abdicate`].
//!
//! # Model
//!
//! Hosts: the `n` seats of a pinned electorate (`s0`, `s1`, ..., by name; round `r`'s candidate
//! is seat `r mod n`, so seats are not symmetric and no symmetry reduction is applied) plus one
//! server candidate outside it (`out`). Every host is configured `server`.
//!
//! The global state is only what survives a crash, per seat: its [`ElectionState`] (vote,
//! acknowledgement, initializer, abdication) and "RKE2 installed". Nothing volatile is kept:
//! there are no message queues and no stored views. Instead, **each step of a host chooses its
//! view afresh**: for every other seat, the entry is absent, or any announcement from that seat's
//! *history*, seen alive or dead for longer than the lease; and the host has watched gossip for
//! less, or for longer, than the lease. Every combination is explored. A seat's history is what
//! it may have announced (derived from its persisted state as `ElectionState::announce` does):
//! before its acknowledgement, no vote or any vote up to its current one (each earlier round for
//! that round's candidate), each without or with its abdication; then its acknowledgement and,
//! for the initializer, `initializer`. That is a superset of what it did announce for votes
//! (which keeps the vote history out of the state) and exact for acknowledgements and
//! `initializer`, the facts the safety argument counts. This covers, at every step:
//! - message loss, delay and reordering, and partitions of every shape, healing or not (a view
//!   that lacks a seat, or shows an old announcement of it, or calls it dead);
//! - a failure detector that is wrong at any moment (alive or dead, whatever the truth);
//! - crashes and restarts of any host, any number of times: a crashed host takes no step, and a
//!   restarted one keeps its persisted state and starts from an arbitrary view, which every step
//!   has anyway. Crash and restart need no actions of their own.
//!
//! Both choices over-approximate gossip, which is sound for safety (no violation in the superset,
//! none in gossip); a host's views need not even be monotone (a later step may show an older
//! announcement than an earlier one).
//!
//! Actions, in any order: a seat steps (calls `decide` on a view as above and follows the driver
//! contract: a decision carrying a state is persisted and published in one action, persisting
//! first and publishing later only delaying what peers see, which the choice of view covers);
//! `Prepare` either completes the install or fails it, and a failed install abdicates through
//! `abdicate` (the agent abdicates only when a successor exists: abdicating always is a
//! superset). `Wait` and `JoinExisting` change no persisted state and are not transitions.
//!
//! The outsider's state never changes: at every state it decides on every view made of the
//! seats' current announcements (each absent, alive or dead, and either lease clock) and must
//! never vote, claim, acknowledge or initialize. In the seats' views it is always
//! present and alive (the view most likely to make a seat count it).
//!
//! Simplifications: one entry per host in a view (a stale second generation only shows an older
//! announcement of the same history, which the choice of view already covers); no host sees its
//! own entry (rule 3's "gossip shows a commitment my state dir lacks" never fires: the agent never
//! loses its state dir, and the negative control shows what happens when it loses part of it);
//! no "dead for less than the lease" opinions (they only make a host wait); no RKE2 data dir, CA
//! hash or registration address (the `initializer` flag is the cluster sign); no operator
//! release.
//!
//! Bound: votes in round `2n` or later are not explored (`ELECTION_MODEL_ROUNDS`): every seat is
//! the candidate of two rounds.
//!
//! # Properties
//!
//! Always: at most one host has `initializer_of` set; a host becomes initializer only while a
//! quorum of seats holds, on disk, the acknowledgement of its claim (its own seat included); no
//! host becomes initializer from a view that shows a cluster sign; the outsider never commits;
//! `abdicate` is never refused when the core asked to prepare. Sometimes (the model is not
//! vacuous): exactly one initializer; a claim acknowledged by a quorum of seats; a vote that passes
//! over a candidate that is dead or unseen beyond the lease.
//!
//! Negative controls, each caught with the shortest trace printed: a driver that counts the
//! quorum over the seats it sees rather than the configured seats; a driver that does not persist
//! acknowledgements (a restart forgets the one it made; needs three seats).
//!
//! # Checker and measured sizes
//!
//! A breadth-first explorer with a visited set of 64-bit state fingerprints (a collision could
//! only hide states; at these sizes its odds are below one in a million) and a parent pointer per
//! state, so a violation or a witness prints as the shortest action sequence that reaches it.
//! `decide` is pure, so its outcomes are cached by (host, persisted state, view).
//!
//! Measured (votes below round `2n`, on a shared two-core machine under load):
//! - **2 seats + outsider**, the normal test run: 102 states, 132 transitions, about 0.1 s in
//!   the debug profile;
//! - **3 seats + outsider**: 10 533 states, 35 705 transitions, 738 924 distinct `decide` calls
//!   (103 622 more of the outsider), depth 15, no violation; 154 s in the debug profile, 10 s in
//!   release, so it runs from a release-mode command (README, "The safety rule");
//! - negative controls: an electorate of the seats seen, caught after 216 states (2 seats,
//!   0.1 s); forgetting acknowledgements, caught after 14 200 states (3 seats, 30 s in the debug
//!   profile), both with a trace of 8 and 12 actions.
//!
//! `ELECTION_MODEL_SEATS=<n>` (1 to 5) picks the size of the main check,
//! `ELECTION_MODEL_MAX_STATES=<k>` (default fifty million) stops a run that grows too large. Every
//! run prints its number of states, transitions, distinct `decide` calls and time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use rke2_bootstrap::election::{
    abdicate, decide, Decision, ElectionConfig, ElectionState, Electorate, LocalFacts, Observation,
    PeerView,
};
use rke2_bootstrap::gossip::schema::{Phase, Role, Vote};

const LEASE: Duration = Duration::from_secs(30);
/// Seats, at most.
const MAX_SEATS: usize = 5;

/// Deliberately broken drivers, to show the checker can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The driver does not persist acknowledgements: a restart forgets the claim it acknowledged.
    ForgetAckOnRestart,
    /// The electorate handed to the election is only the seats this host sees (itself and the
    /// seats in its view): "a majority of those who showed up".
    ElectorateOfSeatsSeen,
}

/// A vote or a claim, with the candidate as a host index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct V {
    round: u8,
    cand: u8,
}

/// The persisted state of one seat, compactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Persisted {
    vote: Option<V>,
    ack: Option<V>,
    init: Option<u8>,
    abdicated: Option<u8>,
    installed: bool,
}

/// What a host announces of its election state (`ElectionState::announce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Pub {
    vote: Option<V>,
    ack: Option<V>,
    initializer: bool,
    abdicated: Option<u8>,
}

/// One seat: only its persisted state. What it may have announced before (its *history*, see
/// [`Host::history`]) follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Host {
    p: Persisted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    hosts: [Host; MAX_SEATS],
}

/// One entry of a view: an announcement, seen alive or dead beyond the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Entry {
    seen: Pub,
    alive: bool,
}

/// What a stepping host sees: one optional entry per seat (its own slot unused), and whether it
/// has watched gossip for longer than the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct View {
    seats: [Option<Entry>; MAX_SEATS],
    beyond_lease: bool,
}

/// What one step of a host does, with the state it persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Wait,
    Vote(V, Persisted),
    Prepare(u8),
    Claim(Persisted),
    Ack(V, Persisted),
    Initialize(Persisted),
    Join,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vote(V),
    InstallOk,
    InstallFailsAbdicate(u8),
    Claim(u8),
    Ack(V),
    Initialize(u8),
    /// Negative control only: a restart that forgets the acknowledgement.
    RestartForgettingAck,
}

/// A transition, with the view it was taken on (for the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Action {
    host: u8,
    kind: Kind,
    view: Option<View>,
}

/// FxHash: the model's keys are small and hashed hundreds of times per state.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
type FxSet<K> = HashSet<K, BuildHasherDefault<Fx>>;

/// The cached result of one `decide` call.
#[derive(Debug, Clone, Copy)]
struct Step {
    outcome: Outcome,
    /// The view showed a cluster sign.
    cluster: bool,
    /// A vote that passes over a seat dead or unseen beyond the lease.
    lease_pass: bool,
}

struct Model {
    seats: usize,
    names: Vec<String>,
    max_round: u8,
    fault: Fault,
    electorate: Electorate,
    cache: FxMap<(u8, Persisted, View), Step>,
    outsider_cache: FxMap<View, Outcome>,
}

impl Host {
    fn new() -> Host {
        Host::default()
    }

    /// Persists `p` and publishes it.
    fn persist(&mut self, p: Persisted) {
        self.p = p;
    }

    /// Every announcement this seat (host index `me`, of `seats`) may have made, a superset of
    /// what it did announce: before its acknowledgement, no vote or any vote up to its current
    /// one (every earlier round for that round's candidate), each without or with its
    /// abdication; then its acknowledgement (the claim, for the initializer, whose persisted
    /// state drops it as implied) and `initializer`. A superset is sound for safety, and keeps
    /// the vote history out of the state. The acknowledgement and `initializer` are exact: they
    /// are what the safety argument counts.
    fn history(&self, me: u8, seats: usize) -> Vec<Pub> {
        let p = self.p;
        let mut votes = vec![None];
        if let Some(v) = p.vote {
            votes.extend((0..v.round).map(|round| {
                Some(V {
                    round,
                    cand: (usize::from(round) % seats) as u8,
                })
            }));
            votes.push(Some(v));
        }
        let mut out: Vec<Pub> = Vec::new();
        for abdicated in [None, p.abdicated] {
            for vote in &votes {
                let seen = Pub {
                    vote: *vote,
                    abdicated,
                    ..Pub::default()
                };
                if !out.contains(&seen) {
                    out.push(seen);
                }
            }
        }
        let claim = p.ack.or(p.init.map(|round| V { round, cand: me }));
        if let Some(ack) = claim {
            out.push(Pub {
                vote: p.vote,
                ack: Some(ack),
                initializer: false,
                abdicated: p.abdicated,
            });
        }
        if p.init.is_some() {
            out.push(Pub {
                vote: p.vote,
                ack: None,
                initializer: true,
                abdicated: None,
            });
        }
        out
    }
}

impl Pub {
    /// The announcement of a seat's current persisted state (`ElectionState::announce`).
    fn from_host(h: &Host) -> Pub {
        Pub {
            vote: h.p.vote,
            ack: h.p.ack,
            initializer: h.p.init.is_some(),
            abdicated: h.p.abdicated,
        }
    }
}

impl Model {
    fn new(seats: usize, max_round: u8, fault: Fault) -> Model {
        assert!((1..=MAX_SEATS).contains(&seats));
        let mut names: Vec<String> = (0..seats).map(|i| format!("s{i}")).collect();
        names.push("out".into());
        let electorate = Electorate::pinned(&names[..seats]).unwrap();
        Model {
            seats,
            names,
            max_round,
            fault,
            electorate,
            cache: FxMap::default(),
            outsider_cache: FxMap::default(),
        }
    }

    fn outsider(&self) -> usize {
        self.seats
    }

    fn quorum(&self) -> usize {
        Electorate::quorum(self.seats)
    }

    fn vote(&self, v: V) -> Vote {
        Vote {
            round: u32::from(v.round),
            candidate: self.names[v.cand as usize].clone(),
        }
    }

    fn v(&self, v: &Vote) -> V {
        V {
            round: u8::try_from(v.round).expect("round fits the model"),
            cand: self.names.iter().position(|n| *n == v.candidate).unwrap() as u8,
        }
    }

    fn to_state(&self, p: &Persisted) -> ElectionState {
        let round = p.init.or(p.vote.map(|v| v.round)).map_or(0, u32::from);
        ElectionState {
            round,
            vote: p.vote.map(|v| self.vote(v)),
            ack: p.ack.map(|v| self.vote(v)),
            initializer_of: p.init.map(u32::from),
            abdicated: p.abdicated.map(u32::from),
            released: Vec::new(),
        }
    }

    fn persisted(&self, s: &ElectionState, installed: bool) -> Persisted {
        let p = Persisted {
            vote: s.vote.as_ref().map(|v| self.v(v)),
            ack: s.ack.as_ref().map(|v| self.v(v)),
            init: s.initializer_of.map(|r| r as u8),
            abdicated: s.abdicated.map(|r| r as u8),
            installed,
        };
        assert_eq!(&self.to_state(&p), s, "the model's encoding loses state");
        p
    }

    fn initial(&self) -> State {
        State {
            hosts: [Host::new(); MAX_SEATS],
        }
    }

    fn peer(&self, j: usize, e: Entry) -> PeerView {
        PeerView {
            name: self.names[j].clone(),
            addr: None,
            alive: e.alive,
            left: false,
            role: Role::Server,
            phase: Phase::Discovering,
            vote: e.seen.vote.map(|v| self.vote(v)),
            ack: e.seen.ack.map(|v| self.vote(v)),
            initializer: e.seen.initializer,
            abdicated: e.seen.abdicated.map(u32::from),
            has_cluster_identity: false,
            dead_for: if e.alive { Duration::ZERO } else { LEASE },
        }
    }

    fn observation(&self, i: usize, installed: bool, view: &View) -> Observation {
        let mut peers: Vec<PeerView> = (0..self.seats)
            .filter(|&j| j != i)
            .filter_map(|j| view.seats[j].map(|e| self.peer(j, e)))
            .collect();
        if i != self.outsider() {
            // The outsider: on no seat, always present and alive.
            peers.push(self.peer(
                self.outsider(),
                Entry {
                    seen: Pub::default(),
                    alive: true,
                },
            ));
        }
        let electorate = if self.fault == Fault::ElectorateOfSeatsSeen {
            let seen: Vec<&String> = (0..self.seats)
                .filter(|&j| j == i || view.seats[j].is_some())
                .map(|j| &self.names[j])
                .collect();
            Electorate::pinned(&seen).unwrap_or(Electorate::Counted(0))
        } else {
            self.electorate.clone()
        };
        Observation {
            self_name: self.names[i].clone(),
            self_addr: None,
            config: ElectionConfig {
                role: Role::Server,
                electorate,
                servers_target: 3,
                lease: LEASE,
            },
            local: LocalFacts {
                data_dir_present: false,
                registration_answers: false,
                rke2_installed: installed,
            },
            peers,
            observing_for: if view.beyond_lease {
                LEASE
            } else {
                Duration::ZERO
            },
        }
    }

    fn outcome_of(&self, decision: Decision, installed: bool) -> Outcome {
        match decision {
            Decision::Wait { .. } => Outcome::Wait,
            Decision::CastVote { vote, state } => {
                Outcome::Vote(self.v(&vote), self.persisted(&state, installed))
            }
            Decision::Prepare { round, .. } => Outcome::Prepare(round as u8),
            Decision::Claim { state, .. } => Outcome::Claim(self.persisted(&state, installed)),
            Decision::Acknowledge { claim, state } => {
                Outcome::Ack(self.v(&claim), self.persisted(&state, installed))
            }
            Decision::BecomeInitializer { state, .. } => {
                Outcome::Initialize(self.persisted(&state, installed))
            }
            Decision::JoinExisting { .. } => Outcome::Join,
        }
    }

    /// Seat `i` deciding on `view`.
    fn step(&mut self, i: usize, p: Persisted, view: &View) -> Step {
        if let Some(s) = self.cache.get(&(i as u8, p, *view)) {
            return *s;
        }
        let obs = self.observation(i, p.installed, view);
        let cluster = obs.peers.iter().any(|p| p.initializer);
        let outcome = self.outcome_of(decide(&self.to_state(&p), &obs), p.installed);
        let lease_pass = match outcome {
            Outcome::Vote(v, _) => self.passes_over_by_lease(i, p, view, v),
            _ => false,
        };
        let s = Step {
            outcome,
            cluster,
            lease_pass,
        };
        self.cache.insert((i as u8, p, *view), s);
        s
    }

    /// The outsider deciding on `view`.
    fn outsider_step(&mut self, view: &View) -> Outcome {
        if let Some(o) = self.outsider_cache.get(view) {
            return *o;
        }
        let obs = self.observation(self.outsider(), false, view);
        let o = self.outcome_of(decide(&ElectionState::default(), &obs), false);
        self.outsider_cache.insert(*view, o);
        o
    }

    /// Whether seat `i`'s vote `v` passes over a seat that is dead or unseen beyond the lease.
    fn passes_over_by_lease(&self, i: usize, p: Persisted, view: &View, v: V) -> bool {
        let live_rounds = (0..self.seats)
            .filter(|&j| j != i)
            .filter_map(|j| view.seats[j].filter(|e| e.alive))
            .filter_map(|e| e.seen.vote.map(|v| v.round));
        let base = live_rounds
            .chain(p.vote.map(|v| v.round))
            .max()
            .unwrap_or(0);
        (base..v.round).any(|r| {
            let seat = r as usize % self.seats;
            seat != i
                && match view.seats[seat] {
                    None => view.beyond_lease,
                    Some(e) => {
                        !e.alive
                            && e.seen.abdicated.is_none()
                            && e.seen.ack.is_none_or(|a| a.cand as usize == seat)
                    }
                }
        })
    }

    /// Every view a host can have of the seats in `s` (its own slot, `me`, left empty).
    fn views(&self, s: &State, me: usize) -> Vec<View> {
        self.every_view(|j| {
            if j == me {
                return vec![None];
            }
            let mut options = vec![None];
            for seen in s.hosts[j].history(j as u8, self.seats) {
                options.push(Some(Entry { seen, alive: true }));
                options.push(Some(Entry { seen, alive: false }));
            }
            options
        })
    }

    /// The outsider's views: each seat absent, or its current announcement alive or dead.
    fn current_views(&self, s: &State) -> Vec<View> {
        self.every_view(|j| {
            let seen = Pub::from_host(&s.hosts[j]);
            vec![
                None,
                Some(Entry { seen, alive: true }),
                Some(Entry { seen, alive: false }),
            ]
        })
    }

    /// Every combination of one option per seat, each with both lease clocks.
    fn every_view(&self, options_of: impl Fn(usize) -> Vec<Option<Entry>>) -> Vec<View> {
        let mut views = vec![View {
            seats: [None; MAX_SEATS],
            beyond_lease: false,
        }];
        for j in 0..self.seats {
            let options = options_of(j);
            views = views
                .iter()
                .flat_map(|v| {
                    options.iter().map(move |e| {
                        let mut v = *v;
                        v.seats[j] = *e;
                        v
                    })
                })
                .collect();
        }
        with_both_lease_clocks(views)
    }

    /// Every successor of `s`, with the action that leads there. Violations and the lease-pass
    /// witness found on the way are reported through `events`.
    fn successors(&mut self, s: &State, events: &mut Vec<Event>) -> Vec<(Action, State)> {
        let mut out: Vec<(Action, State)> = Vec::new();
        let mut seen: FxSet<State> = FxSet::default();
        let mut push = |out: &mut Vec<(Action, State)>, a: Action, t: State| {
            if seen.insert(t) {
                out.push((a, t));
                true
            } else {
                false
            }
        };
        for view in self.current_views(s) {
            match self.outsider_step(&view) {
                Outcome::Wait | Outcome::Join => {}
                other => events.push(Event::Violation(format!(
                    "the outsider commits ({other:?}) on {}",
                    self.describe_view(&view)
                ))),
            }
        }
        for i in 0..self.seats {
            let h = s.hosts[i];
            let iu = i as u8;
            for view in self.views(s, i) {
                let step = self.step(i, h.p, &view);
                let mut next = *s;
                let me = &mut next.hosts[i];
                let action = |kind| Action {
                    host: iu,
                    kind,
                    view: Some(view),
                };
                match step.outcome {
                    Outcome::Wait | Outcome::Join => {}
                    Outcome::Vote(v, p) => {
                        if v.round < self.max_round {
                            me.persist(p);
                            if push(&mut out, action(Kind::Vote(v)), next) && step.lease_pass {
                                events.push(Event::LeasePass(out.len() - 1));
                            }
                        }
                    }
                    Outcome::Prepare(round) => {
                        let mut ok = *me;
                        ok.p.installed = true;
                        let mut ok_state = *s;
                        ok_state.hosts[i] = ok;
                        push(&mut out, action(Kind::InstallOk), ok_state);
                        match abdicate(&self.to_state(&h.p), u32::from(round)) {
                            Ok(state) => {
                                me.persist(self.persisted(&state, h.p.installed));
                                push(&mut out, action(Kind::InstallFailsAbdicate(round)), next);
                            }
                            Err(e) => events.push(Event::Violation(format!(
                                "{}: abdicate refused after Prepare: {e}",
                                self.names[i]
                            ))),
                        }
                    }
                    Outcome::Claim(p) => {
                        me.persist(p);
                        let round = p.ack.unwrap().round;
                        push(&mut out, action(Kind::Claim(round)), next);
                    }
                    Outcome::Ack(v, p) => {
                        me.persist(p);
                        push(&mut out, action(Kind::Ack(v)), next);
                    }
                    Outcome::Initialize(p) => {
                        if h.p.init.is_some() {
                            // Resuming: idempotent, not a transition.
                            continue;
                        }
                        if step.cluster {
                            events.push(Event::Violation(format!(
                                "{} initializes on a view that shows a cluster sign",
                                self.names[i]
                            )));
                        }
                        let round = p.init.unwrap();
                        let claim = V { round, cand: iu };
                        let acks = (0..self.seats)
                            .filter(|&k| k == i || s.hosts[k].p.ack == Some(claim))
                            .count();
                        // F3 of the safety argument, checked on the disks rather than the view.
                        // Only for the real driver: the negative controls must be caught by the
                        // end property (two initializers) itself.
                        if self.fault == Fault::None
                            && (h.p.ack != Some(claim) || acks < self.quorum())
                        {
                            events.push(Event::Violation(format!(
                                "{} initializes with {acks} acknowledgements of its claim on disk",
                                self.names[i]
                            )));
                        }
                        me.persist(p);
                        push(&mut out, action(Kind::Initialize(round)), next);
                    }
                }
            }
            if self.fault == Fault::ForgetAckOnRestart && h.p.ack.is_some() && h.p.init.is_none() {
                let mut next = *s;
                let mut p = h.p;
                p.ack = None;
                next.hosts[i].persist(p);
                push(
                    &mut out,
                    Action {
                        host: iu,
                        kind: Kind::RestartForgettingAck,
                        view: None,
                    },
                    next,
                );
            }
        }
        out
    }

    fn initializers(&self, s: &State) -> usize {
        s.hosts[..self.seats]
            .iter()
            .filter(|h| h.p.init.is_some())
            .count()
    }

    fn quorum_acknowledged(&self, s: &State) -> bool {
        (0..self.seats).any(|c| {
            let claim = s.hosts[c].p.ack.filter(|a| a.cand as usize == c);
            claim.is_some_and(|claim| {
                (0..self.seats)
                    .filter(|&k| s.hosts[k].p.ack == Some(claim))
                    .count()
                    >= self.quorum()
            })
        })
    }

    fn describe_vote(&self, v: &V) -> String {
        format!("{}:{}", v.round, self.names[v.cand as usize])
    }

    fn describe_view(&self, view: &View) -> String {
        let mut out = Vec::new();
        for (j, e) in view.seats.iter().enumerate().take(self.seats) {
            let Some(e) = e else { continue };
            let mut what = Vec::new();
            if let Some(v) = e.seen.vote {
                what.push(format!("vote {}", self.describe_vote(&v)));
            }
            if let Some(a) = e.seen.ack {
                what.push(format!("ack {}", self.describe_vote(&a)));
            }
            if e.seen.initializer {
                what.push("INITIALIZER".into());
            }
            if let Some(r) = e.seen.abdicated {
                what.push(format!("abdicated {r}"));
            }
            if !e.alive {
                what.push("dead".into());
            }
            out.push(format!("{} [{}]", self.names[j], what.join(", ")));
        }
        if view.beyond_lease {
            out.push("watching beyond the lease".into());
        }
        format!("seeing {}", list(&out))
    }

    fn describe(&self, a: &Action) -> String {
        let name = self.names[a.host as usize].as_str();
        let what = match a.kind {
            Kind::Vote(v) => format!("votes {}", self.describe_vote(&v)),
            Kind::InstallOk => "prepares: install succeeds".into(),
            Kind::InstallFailsAbdicate(r) => {
                format!("prepares: install fails, ABDICATES round {r}")
            }
            Kind::Claim(r) => format!("CLAIMS round {r}"),
            Kind::Ack(v) => format!("acknowledges {}", self.describe_vote(&v)),
            Kind::Initialize(r) => format!("BECOMES INITIALIZER of round {r}"),
            Kind::RestartForgettingAck => "restarts and FORGETS its acknowledgement".into(),
        };
        match &a.view {
            Some(view) => format!("{name} {what}, {}", self.describe_view(view)),
            None => format!("{name} {what}"),
        }
    }
}

/// `views`, each with the host watching gossip for less and for longer than the lease.
fn with_both_lease_clocks(mut views: Vec<View>) -> Vec<View> {
    let longer: Vec<View> = views
        .iter()
        .map(|v| View {
            beyond_lease: true,
            ..*v
        })
        .collect();
    views.extend(longer);
    views
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join("; ")
    }
}

enum Event {
    Violation(String),
    /// The successor at this index passes over a candidate by the lease.
    LeasePass(usize),
}

#[derive(Debug, Default)]
struct Report {
    states: usize,
    transitions: usize,
    depth: usize,
    elapsed: Duration,
    violation: Option<(String, Vec<String>)>,
    one_initializer: Option<Vec<String>>,
    quorum_acked: Option<Vec<String>>,
    lease_pass: Option<Vec<String>>,
}

fn fingerprint(s: &State) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Breadth-first search of every reachable state; stops at the first violation.
fn check(model: &mut Model) -> Report {
    let started = Instant::now();
    let initial = model.initial();
    // Per state: its parent and the action from there (for traces), and its depth.
    let mut parent: Vec<Option<(u32, Action)>> = vec![None];
    let mut depth: Vec<u16> = vec![0];
    let mut seen: FxSet<u64> = FxSet::from_iter([fingerprint(&initial)]);
    let mut queue = VecDeque::from([(0u32, initial)]);
    let mut report = Report::default();
    let trace = |parent: &Vec<Option<(u32, Action)>>, mut at: u32| {
        let mut actions = Vec::new();
        while let Some((p, a)) = parent[at as usize] {
            actions.push(a);
            at = p;
        }
        actions.reverse();
        actions
    };
    let mut events = Vec::new();
    let limit = env_usize("ELECTION_MODEL_MAX_STATES").unwrap_or(50_000_000);
    let mut next_progress = 100_000;
    while let Some((at, s)) = queue.pop_front() {
        assert!(
            parent.len() < limit,
            "more than {limit} states: tighten the bounds"
        );
        if parent.len() >= next_progress {
            next_progress += 100_000;
            eprintln!(
                "  {} states, {} queued, depth {}, {:.1?}",
                parent.len(),
                queue.len(),
                depth[at as usize],
                started.elapsed()
            );
        }
        events.clear();
        let next = model.successors(&s, &mut events);
        report.transitions += next.len();
        let mut lease_pass_at = Vec::new();
        for e in events.drain(..) {
            match e {
                Event::Violation(what) if report.violation.is_none() => {
                    let path = trace(&parent, at);
                    report.violation =
                        Some((what, path.iter().map(|a| model.describe(a)).collect()));
                }
                Event::Violation(_) => {}
                Event::LeasePass(k) => lease_pass_at.push(k),
            }
        }
        if report.violation.is_some() {
            break;
        }
        for (k, (action, t)) in next.into_iter().enumerate() {
            if !seen.insert(fingerprint(&t)) {
                continue;
            }
            let id = parent.len() as u32;
            parent.push(Some((at, action)));
            depth.push(depth[at as usize] + 1);
            report.depth = report.depth.max(usize::from(depth[id as usize]));
            let path = || {
                trace(&parent, id)
                    .iter()
                    .map(|a| model.describe(a))
                    .collect::<Vec<_>>()
            };
            let initializers = model.initializers(&t);
            if initializers > 1 {
                report.violation = Some(("two hosts initialize".into(), path()));
                break;
            }
            if report.one_initializer.is_none() && initializers == 1 {
                report.one_initializer = Some(path());
            }
            if report.quorum_acked.is_none() && model.quorum_acknowledged(&t) {
                report.quorum_acked = Some(path());
            }
            if report.lease_pass.is_none() && lease_pass_at.contains(&k) {
                report.lease_pass = Some(path());
            }
            queue.push_back((id, t));
        }
        if report.violation.is_some() {
            break;
        }
    }
    report.states = parent.len();
    report.elapsed = started.elapsed();
    report
}

fn show(title: &str, path: &[String]) -> String {
    let mut out = format!("{title} ({} actions):\n", path.len());
    for (k, line) in path.iter().enumerate() {
        let _ = writeln!(out, "  {:>2}. {line}", k + 1);
    }
    out
}

fn env_usize(key: &str) -> Option<usize> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// Runs the safe model with `seats` seats and checks every property; returns the report.
fn exhaustive(seats: usize) -> Report {
    let rounds = env_usize("ELECTION_MODEL_ROUNDS").unwrap_or(2 * seats) as u8;
    let mut model = Model::new(seats, rounds, Fault::None);
    let report = check(&mut model);
    eprintln!(
        "{seats} seats + 1 outsider, votes below round {rounds}: {} states, {} transitions, \
         depth {}, {} distinct decide calls (+{} of the outsider), {:.1?}",
        report.states,
        report.transitions,
        report.depth,
        model.cache.len(),
        model.outsider_cache.len(),
        report.elapsed
    );
    if let Some((what, path)) = &report.violation {
        panic!("{}", show(&format!("SAFETY VIOLATION: {what}"), path));
    }
    let one = report
        .one_initializer
        .as_ref()
        .expect("no path reaches an initializer");
    eprintln!("{}", show("a path to exactly one initializer", one));
    let acked = report
        .quorum_acked
        .as_ref()
        .expect("no path reaches a claim acknowledged by a quorum");
    eprintln!("{}", show("a path to a quorum of acknowledgements", acked));
    let passed = report
        .lease_pass
        .as_ref()
        .expect("no path passes over a dead candidate by the lease");
    eprintln!(
        "{}",
        show("a path that passes over a candidate by the lease", passed)
    );
    report
}

#[test]
fn at_most_one_initializer_in_every_interleaving() {
    let seats = env_usize("ELECTION_MODEL_SEATS").unwrap_or(2);
    assert!(
        (1..=MAX_SEATS).contains(&seats),
        "ELECTION_MODEL_SEATS: 1 to {MAX_SEATS}"
    );
    exhaustive(seats);
}

/// Checks that the model finds two initializers under a deliberately broken `fault`.
fn assert_caught(seats: usize, fault: Fault, missed: &str) {
    let mut model = Model::new(seats, 2 * seats as u8, fault);
    let report = check(&mut model);
    let (what, path) = report
        .violation
        .unwrap_or_else(|| panic!("the checker missed {missed} ({} states)", report.states));
    eprintln!(
        "caught as expected after {} states ({:.1?}):\n{}",
        report.states,
        report.elapsed,
        show(&format!("VIOLATION: {what}"), &path)
    );
    assert!(what.contains("two hosts initialize"), "{what}");
}

#[test]
fn negative_control_a_majority_of_those_seen_is_caught() {
    let seats = env_usize("ELECTION_MODEL_SEATS").unwrap_or(2);
    assert_caught(
        seats,
        Fault::ElectorateOfSeatsSeen,
        "an electorate of the seats seen",
    );
}

/// Needs three seats: with two, the first winner never acknowledges another claim.
#[test]
fn negative_control_forgetting_acknowledgements_is_caught() {
    assert_caught(
        3,
        Fault::ForgetAckOnRestart,
        "a driver that forgets its acknowledgements",
    );
}
