//! Rule-by-rule tests of [`decide`]. The simulation in `tests/election_sim.rs` covers schedules
//! and the model check in `tests/election_model.rs` every interleaving of small electorates;
//! these pin down each rule on hand-made views.

use super::*;
use proptest::prelude::*;

const LEASE: Duration = Duration::from_secs(30);

pub(super) fn peer(name: &str, role: Role) -> PeerView {
    PeerView {
        name: name.into(),
        addr: None,
        alive: true,
        left: false,
        role,
        phase: Phase::Discovering,
        vote: None,
        ack: None,
        initializer: false,
        abdicated: None,
        has_cluster_identity: false,
        dead_for: Duration::ZERO,
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
    fn acking(self, round: u32, c: &str) -> PeerView {
        self.with(|p| p.ack = Some(v(round, c)))
    }
    fn claiming(self, round: u32) -> PeerView {
        self.with(|p| {
            p.vote = Some(v(round, &p.name));
            p.ack = Some(v(round, &p.name));
        })
    }
    fn abdicated(self, round: u32) -> PeerView {
        self.with(|p| p.abdicated = Some(round))
    }
    /// Dead for a long time (an hour).
    fn dead(self) -> PeerView {
        self.dead_for(3600)
    }
    fn dead_for(self, secs: u64) -> PeerView {
        self.with(|p| {
            p.alive = false;
            p.dead_for = Duration::from_secs(secs);
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
    fn at(self, addr: &str) -> PeerView {
        let addr = addr.parse().unwrap();
        self.with(|p| p.addr = Some(addr))
    }
}

impl Tweak for PeerView {
    fn with(mut self, f: impl FnOnce(&mut PeerView)) -> PeerView {
        f(&mut self);
        self
    }
}

/// An observation with an electorate pinned by name (`seats`), after a long look at gossip.
fn obs(me: &str, role: Role, seats: &[&str], peers: Vec<PeerView>) -> Observation {
    Observation {
        self_name: me.into(),
        self_addr: None,
        config: ElectionConfig {
            role,
            electorate: Electorate::pinned(seats).unwrap(),
            servers_target: 3,
            lease: LEASE,
        },
        local: LocalFacts {
            rke2_installed: true,
            ..LocalFacts::default()
        },
        peers,
        observing_for: Duration::from_secs(3600),
    }
}

/// The same in count-only mode.
fn counted(me: &str, role: Role, expect: usize, peers: Vec<PeerView>) -> Observation {
    let mut o = obs(me, role, &["x"], peers);
    o.config.electorate = Electorate::Counted(expect);
    o
}

fn voted(round: u32, c: &str) -> ElectionState {
    ElectionState {
        round,
        vote: Some(v(round, c)),
        ..ElectionState::default()
    }
}

fn acked(round: u32, c: &str) -> ElectionState {
    ElectionState {
        ack: Some(v(round, c)),
        ..voted(round, c)
    }
}

/// What a row expects, loosely: the variant and a fragment of its reason or its vote.
#[derive(Debug)]
enum Want {
    Wait(&'static str),
    Vote(u32, &'static str),
    Prepare(u32),
    Claim(u32),
    Ack(u32, &'static str),
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
        (Decision::Claim { round, state: s }, Want::Claim(r)) => {
            round == r && s.ack == Some(v(*r, &o.self_name))
        }
        (Decision::Acknowledge { claim, state: s }, Want::Ack(r, c)) => {
            *claim == v(*r, c) && s.ack.as_ref() == Some(claim)
        }
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
        own.addr = o.self_addr;
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
        p.ack = self.ack.clone();
        p.initializer = self.initializer_of.is_some();
        p.abdicated = self.abdicated;
    }
}

fn fresh() -> ElectionState {
    ElectionState::default()
}

const ABC: &[&str] = &["a", "b", "c"];

#[test]
fn rule_1_an_initializer_resumes_whatever_it_sees() {
    let init = ElectionState {
        initializer_of: Some(1),
        ..voted(1, "b")
    };
    run(vec![
        (
            "alone",
            init.clone(),
            obs("b", Role::Server, ABC, vec![]),
            Want::Init(1),
        ),
        (
            "another initializer in view",
            init.clone(),
            obs("b", Role::Server, ABC, vec![server("a").initializer()]),
            Want::Init(1),
        ),
        (
            "outside any electorate now",
            init,
            obs("b", Role::Server, &["x", "y", "z"], vec![]),
            Want::Init(1),
        ),
    ]);
}

#[test]
fn rule_2_any_sign_of_a_cluster_means_join_never_initialize() {
    let mut data = obs("a", Role::Server, ABC, vec![]);
    data.local.data_dir_present = true;
    let mut reg = obs("a", Role::Auto, ABC, vec![]);
    reg.local.registration_answers = true;
    run(vec![
        ("data dir", fresh(), data, Want::Join(Role::Server)),
        (
            "registration answers",
            fresh(),
            reg,
            Want::Join(Role::Server),
        ),
        (
            "a peer initializes",
            acked(0, "a"),
            obs("a", Role::Server, ABC, vec![server("b").initializer()]),
            Want::Join(Role::Server),
        ),
        (
            "a claimant sees another's cluster",
            acked(0, "a"),
            obs("a", Role::Server, ABC, vec![server("z").identity()]),
            Want::Join(Role::Server),
        ),
        (
            "an agent joins",
            fresh(),
            obs("w", Role::Agent, ABC, vec![server("a").initializer()]),
            Want::Join(Role::Agent),
        ),
    ]);
}

#[test]
fn rule_3_who_takes_part() {
    run(vec![
        (
            "agents never vote",
            fresh(),
            obs("a", Role::Agent, ABC, vec![server("b"), server("c")]),
            Want::Wait("agent: waiting"),
        ),
        (
            "a server outside the electorate waits for a cluster",
            fresh(),
            obs(
                "z",
                Role::Server,
                ABC,
                vec![server("a"), server("b"), server("c")],
            ),
            Want::Wait("not in the electorate"),
        ),
        (
            "count-only: fewer seen",
            fresh(),
            counted("a", Role::Server, 3, vec![server("b")]),
            Want::Wait("waiting for 2 of 3"),
        ),
        (
            "count-only: more seen is refused",
            fresh(),
            counted(
                "a",
                Role::Server,
                3,
                vec![server("b"), server("c"), server("d")],
            ),
            Want::Wait("SAW 4 SERVER CANDIDATES"),
        ),
        (
            "count-only: exact count votes",
            fresh(),
            counted("b", Role::Server, 3, vec![server("a"), server("c")]),
            Want::Vote(0, "a"),
        ),
    ]);
}

#[test]
fn more_hosts_than_the_electorate_do_not_matter() {
    // Seven server candidates boot, three seats: the four outside never block or vote.
    let peers: Vec<PeerView> = ["a", "c", "d", "e", "f", "g"]
        .iter()
        .map(|n| server(n))
        .collect();
    run(vec![
        (
            "b votes round 0",
            fresh(),
            obs("b", Role::Auto, ABC, peers.clone()),
            Want::Vote(0, "a"),
        ),
        (
            "f waits",
            fresh(),
            obs("f", Role::Auto, ABC, peers),
            Want::Wait("not in the electorate"),
        ),
    ]);
}

#[test]
fn seats_by_address_map_hosts_whatever_their_names() {
    let seats = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let mut o = obs(
        "node-x",
        Role::Auto,
        &seats,
        vec![
            server("node-y").at("10.0.0.2").voting(0, "node-z"),
            server("node-z").at("10.0.0.1"),
            server("node-w").at("10.0.0.9"),
        ],
    );
    o.self_addr = Some("10.0.0.3".parse().unwrap());
    // Seat 0 is 10.0.0.1, held by node-z.
    check("by address", &fresh(), &o, &Want::Vote(0, "node-z"));
    o.self_addr = Some("10.0.0.9".parse().unwrap());
    check(
        "not seated",
        &fresh(),
        &o,
        &Want::Wait("not in the electorate"),
    );
}

#[test]
fn rule_4_a_claim_wins_with_a_quorum_of_acknowledgements() {
    run(vec![
        (
            "alone",
            acked(0, "a"),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("b").voting(0, "a"), server("c")],
            ),
            Want::Wait("1 of 2 acknowledgements"),
        ),
        (
            "one more is a quorum of three",
            acked(0, "a"),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![
                    server("b").voting(0, "a").acking(0, "a"),
                    server("c").dead(),
                ],
            ),
            Want::Init(0),
        ),
        (
            "an acknowledgement of another round does not count",
            acked(3, "a"),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("b").acking(0, "a"), server("c")],
            ),
            Want::Wait("1 of 2"),
        ),
        (
            "hosts outside the electorate do not count",
            acked(0, "a"),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("x").acking(0, "a"), server("y").acking(0, "a")],
            ),
            Want::Wait("1 of 2"),
        ),
    ]);
}

