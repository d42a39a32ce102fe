//! The shipped cloud-init recipes, used as shipped apart from addresses, form one cluster on
//! fleets of 3, 10 and 50 hosts.
//!
//! Each test reads the agent config that `packaging/cloud-init/<recipe>.yaml` writes (its
//! `write_files` entry for `/etc/rke2-bootstrap/config.yaml`), changes only what one machine
//! cannot share between simulated hosts, and installs it, with the gossip key, at the recipe's
//! paths under every host's root:
//! - `bind-addr`: the recipe's port on the host's own loopback address (every simulated host
//!   binds the same port, so `0.0.0.0` cannot be shared);
//! - `seeds`: the `k`-th seed becomes the `k`-th host's address, the recipe's port kept; the
//!   electorate stays the recipe's default (the seed addresses);
//! - `registration-address` and `registration-ip`: the LB host's loopback address (a real
//!   sidecar and nginx, as `lb-nginx.yaml` sets up);
//! - the gossip key file's content: the key the harness generated (the recipe ships a
//!   placeholder the agent refuses).
//!
//! The agent then runs as the packaged unit runs it (`agent --config <the file>`), with flags only
//! for what a real host has of its own or the harness must serve: its node name (a real host's
//! hostname), its root, the installer URL and the stand-in service manager. Everything else,
//! `cluster-name`, `role`, `servers`, `existing-config-policy`, `rke2-config` and every default,
//! is the recipe's. An agent that exits on an error is started again, as the packaged unit's
//! `Restart=on-failure` does; the test prints which were.
//!
//! Every fleet boots at once and must end as one cluster: exactly one initializer (on disk, in
//! gossip and in the RKE2 stand-ins' logs), on a seed; the recipe's number of servers (`servers`
//! for `role: auto`, every host for `role: server`), every other host joined as an agent, through
//! the LB; one etcd cluster whose members are exactly the servers.
//!
//! The fleets run one at a time (a lock): on a small machine two fleets at once would measure
//! the machine, not the recipes. Measured on a shared, loaded two-core machine: `auto.yaml` on 3
//! hosts 11 s, on 10 hosts 32 s; `server.yaml` on 3 hosts 11 s, on 10 hosts 79 s. `auto.yaml` on
//! 50 hosts: 45.5 s on the idle machine, once `auto` hosts stopped settling one at a time after
//! every server place was taken (before that fix: not ready within 600 s). It is `#[ignore]`d in
//! the suite, where it would share two cores with every other test, and run on its own by CI
//! (`.ci/run`). `server.yaml` on 50 hosts makes a 50-member etcd (the recipe is for the control
//! plane: 3, 5 or 7 hosts); it did not form within 15 minutes on two cores (one run) and stays
//! ignored. Run either with
//! `cargo test -p rke2-bootstrap-tests --test fleet_recipes -- --ignored --nocapture --test-threads 1`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{lb_ip, ClusterSpec, TestCluster};
use serde_yaml_ng::{Mapping, Value};

const CONFIG_PATH: &str = "/etc/rke2-bootstrap/config.yaml";
const KEY_PATH: &str = "/etc/rke2-bootstrap/gossip.key";

/// One fleet at a time.
static FLEET: Mutex<()> = Mutex::new(());

/// The files a recipe writes: path -> (content, permissions).
fn recipe_files(recipe: &str) -> BTreeMap<String, (String, u32)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/cloud-init")
        .join(recipe);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    doc["write_files"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{recipe} has no write_files"))
        .iter()
        .map(|f| {
            let path = f["path"].as_str().expect("write_files path").to_string();
            let content = f["content"]
                .as_str()
                .expect("write_files content")
                .to_string();
            let mode = f["permissions"].as_str().map_or(0o644, |m| {
                u32::from_str_radix(m, 8).expect("octal permissions")
            });
            (path, (content, mode))
        })
        .collect()
}

