//! Exhaustive model check of the first-server election for small electorates.
//!
//! Where `election_sim.rs` draws random schedules, this test explores **every** interleaving of
//! a small, bounded model, over the same pure core the agent runs: every election step calls
//! [`rke2_bootstrap::election::decide`] on the host's persisted [`ElectionState`] and an
//! [`Observation`] built from its current view, and an installer failure calls
//! [`rke2_bootstrap::election::abdicate`].
//!
//! # Checker
//!
//! A hand-written breadth-first explorer with a visited set of 64-bit state fingerprints and a
//! parent pointer per state, so a violation or a witness prints as the shortest action sequence
//! that reaches it. Not `stateright`: the model needs a decision cache keyed by one host's local
//! state (most global states share a host's local state, and `decide` formats its reasons, which
//! is slow in the debug profile), custom pruning (the round bound), and witnesses detected on
//! transitions ("passes over a dead candidate"); a hundred lines of explorer do that without a new
//! dependency tree to compile on a shared build machine.
//!
//! # Model
//!
//! Hosts: the `n` seats of a pinned electorate (`s0`, `s1`, ..., by name) plus one server
//! candidate outside it (`out`). Every host is configured `server`.
//!
//! Per host, persisted (survives a reboot): its [`ElectionState`], "RKE2 installed", "an install
//! failed". Volatile (lost on a reboot): its view of every other host (absent, or that host's
//! published state as last delivered, with the failure detector's opinion: alive, or dead for
//! longer than the lease), whether it has been watching gossip for longer than the lease, and
//! whether it decided this boot (initializer or joining: it stops stepping until it reboots).
//! Published (what the others can receive): derived from the persisted state exactly as
//! `ElectionState::announce` does (vote, acknowledgement, `initializer`, abdication).
//!
//! Actions, in any order:
//! - `step(i)`: host `i` calls `decide` on its view and follows the driver contract: a decision
//!   that carries a state is persisted and published in one action (persisting first and
//!   publishing later only delays what peers see, which delivery already covers); `Prepare`
//!   either completes the install or fails it, and a failed install abdicates through `abdicate`;
//!   `BecomeInitializer` and `JoinExisting` end the host's election for this boot; `Wait` is not
//!   a transition.
//! - `deliver(j, i)`: host `i` receives host `j`'s current published state, alive. Loss, delay,
//!   reordering and partitions are the schedules that do not take it (or take it late).
//! - `dead(i, j)`: host `i`'s failure detector calls `j` dead for longer than the lease, at any
//!   time, rightly or not (`dead_for = lease`).
//! - `lease(i)`: host `i` has been watching for longer than the lease (`observing_for = lease`):
//!   seats it never saw may be passed over.
//! - `reboot(i)`: host `i` crashes and restarts (loses its volatile state, keeps its persisted
//!   state, publishes the persisted state again). Crash and restart are one action: a host that
//!   is down only fails to act, which the schedules that take no action of it already cover.
//!
//! Simplifications: one entry per host in a view (no stale second generation beside the new one;
//! an older entry only shows a prefix of the same persisted history), no host sees its own entry
//! (so rule 3's "gossip shows a commitment my state dir lacks" never fires: a correct driver never
//! loses its state dir, and the negative control shows what happens when it loses part of it),
//! no `dead for less than the lease` opinions (they only make a host wait), no RKE2 data dir, CA
//! hash or registration address (the `initializer` flag is the cluster sign).
//!
//! The outsider's own view is not stored: when it steps it sees every seat's current published
//! state, alive (the view most likely to make it act); its entry in the seats' views is always
//! present and alive (it is constant, on no seat, and never a cluster sign).
//!
//! Bounds: a vote in round `2n` or later is not explored; one reboot in total (over all hosts;
//! `ELECTION_MODEL_REBOOTS`); each host's installer fails at most once (it abdicates then, which
//! is for good anyway).
//!
//! # Properties
//!
//! Always: at most one host has `initializer_of` set; no host becomes initializer after its view
//! (this boot or an earlier one) showed a cluster sign; `abdicate` is never refused when the core
//! asked to prepare. Sometimes (the model is not vacuous): exactly one initializer; a claim
//! acknowledged by a quorum of seats; a vote that passes over a candidate that is dead or unseen
//! beyond the lease.
//!
//! Negative controls: a driver that counts the quorum over the seats it sees rather than the
//! configured seats must let two hosts initialize; the test asserts that the checker finds it and
//! prints the trace. A driver that does not persist acknowledgements (a reboot forgets the one it
//! made) needs three seats to fail, so its control is `#[ignore]`d with the three-seat check.
//!
//! # Configurations
//!
//! By default: **two** seats and the outsider (17 346 states, about a second in the debug
//! profile). Three seats do not fit the one-minute debug budget with this state encoding (more
//! than three million states, still growing, even with votes bounded below round 2 and no
//! reboot): `ELECTION_MODEL_SEATS=3` (or 4) runs them, best with `--release`, and
//! `ELECTION_MODEL_MAX_STATES=<k>` (default twenty million) stops a run that grows too large.
//! `ELECTION_MODEL_ROUNDS=<r>` changes the round bound (default `2n`). The test prints the number
//! of states explored and the time taken.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use rke2_bootstrap::election::{
    abdicate, decide, Decision, ElectionConfig, ElectionState, Electorate, LocalFacts, Observation,
    PeerView,
};
use rke2_bootstrap::gossip::schema::{Phase, Role, Vote};

