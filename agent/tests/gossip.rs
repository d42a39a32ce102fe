//! Gossip over real UDP on loopback. Each test owns the addresses 127.<block>.<test>.<host> (port
//! 7946, the block `AGENT_GOSSIP`), so the tests run in parallel without sharing sockets.
//! Assertions poll the membership view with a deadline; nothing asserts after a fixed sleep.

use std::future::ready;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::keyring::{seal, unix_ms_now};
use rke2_bootstrap::gossip::{
    Announcement, Cluster, GossipConfig, Keyring, Liveness, Member, Role, TransportStatsSnapshot,
    DEFAULT_GOSSIP_INTERVAL,
};

use rke2_testkit::blocks::AGENT_GOSSIP;
use rke2_testkit::wait_until_async;

const CLUSTER: &str = "loopback-test";
const PORT: u16 = 7946;
const KEY_A: [u8; 32] = [0xa1; 32];
const KEY_B: [u8; 32] = [0xb2; 32];

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// `127.<block>.<test>.<host>`: each test of this file takes its own third octet.
fn ip(test: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, AGENT_GOSSIP.id(0), test, host)
}

fn addr(test: u8, host: u8) -> SocketAddr {
    SocketAddr::from((ip(test, host), PORT))
}

fn name(host: u8) -> String {
    format!("node-{host}")
}

fn config(test: u8, host: u8, seeds: &[SocketAddr], keyring: Keyring) -> GossipConfig {
    let mut config = GossipConfig::new(CLUSTER, name(host), addr(test, host), keyring);
    config.seeds = seeds.iter().map(|s| s.to_string()).collect();
    config
}

fn announcement(test: u8, host: u8) -> Announcement {
    Announcement::new(Role::Server, IpAddr::V4(ip(test, host)))
}

/// Joins, retrying for a moment if the address is still held by a node that was just dropped
/// (its socket closes asynchronously).
async fn join_config(config: GossipConfig, announcement: &Announcement) -> Cluster {
    wait_until_async(Duration::from_secs(5), Duration::from_millis(50), || {
        Cluster::join(config.clone(), announcement)
    })
    .await
    .unwrap_or_else(|e| panic!("joining {}: {e:#}", config.node_name))
}

async fn join(test: u8, host: u8, seeds: &[SocketAddr], keyring: Keyring) -> Cluster {
    join_config(
        config(test, host, seeds, keyring),
        &announcement(test, host),
    )
    .await
}

/// Starts `count` nodes 1..=count; node 1 is the only seed.
async fn start_nodes(test: u8, count: u8, key: [u8; 32]) -> Vec<Cluster> {
    let mut nodes = Vec::new();
    for host in 1..=count {
        let seeds = if host == 1 {
            vec![]
        } else {
            vec![addr(test, 1)]
        };
        nodes.push(join(test, host, &seeds, Keyring::new(key)).await);
    }
    nodes
}

fn view(node: &Cluster) -> Arc<Vec<Member>> {
    node.watch().borrow().clone()
}

fn find<'a>(view: &'a [Member], name: &str) -> Option<&'a Member> {
    view.iter().find(|m| m.name == name)
}

