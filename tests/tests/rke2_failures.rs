//! Scenarios that only an RKE2 stand-in failing like RKE2 can show: certificate renewal under the
//! authenticated `/readyz`, and (with the real etcd behind the stand-in's servers) the paths
//! real clusters take.
//!
//! Loopback test ids used here: 120 to 139.

use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::Phase;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};
use rke2_bootstrap_tests::wait_until;

const FORMATION: Duration = Duration::from_secs(90);
const SERVERS: [&str; 3] = ["server-1", "server-2", "server-3"];

/// RKE2 renews the kubelet client certificate the API probe presents; the old one expires. Here
/// each certificate lives 6 s and is renewed every 2 s: a probe that kept the identity it loaded
/// first would be refused from the first expiry on, and the servers would drop out of ready.
#[test]
fn probes_keep_passing_across_kubelet_certificate_renewals() {
    const TTL_MS: u64 = 6000;
    let spec = ClusterSpec::new(
        120,
        &[
            (SERVERS[0], "server"),
            (SERVERS[1], "server"),
            (SERVERS[2], "server"),
        ],
    );
    let mut cluster = TestCluster::new(spec).unwrap();
    for name in SERVERS {
        cluster
            .host_mut(name)
            .env
            .push(("STANDIN_KUBELET_CERT_TTL_MS".into(), TTL_MS.to_string()));
    }
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&SERVERS, Phase::Ready, FORMATION)
        .unwrap();

    let all_ready = |members: &[rke2_bootstrap::gossip::schema::MemberSummary]| {
        SERVERS
            .iter()
            .all(|n| members.iter().any(|m| m.name == *n && m.ready))
    };
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        all_ready(&cluster.members_seen_by("server-1"))
    })
    .unwrap();

    // Three lifetimes: every certificate the servers started with has expired by the end.
    let watch = Duration::from_millis(3 * TTL_MS);
    let started = Instant::now();
    while started.elapsed() < watch {
        let members = cluster.members_seen_by("server-1");
        for name in SERVERS {
            let member = members.iter().find(|m| m.name == name);
            assert!(
                member.is_some_and(|m| m.ready),
                "{name} dropped out of ready {} ms into the renewals: {member:?}\n{}",
                started.elapsed().as_millis(),
                cluster.logs_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in SERVERS {
        let host = cluster.host(name);
        let renewals = host
            .root
            .unit_log("rke2-server.service")
            .matches("renewed the kubelet client certificate")
            .count();
        assert!(renewals >= 6, "{name} renewed {renewals} times");
        let key = std::fs::read_to_string(host.root.rke2().kubelet_client_key()).unwrap();
        assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
        let log = host.log();
        assert!(
            !log.contains("readiness changed ready=false"),
            "{name} went not-ready:\n{log}"
        );
        assert!(
            log.contains("loaded the node's kubelet client identity")
                && log.contains("renewed=true"),
            "{name} never reloaded its identity:\n{log}"
        );
    }
    cluster
        .wait_for_one_etcd_cluster(&SERVERS, Duration::from_secs(10))
        .unwrap();
}