#[test]
fn rule_5_an_acknowledgement_is_for_good() {
    run(vec![
        (
            "waits for the claimant",
            acked(0, "a"),
            obs(
                "b",
                Role::Server,
                ABC,
                vec![server("a").claiming(0), server("c")],
            ),
            Want::Wait("acknowledged the claim of a"),
        ),
        (
            "even when it is dead, and says what to do",
            acked(0, "a"),
            obs(
                "b",
                Role::Server,
                ABC,
                vec![server("a").claiming(0).dead(), server("c").claiming(1)],
            ),
            Want::Wait("an operator must step in"),
        ),
    ]);
}

#[test]
fn rule_6_acknowledge_the_highest_live_claim() {
    run(vec![
        (
            "a voter acknowledges",
            voted(0, "a"),
            obs(
                "b",
                Role::Server,
                ABC,
                vec![server("a").claiming(0), server("c")],
            ),
            Want::Ack(0, "a"),
        ),
        (
            "a host that never voted too",
            fresh(),
            obs("b", Role::Server, ABC, vec![server("a").claiming(0)]),
            Want::Ack(0, "a"),
        ),
        (
            "the highest round first",
            voted(1, "b"),
            obs(
                "c",
                Role::Server,
                ABC,
                vec![server("a").claiming(0), server("b").claiming(1)],
            ),
            Want::Ack(1, "b"),
        ),
        (
            "not a dead claimant",
            fresh(),
            obs(
                "b",
                Role::Server,
                ABC,
                vec![server("a").claiming(0).dead(), server("c")],
            ),
            Want::Vote(1, "b"),
        ),
        (
            "not a claim from outside the electorate",
            fresh(),
            obs(
                "b",
                Role::Server,
                ABC,
                vec![server("a"), server("x").claiming(0)],
            ),
            Want::Vote(0, "a"),
        ),
        (
            "an abdicated host still acknowledges",
            ElectionState {
                abdicated: Some(0),
                ..voted(0, "a")
            },
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("b").claiming(1), server("c")],
            ),
            Want::Ack(1, "b"),
        ),
    ]);
}

