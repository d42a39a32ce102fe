//! The seed's manual procedure, automated: hosts boot, elect one first server, write their
//! config.yaml, install RKE2 and start the right service, with no human in the loop.

use std::time::Duration;

use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};

const FORMATION: Duration = Duration::from_secs(60);

#[test]
fn three_servers_and_two_agents_form_one_cluster() {
    let spec = ClusterSpec::new(
        blocks::FORMATION.id(0),
        &[
            ("server-3", "server"),
            ("agent-1", "agent"),
            ("server-1", "server"),
            ("agent-2", "agent"),
            ("server-2", "server"),
        ],
    );
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_all().unwrap();
    let all = ["server-1", "server-2", "server-3", "agent-1", "agent-2"];
    cluster
        .wait_for_phase(&all, Phase::Ready, FORMATION)
        .unwrap();

    // Round 0's candidate is the lowest seat: the first server's address, whatever its name.
    assert_eq!(
        cluster.initializers(),
        ["server-3"],
        "{}",
        cluster.logs_tail()
    );
    assert_eq!(cluster.hosts_that_initialized(), ["server-3"]);
    for name in ["server-1", "server-2", "server-3"] {
        assert_eq!(cluster.role_of(name), Some(Role::Server));
    }
    for name in ["agent-1", "agent-2"] {
        assert_eq!(cluster.role_of(name), Some(Role::Agent));
    }
    // One cluster as etcd itself sees it: one cluster ID, the three servers, no learner.
    cluster
        .wait_for_one_etcd_cluster(
            &["server-1", "server-2", "server-3"],
            Duration::from_secs(10),
        )
        .unwrap();
}
