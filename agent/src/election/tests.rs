//! Rule-by-rule tests of [`decide`]. The simulation in `tests/election_sim.rs` covers schedules;
//! these pin down each rule on hand-made views.

use super::*;
use proptest::prelude::*;

pub(super) fn peer(name: &str, role: Role) -> PeerView {
    PeerView {
        name: name.into(),
        alive: true,
        left: false,
        role,
        phase: Phase::Discovering,
        vote: None,
        initializer: false,
        abdicated: None,
        has_cluster_identity: false,
        dead_for: std::time::Duration::ZERO,
    }
}

fn v(round: u32, candidate: &str) -> Vote {
    Vote {
        round,
        candidate: candidate.into(),
    }
}

fn server(name: &str) -> PeerView {
    peer(name, Role::Server)
}

/// Small modifiers so a table row reads like a sentence.
trait Tweak: Sized {
    fn with(self, f: impl FnOnce(&mut PeerView)) -> PeerView;
    fn voting(self, round: u32, c: &str) -> PeerView {
        self.with(|p| p.vote = Some(v(round, c)))
    }
    fn abdicated(self, round: u32) -> PeerView {
        self.with(|p| p.abdicated = Some(round))
    }
    /// Dead for a long time (an hour).
    fn dead(self) -> PeerView {
        self.with(|p| {
            p.alive = false;
            p.dead_for = std::time::Duration::from_secs(3600);
        })
    }
    fn left(self) -> PeerView {
        self.with(|p| p.left = true)
    }
    fn initializer(self) -> PeerView {
        self.with(|p| p.initializer = true)
    }
    fn identity(self) -> PeerView {
        self.with(|p| p.has_cluster_identity = true)
    }
}

impl Tweak for PeerView {
    fn with(mut self, f: impl FnOnce(&mut PeerView)) -> PeerView {
        f(&mut self);
        self
    }
}

fn obs(me: &str, role: Role, expect: usize, peers: Vec<PeerView>) -> Observation {
    Observation {
        self_name: me.into(),
        config: ElectionConfig {
            role,
            bootstrap_expect: expect,
            servers_target: 3,
        },
        local: LocalFacts {
            rke2_installed: true,
            ..LocalFacts::default()
        },
        peers,
    }
}

fn voted(round: u32, c: &str) -> ElectionState {
    ElectionState {
        round,
        vote: Some(v(round, c)),
        ..ElectionState::default()
    }
}