#[test]
fn rule_7_vote_for_the_first_viable_round() {
    run(vec![
        (
            "round 0 is the lowest seat",
            fresh(),
            obs("c", Role::Server, ABC, vec![server("a"), server("b")]),
            Want::Vote(0, "a"),
        ),
        (
            "an unseen seat is waited for during the lease",
            fresh(),
            obs("c", Role::Server, ABC, vec![server("b")]).with_observing(10),
            Want::Wait("a not seen yet"),
        ),
        (
            "and passed over after it",
            fresh(),
            obs("c", Role::Server, ABC, vec![server("b")]),
            Want::Vote(1, "b"),
        ),
        (
            "a candidate dead for less than the lease keeps the vote",
            voted(0, "a"),
            obs(
                "c",
                Role::Server,
                ABC,
                vec![server("a").dead_for(5), server("b")],
            ),
            Want::Wait("a looks dead"),
        ),
        (
            "one dead for longer is replaced",
            voted(0, "a"),
            obs(
                "c",
                Role::Server,
                ABC,
                vec![server("a").dead(), server("b")],
            ),
            Want::Vote(1, "b"),
        ),
        (
            "an abdicated candidate is passed over at once",
            voted(0, "a"),
            obs(
                "c",
                Role::Server,
                ABC,
                vec![server("a").abdicated(0), server("b")],
            ),
            Want::Vote(1, "b"),
        ),
        (
            "a seat that left is passed over",
            fresh(),
            obs(
                "c",
                Role::Server,
                ABC,
                vec![server("a").left(), server("b")],
            ),
            Want::Vote(1, "b"),
        ),
        (
            "an agent on a seat is passed over",
            fresh(),
            obs(
                "c",
                Role::Server,
                ABC,
                vec![peer("a", Role::Agent), server("b")],
            ),
            Want::Vote(1, "b"),
        ),
        (
            "catch up with the highest live round",
            fresh(),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("b").voting(2, "c"), server("c").voting(2, "c")],
            ),
            Want::Vote(2, "c"),
        ),
        (
            "not with a dead voter's round",
            voted(0, "a"),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("b").voting(2, "c").dead(), server("c")],
            ),
            Want::Wait("candidate of round 0: 1 of 2"),
        ),
        (
            "rounds wrap around the seats",
            voted(2, "c"),
            obs(
                "b",
                Role::Server,
                ABC,
                vec![server("a"), server("c").dead()],
            ),
            Want::Vote(3, "a"),
        ),
        (
            "the vote stays while its candidate lives",
            voted(1, "b"),
            obs("c", Role::Server, ABC, vec![server("a"), server("b")]),
            Want::Wait("waiting for it to claim"),
        ),
        (
            "nobody can win",
            ElectionState {
                abdicated: Some(2),
                ..voted(2, "c")
            },
            obs(
                "c",
                Role::Server,
                ABC,
                vec![server("a").abdicated(0), server("b").abdicated(1)],
            ),
            Want::Wait("an operator must step in"),
        ),
    ]);
}

