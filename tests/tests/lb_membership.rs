//! The LB follows the cluster with nobody editing nginx.conf: late joiners come in through it, a
//! server that leaves (SIGTERM) is dropped, a new server is added only once it is ready. Real
//! sidecar, real nginx.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap_tests::cluster::{lb_ip, ClusterSpec, TestCluster};
use rke2_bootstrap_tests::http::{https_get_blocking, Trust};
use rke2_bootstrap_tests::standin::ca_hash;
use rke2_bootstrap_tests::wait_until;

const FORMATION: Duration = Duration::from_secs(90);
const LB_FOLLOWS: Duration = Duration::from_secs(20);

/// The CA hash served through the LB's registration port.
fn ca_through_lb(id: u8) -> String {
    let response = https_get_blocking(
        SocketAddr::new(lb_ip(id), 9345),
        "/cacerts",
        &[],
        &Trust::Any,
        Duration::from_secs(5),
    )
    .expect("the LB routes to a server");
    assert_eq!(response.status, 200);
    ca_hash(&response.body)
}

#[test]
fn lb_follows_late_joiners_a_leaving_server_and_a_new_server() {
    const ID: u8 = 40;
    let spec = ClusterSpec::new(
        ID,
        &[
            ("server-1", "server"),
            ("server-2", "server"),
            ("server-3", "server"),
            ("agent-1", "agent"),
        ],
    )
    .with_lb();
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_lb().unwrap();
    cluster.start_all().unwrap();
    let initial = ["server-1", "server-2", "server-3", "agent-1"];
    cluster
        .wait_for_phase(&initial, Phase::Ready, FORMATION)
        .unwrap();
    cluster
        .wait_for_lb_servers(&["server-1", "server-2", "server-3"], LB_FOLLOWS)
        .unwrap();
    let first = cluster.initializers()[0].clone();
    let ca = cluster.host(&first).root.ca_hash().unwrap();
    assert_eq!(ca_through_lb(ID), ca);

    // A worker that boots after the cluster formed joins through the LB; the LB is unchanged.
    cluster.add_host("agent-late", "agent").unwrap();
    cluster.start("agent-late").unwrap();
    cluster
        .wait_for_phase(&["agent-late"], Phase::Ready, FORMATION)
        .unwrap();
    let config = cluster.host("agent-late").root.config_yaml().unwrap();
    assert_eq!(
        config["server"].as_str(),
        Some(format!("https://{}:9345", lb_ip(ID)).as_str())
    );
    assert!(config["token"]
        .as_str()
        .unwrap()
        .starts_with(&format!("K10{ca}::server:")));
    assert!(cluster.host("agent-late").root.agent_joined());
    cluster
        .wait_for_lb_servers(&["server-1", "server-2", "server-3"], LB_FOLLOWS)
        .unwrap();

    // A server leaves (its agent is stopped; SIGTERM leaves gossip gracefully): the LB drops it.
    let leaving = ["server-3", "server-2"]
        .into_iter()
        .find(|n| *n != first)
        .unwrap();
    let staying: Vec<&str> = ["server-1", "server-2", "server-3"]
        .into_iter()
        .filter(|n| *n != leaving)
        .collect();
    let stopped = Instant::now();
    cluster.stop(leaving).unwrap();
    cluster.wait_for_lb_servers(&staying, LB_FOLLOWS).unwrap();
    eprintln!(
        "lb dropped {leaving} {} ms after its agent was stopped",
        stopped.elapsed().as_millis()
    );
    assert_eq!(ca_through_lb(ID), ca);

    // A new server boots: it joins (one at a time, through the LB) and the LB lists it only
    // once its API is ready.
    cluster.add_host("server-4", "server").unwrap();
    cluster.start("server-4").unwrap();
    let new_ip: IpAddr = cluster.host("server-4").ip;
    wait_until(FORMATION, Duration::from_millis(20), || {
        if !cluster.lb().upstream_addrs().contains(&new_ip) {
            return false;
        }
        let ready = cluster
            .host("server-4")
            .unit_events("rke2-server.service", "api is ready");
        assert!(
            !ready.is_empty(),
            "the LB listed server-4 before its API was ready"
        );
        true
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", cluster.logs_tail()));
    cluster
        .wait_for_phase(&["server-4"], Phase::Ready, FORMATION)
        .unwrap();
    let mut servers = staying.clone();
    servers.push("server-4");
    cluster.wait_for_lb_servers(&servers, LB_FOLLOWS).unwrap();
    assert_eq!(cluster.role_of("server-4"), Some(Role::Server));
    assert_eq!(
        cluster.host("server-4").root.ca_hash().as_deref(),
        Some(&*ca)
    );
    let config = cluster.host("server-4").root.config_yaml().unwrap();
    assert_eq!(
        config["server"].as_str(),
        Some(format!("https://{}:9345", lb_ip(ID)).as_str())
    );
    // Still one cluster, initialized once.
    assert_eq!(cluster.initializers(), [first.as_str()]);
    assert_eq!(cluster.new_cluster_events(), [(first.clone(), 1)]);
    let lb = cluster.lb.as_mut().unwrap();
    assert!(lb.nginx_running(), "nginx died:\n{}", lb.log_tail());
}
