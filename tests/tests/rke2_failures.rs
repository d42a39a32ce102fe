//! Scenarios that only an RKE2 stand-in failing like RKE2 can show: certificate renewal under the
//! authenticated `/readyz`, and (with the real etcd behind the stand-in's servers) the paths
//! real clusters take.

use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::Phase;
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};
use rke2_bootstrap_tests::wait_until;

const FORMATION: Duration = Duration::from_secs(90);
const SERVERS: [&str; 3] = ["server-1", "server-2", "server-3"];

/// A cluster of the three `SERVERS`, all `role: server`.
fn three_servers(test_id: u8) -> ClusterSpec {
    ClusterSpec::new(test_id, &SERVERS.map(|name| (name, "server")))
}

/// RKE2 renews the kubelet client certificate the API probe presents; the old one expires. Here
/// each certificate lives 6 s and is renewed every 2 s: a probe that kept the identity it loaded
/// first would be refused from the first expiry on, and the servers would drop out of ready.
#[test]
fn probes_keep_passing_across_kubelet_certificate_renewals() {
    const TTL_MS: u64 = 6000;
    let spec = three_servers(blocks::RKE2_FAILURES.id(0));
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

/// A worker reinstalled under its old name: its RKE2 data and its node password are gone, so the
/// cluster refuses its new password ("Node password rejected", as RKE2 says). A ready server's
/// agent sees it stuck joining and removes the stale password entry; the worker then joins.
#[test]
fn wiped_agent_rejoins_under_its_name() {
    let spec = ClusterSpec::new(
        blocks::RKE2_FAILURES.id(1),
        &[("server-1", "server"), ("agent-1", "agent")],
    );
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_all().unwrap();
    let all = ["server-1", "agent-1"];
    cluster
        .wait_for_phase(&all, Phase::Ready, FORMATION)
        .unwrap();

    cluster.power_off("agent-1").unwrap();
    let root = cluster.host("agent-1").root.path().to_path_buf();
    for dir in ["var/lib/rancher/rke2", "etc/rancher/node"] {
        std::fs::remove_dir_all(root.join(dir)).unwrap();
    }
    cluster.start("agent-1").unwrap();
    cluster
        .wait_for_phase(&all, Phase::Ready, FORMATION)
        .unwrap();

    let unit_log = cluster.host("agent-1").root.unit_log("rke2-agent.service");
    assert!(
        unit_log.to_lowercase().contains("node password rejected"),
        "the reinstalled worker was never refused:\n{unit_log}"
    );
    assert!(cluster.host("agent-1").root.agent_joined());
    let server_log = cluster.host("server-1").log();
    assert!(
        server_log.contains("removed the node password entry")
            && server_log.contains("node=agent-1"),
        "{server_log}"
    );
}

/// The pid of the etcd a host's stand-in runs (its command line names the host's data dir).
fn etcd_pid(root: &std::path::Path) -> i32 {
    let data_dir = format!(
        "--data-dir={}",
        root.join("var/lib/rancher/rke2/server/db/etcd").display()
    );
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|raw| raw.split(|b| *b == 0).any(|arg| arg == data_dir.as_bytes()))
        })
        .expect("the host's etcd runs")
}