/// What a row expects, loosely: the variant and a fragment of its reason or its vote.
#[derive(Debug)]
enum Want {
    Wait(&'static str),
    Vote(u32, &'static str),
    Prepare(u32),
    Init(u32),
    Join(Role),
}

fn check(name: &str, state: &ElectionState, o: &Observation, want: &Want) {
    let got = decide(state, o);
    let ok = match (&got, want) {
        (Decision::Wait { reason }, Want::Wait(frag)) => reason.contains(frag),
        (Decision::CastVote { vote, state: s }, Want::Vote(r, c)) => {
            *vote == v(*r, c) && s.vote.as_ref() == Some(vote) && s.round == *r
        }
        (Decision::Prepare { round, .. }, Want::Prepare(r)) => round == r,
        (Decision::BecomeInitializer { round, state: s }, Want::Init(r)) => {
            round == r && s.initializer_of == Some(*r)
        }
        (Decision::JoinExisting { role, .. }, Want::Join(want)) => role == want,
        _ => false,
    };
    assert!(ok, "{name}: got {got:?}, want {want:?}");
}

/// Runs every row twice: once without and once with this host's own (up to date) entry in the
/// peers, since the driver may hand over either.
fn run(rows: Vec<(&str, ElectionState, Observation, Want)>) {
    for (name, state, o, want) in rows {
        check(name, &state, &o, &want);
        let mut with_self = o.clone();
        let mut own = peer(&o.self_name, o.config.role);
        state.announce_into(&mut own);
        with_self.peers.push(own);
        check(
            &format!("{name} (own entry present)"),
            &state,
            &with_self,
            &want,
        );
    }
}

impl ElectionState {
    fn announce_into(&self, p: &mut PeerView) {
        p.vote = self.vote.clone();
        p.initializer = self.initializer_of.is_some();
        p.abdicated = self.abdicated;
    }
}

fn fresh() -> ElectionState {
    ElectionState::default()
}

#[test]
fn rule_1_an_initializer_resumes_whatever_it_sees() {
    let init = ElectionState {
        round: 1,
        vote: Some(v(1, "b")),
        initializer_of: Some(1),
        abdicated: None,
    };
    let mut seen_cluster = obs("b", Role::Server, 3, vec![server("a").initializer()]);
    seen_cluster.local.data_dir_present = true;
    run(vec![
        (
            "alone after a reboot",
            init.clone(),
            obs("b", Role::Server, 3, vec![]),
            Want::Init(1),
        ),
        (
            "with cluster evidence",
            init.clone(),
            seen_cluster,
            Want::Init(1),
        ),
        (
            "role now agent",
            init.clone(),
            obs("b", Role::Agent, 3, vec![]),
            Want::Init(1),
        ),
    ]);
    let d = decide(&init, &obs("b", Role::Server, 3, vec![]));
    assert_eq!(
        d.state_to_persist(),
        Some(&init),
        "resuming persists nothing new"
    );
}

#[test]
fn rule_2_any_sign_of_a_cluster_means_join_never_initialize() {
    // "a" would win: it holds every vote and is installed.
    let winning = || vec![server("b").voting(0, "a"), server("c").voting(0, "a")];
    let mut data_dir = obs("a", Role::Server, 3, winning());
    data_dir.local.data_dir_present = true;
    let mut answers = obs("a", Role::Server, 3, winning());
    answers.local.registration_answers = true;
    let with = |extra: PeerView| {
        let mut peers = winning();
        peers.push(extra);
        obs("a", Role::Server, 3, peers)
    };
    let mut agent = obs("z", Role::Agent, 3, vec![server("a").initializer()]);
    agent.config.servers_target = 1;
    run(vec![
        (
            "data dir present",
            voted(0, "a"),
            data_dir,
            Want::Join(Role::Server),
        ),
        (
            "registration answers",
            voted(0, "a"),
            answers,
            Want::Join(Role::Server),
        ),
        (
            "another initializer",
            voted(0, "a"),
            with(server("x").initializer()),
            Want::Join(Role::Server),
        ),
        (
            "a dead initializer",
            voted(0, "a"),
            with(server("x").initializer().dead()),
            Want::Join(Role::Server),
        ),
        (
            "a peer with a CA hash",
            voted(0, "a"),
            with(peer("x", Role::Agent).identity()),
            Want::Join(Role::Server),
        ),
        (
            "agents join as agents",
            fresh(),
            agent,
            Want::Join(Role::Agent),
        ),
        (
            "auto hosts resolve their role",
            fresh(),
            obs(
                "b",
                Role::Auto,
                3,
                vec![peer("a", Role::Auto).initializer(), peer("c", Role::Auto)],
            ),
            Want::Join(Role::Server),
        ),
        (
            "auto hosts wait for lower names",
            fresh(),
            obs(
                "c",
                Role::Auto,
                3,
                vec![peer("a", Role::Auto).initializer(), peer("b", Role::Auto)],
            ),
            Want::Wait("waiting for b to choose its role"),
        ),
    ]);
    // A stale entry of this very host claiming `initializer` (its state dir was lost): join.
    let o = obs(
        "a",
        Role::Server,
        3,
        [winning(), vec![server("a").initializer().dead()]].concat(),
    );
    check(
        "stale own initializer entry",
        &voted(0, "a"),
        &o,
        &Want::Join(Role::Server),
    );
    // Without the evidence, the same view wins: the rows above are not vacuous.
    check(
        "control",
        &voted(0, "a"),
        &obs("a", Role::Server, 3, winning()),
        &Want::Init(0),
    );
}

#[test]
fn rule_3_the_electorate_must_match_bootstrap_expect() {
    let three = || vec![server("b"), server("c")];
    let mut observer_and_agent = three();
    observer_and_agent.truncate(1);
    observer_and_agent.extend([peer("c", Role::Agent), peer("lb", Role::Observer)]);
    run(vec![
        (
            "complete",
            fresh(),
            obs("a", Role::Server, 3, three()),
            Want::Vote(0, "a"),
        ),
        (
            "too few",
            fresh(),
            obs("a", Role::Server, 3, vec![server("b")]),
            Want::Wait("waiting for 2 of 3"),
        ),
        (
            "too many",
            fresh(),
            obs(
                "a",
                Role::Server,
                3,
                vec![server("b"), server("c"), peer("d", Role::Auto)],
            ),
            Want::Wait("SAW 4 SERVER CANDIDATES BUT BOOTSTRAP-EXPECT IS 3"),
        ),
        (
            "too many, even after voting",
            voted(0, "a"),
            obs(
                "a",
                Role::Server,
                3,
                vec![
                    server("b").voting(0, "a"),
                    server("c").voting(0, "a"),
                    server("d"),
                ],
            ),
            Want::Wait("refusing to vote"),
        ),
        (
            "agents and observers are no candidates",
            fresh(),
            obs("a", Role::Server, 3, observer_and_agent),
            Want::Wait("waiting for 2 of 3"),
        ),
        (
            "dead candidates count",
            fresh(),
            obs(
                "a",
                Role::Server,
                3,
                vec![server("b").dead(), server("c").dead()],
            ),
            Want::Vote(0, "a"),
        ),
        (
            "a candidate that left without voting does not",
            fresh(),
            obs("a", Role::Server, 3, vec![server("b").left(), server("c")]),
            Want::Wait("waiting for 2 of 3"),
        ),
        (
            "a candidate that left after voting does",
            fresh(),
            obs(
                "a",
                Role::Server,
                3,
                vec![server("b").left().voting(0, "a"), server("c")],
            ),
            Want::Vote(0, "a"),
        ),
        (
            "a voter that settled as agent still counts",
            fresh(),
            obs(
                "a",
                Role::Server,
                3,
                vec![peer("b", Role::Agent).voting(0, "a"), server("c")],
            ),
            Want::Vote(0, "a"),
        ),
        (
            "two generations of one host count once",
            fresh(),
            obs(
                "a",
                Role::Server,
                3,
                vec![server("b").dead(), server("b"), server("c")],
            ),
            Want::Vote(0, "a"),
        ),
        (
            "bootstrap-expect 0",
            fresh(),
            obs("a", Role::Server, 0, vec![]),
            Want::Wait("bootstrap-expect is 0"),
        ),
        (
            "bootstrap-expect 1 elects alone",
            fresh(),
            obs("a", Role::Server, 1, vec![]),
            Want::Vote(0, "a"),
        ),
        (
            "agents never vote",
            fresh(),
            obs("a", Role::Agent, 3, three()),
            Want::Wait("agent: waiting"),
        ),
    ]);
}

#[test]
fn rule_4_vote_for_the_lowest_name_not_abdicated() {
    let peers = |names: &[&str]| names.iter().map(|n| server(n)).collect::<Vec<_>>();
    run(vec![
        // Byte order, not "natural" order.
        (
            "byte order",
            fresh(),
            obs("node-9", Role::Server, 3, peers(&["node-10", "node-2"])),
            Want::Vote(0, "node-10"),
        ),
        (
            "upper case sorts first",
            fresh(),
            obs("a", Role::Server, 3, peers(&["B", "c"])),
            Want::Vote(0, "B"),
        ),
        (
            "round 0 ignores aliveness",
            fresh(),
            obs("b", Role::Server, 3, vec![server("a").dead(), server("c")]),
            Want::Vote(0, "a"),
        ),
        (
            "abdicated names are skipped; the round is the rank",
            fresh(),
            obs(
                "c",
                Role::Server,
                4,
                vec![
                    server("a").abdicated(0),
                    server("b").abdicated(1),
                    server("d"),
                ],
            ),
            Want::Vote(2, "c"),
        ),
        (
            "a name that abdicated out of turn is skipped too",
            fresh(),
            obs(
                "c",
                Role::Server,
                3,
                vec![server("a"), server("b").abdicated(0)],
            ),
            Want::Vote(0, "a"),
        ),
        (
            "an abdicated host still votes",
            ElectionState {
                abdicated: Some(0),
                ..fresh()
            },
            obs("a", Role::Server, 3, vec![server("b"), server("c")]),
            Want::Vote(1, "b"),
        ),
        (
            "every candidate abdicated",
            ElectionState {
                abdicated: Some(0),
                ..fresh()
            },
            obs("c", Role::Server, 2, vec![server("a").abdicated(0)]),
            Want::Wait("an operator must step in"),
        ),
    ]);
}

#[test]
fn rule_5_a_vote_moves_only_after_its_candidate_abdicates() {
    let all_abdicated = ElectionState {
        abdicated: Some(1),
        ..voted(0, "a")
    };
    run(vec![
        (
            "keeps its vote",
            voted(0, "a"),
            obs("c", Role::Server, 3, vec![server("a"), server("b")]),
            Want::Wait("voted for a in round 0"),
        ),
        (
            "keeps it even when a lower name shows up abdicated later",
            voted(1, "b"),
            obs(
                "c",
                Role::Server,
                3,
                vec![server("a").abdicated(0), server("b")],
            ),
            Want::Wait("voted for b in round 1"),
        ),
        (
            "moves after the abdication",
            voted(0, "a"),
            obs(
                "c",
                Role::Server,
                3,
                vec![server("a").abdicated(0), server("b")],
            ),
            Want::Vote(1, "b"),
        ),
        (
            "skips several abdications at once, same round as everyone",
            voted(0, "a"),
            obs(
                "d",
                Role::Server,
                4,
                vec![
                    server("a").abdicated(0),
                    server("b").abdicated(1),
                    server("c"),
                ],
            ),
            Want::Vote(2, "c"),
        ),
        // After a reboot this host may not see a's abdication again yet: still never goes back below b.
        (
            "never goes below its last candidate",
            voted(1, "b"),
            obs(
                "d",
                Role::Server,
                4,
                vec![server("a"), server("b").abdicated(1), server("c")],
            ),
            Want::Vote(2, "c"),
        ),
        (
            "nothing left above",
            all_abdicated,
            obs("b", Role::Server, 2, vec![server("a").abdicated(0)]),
            Want::Wait("an operator must step in"),
        ),
    ]);
    // A rule-5 vote is persisted with its round and only moves up.
    let d = decide(
        &voted(0, "a"),
        &obs(
            "c",
            Role::Server,
            3,
            vec![server("a").abdicated(0), server("b")],
        ),
    );
    assert_eq!(d.state_to_persist(), Some(&voted(1, "b")));
}

#[test]
fn rule_6_the_candidate_wins_with_a_majority_once_installed() {
    let not_installed = |mut o: Observation| {
        o.local.rke2_installed = false;
        o
    };
    let majority = || vec![server("b").voting(0, "a"), server("c")];
    let all = || vec![server("b").voting(0, "a"), server("c").voting(0, "a")];
    run(vec![
        (
            "votes for itself first",
            fresh(),
            obs("a", Role::Server, 3, vec![server("b"), server("c")]),
            Want::Vote(0, "a"),
        ),
        (
            "others' votes suffice without its own",
            fresh(),
            obs("a", Role::Server, 3, all()),
            Want::Init(0),
        ),
        (
            "majority and installed",
            voted(0, "a"),
            obs("a", Role::Server, 3, majority()),
            Want::Init(0),
        ),
        (
            "majority, not installed",
            voted(0, "a"),
            not_installed(obs("a", Role::Server, 3, majority())),
            Want::Prepare(0),
        ),
        (
            "installs early, before the majority",
            voted(0, "a"),
            not_installed(obs("a", Role::Server, 3, vec![server("b"), server("c")])),
            Want::Prepare(0),
        ),
        (
            "one vote of two needed",
            voted(0, "a"),
            obs("a", Role::Server, 3, vec![server("b"), server("c")]),
            Want::Wait("1 of 2 votes"),
        ),
        (
            "5 hosts need 3",
            voted(0, "a"),
            obs(
                "a",
                Role::Server,
                5,
                vec![
                    server("b").voting(0, "a"),
                    server("c"),
                    server("d"),
                    server("e"),
                ],
            ),
            Want::Wait("2 of 3 votes"),
        ),
        (
            "4 hosts need 3",
            voted(0, "a"),
            obs(
                "a",
                Role::Server,
                4,
                vec![server("b").voting(0, "a"), server("c"), server("d")],
            ),
            Want::Wait("2 of 3 votes"),
        ),
        (
            "votes of another round do not count",
            voted(0, "a"),
            obs(
                "a",
                Role::Server,
                3,
                vec![server("b").voting(1, "a"), server("c").voting(2, "a")],
            ),
            Want::Wait("1 of 2 votes"),
        ),
        (
            "a later round wins with its own rank",
            voted(1, "b"),
            obs(
                "b",
                Role::Server,
                3,
                vec![server("a").abdicated(0).voting(1, "b"), server("c")],
            ),
            Want::Init(1),
        ),
        (
            "others' votes suffice even before its own vote moved",
            voted(0, "a"),
            obs(
                "b",
                Role::Server,
                3,
                vec![server("a").abdicated(0), server("c").voting(1, "b")],
            )
            .with_votes_for_b(),
            Want::Init(1),
        ),
        (
            "an abdicated host never wins",
            ElectionState {
                abdicated: Some(0),
                ..voted(0, "a")
            },
            obs("a", Role::Server, 3, all()),
            Want::Vote(1, "b"),
        ),
    ]);
}

impl Observation {
    /// Adds a second vote for "b" in round 1, from "a".
    fn with_votes_for_b(mut self) -> Observation {
        self.peers[0].vote = Some(v(1, "b"));
        self
    }
}

#[test]
fn rule_7_abdication_is_explicit_and_refused_to_the_initializer() {
    let s = abdicate(&voted(0, "a"), 0).unwrap();
    assert_eq!(s.abdicated, Some(0));
    assert_eq!(
        s.vote,
        Some(v(0, "a")),
        "the vote stays: it was cast and published"
    );
    // decide never abdicates on its own, whatever it sees.
    let d = decide(
        &voted(0, "a"),
        &obs("a", Role::Server, 3, vec![server("b"), server("c")]),
    );
    assert!(d.state_to_persist().is_none(), "{d:?}");
    let init = ElectionState {
        initializer_of: Some(0),
        ..voted(0, "a")
    };
    assert!(matches!(
        abdicate(&init, 0),
        Err(TransitionError::AlreadyInitializer { .. })
    ));
}

#[test]
fn rule_8_a_dead_candidate_is_waited_for_not_replaced() {
    run(vec![
        (
            "dead candidate",
            voted(0, "a"),
            obs(
                "c",
                Role::Server,
                3,
                vec![server("a").dead(), server("b").voting(0, "a")],
            ),
            Want::Wait("a is not alive: waiting for it"),
        ),
        (
            "left candidate",
            voted(0, "a"),
            obs(
                "c",
                Role::Server,
                3,
                vec![
                    server("a").left().voting(0, "a"),
                    server("b").voting(0, "a"),
                ],
            ),
            Want::Wait("a is not alive: waiting for it"),
        ),
    ]);
}

#[test]
fn a_lost_state_dir_never_votes_again() {
    let own = |p: PeerView| p.dead();
    run(vec![
        (
            "gossip remembers a vote",
            fresh(),
            obs(
                "b",
                Role::Server,
                3,
                vec![server("a"), server("c"), own(server("b").voting(0, "a"))],
            ),
            Want::Wait("state dir lacks"),
        ),
        (
            "gossip remembers a later vote",
            voted(0, "a"),
            obs(
                "c",
                Role::Server,
                3,
                vec![
                    server("a").abdicated(0),
                    server("b"),
                    own(server("c").voting(1, "b")),
                ],
            ),
            Want::Wait("state dir lacks"),
        ),
        (
            "gossip remembers an abdication",
            voted(0, "a"),
            obs(
                "a",
                Role::Server,
                3,
                vec![
                    server("b").voting(0, "a"),
                    server("c"),
                    own(server("a").abdicated(0)),
                ],
            ),
            Want::Wait("state dir lacks"),
        ),
        (
            "an older own entry is fine",
            voted(1, "b"),
            obs(
                "c",
                Role::Server,
                3,
                vec![
                    server("a").abdicated(0),
                    server("b"),
                    own(server("c").voting(0, "a")),
                ],
            ),
            Want::Wait("voted for b in round 1"),
        ),
    ]);
    let corrupt = ElectionState {
        initializer_of: Some(0),
        abdicated: Some(0),
        ..voted(0, "a")
    };
    check(
        "corrupt state",
        &corrupt,
        &obs("a", Role::Server, 1, vec![]),
        &Want::Wait("refusing to take part"),
    );
}

#[test]
fn peer_view_from_member() {
    use crate::gossip::schema::Announcement;
    let mut a = Announcement::new(Role::Auto, "127.0.0.1".parse().unwrap());
    let state = ElectionState {
        abdicated: Some(0),
        ..voted(0, "n1")
    };
    state.announce(&mut a);
    a.ca_hash = Some("ab".repeat(32));
    let kvs: Vec<(&str, String)> = a
        .to_key_values()
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let (m, _) = Member::from_key_values(
        "n1",
        1,
        "127.0.0.1:7946".parse().unwrap(),
        false,
        kvs.iter().map(|(k, v)| (*k, v.as_str())),
    )
    .unwrap();
    let p = PeerView::from(&m);
    assert_eq!(p.vote, Some(v(0, "n1")));
    assert_eq!(p.abdicated, Some(0));
    assert!(!p.alive && !p.left && p.has_cluster_identity && !p.initializer);
    assert_eq!(p.role, Role::Auto);
}

fn arb_peer() -> impl Strategy<Value = PeerView> {
    let names = prop::sample::select(vec!["a", "b", "c", "d", "e"]);
    let roles = prop::sample::select(vec![Role::Server, Role::Auto, Role::Agent, Role::Observer]);
    (
        names.clone(),
        roles,
        any::<(bool, bool)>(),
        (prop::bool::weighted(0.1), prop::bool::weighted(0.1)),
        prop::option::of((0u32..4, names)),
        prop::option::of(0u32..4),
        0u64..120,
    )
        .prop_map(
            |(name, role, (alive, left), (init, id), vote, abdicated, dead_secs)| PeerView {
                name: name.into(),
                alive,
                left,
                role,
                phase: Phase::Discovering,
                vote: vote.map(|(r, c)| v(r, c)),
                initializer: init,
                abdicated,
                has_cluster_identity: id,
                dead_for: if alive {
                    std::time::Duration::ZERO
                } else {
                    std::time::Duration::from_secs(dead_secs)
                },
            },
        )
}

proptest! {
    /// The driver hands peers over in whatever order gossip yields them, with or without
    /// repeated entries: the decision must not depend on either.
    #[test]
    fn decisions_ignore_peer_order_and_duplicates(
        peers in prop::collection::vec(arb_peer(), 0..9),
        me in prop::sample::select(vec!["a", "b", "c", "d", "e"]),
        expect in 1usize..6,
        seed in any::<u64>(),
        installed in any::<bool>(),
    ) {
        let mut o = obs(me, Role::Server, expect, peers);
        o.local.rke2_installed = installed;
        let state = fresh();
        let base = decide(&state, &o);
        let mut shuffled = o.clone();
        let n = shuffled.peers.len();
        if n > 1 {
            shuffled.peers.rotate_left((seed as usize) % n);
            shuffled.peers.swap(0, (seed as usize / 7) % n);
        }
        if let Some(p) = o.peers.get((seed as usize) % n.max(1)) {
            shuffled.peers.push(p.clone());
        }
        prop_assert_eq!(decide(&state, &shuffled), base);
    }
}

#[test]
fn the_death_clock_measures_each_generation_from_when_it_first_looked_dead() {
    use crate::gossip::schema::Announcement;
    use std::time::{Duration, Instant};
    let member = |name: &str, generation: u64, liveness: Liveness| {
        let announcement = Announcement::new(Role::Auto, "127.0.0.1".parse().unwrap());
        let mut m = Member::from_announcement(
            name,
            generation,
            "127.0.0.1:7947".parse().unwrap(),
            true,
            &announcement,
        );
        m.liveness = liveness;
        m
    };
    let dead_for = |views: &[PeerView], generation_index: usize| views[generation_index].dead_for;
    let t0 = Instant::now();
    let mut clock = DeathClock::default();
    let views = clock.peer_views(t0, &[member("b", 1, Liveness::Dead)]);
    assert_eq!(dead_for(&views, 0), Duration::ZERO);
    let views = clock.peer_views(
        t0 + Duration::from_secs(10),
        &[
            member("b", 1, Liveness::Dead),
            member("b", 2, Liveness::Dead),
        ],
    );
    assert_eq!(dead_for(&views, 0), Duration::from_secs(10));
    assert_eq!(
        dead_for(&views, 1),
        Duration::ZERO,
        "a new generation starts over"
    );
    // Alive again (or left): the clock restarts at the next death.
    let views = clock.peer_views(
        t0 + Duration::from_secs(20),
        &[
            member("b", 1, Liveness::Alive),
            member("b", 2, Liveness::Left),
        ],
    );
    assert!(views.iter().all(|v| v.dead_for == Duration::ZERO));
    let views = clock.peer_views(
        t0 + Duration::from_secs(25),
        &[member("b", 1, Liveness::Dead)],
    );
    assert_eq!(dead_for(&views, 0), Duration::ZERO);
    assert_eq!(clock.peer_views(t0, &[]).len(), 0);
}
