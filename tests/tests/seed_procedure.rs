//! The manual procedure of the seed document, automated and checked step by step.
//!
//! The seed's table: `ha-lb` (nginx), control planes `ha-m1..3`, workers (`ha-w1`, plus `ha-w2`
//! here). By hand, an operator sets up nginx, writes config.yaml on the first server (token and
//! tls-san), runs the installer and `systemctl enable --now rke2-server`, then does the same on each
//! other server with `server: https://<lb>:9345` (one at a time), then on the workers with
//! `INSTALL_RKE2_TYPE=agent` and `rke2-agent`, and edits nginx.conf for every server. Here the
//! hosts boot in a random order with nobody in the loop, and the test checks that the outcome is
//! the one the procedure prescribes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{layout, lb_ip, test_seed, ClusterSpec, TestCluster};
use rke2_bootstrap_tests::http::{https_get_blocking, Trust};
use rke2_bootstrap_tests::standin::ca_hash;
use serde_yaml_ng::Value;

const FORMATION: Duration = Duration::from_secs(90);
const SERVERS: [&str; 3] = ["ha-m1", "ha-m2", "ha-m3"];
const AGENTS: [&str; 2] = ["ha-w1", "ha-w2"];
const SERVER_UNIT: &str = "rke2-server.service";
const AGENT_UNIT: &str = "rke2-agent.service";

fn seed_table(test_id: u8) -> ClusterSpec {
    ClusterSpec::new(test_id, &layout(&SERVERS, &AGENTS)).with_lb()
}

/// Keys of a config.yaml, sorted.
fn keys(config: &Value) -> Vec<String> {
    let mut keys: Vec<String> = config
        .as_mapping()
        .expect("config.yaml is a mapping")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

fn str_of<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str)
}