/// A server whose etcd stalls (SIGSTOP) fails /readyz while the other two keep quorum: the LB
/// stops listing it and lists it again once it resumes. Then two of three servers lose power:
/// the survivor's etcd has no quorum, so its /readyz fails too, but the LB never empties its
/// list, and the survivor's agent removes no member without quorum. When the two come back,
/// quorum returns, and with it every server.
#[test]
fn cluster_without_quorum_leaves_the_lb_list_and_comes_back() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let spec = three_servers(blocks::RKE2_FAILURES.id(2)).with_lb();
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_lb().unwrap();
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&SERVERS, Phase::Ready, FORMATION)
        .unwrap();
    cluster
        .wait_for_lb_servers(&SERVERS, Duration::from_secs(30))
        .unwrap();

    let stalled = Pid::from_raw(etcd_pid(cluster.host("server-3").root.path()));
    kill(stalled, Signal::SIGSTOP).unwrap();
    let result = cluster.wait_for_lb_servers(&["server-1", "server-2"], Duration::from_secs(30));
    kill(stalled, Signal::SIGCONT).unwrap();
    result.unwrap();
    cluster
        .wait_for_lb_servers(&SERVERS, Duration::from_secs(30))
        .unwrap();

    let survivor = "server-1";
    for name in ["server-2", "server-3"] {
        cluster.power_off(name).unwrap();
    }
    // The survivor's RKE2 reports not ready (no quorum) and its agent says so; the LB keeps a
    // non-empty list throughout.
    let started = Instant::now();
    wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let listed = cluster.lb().upstream_addrs();
        assert!(!listed.is_empty(), "the LB emptied its list");
        let me = cluster.members_seen_by(survivor);
        !me.iter().any(|m| m.name == survivor && m.ready)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail()));
    eprintln!(
        "the survivor reported not ready {} ms after the power cut",
        started.elapsed().as_millis()
    );
    let unit_log = cluster.host(survivor).root.unit_log("rke2-server.service");
    assert!(unit_log.contains("no quorum"), "{unit_log}");
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(3) {
        assert!(
            !cluster.lb().upstream_addrs().is_empty(),
            "the LB emptied its list"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    for name in ["server-2", "server-3"] {
        cluster.start(name).unwrap();
    }
    cluster
        .wait_for_phase(&SERVERS, Phase::Ready, FORMATION)
        .unwrap();
    cluster
        .wait_for_lb_servers(&SERVERS, Duration::from_secs(60))
        .unwrap();
    cluster
        .wait_for_one_etcd_cluster(&SERVERS, Duration::from_secs(20))
        .unwrap();
    assert!(
        !cluster
            .host(survivor)
            .log()
            .contains("removed a stale etcd member"),
        "a member was removed without quorum"
    );
}

/// `fake-systemctl` for `host` with `args`, as an agent would call it (the stand-in built for
/// this run).
fn systemctl(host: &rke2_bootstrap_tests::HostRoot, args: &[&str]) -> std::process::Output {
    let argv =
        host.service_manager_command(std::path::Path::new(env!("CARGO_BIN_EXE_rke2-standin")));
    std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .args(args)
        .env_remove("STANDIN_API_ANONYMOUS")
        .output()
        .unwrap()
}

/// A server host with RKE2 (the stand-in) installed and its config.yaml written.
fn server_host(
    name: &str,
    ip: std::net::IpAddr,
    server: Option<std::net::IpAddr>,
) -> rke2_bootstrap_tests::HostRoot {
    let host = rke2_bootstrap_tests::HostRoot::new(name).unwrap();
    let out = std::process::Command::new("sh")
        .arg(rke2_bootstrap_tests::fixture_path("install.sh"))
        .env("INSTALL_RKE2_TAR_PREFIX", host.tar_prefix())
        .env("INSTALL_RKE2_TYPE", "server")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut yaml = format!("token: \"s3cret\"\nnode-ip: \"{ip}\"\nnode-name: \"{name}\"\n");
    if let Some(server) = server {
        yaml.push_str(&format!("server: \"https://{server}:9345\"\n"));
    }
    host.write_config_yaml(&yaml).unwrap();
    host
}

/// Two servers that join at the same instant, without the agent's join turns: etcd takes one
/// learner at a time ("too many learner members in cluster"); the refused one exits, its unit
/// restarts it, and both end as voting members of the one cluster.
#[test]
fn simultaneous_joiners_take_one_learner_at_a_time() {
    use rke2_bootstrap_tests::standin::etcd;
    let first_ip = blocks::RKE2_FAILURES.ip(3, 11);
    let first = server_host("server-1", first_ip, None);
    let out = systemctl(&first, &["start", "rke2-server.service"]);
    assert!(
        out.status.success(),
        "{out:?}\n{}",
        first.unit_log("rke2-server.service")
    );
    let joiners: Vec<_> = [("server-2", 12), ("server-3", 13)]
        .into_iter()
        .map(|(name, host)| server_host(name, blocks::RKE2_FAILURES.ip(3, host), Some(first_ip)))
        .collect();
    let starts: Vec<_> = joiners
        .iter()
        .map(|j| {
            let argv =
                j.service_manager_command(std::path::Path::new(env!("CARGO_BIN_EXE_rke2-standin")));
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .args(["--no-block", "start", "rke2-server.service"])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut start in starts {
        assert!(start.wait().unwrap().success());
    }
    for joiner in &joiners {
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            systemctl(joiner, &["is-active", "rke2-server.service"])
                .status
                .success()
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", joiner.unit_log("rke2-server.service")));
    }
    let client = etcd::Client::for_host(
        std::net::SocketAddr::new(first_ip, etcd::CLIENT_PORT),
        &first.rke2(),
    )
    .unwrap();
    let list = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        client
            .member_list()
            .ok()
            .filter(|l| l.members.len() == 3 && l.members.iter().all(|m| !m.is_learner))
    })
    .unwrap();
    let mut names: Vec<&str> = list
        .members
        .iter()
        .map(|m| etcd::member_node_name(&m.name))
        .collect();
    names.sort();
    assert_eq!(names, ["server-1", "server-2", "server-3"]);
    let refusals: Vec<String> = joiners
        .iter()
        .flat_map(|j| {
            j.unit_log("rke2-server.service")
                .lines()
                .filter(|l| l.contains("fatal"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    eprintln!("refused joins, each retried by a unit restart: {refusals:#?}");
    // Whatever was refused was refused by etcd's own rules, never for a name or a password.
    for line in &refusals {
        assert!(
            line.contains("too many learner members in cluster")
                || line.contains("unhealthy cluster"),
            "{line}"
        );
    }
}

/// The units as systemd runs them: `activating` until the service reports ready, and
/// `ExecCondition=` keeping rke2-agent from starting while rke2-server runs (skipped, not
/// failed: a silent no-op, which is why the agent must not trust the exit code alone).
#[test]
fn units_are_activating_until_ready_and_never_run_together() {
    let ip = blocks::RKE2_FAILURES.ip(4, 11);
    let host = server_host("server-1", ip, None);
    host.set_unit_env("rke2-server", &[("STANDIN_API_DELAY_MS", "3000")])
        .unwrap();
    assert!(
        systemctl(&host, &["--no-block", "start", "rke2-server.service"])
            .status
            .success()
    );
    let activating = systemctl(&host, &["is-active", "rke2-server.service"]);
    assert_eq!(activating.status.code(), Some(3), "{activating:?}");
    assert_eq!(
        String::from_utf8_lossy(&activating.stdout).trim(),
        "activating"
    );
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        systemctl(&host, &["is-active", "rke2-server.service"])
            .status
            .success()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.unit_log("rke2-server.service")));

    let agent = systemctl(&host, &["start", "rke2-agent.service"]);
    assert!(agent.status.success(), "{agent:?}");
    let inactive = systemctl(&host, &["is-active", "rke2-agent.service"]);
    assert_eq!(String::from_utf8_lossy(&inactive.stdout).trim(), "inactive");
    let log = std::fs::read_to_string(host.join("/var/log/systemctl.log")).unwrap();
    assert!(log.contains("ExecCondition failed"), "{log}");
}

/// On hosts with yum the installer uses the rpm method, whose packages ship one unit each. An
/// `auto` host that installed the server package while preparing its first-server candidacy,
/// then lost (here: powered off before anyone acknowledged its claim, its peers frozen meanwhile),
/// comes back to a cluster that has its one server: it settles as an agent, runs the installer
/// again for the agent type, and ends with rke2-agent active.
#[test]
fn an_auto_host_that_prepared_with_rpm_settles_as_an_agent_with_rke2_agent() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let names = ["auto-1", "auto-2", "auto-3"];
    let mut spec = ClusterSpec::new(blocks::RKE2_FAILURES.id(5), &names.map(|n| (n, "auto")));
    spec.servers = 1;
    let mut cluster = TestCluster::new(spec).unwrap();
    for name in names {
        let host = cluster.host_mut(name);
        // The installer's default method where yum exists.
        host.env.push(("STANDIN_HAS_YUM".into(), "1".into()));
        host.extra.push(("election-lease".into(), "3s".into()));
    }
    let candidate = cluster.start_with_a_slow_installer(2, Duration::from_secs(60));
    let others: Vec<&str> = names.iter().copied().filter(|n| *n != candidate).collect();
    let pids: Vec<Pid> = others
        .iter()
        .map(|n| Pid::from_raw(cluster.agent_pid(n).unwrap() as i32))
        .collect();
    for pid in &pids {
        kill(*pid, Signal::SIGSTOP).unwrap();
    }
    let prepared = wait_until(Duration::from_secs(30), Duration::from_millis(10), || {
        cluster
            .host(&candidate)
            .persisted_state()
            .is_some_and(|s| s["installed_type"] == "server")
            .then_some(())
    });
    if prepared.is_ok() {
        cluster.power_off(&candidate).unwrap();
    }
    for pid in &pids {
        kill(*pid, Signal::SIGCONT).unwrap();
    }
    prepared.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail()));
    let root = cluster.host(&candidate).root.path().to_path_buf();
    assert!(root
        .join("usr/lib/systemd/system/rke2-server.service")
        .exists());
    assert!(!root
        .join("usr/lib/systemd/system/rke2-agent.service")
        .exists());

    cluster
        .wait_for_phase(&others, Phase::Ready, FORMATION)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail()));
    cluster.start(&candidate).unwrap();
    cluster
        .wait_for_phase(&names, Phase::Ready, FORMATION)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail()));

    let host = &cluster.host(&candidate).root;
    assert_eq!(
        cluster.role_of(&candidate),
        Some(rke2_bootstrap::gossip::schema::Role::Agent)
    );
    let active = systemctl(host, &["is-active", "rke2-agent.service"]);
    assert_eq!(
        String::from_utf8_lossy(&active.stdout).trim(),
        "active",
        "{active:?}\n{}",
        cluster.host(&candidate).log()
    );
    // Two installer runs, with the installer's own default method: the server package, then
    // the agent package.
    let types: Vec<String> = host
        .install_env_records()
        .iter()
        .map(|r| {
            assert!(!r.contains_key("INSTALL_RKE2_METHOD"), "{r:?}");
            r.get("INSTALL_RKE2_TYPE").cloned().unwrap_or_default()
        })
        .collect();
    assert_eq!(types, ["server", "agent"]);
    let packages = std::fs::read_to_string(root.join("var/lib/rpm/standin-packages")).unwrap();
    assert!(packages.lines().any(|p| p == "rke2-agent"), "{packages}");
    assert!(
        !root.join("usr/local/bin/rke2").exists(),
        "not the tar method"
    );
    assert_eq!(
        cluster.host(&candidate).persisted_state().unwrap()["installed_type"],
        "agent"
    );
}

