//! A network partition in the middle of the election: gossip (UDP) between two groups of hosts
//! is dropped by a dedicated nftables table while the first-server candidate prepares, then the
//! table is deleted. At no moment are there two first servers, and after healing there is exactly
//! one cluster.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::Phase;
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{
    layout, lb_ip, skip_without_nft, ClusterSpec, Partition, TestCluster,
};
use rke2_bootstrap_tests::history::{
    check_config_yaml_history, check_lb_history, check_token_history, FileHistory,
};
use rke2_bootstrap_tests::wait_until;

const SERVERS: [&str; 3] = ["server-1", "server-2", "server-3"];
const AGENTS: [&str; 2] = ["agent-1", "agent-2"];

#[test]
fn partition_during_the_election_never_makes_two_first_servers() {
    if skip_without_nft("partition_during_the_election_never_makes_two_first_servers") {
        return;
    }
    let hosts = layout(&SERVERS, &AGENTS);
    let mut cluster = TestCluster::new(ClusterSpec::new(blocks::PARTITION.id(0), &hosts)).unwrap();
    // A slow installer keeps the candidate in its prepare step long enough to cut it off there.
    let candidate = cluster.start_with_a_slow_installer(2, Duration::from_secs(30));

    // The candidate and one worker on one side, the other servers and worker on the other.
    let side_a: Vec<&str> = vec![candidate.as_str(), AGENTS[0]];
    let side_b: Vec<&str> = SERVERS
        .iter()
        .copied()
        .filter(|n| *n != candidate)
        .chain([AGENTS[1]])
        .collect();
    let ips =
        |names: &[&str]| -> Vec<IpAddr> { names.iter().map(|n| cluster.host(n).ip).collect() };
    eprintln!("partition: {side_a:?} | {side_b:?} (candidate {candidate} is installing)");
    let partition = Partition::new(
        "partition_during_the_election",
        &ips(&side_a),
        &ips(&side_b),
    )
    .unwrap();

    // While cut off: the other side never elects a first server of its own, whatever the
    // candidate does on its side. Watched for longer than the candidate's install and the
    // failure detector need.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        let initializers = cluster.assert_at_most_one_initializer();
        assert!(
            initializers.iter().all(|n| *n == candidate),
            "{initializers:?} initialized while {candidate} was cut off"
        );
        for name in &side_b {
            let phase = cluster.host(name).status().map(|s| s.phase);
            assert!(
                !matches!(phase, Some(Phase::Initializing)),
                "{name} initializing on the far side"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut_off_side_b: Vec<String> = side_b
        .iter()
        .map(|n| {
            let s = cluster.host(n).status().unwrap();
            format!("{n}: {} ({})", s.phase, s.reason)
        })
        .collect();
    eprintln!("far side during the partition: {cut_off_side_b:#?}");

    partition.heal();
    let all: Vec<&str> = SERVERS.iter().chain(AGENTS.iter()).copied().collect();
    wait_until(Duration::from_secs(90), Duration::from_millis(100), || {
        cluster.assert_at_most_one_initializer();
        all.iter()
            .all(|n| cluster.host(n).status().map(|s| s.phase) == Some(Phase::Ready))
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", cluster.logs_tail()));

    let initializers = cluster.assert_at_most_one_initializer();
    assert_eq!(initializers, [candidate.as_str()]);
    let ca = cluster.host(&candidate).root.ca_hash().unwrap();
    for name in SERVERS {
        assert_eq!(
            cluster.host(name).root.ca_hash().as_deref(),
            Some(&*ca),
            "{name}"
        );
    }
    cluster
        .wait_for_one_etcd_cluster(&SERVERS, Duration::from_secs(20))
        .unwrap();
}

/// The join window of a server: from the service manager's `enable --now rke2-server` to its
/// stand-in's `api is ready`, in unix ms.
fn join_window(cluster: &TestCluster, name: &str) -> (u64, u64) {
    let host = cluster.host(name);
    let start = host
        .enabled_at("rke2-server.service")
        .unwrap_or_else(|| panic!("{name} never started rke2-server"));
    let ready = *host
        .unit_events("rke2-server.service", "api is ready")
        .first()
        .unwrap_or_else(|| panic!("{name}'s api never became ready"));
    (start, ready)
}

/// What `viewer` currently believes about `member`, e.g. `alive joining`.
fn seen(cluster: &TestCluster, viewer: &str, member: &str) -> String {
    cluster
        .members_seen_by(viewer)
        .into_iter()
        .find(|m| m.name == member)
        .map(|m| {
            format!(
                "{} {}{}",
                if m.alive { "alive" } else { "dead" },
                m.phase,
                if m.ready { " ready" } else { "" }
            )
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What the test saw change, per subject, with the time since the start.
struct Timeline {
    t0: Instant,
    last: std::collections::HashMap<String, String>,
    lines: Vec<String>,
}

impl Timeline {
    fn new(t0: Instant) -> Timeline {
        Timeline {
            t0,
            last: Default::default(),
            lines: Vec::new(),
        }
    }

    /// What happened so far and every host's log tail, for a failure message.
    fn dump(&self, cluster: &TestCluster) -> String {
        format!("{}\n{}", self.lines.join("\n"), cluster.logs_tail())
    }

    fn note(&mut self, subject: &str, what: String) {
        if self.last.get(subject) != Some(&what) {
            self.lines
                .push(format!("{:5.1}s {what}", self.t0.elapsed().as_secs_f64()));
            self.last.insert(subject.to_string(), what);
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Partitions in the middle of server joins (the join lease: one server joins at a time, the
/// others wait while a live server is `joining`). The LB, real nginx, is every host's
/// registration address; joiners' RKE2 (stand-in) takes a few seconds to become ready, so each
/// partition lands while its victim's rke2-server is joining.
///
/// - A: the first joiner is cut off (gossip) from the first server and the LB, not from the
///   others. Gossip routes around the cut: the others still see it alive and joining, so the
///   lease is held and the next server waits until it is ready.
/// - B: the second joiner is cut off from every gossip peer. The failure detector declares it
///   dead, which releases the lease: the last server may join while it is still joining (RKE2
///   copes with that by an etcd retry, k3s#4335; joining never creates a cluster).
///
/// After healing: every server joined the one cluster created once, the LB never had an empty
/// or invalid upstream list, and no config.yaml or token was ever seen half-written.
#[test]
fn partitions_during_server_joins_never_split_or_corrupt_the_cluster() {
    if skip_without_nft("partitions_during_server_joins_never_split_or_corrupt_the_cluster") {
        return;
    }
    const ID: u8 = blocks::PARTITION_LB.id(0);
    const JOINERS: [&str; 3] = ["server-2", "server-3", "server-4"];
    let servers = ["server-1", "server-2", "server-3", "server-4"];
    let hosts = layout(&servers, &["agent-1"]);
    let names: Vec<&str> = hosts.iter().map(|(n, _)| *n).collect();
    let mut cluster = TestCluster::new(ClusterSpec::new(ID, &hosts).with_lb()).unwrap();
    // slow joins, so the partitions land while rke2-server is joining
    for (name, delay) in [("server-2", "4000"), ("server-3", "7000")] {
        cluster
            .host(name)
            .root
            .set_unit_env("rke2-server", &[("STANDIN_API_DELAY_MS", delay)])
            .unwrap();
    }
    cluster.start_lb().unwrap();
    let lb_conf = cluster.lb().config_file.clone();
    let mut watched = cluster.written_once_files();
    watched.push(lb_conf.clone());
    let history = FileHistory::start(watched, Duration::from_millis(5));
    let t0 = Instant::now();
    cluster.start_all().unwrap();
    let ip = |name: &str| cluster.host(name).ip;
    let lb = lb_ip(ID);
    let mut events = Timeline::new(t0);

    // The first joiner: whoever writes config.yaml first (naming the LB); the lease goes to the
    // lowest name.
    let first_joiner = wait_until(Duration::from_secs(40), Duration::from_millis(10), || {
        JOINERS
            .iter()
            .find(|n| {
                // whole: the file's history is checked at the end
                let config = cluster.host(n).root.config_yaml();
                config.is_some_and(|c| c.get("server").is_some())
            })
            .copied()
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", cluster.logs_tail()));
    assert_eq!(
        first_joiner, "server-2",
        "the lease goes to the lowest name"
    );
    let config = cluster.host("server-2").root.config_yaml().unwrap();
    assert_eq!(
        config["server"].as_str(),
        Some(format!("https://{lb}:9345").as_str())
    );

    // A: server-2 cut off from the first server and the LB.
    let mut cut_a = Some(
        Partition::new(
            "faults_join_partition_a",
            &[ip("server-2")],
            &[ip("server-1"), lb],
        )
        .unwrap(),
    );
    let a_started = unix_ms();
    events.note(
        "partition",
        "A: server-2 cut off from server-1 and the lb".into(),
    );
    // held until server-3 takes its turn (server-2 ready), bounded
    wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        cluster.assert_at_most_one_initializer();
        let phase2 = cluster.host("server-2").status().map(|s| s.phase);
        events.note("server-2", format!("server-2 is {phase2:?}"));
        for viewer in ["server-1", "server-3", "agent-1"] {
            events.note(
                &format!("{viewer}/server-2"),
                format!(
                    "{viewer} sees server-2 {}",
                    seen(&cluster, viewer, "server-2")
                ),
            );
        }
        for waiter in ["server-3", "server-4"] {
            if let Some(s) = cluster.host(waiter).status() {
                events.note(waiter, format!("{waiter}: {} ({})", s.phase, s.reason));
            }
        }
        let routed = cluster.lb().upstream_addrs();
        events.note("lb", format!("lb routes to {routed:?}"));
        cluster.host("server-3").root.config_yaml().is_some()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", events.dump(&cluster)));
    let mut a_healed = None;
    events.note("partition", "server-3 has its config.yaml".into());

    // B: server-3, now joining, cut off from every gossip peer.
    let others: Vec<IpAddr> = ["server-1", "server-2", "server-4", "agent-1"]
        .iter()
        .map(|n| ip(n))
        .chain([lb])
        .collect();
    let cut_b = Partition::new("faults_join_partition_b", &[ip("server-3")], &others).unwrap();
    let b_started = unix_ms();
    events.note("partition", "B: server-3 cut off from everyone".into());
    wait_until(Duration::from_secs(25), Duration::from_millis(50), || {
        cluster.assert_at_most_one_initializer();
        for viewer in ["server-1", "server-4"] {
            events.note(
                &format!("{viewer}/server-3"),
                format!(
                    "{viewer} sees server-3 {}",
                    seen(&cluster, viewer, "server-3")
                ),
            );
        }
        for name in ["server-3", "server-4"] {
            if let Some(s) = cluster.host(name).status() {
                events.note(name, format!("{name}: {} ({})", s.phase, s.reason));
            }
        }
        let routed = cluster.lb().upstream_addrs();
        events.note("lb", format!("lb routes to {routed:?}"));
        // until server-3's rke2 is ready, and server-4 either joined or is still waiting 3 s
        // after the failure detector had time to act
        // A lasts until the LB, cut off from server-2, routes to it anyway (it learns of
        // server-2's readiness through the members that still hear it)
        if cut_a.is_some() && routed.contains(&ip("server-2")) {
            drop(cut_a.take());
            a_healed = Some(unix_ms());
            events.note("partition", "A healed: the lb routes to server-2".into());
        }
        !cluster
            .host("server-3")
            .unit_events("rke2-server.service", "api is ready")
            .is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", events.dump(&cluster)));
    cut_b.heal();
    let b_healed = unix_ms();
    let lb_listed_server_2_during_a = cut_a.is_none();
    drop(cut_a);
    events.note("partition", "B healed".into());

    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        cluster.assert_at_most_one_initializer();
        names
            .iter()
            .all(|n| cluster.host(n).status().map(|s| s.phase) == Some(Phase::Ready))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", events.dump(&cluster)));
    cluster
        .wait_for_lb_servers(&servers, Duration::from_secs(20))
        .unwrap();
    let recorded = history.stop();
    events.note(
        "end",
        format!(
            "all ready, lb lists all four servers ({} file rounds)",
            recorded.rounds
        ),
    );

    let windows: Vec<(&str, (u64, u64))> = JOINERS
        .iter()
        .map(|n| (*n, join_window(&cluster, n)))
        .collect();
    let rel = |ms: u64| ms as i64 - a_started as i64;
    eprintln!("events:\n{}", events.lines.join("\n"));
    eprintln!(
        "partition A {}..{} ms, B {}..{} ms; join windows (rke2-server start..api ready, ms from A): {:?}; \
         lb listed server-2 during A: {lb_listed_server_2_during_a}",
        0,
        a_healed.map_or(-1, rel),
        rel(b_started),
        rel(b_healed),
        windows
            .iter()
            .map(|(n, (s, r))| format!("{n} {}..{}", rel(*s), rel(*r)))
            .collect::<Vec<_>>()
    );

    // One cluster, created once, by the first server; every server in it.
    assert_eq!(cluster.assert_at_most_one_initializer(), ["server-1"]);
    assert_eq!(cluster.new_cluster_events(), [("server-1".to_string(), 1)]);
    let ca = cluster.host("server-1").root.ca_hash().unwrap();
    for name in servers {
        assert_eq!(
            cluster.host(name).root.ca_hash().as_deref(),
            Some(&*ca),
            "{name}"
        );
        let starts = cluster
            .host(name)
            .service_calls()
            .into_iter()
            .filter(|(_, a)| a.starts_with("enable --now"))
            .count();
        assert_eq!(starts, 1, "{name} started rke2 {starts} times");
    }
    assert!(cluster.host("agent-1").root.agent_joined());

    // A: the LB added server-2 while cut off from it.
    assert!(
        lb_listed_server_2_during_a,
        "the lb did not add server-2 while cut off from it\n{}",
        events.lines.join("\n")
    );
    // A: the lease was held across the partial cut: server-3 started only once server-2 was
    // ready, in the lease's order.
    let (s2, s3, s4) = (windows[0].1, windows[1].1, windows[2].1);
    assert!(
        s3.0 >= s2.1,
        "server-3 joined while server-2 was joining: {windows:?}"
    );
    // B: a joiner overlapping server-3's join may only have started once server-3 was cut off
    // from everyone (the failure detector released the lease), never before.
    if s4.0 < s3.1 {
        assert!(
            s4.0 > b_started,
            "server-4 joined alongside server-3 before the partition: {windows:?}"
        );
    }
    assert!(
        s4.0 >= s2.1,
        "server-4 joined while server-2 was joining: {windows:?}"
    );

    // Nothing half-written, nothing written twice; the LB never empty or invalid.
    for host in &cluster.hosts {
        let rke2 = host.root.rke2();
        let n = check_config_yaml_history(recorded.versions(&rke2.config_yaml()))
            .unwrap_or_else(|e| panic!("{}: {e:#}", host.name));
        assert_eq!(n, 1, "{} wrote no config.yaml", host.name);
        for token in [rke2.token(), host.state_dir().join("token")] {
            check_token_history(recorded.versions(&token))
                .unwrap_or_else(|e| panic!("{} {}: {e:#}", host.name, token.display()));
        }
    }
    let server_ips: Vec<IpAddr> = servers.iter().map(|n| ip(n)).collect();
    let lb_host = cluster.lb();
    let lists = check_lb_history(
        recorded.versions(&lb_conf),
        lb_host.bootstrap_conf(),
        &server_ips,
        lb_host.prefix(),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lb_host.log_tail()));
    eprintln!("lb upstream lists, in order: {lists:?}");
}