const LEASE: Duration = Duration::from_secs(30);
/// Seats plus the outsider, at most.
const MAX_HOSTS: usize = 6;

/// Deliberately broken drivers, to show the checker can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The driver does not persist acknowledgements: a reboot forgets the claim it acknowledged.
    ForgetAckOnReboot,
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

/// The persisted election state, compactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Persisted {
    vote: Option<V>,
    ack: Option<V>,
    init: Option<u8>,
    abdicated: Option<u8>,
}

/// What a host publishes of its election state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Pub {
    vote: Option<V>,
    ack: Option<V>,
    initializer: bool,
    abdicated: Option<u8>,
}

impl From<Persisted> for Pub {
    /// As `ElectionState::announce` does.
    fn from(p: Persisted) -> Pub {
        Pub {
            vote: p.vote,
            ack: p.ack,
            initializer: p.init.is_some(),
            abdicated: p.abdicated,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Entry {
    seen: Pub,
    /// Otherwise dead for longer than the lease.
    alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Host {
    // Persisted.
    p: Persisted,
    installed: bool,
    install_failed: bool,
    reboots: u8,
    // Volatile.
    view: [Option<Entry>; MAX_HOSTS],
    observing_beyond_lease: bool,
    /// Decided this boot (initializer or joining): does not step until it reboots.
    done: bool,
    // Published.
    published: Pub,
    // Ghost, for the checker: this host's view ever showed a cluster sign.
    saw_cluster: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    hosts: Vec<Host>,
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
enum Action {
    Vote(u8, V),
    InstallOk(u8),
    InstallFailsAbdicate(u8, u8),
    Claim(u8, u8),
    Ack(u8, V),
    Initialize(u8, u8),
    Join(u8),
    Deliver { from: u8, to: u8 },
    Dead { at: u8, of: u8 },
    Lease(u8),
    Reboot(u8),
}

struct Model {
    seats: usize,
    names: Vec<String>,
    max_round: u8,
    /// Reboots, in total over all hosts.
    max_reboots: u8,
    fault: Fault,
    electorate: Electorate,
    /// Decisions by (host, its persisted and volatile state): `decide` is pure.
    cache: HashMap<(u8, Host), (Outcome, bool)>,
}

impl Model {
    fn new(seats: usize, max_round: u8, max_reboots: u8, fault: Fault) -> Model {
        let mut names: Vec<String> = (0..seats).map(|i| format!("s{i}")).collect();
        names.push("out".into());
        let electorate = Electorate::pinned(&names[..seats]).unwrap();
        Model {
            seats,
            names,
            max_round,
            max_reboots,
            fault,
            electorate,
            cache: HashMap::new(),
        }
    }

    fn hosts(&self) -> usize {
        self.names.len()
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

    fn persisted(&self, s: &ElectionState) -> Persisted {
        let p = Persisted {
            vote: s.vote.as_ref().map(|v| self.v(v)),
            ack: s.ack.as_ref().map(|v| self.v(v)),
            init: s.initializer_of.map(|r| r as u8),
            abdicated: s.abdicated.map(|r| r as u8),
        };
        assert_eq!(&self.to_state(&p), s, "the model's encoding loses state");
        p
    }

    fn initial(&self) -> State {
        State {
            hosts: vec![Host::default(); self.hosts()],
        }
    }

    /// The outsider's view: every host's current published state, alive (see the module doc).
    fn outsider_view(&self, s: &State) -> Host {
        let mut h = s.hosts[self.seats];
        for j in 0..self.seats {
            h.view[j] = Some(Entry {
                seen: s.hosts[j].published,
                alive: true,
            });
        }
        h
    }

    fn observation(&self, i: usize, h: &Host) -> Observation {
        let outsider = Entry {
            seen: Pub::default(),
            alive: true,
        };
        let peers = (0..self.hosts())
            .filter(|&j| j != i)
            .filter_map(|j| {
                let e = if j == self.seats {
                    Some(outsider)
                } else {
                    h.view[j]
                };
                e.map(|e| (j, e))
            })
            .map(|(j, e)| PeerView {
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
            })
            .collect();
        Observation {
            self_name: self.names[i].clone(),
            self_addr: None,
            config: ElectionConfig {
                role: Role::Server,
                electorate: if self.fault == Fault::ElectorateOfSeatsSeen {
                    let seen: Vec<&String> = (0..self.seats)
                        .filter(|&j| j == i || h.view[j].is_some())
                        .map(|j| &self.names[j])
                        .collect();
                    Electorate::pinned(&seen).unwrap_or(Electorate::Counted(0))
                } else {
                    self.electorate.clone()
                },
                servers_target: 3,
                lease: LEASE,
            },
            local: LocalFacts {
                data_dir_present: false,
                registration_answers: false,
                rke2_installed: h.installed,
            },
            peers,
            observing_for: if h.observing_beyond_lease {
                LEASE
            } else {
                Duration::ZERO
            },
        }
    }

    /// The outcome of host `i` stepping, and whether its view shows a cluster sign.
    fn outcome(&mut self, i: usize, h: &Host) -> (Outcome, bool) {
        let mut key = *h;
        // Only what `decide` sees.
        key.reboots = 0;
        key.install_failed = false;
        key.saw_cluster = false;
        key.published = Pub::default();
        if let Some(o) = self.cache.get(&(i as u8, key)) {
            return *o;
        }
        let obs = self.observation(i, h);
        let cluster = obs.peers.iter().any(|p| p.initializer);
        let o = match decide(&self.to_state(&h.p), &obs) {
            Decision::Wait { .. } => Outcome::Wait,
            Decision::CastVote { vote, state } => {
                Outcome::Vote(self.v(&vote), self.persisted(&state))
            }
            Decision::Prepare { round, .. } => Outcome::Prepare(round as u8),
            Decision::Claim { state, .. } => Outcome::Claim(self.persisted(&state)),
            Decision::Acknowledge { claim, state } => {
                Outcome::Ack(self.v(&claim), self.persisted(&state))
            }
            Decision::BecomeInitializer { state, .. } => {
                Outcome::Initialize(self.persisted(&state))
            }
            Decision::JoinExisting { .. } => Outcome::Join,
        };
        self.cache.insert((i as u8, key), (o, cluster));
        (o, cluster)
    }

    /// Whether host `i`'s vote `v` passes over a seat that is dead or unseen beyond the lease.
    fn passes_over_by_lease(&self, i: usize, h: &Host, v: V) -> bool {
        let live_rounds = (0..self.seats)
            .filter(|&j| j != i)
            .filter_map(|j| h.view[j].filter(|e| e.alive))
            .filter_map(|e| e.seen.vote.map(|v| v.round));
        let base = live_rounds
            .chain(h.p.vote.map(|v| v.round))
            .max()
            .unwrap_or(0);
        (base..v.round).any(|r| {
            let seat = r as usize % self.seats;
            seat != i
                && match h.view[seat] {
                    None => h.observing_beyond_lease,
                    Some(e) => {
                        !e.alive
                            && e.seen.abdicated.is_none()
                            && e.seen.ack.is_none_or(|a| a.cand as usize == seat)
                    }
                }
        })
    }

    /// Every successor of `s`, with the action that leads there. Violations and witnesses found
    /// on the way are reported through `events`.
    fn successors(&mut self, s: &State, events: &mut Vec<Event>) -> Vec<(Action, State)> {
        let mut out = Vec::new();
        let n = self.hosts();
        for i in 0..n {
            let outsider = i == self.seats;
            let h = if outsider && !s.hosts[i].done {
                self.outsider_view(s)
            } else {
                s.hosts[i]
            };
            let iu = i as u8;
            if !h.done {
                let (o, cluster) = self.outcome(i, &h);
                let mut next = s.clone();
                let me = &mut next.hosts[i];
                me.saw_cluster |= cluster;
                let persist = |me: &mut Host, p: Persisted| {
                    me.p = p;
                    me.published = p.into();
                };
                match o {
                    Outcome::Wait => {}
                    Outcome::Vote(v, p) => {
                        if v.round < self.max_round {
                            if self.passes_over_by_lease(i, &h, v) {
                                events.push(Event::LeasePass(out.len()));
                            }
                            persist(me, p);
                            out.push((Action::Vote(iu, v), next));
                        }
                    }
                    Outcome::Prepare(round) => {
                        let mut ok = next.clone();
                        ok.hosts[i].installed = true;
                        out.push((Action::InstallOk(iu), ok));
                        if !h.install_failed {
                            match abdicate(&self.to_state(&h.p), u32::from(round)) {
                                Ok(state) => {
                                    let p = self.persisted(&state);
                                    let me = &mut next.hosts[i];
                                    me.install_failed = true;
                                    persist(me, p);
                                    out.push((Action::InstallFailsAbdicate(iu, round), next));
                                }
                                Err(e) => events.push(Event::Violation(format!(
                                    "{}: abdicate refused after Prepare: {e}",
                                    self.names[i]
                                ))),
                            }
                        }
                    }
                    Outcome::Claim(p) => {
                        persist(me, p);
                        let round = p.ack.unwrap().round;
                        out.push((Action::Claim(iu, round), next));
                    }
                    Outcome::Ack(v, p) => {
                        persist(me, p);
                        out.push((Action::Ack(iu, v), next));
                    }
                    Outcome::Initialize(p) => {
                        if h.p.init.is_none() {
                            if h.saw_cluster || cluster {
                                events.push(Event::Violation(format!(
                                    "{} initializes after its view showed a cluster sign",
                                    self.names[i]
                                )));
                            }
                            persist(me, p);
                        }
                        me.done = true;
                        // A decided host's view no longer matters until it reboots.
                        me.view = [None; MAX_HOSTS];
                        me.observing_beyond_lease = false;
                        out.push((Action::Initialize(iu, p.init.unwrap()), next));
                    }
                    Outcome::Join => {
                        me.done = true;
                        me.view = [None; MAX_HOSTS];
                        me.observing_beyond_lease = false;
                        out.push((Action::Join(iu), next));
                    }
                }
                if outsider {
                    // The outsider's own state stays canonical: no view, no lease.
                    for (_, t) in out.iter_mut().filter(|(a, _)| a.host() == iu) {
                        t.hosts[i].view = [None; MAX_HOSTS];
                    }
                } else if !h.observing_beyond_lease {
                    let mut next = s.clone();
                    next.hosts[i].observing_beyond_lease = true;
                    out.push((Action::Lease(iu), next));
                }
                for j in 0..self.seats {
                    if j == i || outsider {
                        continue;
                    }
                    let fresh = Entry {
                        seen: s.hosts[j].published,
                        alive: true,
                    };
                    if h.view[j] != Some(fresh) {
                        let mut next = s.clone();
                        next.hosts[i].view[j] = Some(fresh);
                        out.push((
                            Action::Deliver {
                                from: j as u8,
                                to: iu,
                            },
                            next,
                        ));
                    }
                    if let Some(e) = h.view[j].filter(|e| e.alive) {
                        let mut next = s.clone();
                        next.hosts[i].view[j] = Some(Entry { alive: false, ..e });
                        out.push((
                            Action::Dead {
                                at: iu,
                                of: j as u8,
                            },
                            next,
                        ));
                    }
                }
            }
            let volatile = h.done || h.observing_beyond_lease || h.view.iter().any(Option::is_some);
            let reboots: u8 = s.hosts.iter().map(|h| h.reboots).sum();
            if !outsider
                && reboots < self.max_reboots
                && (volatile || self.fault == Fault::ForgetAckOnReboot)
            {
                let mut next = s.clone();
                let me = &mut next.hosts[i];
                me.reboots += 1;
                me.view = [None; MAX_HOSTS];
                me.observing_beyond_lease = false;
                me.done = false;
                if self.fault == Fault::ForgetAckOnReboot && me.p.init.is_none() {
                    me.p.ack = None;
                }
                me.published = me.p.into();
                out.push((Action::Reboot(iu), next));
            }
        }
        out
    }

    fn initializers(&self, s: &State) -> usize {
        s.hosts.iter().filter(|h| h.p.init.is_some()).count()
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

    fn describe(&self, a: &Action) -> String {
        let name = |i: &u8| self.names[*i as usize].as_str();
        let vote = |v: &V| format!("{}:{}", v.round, name(&v.cand));
        match a {
            Action::Vote(i, v) => format!("{} votes {}", name(i), vote(v)),
            Action::InstallOk(i) => format!("{} prepares: install succeeds", name(i)),
            Action::InstallFailsAbdicate(i, r) => {
                format!("{} prepares: install fails, ABDICATES round {r}", name(i))
            }
            Action::Claim(i, r) => format!("{} CLAIMS round {r}", name(i)),
            Action::Ack(i, v) => format!("{} acknowledges {}", name(i), vote(v)),
            Action::Initialize(i, r) => format!("{} BECOMES INITIALIZER of round {r}", name(i)),
            Action::Join(i) => format!("{} joins the existing cluster", name(i)),
            Action::Deliver { from, to } => {
                format!("{} receives {}'s published state", name(to), name(from))
            }
            Action::Dead { at, of } => {
                format!("{} sees {} dead beyond the lease", name(at), name(of))
            }
            Action::Lease(i) => format!("{} has watched gossip beyond the lease", name(i)),
            Action::Reboot(i) => format!("{} crashes and restarts", name(i)),
        }
    }
}

impl Action {
    fn host(&self) -> u8 {
        match *self {
            Action::Vote(i, _)
            | Action::InstallOk(i)
            | Action::InstallFailsAbdicate(i, _)
            | Action::Claim(i, _)
            | Action::Ack(i, _)
            | Action::Initialize(i, _)
            | Action::Join(i)
            | Action::Lease(i)
            | Action::Reboot(i) => i,
            Action::Deliver { to, .. } => to,
            Action::Dead { at, .. } => at,
        }
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
    elapsed: Duration,
    violation: Option<(String, Vec<String>)>,
    one_initializer: Option<Vec<String>>,
    quorum_acked: Option<Vec<String>>,
    lease_pass: Option<Vec<String>>,
}

fn fingerprint(s: &State) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Breadth-first search of every reachable state; stops at the first violation.
fn check(model: &mut Model) -> Report {
    let started = Instant::now();
    let mut states: Vec<State> = vec![model.initial()];
    let mut parent: Vec<Option<(u32, Action)>> = vec![None];
    let mut seen: HashSet<u64> = HashSet::from([fingerprint(&states[0])]);
    let mut queue = VecDeque::from([0u32]);
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
    let limit = env_usize("ELECTION_MODEL_MAX_STATES").unwrap_or(20_000_000);
    while let Some(at) = queue.pop_front() {
        assert!(
            states.len() < limit,
            "more than {limit} states: tighten the bounds"
        );
        if states.len() % 200_000 < 20 && at % 50_000 == 0 {
            eprintln!(
                "  {} states, {} queued, {:.1?}",
                states.len(),
                queue.len(),
                started.elapsed()
            );
        }
        let s = states[at as usize].clone();
        events.clear();
        let next = model.successors(&s, &mut events);
        report.transitions += next.len();
        let mut lease_pass_at = Vec::new();
        for e in events.drain(..) {
            match e {
                Event::Violation(what) => {
                    let path = trace(&parent, at);
                    report.violation =
                        Some((what, path.iter().map(|a| model.describe(a)).collect()));
                }
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
            let id = states.len() as u32;
            states.push(t);
            parent.push(Some((at, action)));
            let t = &states[id as usize];
            let path = || {
                trace(&parent, id)
                    .iter()
                    .map(|a| model.describe(a))
                    .collect::<Vec<_>>()
            };
            if model.initializers(t) > 1 {
                report.violation = Some(("two hosts initialize".into(), path()));
                break;
            }
            if report.one_initializer.is_none() && model.initializers(t) == 1 {
                report.one_initializer = Some(path());
            }
            if report.quorum_acked.is_none() && model.quorum_acknowledged(t) {
                report.quorum_acked = Some(path());
            }
            if report.lease_pass.is_none() && lease_pass_at.contains(&k) {
                report.lease_pass = Some(path());
            }
            queue.push_back(id);
        }
        if report.violation.is_some() {
            break;
        }
    }
    report.states = states.len();
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

#[test]
fn at_most_one_initializer_in_every_interleaving() {
    let seats = env_usize("ELECTION_MODEL_SEATS").unwrap_or(2);
    assert!(
        (1..MAX_HOSTS).contains(&seats),
        "ELECTION_MODEL_SEATS: 1 to {}",
        MAX_HOSTS - 1
    );
    let rounds = env_usize("ELECTION_MODEL_ROUNDS").unwrap_or(2 * seats) as u8;
    let reboots = env_usize("ELECTION_MODEL_REBOOTS").unwrap_or(1) as u8;
    let mut model = Model::new(seats, rounds, reboots, Fault::None);
    let report = check(&mut model);
    eprintln!(
        "{seats} seats + 1 outsider, votes below round {rounds}: {} states, {} transitions, \
         {} distinct decide calls, {:.1?}",
        report.states,
        report.transitions,
        model.cache.len(),
        report.elapsed
    );
    if let Some((what, path)) = &report.violation {
        panic!("{}", show(&format!("SAFETY VIOLATION: {what}"), path));
    }
    let one = report
        .one_initializer
        .expect("no path reaches an initializer");
    eprintln!("{}", show("a path to exactly one initializer", &one));
    let acked = report
        .quorum_acked
        .expect("no path reaches a claim acknowledged by a quorum");
    eprintln!("{}", show("a path to a quorum of acknowledgements", &acked));
    let passed = report
        .lease_pass
        .expect("no path passes over a dead candidate by the lease");
    eprintln!(
        "{}",
        show("a path that passes over a candidate by the lease", &passed)
    );
}

/// Checks that the model finds two initializers under a deliberately broken `fault`.
fn assert_caught(seats: usize, fault: Fault, missed: &str) {
    let mut model = Model::new(seats, 2 * seats as u8, 1, fault);
    let report = check(&mut model);
    let (what, path) = report
        .violation
        .unwrap_or_else(|| panic!("the checker missed {missed}"));
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

/// Needs three seats (with two, the first winner never acknowledges another claim), whose state
/// space is too large for the default debug run: `cargo test --release ... -- --ignored`. Not yet
/// seen to finish, so not yet seen to catch the fault.
#[test]
#[ignore]
fn negative_control_forgetting_acknowledgements_is_caught() {
    assert_caught(
        3,
        Fault::ForgetAckOnReboot,
        "a driver that forgets its acknowledgements",
    );
}