/// Without an address it can tell, the agent refuses to start and names the key, rather than
/// give RKE2 127.0.0.1: a seed that resolves to loopback through a name (as a hostname mapped to
/// 127.0.1.1 in /etc/hosts does) is not a choice; neither is having no seed at all. A loopback
/// node-ip that is given is used, and said loudly.
#[test]
fn node_ip_is_never_a_silent_loopback() {
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("gossip.key");
    let keygen = std::process::Command::new(rke2_bootstrap_tests::workspace_bin("rke2-bootstrap"))
        .arg("keygen")
        .output()
        .unwrap();
    std::fs::write(&key, &keygen.stdout).unwrap();
    let refused = |extra: &[&str]| {
        let out = std::process::Command::new(rke2_bootstrap_tests::workspace_bin("rke2-bootstrap"))
            .args(["agent", "--role", "agent", "--node-name", "worker-1"])
            .arg("--root")
            .arg(root.path())
            .arg("--gossip-key-file")
            .arg(&key)
            .args(extra)
            .env("RKE2_BOOTSTRAP_LOG", "info")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} started: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let by_name = refused(&["--seeds", "localhost:7947"]);
    assert!(
        by_name.contains("`node-ip`") && by_name.contains("loopback"),
        "{by_name}"
    );
    let alone = refused(&[]);
    assert!(
        alone.contains("`node-ip`") && alone.contains("node-interface"),
        "{alone}"
    );
    assert!(!root.path().join("etc/rancher/rke2/config.yaml").exists());

    // Given explicitly (as every loopback test gives its bind address): used, and said.
    let spec = ClusterSpec::new(blocks::RKE2_FAILURES.id(6), &[("server-1", "server")]);
    let mut cluster = TestCluster::new(spec).unwrap();
    let ip = cluster.host("server-1").ip.to_string();
    cluster
        .host_mut("server-1")
        .extra
        .push(("node-ip".into(), ip.clone()));
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&["server-1"], Phase::Ready, FORMATION)
        .unwrap();
    let config = cluster.host("server-1").root.config_yaml().unwrap();
    assert_eq!(config["node-ip"].as_str(), Some(ip.as_str()), "{config:?}");
    let log = cluster.host("server-1").log();
    assert!(
        log.contains("rke2 node-ip is a loopback address") && log.contains("from=node-ip"),
        "{log}"
    );
}