trait ObsTweak {
    fn with_observing(self, secs: u64) -> Observation;
}

impl ObsTweak for Observation {
    fn with_observing(mut self, secs: u64) -> Observation {
        self.observing_for = Duration::from_secs(secs);
        self
    }
}

#[test]
fn rule_8_the_candidate_installs_then_claims_with_a_quorum_of_live_votes() {
    let mut not_installed = obs(
        "a",
        Role::Server,
        ABC,
        vec![server("b").voting(0, "a"), server("c")],
    );
    not_installed.local.rke2_installed = false;
    run(vec![
        (
            "votes for itself",
            fresh(),
            obs("a", Role::Server, ABC, vec![server("b"), server("c")]),
            Want::Vote(0, "a"),
        ),
        (
            "without a quorum it waits",
            voted(0, "a"),
            obs("a", Role::Server, ABC, vec![server("b"), server("c")]),
            Want::Wait("1 of 2 votes"),
        ),
        (
            "prepares first",
            voted(0, "a"),
            not_installed,
            Want::Prepare(0),
        ),
        (
            "then claims",
            voted(0, "a"),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("b").voting(0, "a"), server("c")],
            ),
            Want::Claim(0),
        ),
        (
            "votes of dead hosts do not count",
            voted(0, "a"),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("b").voting(0, "a").dead_for(2), server("c")],
            ),
            Want::Wait("1 of 2 votes"),
        ),
    ]);
    // An abdicated host never claims: it passes over its own seat.
    let gave_up = ElectionState {
        abdicated: Some(0),
        ..voted(0, "a")
    };
    check(
        "abdicated",
        &gave_up,
        &obs(
            "a",
            Role::Server,
            ABC,
            vec![server("b").voting(0, "a"), server("c")],
        ),
        &Want::Vote(1, "b"),
    );
}

#[test]
fn a_successor_is_another_live_seat_that_can_still_claim() {
    let gave_up = server("b").abdicated(0);
    let committed = server("c").acking(0, "x");
    let o = |peers| obs("a", Role::Server, &["a", "b", "c", "d"], peers);
    assert_eq!(
        successor(&o(vec![gave_up.clone(), committed.clone()])),
        None
    );
    assert_eq!(
        successor(&o(vec![server("d").dead(), gave_up.clone()])),
        None
    );
    assert_eq!(
        successor(&o(vec![gave_up, committed, server("d")])).as_deref(),
        Some("d")
    );
    // Hosts outside the electorate never take over.
    assert_eq!(successor(&o(vec![server("z")])), None);
}