/// The agent config a recipe writes, as a YAML mapping.
fn recipe_config(recipe: &str) -> Mapping {
    let files = recipe_files(recipe);
    let (content, _) = files
        .get(CONFIG_PATH)
        .unwrap_or_else(|| panic!("{recipe} writes no {CONFIG_PATH}"));
    serde_yaml_ng::from_str(content).unwrap_or_else(|e| panic!("{recipe}'s agent config: {e}"))
}

fn key<'a>(config: &'a Mapping, name: &str) -> &'a Value {
    config
        .get(name)
        .unwrap_or_else(|| panic!("the recipe's config has no {name}"))
}

fn socket_addr(v: &Value) -> SocketAddr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a literal ip:port: {v:?}"))
}

/// The recipe's agent config with only the addresses changed for host `me` of `hosts`.
fn localized(recipe: &Mapping, me: IpAddr, hosts: &[IpAddr], lb: IpAddr) -> Mapping {
    let mut config = recipe.clone();
    let bind = socket_addr(key(recipe, "bind-addr"));
    assert!(
        bind.ip().is_unspecified(),
        "the recipe binds {bind}: the test expects one user-data for every host"
    );
    config.insert(
        "bind-addr".into(),
        SocketAddr::new(me, bind.port()).to_string().into(),
    );
    let seeds: Vec<Value> = key(recipe, "seeds")
        .as_sequence()
        .expect("seeds is a list")
        .iter()
        .enumerate()
        .map(|(k, seed)| {
            SocketAddr::new(hosts[k], socket_addr(seed).port())
                .to_string()
                .into()
        })
        .collect();
    config.insert("seeds".into(), Value::Sequence(seeds));
    for name in ["registration-address", "registration-ip"] {
        key(recipe, name);
        config.insert(name.into(), lb.to_string().into());
    }
    config
}

fn write(path: &Path, content: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    rke2_bootstrap::fsutil::write_file_atomic(path, content.as_bytes(), mode).unwrap();
}