/// The rejoin sweep reaches etcd as RKE2's own tools do: over TLS with the etcd client
/// certificate (the stand-in's etcd, like RKE2's, refuses plain HTTP and clients without a
/// certificate of its CA). A server wiped and reinstalled under its name is refused while its
/// old member and password exist; a live server's agent removes both over TLS, and it rejoins.
#[test]
fn the_sweep_over_tls_lets_a_wiped_server_rejoin() {
    let spec = three_servers(blocks::RKE2_FAILURES.id(7));
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&SERVERS, Phase::Ready, FORMATION)
        .unwrap();
    let etcd_addr = std::net::SocketAddr::new(
        cluster.host(SERVERS[0]).ip,
        rke2_bootstrap_tests::standin::etcd::CLIENT_PORT,
    );
    assert_tls_only(etcd_addr);

    let wiped = SERVERS[2];
    cluster.power_off(wiped).unwrap();
    let root = cluster.host(wiped).root.path().to_path_buf();
    for dir in ["var/lib/rancher/rke2", "etc/rancher/node"] {
        std::fs::remove_dir_all(root.join(dir)).unwrap();
    }
    cluster.start(wiped).unwrap();
    cluster
        .wait_for_phase(&SERVERS, Phase::Ready, FORMATION)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail()));
    cluster
        .wait_for_one_etcd_cluster(&SERVERS, Duration::from_secs(30))
        .unwrap();
    let unit_log = cluster.host(wiped).root.unit_log("rke2-server.service");
    // Refused for its old password, its old name, or (while its old member is a voter that does
    // not answer) by etcd itself: whichever the cluster checked first.
    assert!(
        unit_log.to_lowercase().contains("node password rejected")
            || unit_log.contains("duplicate node name")
            || unit_log.contains("unhealthy cluster"),
        "the wiped server was never refused:\n{unit_log}"
    );
    let removed = SERVERS[..2].iter().any(|s| {
        let log = cluster.host(s).log();
        log.contains("removed a stale etcd member") && log.contains(&format!("node={wiped}"))
    });
    assert!(removed, "{}", cluster.logs_tail());
}