fn describe(nodes: &[&Cluster]) -> String {
    nodes
        .iter()
        .map(|n| {
            let members: Vec<String> = view(n)
                .iter()
                .map(|m| format!("{}@{}:{:?}", m.name, m.generation, m.liveness))
                .collect();
            format!("{} sees [{}]", n.self_name(), members.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Polls `check` until it holds; returns how long that took. At the deadline, panics with `what`
/// and the current views of `nodes` (this file's wait: the test kit's, with the views added).
async fn wait_until(
    what: &str,
    deadline: Duration,
    nodes: &[&Cluster],
    mut check: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    wait_until_async(deadline, Duration::from_millis(20), || {
        ready(check().then_some(()).ok_or_else(|| Views(describe(nodes))))
    })
    .await
    .unwrap_or_else(|e| panic!("waiting until {what}: {e:#}"));
    start.elapsed()
}

/// Views as the timeout message shows them (unquoted).
struct Views(String);

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// True when `node` sees exactly the names in `names`, all alive.
fn sees_all_alive(node: &Cluster, names: &[String]) -> bool {
    let view = view(node);
    view.len() == names.len()
        && names
            .iter()
            .all(|n| find(&view, n).is_some_and(|m| m.liveness == Liveness::Alive))
}

fn all_see_all_alive(nodes: &[&Cluster]) -> bool {
    let names: Vec<String> = nodes.iter().map(|n| n.self_name().to_string()).collect();
    nodes.iter().all(|n| sees_all_alive(n, &names))
}

/// Records every view a node publishes and reports those failing `ok`.
struct Recorder {
    violations: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    fn new(
        nodes: &[&Cluster],
        ok: impl Fn(&str, &[Member]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Recorder {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let ok = Arc::new(ok);
        let tasks = nodes
            .iter()
            .map(|node| {
                let mut rx = node.watch();
                let observer = node.self_name().to_string();
                let violations = violations.clone();
                let ok = ok.clone();
                tokio::spawn(async move {
                    loop {
                        let current = rx.borrow_and_update().clone();
                        if let Err(violation) = ok(&observer, &current) {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("{observer}: {violation}"));
                        }
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Recorder { violations, tasks }
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn no_member_is_down(_: &str, view: &[Member]) -> Result<(), String> {
    match view.iter().find(|m| m.liveness != Liveness::Alive) {
        Some(m) => Err(format!("{} is {:?}", m.name, m.liveness)),
        None => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_from_one_seed_see_each_other() {
    init_tracing();
    let nodes = start_nodes(1, 5, KEY_A).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    let took = wait_until(
        "all 5 nodes see 5 alive members",
        Duration::from_secs(10),
        &refs,
        || all_see_all_alive(&refs),
    )
    .await;
    eprintln!("5 nodes converged in {took:?}");
    for node in &nodes {
        let stats = node.stats().snapshot();
        assert!(stats.sent > 0 && stats.received > 0, "{stats:?}");
        assert_eq!(
            stats.rejected_auth + stats.rejected_malformed + stats.rejected_decode,
            0,
            "{stats:?}"
        );
        // Peers see our announced fields, not just our presence.
        let me = find(&view(node), node.self_name()).cloned().unwrap();
        for other in &nodes {
            let seen = find(&view(other), node.self_name()).cloned().unwrap();
            assert_eq!(seen.announced.node_addr, me.announced.node_addr);
            assert_eq!(seen.announced.role, Role::Server);
            assert_eq!(seen.generation, node.generation());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_wrong_key_never_appears_and_is_counted() {
    init_tracing();
    let nodes = start_nodes(2, 3, KEY_A).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    let intruder_name = name(4);
    let recorder = {
        let intruder_name = intruder_name.clone();
        Recorder::new(&refs, move |_, view| match find(view, &intruder_name) {
            Some(m) => Err(format!("intruder listed as {:?}", m.liveness)),
            None => Ok(()),
        })
    };
    let intruder = join(2, 4, &[addr(2, 1), addr(2, 2)], Keyring::new(KEY_B)).await;

    wait_until(
        "the 3 keyed nodes see each other",
        Duration::from_secs(10),
        &refs,
        || all_see_all_alive(&refs),
    )
    .await;
    // The intruder keeps knocking on its seeds every round; give it plenty of rounds.
    let seeds_rejected = || {
        nodes[0].stats().snapshot().rejected_auth >= 5
            && nodes[1].stats().snapshot().rejected_auth >= 5
    };
    wait_until(
        "the seeds rejected the intruder's datagrams",
        Duration::from_secs(10),
        &refs,
        seeds_rejected,
    )
    .await;

    assert_eq!(recorder.violations(), Vec::<String>::new());
    for node in &nodes {
        assert!(find(&view(node), &intruder_name).is_none());
    }
    let intruder_view = view(&intruder);
    assert_eq!(intruder_view.len(), 1, "{:?}", intruder_view);
    assert_eq!(intruder_view[0].name, intruder_name);
    assert_eq!(intruder.stats().snapshot().received, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_every_member_alive() {
    init_tracing();
    let nodes = start_nodes(3, 3, KEY_A).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    wait_until("all alive", Duration::from_secs(10), &refs, || {
        all_see_all_alive(&refs)
    })
    .await;
    let recorder = Recorder::new(&refs, no_member_is_down);

    // Each step changes a published value on every node and waits until every node sees every
    // other node's new value: proof that gossip flows, not just that old state is still cached.
    let steps = [
        (
            "new key added as secondary",
            Keyring::with_others(KEY_A, [KEY_B]),
        ),
        (
            "new key primary, old key secondary",
            Keyring::with_others(KEY_B, [KEY_A]),
        ),
        ("old key removed", Keyring::new(KEY_B)),
    ];
    for (round, (step, keyring)) in (1u32..).zip(steps.iter()) {
        for (host, node) in (1u8..).zip(&nodes) {
            node.set_keyring(keyring.clone());
            let mut a = announcement(3, host);
            a.abdicated = Some(round);
            node.announce(&a).await;
            // Stagger the switch so that mixed keyrings really talk to each other.
            tokio::time::sleep(DEFAULT_GOSSIP_INTERVAL).await;
        }
        wait_until(
            &format!("every node sees round {round} ({step})"),
            Duration::from_secs(10),
            &refs,
            || {
                nodes.iter().all(|n| {
                    let v = view(n);
                    v.len() == 3
                        && v.iter().all(|m| {
                            m.liveness == Liveness::Alive && m.announced.abdicated == Some(round)
                        })
                })
            },
        )
        .await;
        assert_eq!(recorder.violations(), Vec::<String>::new(), "after: {step}");
    }
    for node in &nodes {
        let stats = node.stats().snapshot();
        assert_eq!(stats.rejected_auth, 0, "{}: {stats:?}", node.self_name());
    }

    // The old key is really gone: a node holding only it is shut out.
    let stale = join(3, 9, &[addr(3, 1)], Keyring::new(KEY_A)).await;
    wait_until(
        "the old key is rejected",
        Duration::from_secs(10),
        &refs,
        || nodes[0].stats().snapshot().rejected_auth > 0,
    )
    .await;
    assert!(nodes
        .iter()
        .all(|n| find(&view(n), stale.self_name()).is_none()));
    assert_eq!(recorder.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_marked_dead() {
    init_tracing();
    let mut nodes = start_nodes(4, 4, KEY_A).await;
    {
        let refs: Vec<&Cluster> = nodes.iter().collect();
        wait_until("all alive", Duration::from_secs(10), &refs, || {
            all_see_all_alive(&refs)
        })
        .await;
    }
    // Let the failure detector collect a few seconds of heartbeat gaps, as in steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = nodes.pop().unwrap();
    let victim_name = victim.self_name().to_string();
    drop(victim);
    let refs: Vec<&Cluster> = nodes.iter().collect();
    let took = wait_until(
        "survivors see the killed node dead",
        Duration::from_secs(10),
        &refs,
        || {
            nodes
                .iter()
                .all(|n| find(&view(n), &victim_name).is_some_and(|m| m.liveness == Liveness::Dead))
        },
    )
    .await;
    eprintln!("killed node seen dead by all survivors after {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "detection took {took:?}, expected about 1 s"
    );
    // Survivors stay alive for each other, and the dead node stays listed.
    for node in &nodes {
        let v = view(node);
        assert_eq!(v.len(), 4);
        assert_eq!(
            v.iter().filter(|m| m.liveness == Liveness::Alive).count(),
            3
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gracefully_left_node_is_marked_left_quickly() {
    init_tracing();
    let mut nodes = start_nodes(5, 4, KEY_A).await;
    {
        let refs: Vec<&Cluster> = nodes.iter().collect();
        wait_until("all alive", Duration::from_secs(10), &refs, || {
            all_see_all_alive(&refs)
        })
        .await;
    }
    let leaver = nodes.pop().unwrap();
    let leaver_name = leaver.self_name().to_string();
    let start = Instant::now();
    leaver.leave().await.expect("leave");
    let leave_took = start.elapsed();
    let refs: Vec<&Cluster> = nodes.iter().collect();
    let seen_after = wait_until(
        "everyone sees the node as left",
        Duration::from_secs(2),
        &refs,
        || {
            nodes
                .iter()
                .all(|n| find(&view(n), &leaver_name).is_some_and(|m| m.liveness == Liveness::Left))
        },
    )
    .await;
    eprintln!("leave() took {leave_took:?}; peers showed Left {seen_after:?} after it returned");
    assert!(leave_took < Duration::from_secs(2), "{leave_took:?}");
    // Peers learn of the leave during the pushes, not from the failure detector.
    assert!(seen_after < Duration::from_millis(500), "{seen_after:?}");
    for node in &nodes {
        let m = find(&view(node), &leaver_name).cloned().unwrap();
        assert_eq!(m.announced.phase, rke2_bootstrap::gossip::Phase::Leaving);
        assert!(!m.is_routable_server());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_comes_back_without_a_ghost() {
    init_tracing();
    let mut nodes = start_nodes(6, 3, KEY_A).await;
    {
        let refs: Vec<&Cluster> = nodes.iter().collect();
        wait_until("all alive", Duration::from_secs(10), &refs, || {
            all_see_all_alive(&refs)
        })
        .await;
    }
    let old = nodes.pop().unwrap();
    let old_generation = old.generation();
    let restarted_name = old.self_name().to_string();
    let refs: Vec<&Cluster> = nodes.iter().collect();
    // Once a survivor has seen the new generation, it must never show the old one again, and a
    // name must never be listed twice.
    let recorder = {
        let restarted_name = restarted_name.clone();
        let seen_new: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        Recorder::new(&refs, move |observer, view| {
            let entries: Vec<&Member> = view.iter().filter(|m| m.name == restarted_name).collect();
            if entries.len() > 1 {
                return Err(format!("listed {} times", entries.len()));
            }
            let mut seen_new = seen_new.lock().unwrap();
            match entries.first() {
                Some(m) if m.generation > old_generation => {
                    seen_new.insert(observer.to_string());
                    Ok(())
                }
                Some(m) if seen_new.contains(observer) => {
                    Err(format!("old generation {} is back", m.generation))
                }
                _ => Ok(()),
            }
        })
    };

    // Crash and restart at once, same name and address, as a host that reboots quickly.
    drop(old);
    let mut restarted_config = config(6, 3, &[addr(6, 1)], Keyring::new(KEY_A));
    restarted_config.generation = old_generation + 1;
    let restarted = join_config(restarted_config, &announcement(6, 3)).await;
    let took = wait_until(
        "survivors see the new generation alive",
        Duration::from_secs(10),
        &refs,
        || {
            nodes.iter().all(|n| {
                find(&view(n), &restarted_name).is_some_and(|m| {
                    m.generation == old_generation + 1 && m.liveness == Liveness::Alive
                })
            })
        },
    )
    .await;
    eprintln!("restarted node back in {took:?}");
    let all: Vec<&Cluster> = nodes.iter().chain([&restarted]).collect();
    wait_until(
        "the restarted node sees everyone",
        Duration::from_secs(10),
        &all,
        || all_see_all_alive(&all),
    )
    .await;
    // Stay a while: the old generation is now declared dead by the failure detector, which
    // must not bring it back into the view.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(recorder.violations(), Vec::<String>::new());
    for node in &all {
        assert!(sees_all_alive(node, &[name(1), name(2), name(3)]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_seed_names_are_resolved() {
    init_tracing();
    // "localhost" resolves from the hosts file (no DNS traffic) to 127.0.0.1.
    let seed_port = 27946;
    let mut seed_config = GossipConfig::new(
        CLUSTER,
        "seed",
        SocketAddr::from(([127, 0, 0, 1], seed_port)),
        Keyring::new(KEY_A),
    );
    seed_config.seeds = vec![format!("localhost:{seed_port}")];
    let seed = join_config(
        seed_config,
        &Announcement::new(Role::Server, "127.0.0.1".parse().unwrap()),
    )
    .await;
    let mut joiner_config = config(7, 2, &[], Keyring::new(KEY_A));
    joiner_config.seeds = vec![format!("localhost:{seed_port}")];
    let joiner = join_config(joiner_config, &announcement(7, 2)).await;
    let refs = [&seed, &joiner];
    wait_until(
        "both nodes meet through the seed name",
        Duration::from_secs(10),
        &refs,
        || all_see_all_alive(&refs),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_counts_each_rejection_kind() {
    init_tracing();
    let node = join(8, 1, &[], Keyring::new(KEY_A)).await;
    let target = addr(8, 1);
    let sender = tokio::net::UdpSocket::bind(addr(8, 9)).await.unwrap();
    let ours = Keyring::new(KEY_A);
    let send = |bytes: Vec<u8>| {
        let sender = &sender;
        async move {
            sender.send_to(&bytes, target).await.unwrap();
        }
    };
    // Noise.
    send(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
    // Another key, and our key for another cluster name.
    send(seal(&Keyring::new(KEY_B), CLUSTER, b"x", unix_ms_now()).unwrap()).await;
    send(seal(&ours, "other-cluster", b"x", unix_ms_now()).unwrap()).await;
    // Authentic but not a chitchat message; then the very same datagram again.
    let authentic = seal(&ours, CLUSTER, b"not a chitchat message", unix_ms_now()).unwrap();
    send(authentic.clone()).await;
    send(authentic).await;
    // Authentic but from a clock ten minutes behind.
    send(seal(&ours, CLUSTER, b"x", unix_ms_now() - 600_000).unwrap()).await;

    let expected = TransportStatsSnapshot {
        sent: 0,
        sent_bytes: 0,
        received: 0,
        rejected_malformed: 1,
        rejected_auth: 2,
        rejected_replay: 2,
        rejected_decode: 1,
        send_failed: 0,
    };
    let refs = [&node];
    wait_until(
        "every datagram is counted",
        Duration::from_secs(5),
        &refs,
        || node.stats().snapshot() == expected,
    )
    .await;
    assert_eq!(view(&node).len(), 1);
}

/// The whole process stops for a while (as under SIGSTOP or CPU starvation). Everyone's failure
/// detector then sees stale heartbeats; the local-pause guard must keep that out of the view.
/// A second cluster with the guard disabled, stalled in the same way, shows that the stall does
/// produce false deaths without it.
#[tokio::test(flavor = "current_thread")]
async fn local_pause_does_not_report_false_deaths() {
    init_tracing();
    let guarded = start_nodes(9, 3, KEY_A).await;
    let mut unguarded = Vec::new();
    for host in 1..=3u8 {
        let seeds = if host == 1 { vec![] } else { vec![addr(10, 1)] };
        let mut config = config(10, host, &seeds, Keyring::new(KEY_A));
        config.local_health.hold_rounds = 0;
        unguarded.push(join_config(config, &announcement(10, host)).await);
    }
    let guarded_refs: Vec<&Cluster> = guarded.iter().collect();
    let unguarded_refs: Vec<&Cluster> = unguarded.iter().collect();
    let all: Vec<&Cluster> = guarded.iter().chain(&unguarded).collect();
    wait_until("all alive", Duration::from_secs(10), &all, || {
        all_see_all_alive(&guarded_refs) && all_see_all_alive(&unguarded_refs)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let guarded_recorder = Recorder::new(&guarded_refs, no_member_is_down);
    let unguarded_recorder = Recorder::new(&unguarded_refs, no_member_is_down);
    tokio::task::yield_now().await;

    // Block the only runtime thread: every node, task and timer in this test stops.
    std::thread::sleep(Duration::from_secs(3));

    // After resuming, everyone must be (or still be) alive.
    wait_until("all alive again", Duration::from_secs(10), &all, || {
        all_see_all_alive(&guarded_refs) && all_see_all_alive(&unguarded_refs)
    })
    .await;
    // Outlast the hold, so a death hidden only temporarily would show up.
    tokio::time::sleep(DEFAULT_GOSSIP_INTERVAL * 8).await;
    assert_eq!(guarded_recorder.violations(), Vec::<String>::new());
    assert!(all_see_all_alive(&guarded_refs));
    assert!(
        !unguarded_recorder.violations().is_empty(),
        "control: without the guard the stall should have produced false deaths"
    );
}

/// Paced nodes: fast rounds of 50 ms while in motion, 600 ms once the view has been steady for
/// 1 s. Test ids 180 and 181.
fn paced_config(test: u8, host: u8, seeds: &[SocketAddr], key: [u8; 32]) -> GossipConfig {
    let mut config = config(test, host, seeds, Keyring::new(key));
    config.gossip_interval = Duration::from_millis(50);
    config.idle_gossip_interval = Duration::from_millis(600);
    config.pacing_settle = Duration::from_secs(1);
    config
}

async fn start_paced(test: u8, count: u8, key: [u8; 32]) -> Vec<Cluster> {
    let mut nodes = Vec::new();
    for host in 1..=count {
        let seeds = if host == 1 {
            vec![]
        } else {
            vec![addr(test, 1)]
        };
        let config = paced_config(test, host, &seeds, key);
        nodes.push(join_config(config, &announcement(test, host)).await);
    }
    nodes
}

/// A cluster that settles slows its rounds down without any live member ever looking dead
/// (chitchat's detector, used to the fast gaps, would call every peer dead one slow round after
/// the switch), goes fast again when a node joins, and still declares a killed node dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_gossip_slows_down_without_false_deaths_and_speeds_up_on_a_join() {
    init_tracing();
    const KEY: [u8; 32] = [180; 32];
    let slow = Duration::from_millis(600);
    let fast = Duration::from_millis(50);
    let mut nodes = start_paced(180, 4, KEY).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    wait_until("all alive", Duration::from_secs(10), &refs, || {
        all_see_all_alive(&refs)
    })
    .await;
    let recorder = Recorder::new(&refs, no_member_is_down);
    wait_until(
        "every node gossips slowly",
        Duration::from_secs(20),
        &refs,
        || refs.iter().all(|n| n.gossip_pace() == slow),
    )
    .await;
    // Ten slow rounds, more than the six after which a silent paced member would be dead.
    let steady_since = Instant::now();
    wait_until(
        "ten slow rounds pass",
        Duration::from_secs(20),
        &refs,
        || steady_since.elapsed() > slow * 10 && refs.iter().all(|n| n.gossip_pace() == slow),
    )
    .await;
    assert_eq!(recorder.violations(), Vec::<String>::new());
    assert!(all_see_all_alive(&refs), "{}", describe(&refs));
    drop(recorder);

    // A newcomer is motion: every node goes fast, and all see all five.
    let newcomer = join_config(
        paced_config(180, 5, &[addr(180, 1)], KEY),
        &announcement(180, 5),
    )
    .await;
    nodes.push(newcomer);
    let refs: Vec<&Cluster> = nodes.iter().collect();
    wait_until("all five alive", Duration::from_secs(15), &refs, || {
        all_see_all_alive(&refs)
    })
    .await;
    assert!(
        refs.iter().any(|n| n.gossip_pace() == fast),
        "a join left every node slow"
    );

    // The view still moves: back at the slow pace, a killed node is declared dead.
    wait_until("slow again", Duration::from_secs(20), &refs, || {
        refs.iter().all(|n| n.gossip_pace() == slow)
    })
    .await;
    let victim = nodes.pop().unwrap();
    let victim_name = victim.self_name().to_string();
    drop(victim);
    let refs: Vec<&Cluster> = nodes.iter().collect();
    wait_until(
        "survivors see the killed node dead",
        Duration::from_secs(30),
        &refs,
        || {
            refs.iter()
                .all(|n| find(&view(n), &victim_name).is_some_and(|m| m.liveness == Liveness::Dead))
        },
    )
    .await;
}

/// The bring-up's lever: fast rounds on request, even in a steady view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_gossip_on_request() {
    init_tracing();
    let nodes = start_paced(181, 2, [181; 32]).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    wait_until("slow", Duration::from_secs(20), &refs, || {
        refs.iter()
            .all(|n| n.gossip_pace() == Duration::from_millis(600))
    })
    .await;
    // The agent re-announces every tick: the same announcement again is no motion.
    nodes[1].announce(&announcement(181, 2)).await;
    assert_eq!(nodes[1].gossip_pace(), Duration::from_millis(600));
    nodes[0].request_fast_gossip(Duration::from_secs(30));
    assert_eq!(nodes[0].gossip_pace(), Duration::from_millis(50));
    assert_eq!(nodes[1].gossip_pace(), Duration::from_millis(600));
    // A changed one is.
    let mut changed = announcement(181, 2);
    changed.phase = rke2_bootstrap::gossip::Phase::Joining;
    nodes[1].announce(&changed).await;
    assert_eq!(nodes[1].gossip_pace(), Duration::from_millis(50));
}

/// Once views agree, a handshake carries a fingerprint of the view and the heartbeats instead
/// of a digest naming every member, and skips its empty ACK (our chitchat patch); an
/// announcement made then still reaches everyone, through the full digest a peer whose view
/// differs answers with. Test id 183.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreeing_views_exchange_compact_digests_and_still_carry_a_change() {
    init_tracing();
    let slow = Duration::from_millis(600);
    let nodes = start_paced(183, 6, [183; 32]).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    wait_until("all alive", Duration::from_secs(10), &refs, || {
        all_see_all_alive(&refs)
    })
    .await;
    wait_until(
        "every node gossips slowly",
        Duration::from_secs(20),
        &refs,
        || refs.iter().all(|n| n.gossip_pace() == slow),
    )
    .await;
    let sent = |refs: &[&Cluster]| {
        refs.iter().fold((0, 0), |(d, b), n| {
            let s = n.stats().snapshot();
            (d + s.sent, b + s.sent_bytes)
        })
    };
    let before = sent(&refs);
    tokio::time::sleep(slow * 10).await;
    let after = sent(&refs);
    let (datagrams, bytes) = (after.0 - before.0, after.1 - before.1);
    assert!(datagrams > 0, "no gossip at the slow pace");
    // A full digest of six members is about 6 x 45 bytes; a compact one 12 bytes and a byte or
    // two per member, plus the cluster name and 55 bytes of seal.
    assert!(
        bytes / datagrams < 150,
        "{bytes} bytes in {datagrams} datagrams: digests are not compact in a steady view"
    );

    let mut changed = announcement(183, 3);
    changed.phase = rke2_bootstrap::gossip::Phase::Joining;
    nodes[2].announce(&changed).await;
    wait_until(
        "everyone sees the change",
        Duration::from_secs(10),
        &refs,
        || {
            refs.iter().all(|n| {
                find(&view(n), &name(3))
                    .is_some_and(|m| m.announced.phase == rke2_bootstrap::gossip::Phase::Joining)
            })
        },
    )
    .await;
}