/// Boots `count` hosts with `recipe` and checks they form one cluster.
fn fleet(test_id: u8, recipe: &str, count: usize, timeout: Duration) {
    let _one_at_a_time = FLEET.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let config = recipe_config(recipe);
    let files = recipe_files(recipe);
    let (_, key_mode) = files
        .get(KEY_PATH)
        .unwrap_or_else(|| panic!("{recipe} writes no {KEY_PATH}"));
    let role = match key(&config, "role").as_str() {
        Some("auto") => "auto",
        Some("server") => "server",
        other => panic!("{recipe}: unexpected role {other:?}"),
    };
    let servers = match role {
        "auto" => key(&config, "servers").as_u64().expect("servers") as usize,
        _ => count,
    };
    let seats = key(&config, "seeds").as_sequence().unwrap().len();
    assert!(count >= seats, "a fleet holds at least the seeds");

    let names: Vec<String> = (1..=count).map(|i| format!("h{i:02}")).collect();
    let layout: Vec<(&str, &'static str)> = names.iter().map(|n| (n.as_str(), role)).collect();
    let mut spec = ClusterSpec::new(test_id, &layout).with_lb();
    spec.cluster_name = Some(
        key(&config, "cluster-name")
            .as_str()
            .expect("cluster-name")
            .to_string(),
    );
    let mut cluster = TestCluster::new(spec).unwrap();
    let ips: Vec<IpAddr> = cluster.hosts.iter().map(|h| h.ip).collect();
    let lb = lb_ip(test_id);
    let gossip_key = std::fs::read_to_string(&cluster.key_file).unwrap();
    for i in 0..count {
        let host = &cluster.hosts[i];
        let local = localized(&config, host.ip, &ips, lb);
        let config_file: PathBuf = host.root.join(CONFIG_PATH);
        write(
            &config_file,
            &serde_yaml_ng::to_string(&local).unwrap(),
            files[CONFIG_PATH].1,
        );
        write(&host.root.join(KEY_PATH), &gossip_key, *key_mode);
        cluster.hosts[i].config_file = Some(config_file);
    }
    cluster.start_lb().unwrap();
    cluster.start_all().unwrap();

    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    // The packaged unit restarts an agent that exits on an error (`Restart=on-failure`,
    // `RestartSec=10s`): so does this loop, and it reports how often it had to.
    let deadline = Instant::now() + timeout;
    let mut restarted = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match cluster.wait_for_phase(&all, Phase::Ready, left.min(Duration::from_secs(10))) {
            Ok(()) => break,
            Err(e) if left.is_zero() => panic!("{e:#}{}", cluster.logs_tail()),
            Err(_) => {}
        }
        for name in &all {
            if cluster.host(name).agent_exited() {
                restarted.push(name.to_string());
                cluster.start(name).unwrap();
            }
        }
    }
    let formed = started.elapsed();

    // Exactly one initializer, the same on disk, in gossip and in the stand-ins' logs, on a seat.
    let initialized = cluster.the_only_initialization();
    assert_eq!(cluster.initializers(), std::slice::from_ref(&initialized));
    assert!(
        names[..seats].contains(&initialized),
        "{initialized} is not on a seed"
    );

    // The recipe's number of servers; every other host an agent; all joined through the LB.
    let roles: Vec<(&str, Option<Role>)> = all.iter().map(|n| (*n, cluster.role_of(n))).collect();
    let with = |r: Role| -> Vec<&str> {
        roles
            .iter()
            .filter(|(_, x)| *x == Some(r))
            .map(|(n, _)| *n)
            .collect()
    };
    let (server_hosts, agent_hosts) = (with(Role::Server), with(Role::Agent));
    assert_eq!(server_hosts.len(), servers, "{roles:?}");
    assert_eq!(agent_hosts.len(), count - servers, "{roles:?}");
    let join_url = format!("https://{lb}:9345");
    for host in cluster.hosts.iter().filter(|h| h.name != initialized) {
        let rke2 = host.root.config_yaml().expect("RKE2 config.yaml written");
        assert_eq!(
            rke2["server"].as_str(),
            Some(join_url.as_str()),
            "{} does not join through the LB",
            host.name
        );
    }
    for agent in &agent_hosts {
        assert!(
            !cluster.host(agent).root.etcd_dir_exists(),
            "agent {agent} has an etcd dir"
        );
    }

    // One etcd cluster, whose members are exactly the servers.
    cluster
        .wait_for_one_etcd_cluster(&server_hosts, Duration::from_secs(60))
        .unwrap();
    eprintln!(
        "{recipe} on {count} hosts: one cluster, {} servers and {} agents, ready after {:.1?} \
         ({:.1?} with the checks); agents restarted after exiting on an error: {restarted:?}",
        server_hosts.len(),
        agent_hosts.len(),
        formed,
        started.elapsed()
    );
}

#[test]
fn auto_recipe_on_3_hosts() {
    fleet(
        blocks::FLEET_RECIPES.id(0),
        "auto.yaml",
        3,
        Duration::from_secs(120),
    );
}

#[test]
fn auto_recipe_on_10_hosts() {
    fleet(
        blocks::FLEET_RECIPES.id(1),
        "auto.yaml",
        10,
        Duration::from_secs(180),
    );
}

#[test]
#[ignore = "run on its own by CI: fifty hosts on two cores shared with the suite (see the module doc)"]
fn auto_recipe_on_50_hosts() {
    fleet(
        blocks::FLEET_RECIPES.id(2),
        "auto.yaml",
        50,
        Duration::from_secs(600),
    );
}

#[test]
fn server_recipe_on_3_hosts() {
    fleet(
        blocks::FLEET_RECIPES.id(3),
        "server.yaml",
        3,
        Duration::from_secs(120),
    );
}

#[test]
fn server_recipe_on_10_hosts() {
    fleet(
        blocks::FLEET_RECIPES.id(4),
        "server.yaml",
        10,
        Duration::from_secs(240),
    );
}

#[test]
#[ignore = "a 50-member etcd: not formed within 15 minutes on two cores (see the module doc)"]
fn server_recipe_on_50_hosts() {
    fleet(
        blocks::FLEET_RECIPES.id(5),
        "server.yaml",
        50,
        Duration::from_secs(900),
    );
}