#[test]
fn a_released_claim_is_never_acknowledged_and_its_claimant_is_passed_over() {
    // b acknowledged a's claim of round 0; a is gone for good; the operator released it on b.
    let released = acked(0, "a").release("b", &v(0, "a")).unwrap();
    assert_eq!(released.ack, None);
    assert_eq!(released.released, vec![v(0, "a")]);
    // b's own gossip entry still shows the old acknowledgement: not a lost state dir.
    let peers = vec![
        server("a").claiming(0),
        server("b").voting(0, "a").acking(0, "a"),
        server("c").voting(0, "a"),
    ];
    let o = obs("b", Role::Server, ABC, peers);
    // The claimant is passed over even while it looks alive: the next seat is backed.
    check("passed over", &released, &o, &Want::Vote(1, "b"));
    let Decision::CastVote { state, .. } = decide(&released, &o) else {
        unreachable!()
    };
    assert_eq!(state.released, vec![v(0, "a")], "the release is kept");
    // Own claims and initializers cannot be released.
    assert!(acked(0, "b").release("b", &v(0, "b")).is_err());
    let init = ElectionState {
        initializer_of: Some(0),
        ..voted(0, "b")
    };
    assert!(init.release("b", &v(0, "a")).is_err());
    // Idempotent, and a claim not acknowledged here can be released ahead of time.
    assert_eq!(released.release("b", &v(0, "a")).unwrap(), released);
    let ahead = fresh().release("c", &v(0, "a")).unwrap();
    let o = obs(
        "c",
        Role::Server,
        ABC,
        vec![server("a").claiming(0), server("b")],
    );
    check("never acknowledged", &ahead, &o, &Want::Vote(1, "b"));
}

/// The claimant won (a quorum acknowledged it, it published `initializer`) and died before it
/// started RKE2. Its entry lingers in gossip until the dead-member grace ends; without the
/// release, every host reads it as a cluster being created and waits to join it.
#[test]
fn a_released_initializer_is_no_evidence_of_a_cluster() {
    let peers = || {
        vec![
            server("a").claiming(0).initializer().dead_for(600),
            server("b").voting(0, "a").acking(0, "a"),
        ]
    };
    let o = obs("c", Role::Server, ABC, peers()).with_observing(600);
    assert!(
        matches!(decide(&fresh(), &o), Decision::JoinExisting { .. }),
        "without a release the dead initializer still means a cluster"
    );
    let released = fresh().release("c", &v(0, "a")).unwrap();
    // b still shows its acknowledgement of a (its release has not shown yet): passed over too.
    check("released", &released, &o, &Want::Vote(2, "c"));
    // Restarted after the release, c learns a's entry from b key by key: the initializer flag
    // can arrive before the claim. Still no cluster.
    let partial = obs(
        "c",
        Role::Server,
        ABC,
        vec![
            server("a").initializer().dead_for(600),
            server("b").voting(0, "a").acking(0, "a"),
        ],
    )
    .with_observing(600);
    assert!(
        !matches!(decide(&released, &partial), Decision::JoinExisting { .. }),
        "a released initializer seen before its claim still counted as a cluster"
    );
    // What a member publishes (a CA hash: RKE2 did start) still counts, released or not.
    let started = obs(
        "c",
        Role::Server,
        ABC,
        vec![server("a")
            .claiming(0)
            .initializer()
            .identity()
            .dead_for(600)],
    )
    .with_observing(600);
    assert!(matches!(
        decide(&released, &started),
        Decision::JoinExisting { .. }
    ));
}

#[test]
fn a_lost_state_dir_never_commits_again() {
    run(vec![
        (
            "a vote it lacks",
            fresh(),
            obs(
                "a",
                Role::Server,
                ABC,
                vec![server("a").voting(0, "a"), server("b"), server("c")],
            ),
            Want::Wait("that its state dir lacks"),
        ),
        (
            "an acknowledgement it lacks",
            voted(0, "a"),
            obs(
                "b",
                Role::Server,
                ABC,
                vec![server("b").acking(0, "a"), server("a").claiming(0)],
            ),
            Want::Wait("state dir lacks it"),
        ),
    ]);
    // A reinstalled host on the same address under a new name: its seat remembers.
    let seats = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let mut o = obs(
        "new-b",
        Role::Server,
        &seats,
        vec![
            server("old-b").at("10.0.0.2").acking(0, "a").dead(),
            server("a").at("10.0.0.1").claiming(0),
        ],
    );
    o.self_addr = Some("10.0.0.2".parse().unwrap());
    check(
        "same seat, new name",
        &fresh(),
        &o,
        &Want::Wait("state dir lacks it"),
    );
    let corrupt = ElectionState {
        initializer_of: Some(0),
        abdicated: Some(0),
        ..voted(0, "a")
    };
    check(
        "corrupt state",
        &corrupt,
        &obs("a", Role::Server, ABC, vec![]),
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
                ack: None,
                addr: None,
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
        let mut o = counted(me, Role::Server, expect, peers);
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
