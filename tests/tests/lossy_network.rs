//! Formation over a bad network: every gossip datagram between the hosts and the LB goes through a
//! relay ([`GossipRelay`]) that drops 15 % of them and holds the rest for 50 to 200 ms (125 ± 75
//! ms, uniform). The real agents, sidecar and nginx must still form exactly one cluster, route the
//! LB to exactly the servers without ever writing an empty or invalid nginx.conf, write every
//! config.yaml and token whole, and then, in a steady phase under the same faults, never drop a
//! live server from the LB.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::Phase;
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{
    layout, skip_without_nft, ClusterSpec, TestCluster, GOSSIP_PORT,
};
use rke2_bootstrap_tests::history::{
    check_config_yaml_history, check_lb_history, check_token_history, FileHistory,
};
use rke2_bootstrap_tests::netem::{GossipRelay, Impairment};

const ID: u8 = blocks::LOSSY_NETWORK.id(0);
const SERVERS: [&str; 3] = ["server-1", "server-2", "server-3"];
const AGENTS: [&str; 2] = ["agent-1", "agent-2"];
const FORMATION: Duration = Duration::from_secs(45);
const STEADY: Duration = Duration::from_secs(10);

#[test]
fn formation_and_steady_state_survive_gossip_loss_and_delay() {
    if skip_without_nft("formation_and_steady_state_survive_gossip_loss_and_delay") {
        return;
    }
    let hosts = layout(&SERVERS, &AGENTS);
    let mut cluster = TestCluster::new(ClusterSpec::new(ID, &hosts).with_lb()).unwrap();
    let seed = rke2_bootstrap_tests::cluster::test_seed("lossy_network");
    let relay = GossipRelay::start(
        "faults_lossy_network",
        &cluster.gossip_ips(),
        GOSSIP_PORT,
        Impairment {
            delay: Duration::from_millis(125),
            jitter: Duration::from_millis(75),
            loss: 0.15,
            seed,
        },
    )
    .unwrap();

    cluster.start_lb().unwrap();
    let lb_conf = cluster.lb().config_file.clone();
    let mut watched = cluster.written_once_files();
    watched.push(lb_conf.clone());
    let history = FileHistory::start(watched, Duration::from_millis(5));
    let started = Instant::now();
    cluster.start_all().unwrap();

    let all: Vec<&str> = SERVERS.iter().chain(AGENTS.iter()).copied().collect();
    cluster
        .wait_for_phase(&all, Phase::Ready, FORMATION)
        .unwrap();
    let ready_after = started.elapsed();
    cluster
        .wait_for_lb_servers(&SERVERS, Duration::from_secs(20))
        .unwrap();
    let lb_after = started.elapsed();
    let at_formation = relay.counters();
    eprintln!(
        "all ready after {:.1} s, lb lists the servers after {:.1} s; relay: {at_formation}",
        ready_after.as_secs_f64(),
        lb_after.as_secs_f64()
    );

    // Steady phase, same faults: the LB keeps every (live) server, every view keeps every member.
    let server_ips: Vec<IpAddr> = {
        let mut ips: Vec<IpAddr> = SERVERS.iter().map(|n| cluster.host(n).ip).collect();
        ips.sort();
        ips
    };
    let steady = Instant::now();
    let mut polls = 0u32;
    let mut views_missing_a_member = 0u32;
    while steady.elapsed() < STEADY {
        let routed = cluster.lb().upstream_addrs();
        assert_eq!(
            routed,
            server_ips,
            "the lb dropped a live server {:.1} s into the steady phase\n{}",
            steady.elapsed().as_secs_f64(),
            cluster.lb().log_tail()
        );
        for (viewer, status) in cluster.statuses() {
            let down: Vec<&str> = status
                .members
                .iter()
                .filter(|m| !m.alive)
                .map(|m| m.name.as_str())
                .collect();
            if !down.is_empty() {
                views_missing_a_member += 1;
                eprintln!("{viewer} sees {down:?} down");
            }
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let recorded = history.stop();
    let total = relay.counters();
    eprintln!(
        "steady phase: {polls} polls, {views_missing_a_member} views with a member down; \
         file history: {} rounds; relay in all: {total}",
        recorded.rounds
    );

    // The faults were really there.
    assert!(total.dropped > 0 && total.delayed > 0, "{total}");
    assert!(total.held_mean >= Duration::from_millis(100), "{total}");
    assert!(total.held_max >= Duration::from_millis(190), "{total}");
    assert_eq!(total.foreign, 0, "{total}");

    // One cluster, initialized once, every host in it.
    let initializers = cluster.assert_at_most_one_initializer();
    assert_eq!(initializers.len(), 1, "{initializers:?}");
    let ca = cluster.host(&initializers[0]).root.ca_hash().unwrap();
    for name in SERVERS {
        assert_eq!(
            cluster.host(name).root.ca_hash().as_deref(),
            Some(&*ca),
            "{name}"
        );
    }
    cluster
        .wait_for_one_etcd_cluster(&SERVERS, Duration::from_secs(10))
        .unwrap();
    for name in AGENTS {
        assert!(cluster.host(name).root.agent_joined(), "{name}");
    }
    assert_eq!(views_missing_a_member, 0, "false failure detections");

    // Nothing half-written, nothing written twice.
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
    // The LB: never empty, never invalid, only servers; at the end exactly the servers.
    let lb = cluster.lb();
    let lists = check_lb_history(
        recorded.versions(&lb_conf),
        lb.bootstrap_conf(),
        &server_ips,
        lb.prefix(),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lb.log_tail()));
    eprintln!("lb upstream lists, in order: {lists:?}");
    assert_eq!(lists.last(), Some(&server_ips));
}
