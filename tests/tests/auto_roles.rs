//! One image for every host: with `role: auto` the hosts split themselves into the target number
//! of servers and workers, and still elect exactly one first server.

use std::time::Duration;

use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};

#[test]
fn five_auto_hosts_become_three_servers_and_two_agents() {
    let names = ["node-1", "node-2", "node-3", "node-4", "node-5"];
    let hosts: Vec<(&str, &'static str)> = names.iter().map(|n| (*n, "auto")).collect();
    let mut spec = ClusterSpec::new(blocks::AUTO_ROLES.id(0), &hosts);
    spec.servers = 3;
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&names, Phase::Ready, Duration::from_secs(90))
        .unwrap();

    let roles: Vec<(&str, Role)> = names
        .iter()
        .map(|n| (*n, cluster.role_of(n).unwrap()))
        .collect();
    let servers: Vec<&str> = roles
        .iter()
        .filter(|(_, r)| *r == Role::Server)
        .map(|(n, _)| *n)
        .collect();
    let agents: Vec<&str> = roles
        .iter()
        .filter(|(_, r)| *r == Role::Agent)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(servers.len(), 3, "{roles:?}");
    assert_eq!(agents.len(), 2, "{roles:?}");

    let initializers = cluster.initializers();
    assert_eq!(initializers.len(), 1, "{initializers:?}");
    assert!(servers.contains(&initializers[0].as_str()));
    assert_eq!(cluster.hosts_that_initialized(), initializers);
    assert_eq!(cluster.new_cluster_events(), [(initializers[0].clone(), 1)]);

    // Each host installed and started what its role says, and persisted the role it chose.
    for (name, role) in &roles {
        let host = cluster.host(name);
        let (kind, unit) = match role {
            Role::Server => ("server", "rke2-server.service"),
            _ => ("agent", "rke2-agent.service"),
        };
        let records = host.root.install_env_records();
        assert_eq!(records.len(), 1, "{name}");
        assert_eq!(records[0]["INSTALL_RKE2_TYPE"], kind, "{name}");
        assert!(
            host.enabled_at(unit).is_some(),
            "{name} never started {unit}"
        );
        let state = host.persisted_state().unwrap();
        let plan = match kind {
            _ if *name == initializers[0] => "initialize",
            "server" => "join-as-server",
            _ => "join-as-agent",
        };
        assert_eq!(state["progress"]["plan"], plan, "{name}: {state}");
        let config = host.root.config_yaml().unwrap();
        assert_eq!(
            config.get("server").is_none(),
            *name == initializers[0],
            "{name}: {config:?}"
        );
    }
    // One cluster: every server holds the same CA, every agent joined it.
    let ca = cluster.host(&initializers[0]).root.ca_hash().unwrap();
    for name in &servers {
        assert_eq!(cluster.host(name).root.ca_hash().as_deref(), Some(&*ca));
    }
    for name in &agents {
        assert!(cluster.host(name).root.agent_joined(), "{name}");
    }
    cluster
        .wait_for_one_etcd_cluster(&servers, Duration::from_secs(10))
        .unwrap();
}