fn list_of(config: &Value, key: &str) -> Vec<String> {
    config
        .get(key)
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn seed_procedure_automated_in_random_boot_order() {
    const ID: u8 = blocks::SEED_PROCEDURE.id(0);
    let seed = test_seed("seed_procedure_automated_in_random_boot_order");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster = TestCluster::new(seed_table(ID)).unwrap();
    let lb = lb_ip(ID);

    // Step 1 of the procedure: the LB exists before the cluster.
    cluster.start_lb().unwrap();
    let mut order: Vec<&str> = SERVERS.iter().chain(AGENTS.iter()).copied().collect();
    order.shuffle(&mut rng);
    eprintln!("boot order: {order:?}");
    for name in &order {
        cluster.start(name).unwrap();
        // Hosts power on at random moments, not in lockstep.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
    }

    let all: Vec<&str> = SERVERS.iter().chain(AGENTS.iter()).copied().collect();
    cluster
        .wait_for_phase(&all, Phase::Ready, FORMATION)
        .unwrap();
    cluster
        .wait_for_lb_servers(&SERVERS, Duration::from_secs(20))
        .unwrap();

    // Exactly one first server, a server, agreed on by everyone and by the disks.
    let initializers = cluster.initializers();
    assert_eq!(initializers.len(), 1, "{initializers:?}");
    let first = initializers[0].clone();
    assert!(SERVERS.contains(&first.as_str()), "{first} is not a server");
    assert_eq!(cluster.hosts_that_initialized(), [first.as_str()]);
    for name in SERVERS {
        assert_eq!(cluster.role_of(name), Some(Role::Server), "{name}");
    }
    for name in AGENTS {
        assert_eq!(cluster.role_of(name), Some(Role::Agent), "{name}");
    }
    let first_host = cluster.host(&first);
    let cluster_ca = first_host.root.ca_hash().expect("first server has a CA");
    let secret = first_host
        .root
        .server_token_secret()
        .expect("first server keeps its token");
    for name in SERVERS {
        assert_eq!(
            cluster.host(name).root.ca_hash().as_deref(),
            Some(cluster_ca.as_str()),
            "{name} belongs to another cluster"
        );
    }

    // config.yaml, field by field, as the procedure writes it.
    let lb_url = format!("https://{lb}:9345");
    let full_token = format!("K10{cluster_ca}::server:{secret}");
    for name in &all {
        let host = cluster.host(name);
        let config = host.root.config_yaml().expect("config.yaml written");
        let is_server = SERVERS.contains(name);
        assert_eq!(
            str_of(&config, "node-name"),
            Some(*name),
            "{name}: {config:?}"
        );
        assert_eq!(
            str_of(&config, "node-ip"),
            Some(host.ip.to_string().as_str())
        );
        assert!(config.get("node-taint").is_none(), "{name}: no taint asked");
        if *name == first {
            // The first server: token and tls-san, no `server:`.
            assert_eq!(
                keys(&config),
                ["node-ip", "node-name", "tls-san", "token"],
                "{name}"
            );
            assert_eq!(str_of(&config, "token"), Some(secret.as_str()));
        } else {
            let mut want = vec!["node-ip", "node-name", "server", "token"];
            if is_server {
                want.push("tls-san");
            }
            want.sort();
            assert_eq!(keys(&config), want, "{name}");
            assert_eq!(str_of(&config, "server"), Some(lb_url.as_str()), "{name}");
            // The full token pins the first server's CA.
            assert_eq!(
                str_of(&config, "token"),
                Some(full_token.as_str()),
                "{name}"
            );
        }
        if is_server {
            assert_eq!(list_of(&config, "tls-san"), [lb.to_string()], "{name}");
        }
    }

    // The installer ran once per host, with the type of the host.
    assert_eq!(cluster.installer.served(), all.len());
    for name in &all {
        let records = cluster.host(name).root.install_env_records();
        assert_eq!(records.len(), 1, "{name} ran the installer {records:?}");
        let want = if SERVERS.contains(name) {
            "server"
        } else {
            "agent"
        };
        assert_eq!(
            records[0].get("INSTALL_RKE2_TYPE").map(String::as_str),
            Some(want),
            "{name}"
        );
    }

    // Services: each host started its own unit once, never the other one.
    for name in &all {
        let (unit, other) = if SERVERS.contains(name) {
            (SERVER_UNIT, AGENT_UNIT)
        } else {
            (AGENT_UNIT, SERVER_UNIT)
        };
        let calls = cluster.host(name).service_calls();
        let starts: Vec<_> = calls
            .iter()
            .filter(|(_, a)| a == &format!("enable --now {unit}"))
            .collect();
        assert_eq!(starts.len(), 1, "{name}: {calls:?}");
        assert!(
            calls.iter().all(|(_, a)| !a.contains(other)),
            "{name} touched {other}: {calls:?}"
        );
    }

    // Order: the first server's start comes before anyone else's, and it was ready before any
    // other host started RKE2.
    let first_started = first_host.enabled_at(SERVER_UNIT).unwrap();
    let first_ready = *first_host
        .unit_events(SERVER_UNIT, "api is ready")
        .first()
        .expect("first server logged its api ready");
    for name in all.iter().filter(|n| **n != first) {
        let host = cluster.host(name);
        let unit = if SERVERS.contains(name) {
            SERVER_UNIT
        } else {
            AGENT_UNIT
        };
        let started = host.enabled_at(unit).unwrap();
        assert!(started > first_started, "{name} started before {first}");
        assert!(
            started >= first_ready,
            "{name} started {unit} at {started}, before the first server was ready at {first_ready}"
        );
    }

    // Servers joined one at a time: each server's join (from `enable --now` to its API ready)
    // never overlapped another's.
    let mut joins: Vec<(u64, u64, &str)> = SERVERS
        .iter()
        .map(|name| {
            let host = cluster.host(name);
            let start = host.enabled_at(SERVER_UNIT).unwrap();
            let ready = *host
                .unit_events(SERVER_UNIT, "api is ready")
                .first()
                .unwrap_or_else(|| panic!("{name} never logged api ready"));
            (start, ready, *name)
        })
        .collect();
    joins.sort();
    eprintln!("server joins (start ms, ready ms, host): {joins:?}");
    for pair in joins.windows(2) {
        let (_, ready_a, a) = pair[0];
        let (start_b, _, b) = pair[1];
        assert!(
            start_b >= ready_a,
            "{b} started joining at {start_b} while {a} was still joining (ready at {ready_a})"
        );
    }

    // nginx.conf has the seed's shape: the stream module, and per port one least_conn upstream
    // of every server with max_fails=3 fail_timeout=5s, and a server block listening on the LB.
    let lb_host = cluster.lb();
    let conf = lb_host.nginx_conf();
    assert!(
        conf.lines()
            .any(|l| l.starts_with("load_module ") && l.contains("ngx_stream_module.so")),
        "{conf}"
    );
    assert!(conf.contains("events {"), "{conf}");
    assert!(conf.contains("stream {"), "{conf}");
    assert_eq!(conf.matches("least_conn;").count(), 2, "{conf}");
    for port in [9345, 6443] {
        assert!(
            conf.contains(&format!("listen {lb}:{port};")),
            "no listen on {port}: {conf}"
        );
        for name in SERVERS {
            let ip = cluster.host(name).ip;
            assert!(
                conf.contains(&format!("server {ip}:{port} max_fails=3 fail_timeout=5s;")),
                "{name} missing on {port}: {conf}"
            );
        }
        for name in AGENTS {
            let ip = cluster.host(name).ip;
            assert!(
                !conf.contains(&format!("{ip}:{port}")),
                "agent {name} routed: {conf}"
            );
        }
    }
    let servers: Vec<IpAddr> = SERVERS.iter().map(|n| cluster.host(n).ip).collect();
    let mut servers_sorted = servers.clone();
    servers_sorted.sort();
    assert_eq!(lb_host.upstream_addrs(), servers_sorted);
    // And nginx really routes: the registration address serves the cluster's CA.
    let cacerts = https_get_blocking(
        SocketAddr::new(lb, 9345),
        "/cacerts",
        &[],
        &Trust::Any,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(cacerts.status, 200);
    assert_eq!(ca_hash(&cacerts.body), cluster_ca);
}

/// `control-plane-taint: true` on every host (one image for all): the servers get the seed's
/// dedicated-control-plane taint, the workers do not.
#[test]
fn dedicated_control_plane_taints_servers_only() {
    const ID: u8 = blocks::SEED_PROCEDURE.id(1);
    let spec = ClusterSpec::new(
        ID,
        &[
            ("cp-1", "server"),
            ("cp-2", "server"),
            ("cp-3", "server"),
            ("worker-1", "agent"),
        ],
    );
    let mut cluster = TestCluster::new(spec).unwrap();
    let names = ["cp-1", "cp-2", "cp-3", "worker-1"];
    for name in names {
        cluster
            .host_mut(name)
            .extra
            .push(("control-plane-taint".into(), "true".into()));
    }
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&names, Phase::Ready, FORMATION)
        .unwrap();
    for name in names {
        let config = cluster.host(name).root.config_yaml().unwrap();
        let taints = list_of(&config, "node-taint");
        if name.starts_with("cp-") {
            assert_eq!(taints, ["CriticalAddonsOnly=true:NoExecute"], "{name}");
        } else {
            assert!(config.get("node-taint").is_none(), "{name}: {config:?}");
        }
    }
    assert_eq!(cluster.initializers().len(), 1);
}