/// etcd at `addr` answers neither plain HTTP nor a TLS client without a certificate.
fn assert_tls_only(addr: std::net::SocketAddr) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    tcp.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains("\"health\""),
        "plain http answered: {answer}"
    );
    let anonymous = rke2_bootstrap_tests::http::https_get_blocking(
        addr,
        "/health",
        &[],
        &rke2_bootstrap_tests::http::Trust::Any,
        Duration::from_secs(3),
    );
    assert!(
        anonymous.is_err() || anonymous.as_ref().is_ok_and(|r| r.status != 200),
        "a client without a certificate was answered: {anonymous:?}"
    );
}

/// A server that is merely rebooting keeps its etcd member: down longer than the sweep's former
/// fixed 30 s grace, it comes back to the member it had (same member ID, its data reused), and
/// no live server removed anything. The grace is the production default here (15 minutes).
#[test]
fn a_rebooting_server_keeps_its_etcd_member() {
    let spec = three_servers(blocks::RKE2_FAILURES.id(8));
    let mut cluster = TestCluster::new(spec).unwrap();
    for name in SERVERS {
        cluster
            .host_mut(name)
            .extra
            .push(("departed-server-grace-period".into(), "15m".into()));
    }
    cluster.start_all().unwrap();
    cluster
        .wait_for_phase(&SERVERS, Phase::Ready, FORMATION)
        .unwrap();
    cluster
        .wait_for_one_etcd_cluster(&SERVERS, Duration::from_secs(20))
        .unwrap();
    let rebooting = SERVERS[2];
    let member_of = |cluster: &TestCluster| {
        let (_, list) = cluster.etcd_views(&[SERVERS[0]]).unwrap().remove(0);
        list.members
            .into_iter()
            .find(|m| rke2_bootstrap_tests::standin::etcd::member_node_name(&m.name) == rebooting)
            .map(|m| m.id)
    };
    let before = member_of(&cluster).expect("the server has a member");

    cluster.power_off(rebooting).unwrap();
    std::thread::sleep(Duration::from_secs(35));
    assert_eq!(member_of(&cluster), Some(before), "removed while down");
    cluster.start(rebooting).unwrap();
    cluster
        .wait_for_phase(&SERVERS, Phase::Ready, FORMATION)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail()));
    cluster
        .wait_for_one_etcd_cluster(&SERVERS, Duration::from_secs(20))
        .unwrap();
    assert_eq!(member_of(&cluster), Some(before), "its member was replaced");
    for name in SERVERS {
        assert!(
            !cluster
                .host(name)
                .log()
                .contains("removed a stale etcd member"),
            "{name} removed a member:\n{}",
            cluster.host(name).log()
        );
    }
}
