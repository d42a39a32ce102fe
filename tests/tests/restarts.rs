//! Crashes and reboots: a host resumes from what it persisted and never initializes a second
//! cluster.

use std::time::Duration;

use rke2_bootstrap::gossip::schema::Phase;
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};
use rke2_bootstrap_tests::wait_until;

const FORMATION: Duration = Duration::from_secs(90);
/// For etcd's member list to match the ready servers (a promotion or removal may be in flight).
const ETCD_SETTLE: Duration = Duration::from_secs(30);
const ALL: [&str; 4] = ["server-1", "server-2", "server-3", "agent-1"];

fn cluster(test_id: u8) -> TestCluster {
    TestCluster::new(ClusterSpec::new(
        test_id,
        &[
            ("server-1", "server"),
            ("server-2", "server"),
            ("server-3", "server"),
            ("agent-1", "agent"),
        ],
    ))
    .unwrap()
}

/// The agent of the first-server candidate is killed (`kill -9`) while its installer runs; its
/// service manager restarts it. It picks up where it was: one cluster, initialized once, RKE2
/// started once on that host.
#[test]
fn agent_killed_mid_install_resumes_without_reinitializing() {
    let mut cluster = cluster(blocks::RESTARTS.id(0));
    // A slow installer on every server, so that whoever the election picks is caught mid-install.
    // The first host whose installer runs is the one installing as the first-server candidate.
    let victim = cluster.start_with_a_slow_installer(3, Duration::from_secs(30));
    eprintln!("killing {victim} mid-install");
    assert!(
        cluster.host(&victim).root.config_yaml().is_none(),
        "the candidate writes config.yaml only once installed and elected"
    );
    cluster.crash_agent(&victim).unwrap();

    // The restarted agent gets a fast installer (the slow one did its job).
    cluster.host_mut(&victim).env.clear();
    cluster.start(&victim).unwrap();
    cluster
        .wait_for_phase(&ALL, Phase::Ready, FORMATION)
        .unwrap();

    let initializers = cluster.initializers();
    assert_eq!(initializers.len(), 1, "{initializers:?}");
    assert_eq!(cluster.hosts_that_initialized(), initializers);
    assert_eq!(
        cluster.new_cluster_events(),
        [(initializers[0].clone(), 1)],
        "one cluster, created once"
    );
    let host = cluster.host(&victim);
    let starts: Vec<_> = host
        .service_calls()
        .into_iter()
        .filter(|(_, a)| a.starts_with("enable --now"))
        .collect();
    assert_eq!(starts.len(), 1, "{victim} started RKE2 once: {starts:?}");
    let state = host.persisted_state().expect("state.json");
    assert_eq!(state["progress"]["step"], "joined", "{state}");
    assert_eq!(state["installed"], true, "{state}");
    // The killed run was recorded, then the resumed one finished the install.
    assert_eq!(host.root.install_env_records().len(), 2);
    // The restarted agent went on from its persisted vote instead of starting over.
    let resumed = host.log();
    assert!(
        !resumed.contains("voting for"),
        "voted again after the restart:\n{resumed}"
    );
    // Every server is in the one cluster.
    let ca = cluster.host(&initializers[0]).root.ca_hash().unwrap();
    for name in ["server-1", "server-2", "server-3"] {
        assert_eq!(cluster.host(name).root.ca_hash().as_deref(), Some(&*ca));
    }
    cluster
        .wait_for_one_etcd_cluster(&["server-1", "server-2", "server-3"], ETCD_SETTLE)
        .unwrap();
}

/// The first server is powered off after the cluster formed and boots again: it comes back as
/// the member it was (same CA, same config.yaml, no installer run, no new cluster).
#[test]
fn rebooted_first_server_comes_back_as_a_member() {
    let mut cluster = cluster(blocks::RESTARTS.id(1));
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&ALL, Phase::Ready, FORMATION)
        .unwrap();
    let initializers = cluster.initializers();
    assert_eq!(initializers.len(), 1);
    let first = initializers[0].clone();
    let before_ca = cluster.host(&first).root.ca_hash().unwrap();
    let config_path = cluster.host(&first).root.rke2().config_yaml();
    let before_config = std::fs::read(&config_path).unwrap();

    cluster.power_off(&first).unwrap();
    // The others notice (the failure detector) before the host is back.
    let others: Vec<&str> = ALL.iter().copied().filter(|n| *n != first).collect();
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        cluster
            .members_seen_by(others[0])
            .iter()
            .any(|m| m.name == first && (!m.alive || !m.ready))
    })
    .unwrap();
    cluster.start(&first).unwrap();
    cluster
        .wait_for_phase(&ALL, Phase::Ready, FORMATION)
        .unwrap();

    let root = &cluster.host(&first).root;
    assert_eq!(root.ca_hash().as_deref(), Some(before_ca.as_str()));
    assert_eq!(root.install_env_records().len(), 1, "installer ran again");
    assert_eq!(cluster.new_cluster_events(), [(first.clone(), 1)]);
    assert_eq!(cluster.initializers(), [first.as_str()]);
    assert!(
        root.unit_log("rke2-server.service")
            .contains("reusing the cluster ca found on disk"),
        "{}",
        root.unit_log("rke2-server.service")
    );
    let log = cluster.host(&first).log();
    assert!(log.contains("already joined"), "{log}");
    // Its config.yaml is the one it had, or (once it sees the cluster up) a member's: pointing at
    // the cluster with the full token of the same CA. Never a fresh first server's.
    let after_config = std::fs::read(&config_path).unwrap();
    if after_config != before_config {
        let config = root.config_yaml().unwrap();
        assert!(config.get("server").is_some(), "{config:?}");
        let token = config["token"].as_str().unwrap();
        assert!(
            token.starts_with(&format!("K10{before_ca}::server:")),
            "{token}"
        );
    }
}

/// The first server's RKE2 data is wiped (a reinstalled disk) while the agent's state survives:
/// it must join the cluster that exists, not create a second one from its old role.
#[test]
fn first_server_with_wiped_rke2_data_rejoins_its_cluster() {
    let mut cluster = cluster(blocks::RESTARTS.id(2));
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&ALL, Phase::Ready, FORMATION)
        .unwrap();
    let first = cluster.initializers()[0].clone();
    let ca = cluster.host(&first).root.ca_hash().unwrap();

    cluster.power_off(&first).unwrap();
    std::fs::remove_dir_all(cluster.host(&first).root.join("/var/lib/rancher/rke2")).unwrap();
    cluster.start(&first).unwrap();
    cluster
        .wait_for_phase(&ALL, Phase::Ready, FORMATION)
        .unwrap();

    assert_eq!(
        cluster.new_cluster_events(),
        [(first.clone(), 1)],
        "a second cluster was created:\n{}",
        cluster.host(&first).log()
    );
    assert_eq!(cluster.host(&first).root.ca_hash().as_deref(), Some(&*ca));
    let config = cluster.host(&first).root.config_yaml().unwrap();
    assert!(config.get("server").is_some(), "{config:?}");
    // Its stale etcd member was replaced by the new one: three members, no learner.
    cluster
        .wait_for_one_etcd_cluster(&["server-1", "server-2", "server-3"], ETCD_SETTLE)
        .unwrap();
}
