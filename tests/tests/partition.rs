//! A network partition in the middle of the election: gossip (UDP) between two groups of hosts
//! is dropped by a dedicated nftables table while the first-server candidate prepares, then the
//! table is deleted. At no moment are there two first servers, and after healing there is exactly
//! one cluster.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::Phase;
use rke2_bootstrap_tests::cluster::{nft_available, ClusterSpec, Partition, TestCluster};
use rke2_bootstrap_tests::wait_until;

const SERVERS: [&str; 3] = ["server-1", "server-2", "server-3"];
const AGENTS: [&str; 2] = ["agent-1", "agent-2"];

#[test]
fn partition_during_the_election_never_makes_two_first_servers() {
    if !nft_available() {
        eprintln!(
            "\n!!!!! SKIPPED partition_during_the_election_never_makes_two_first_servers: `nft` is \
             not installed (Debian package nftables; tests/run.sh installs it) !!!!!\n"
        );
        return;
    }
    let hosts: Vec<(&str, &'static str)> = SERVERS
        .iter()
        .map(|n| (*n, "server"))
        .chain(AGENTS.iter().map(|n| (*n, "agent")))
        .collect();
    let mut cluster = TestCluster::new(ClusterSpec::new(30, &hosts)).unwrap();
    // A slow installer keeps the candidate in its prepare step long enough to cut it off there.
    for name in SERVERS {
        cluster
            .host_mut(name)
            .env
            .push(("STANDIN_INSTALL_SLEEP".into(), "2".into()));
    }
    cluster.start_all().unwrap();
    let candidate = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
        cluster
            .hosts
            .iter()
            .find(|h| !h.root.install_env_records().is_empty())
            .map(|h| h.name.clone())
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", cluster.logs_tail()));

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
}
