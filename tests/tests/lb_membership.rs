//! The LB follows the cluster with nobody editing nginx.conf: late joiners come in through it, a
//! server that leaves (SIGTERM) is dropped, a new server is added only once it is ready. Real
//! sidecar, real nginx. Several LB hosts following one cluster write the same upstream list.
//!
//! Test ids: 40 (one LB host in front of the cluster), 42 and 43 (two sidecars side by side).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{
    lb_ip, parse_upstreams, ClusterSpec, TestCluster, GOSSIP_PORT,
};
use rke2_bootstrap_tests::http::{https_get_blocking, Trust};
use rke2_bootstrap_tests::standin::ca_hash;
use rke2_bootstrap_tests::{wait_until, workspace_bin, ChildGuard};

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
    const ID: u8 = blocks::LB_MEMBERSHIP.id(0);
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

/// A second kind of LB host: only the real `rke2-lb-sidecar`, writing nginx's two `upstream`
/// blocks (the `upstreams-include` layout). What is compared is the file, so there is no nginx to
/// validate or reload it: the validator is off and the reload is `true`. The upstream blocks are
/// the part of the LB config that depends on membership; a whole nginx.conf would also hold each
/// LB host's own listen address and paths.
struct UpstreamSidecar {
    name: &'static str,
    file: PathBuf,
    status_socket: PathBuf,
    dir: tempfile::TempDir,
    _process: ChildGuard,
}

impl UpstreamSidecar {
    /// Starts a sidecar on `ip` that joins the gossip of `cluster` as the observer `name`.
    fn start(cluster: &TestCluster, ip: IpAddr, name: &'static str) -> UpstreamSidecar {
        let dir = tempfile::Builder::new()
            .prefix("rke2-lb-upstreams-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let file = d.join("rke2-upstreams.conf");
        let seeds: Vec<String> = cluster
            .hosts
            .iter()
            .map(|h| format!("{}:{GOSSIP_PORT}", h.ip))
            .collect();
        let cluster_name = cluster
            .spec
            .cluster_name
            .clone()
            .unwrap_or_else(|| format!("test-{}", cluster.spec.test_id));
        let log = std::fs::File::create(d.join("sidecar.log")).unwrap();
        let mut cmd = Command::new(workspace_bin("rke2-lb-sidecar"));
        cmd.args(["--cluster-name", &cluster_name, "--node-name", name])
            .args(["--bind-addr", &format!("{ip}:{GOSSIP_PORT}")])
            .args(["--seeds", &seeds.join(",")])
            .arg("--gossip-key-file")
            .arg(&cluster.key_file)
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--lb", "nginx", "--lb-addr", &ip.to_string()])
            .arg("--config-file")
            .arg(&file)
            .args([
                "--nginx",
                "{layout: upstreams-include, stream-module: builtin}",
            ])
            .args(["--validate", "[]"])
            .args(["--reload", "{command: ['true']}"])
            .args(["--retry", "{initial: 200ms, max: 2s}"])
            .env("RKE2_LB_SIDECAR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let process = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("starting the sidecar {name}: {e:#}"));
        UpstreamSidecar {
            name,
            file,
            status_socket: d.join("state").join("status.sock"),
            dir,
            _process: process,
        }
    }

    /// The upstream file as it is now (empty before the first write).
    fn contents(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }

    /// The phase in which this sidecar's gossip view shows `member`, if it shows it at all.
    fn phase_of(&self, member: &str) -> Option<Phase> {
        let report = rke2_bootstrap::status_socket::fetch(&self.status_socket).ok()?;
        report
            .members
            .into_iter()
            .find(|m| m.name == member)
            .map(|m| m.phase)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let lines: Vec<&str> = tail.into_iter().rev().collect();
        format!("--- sidecar {}\n{}\n", self.name, lines.join("\n"))
    }
}

/// Waits until both sidecars' files route exactly to the servers `names` (on both ports), then
/// asserts that the two files are the same bytes. Logs how long the wait took, labelled `change`.
#[track_caller]
fn assert_both_route_identically(
    cluster: &TestCluster,
    sidecars: &[UpstreamSidecar; 2],
    change: &str,
    names: &[&str],
    timeout: Duration,
) {
    let started = Instant::now();
    let mut want: Vec<IpAddr> = names.iter().map(|n| cluster.host(n).ip).collect();
    want.sort();
    wait_until(timeout, Duration::from_millis(50), || {
        for sidecar in sidecars {
            let (supervisor, api) = parse_upstreams(&sidecar.contents());
            if supervisor != want || api != want {
                return Err(format!(
                    "{} routes to {supervisor:?} and {api:?}, want {want:?}",
                    sidecar.name
                ));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}{}\n{}{}",
            cluster.logs_tail(),
            sidecars[0].log_tail(),
            sidecars[1].log_tail()
        )
    });
    let (a, b) = (sidecars[0].contents(), sidecars[1].contents());
    assert_eq!(
        a, b,
        "the sidecars {} and {} wrote different files for {names:?}",
        sidecars[0].name, sidecars[1].name
    );
    eprintln!(
        "{change}: both sidecars wrote the same {} servers {} ms later",
        names.len(),
        started.elapsed().as_millis()
    );
}

#[test]
fn two_sidecars_write_the_same_upstreams_through_every_change() {
    const ID: u8 = blocks::LB_MEMBERSHIP_TWO_LBS.id(0);
    const SECOND_LB_ID: u8 = blocks::LB_MEMBERSHIP_TWO_LBS.id(1);
    let spec = ClusterSpec::new(
        ID,
        &[
            ("server-1", "server"),
            ("server-2", "server"),
            ("server-3", "server"),
        ],
    );
    let mut cluster = TestCluster::new(spec).unwrap();
    let sidecars = [
        UpstreamSidecar::start(&cluster, lb_ip(ID), "lb-a"),
        UpstreamSidecar::start(&cluster, lb_ip(SECOND_LB_ID), "lb-b"),
    ];
    cluster.start_all().unwrap();
    let three = ["server-1", "server-2", "server-3"];
    cluster
        .wait_for_phase(&three, Phase::Ready, FORMATION)
        .unwrap();
    assert_both_route_identically(&cluster, &sidecars, "formed", &three, LB_FOLLOWS);

    // A server joins: its install is slowed so that both sidecars see it in gossip, not ready,
    // for a while; neither lists it.
    cluster.add_host("server-4", "server").unwrap();
    cluster
        .host_mut("server-4")
        .env
        .push(("STANDIN_INSTALL_SLEEP".into(), "4".into()));
    cluster.start("server-4").unwrap();
    wait_until(FORMATION, Duration::from_millis(50), || {
        let phases: Vec<Option<Phase>> = sidecars.iter().map(|s| s.phase_of("server-4")).collect();
        let joining = phases
            .iter()
            .all(|p| matches!(p, Some(Phase::WaitingToJoin | Phase::Joining)));
        joining
            .then_some(())
            .ok_or(format!("the sidecars see server-4 as {phases:?}"))
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", cluster.logs_tail()));
    assert_both_route_identically(&cluster, &sidecars, "joining", &three, LB_FOLLOWS);
    // Only now: the files above were read while server-4 was still joining.
    assert_ne!(
        cluster.host("server-4").status().map(|s| s.phase),
        Some(Phase::Ready),
        "server-4 became ready before the files were compared: lengthen its install"
    );

    // It becomes ready: both add it.
    cluster
        .wait_for_phase(&["server-4"], Phase::Ready, FORMATION)
        .unwrap();
    let four = ["server-1", "server-2", "server-3", "server-4"];
    assert_both_route_identically(&cluster, &sidecars, "ready", &four, LB_FOLLOWS);

    // A server leaves gracefully (SIGTERM): both drop it.
    cluster.stop("server-2").unwrap();
    let after_leave = ["server-1", "server-3", "server-4"];
    assert_both_route_identically(&cluster, &sidecars, "left", &after_leave, LB_FOLLOWS);

    // A server is killed with everything it ran (a power cut): both drop it, by their health
    // checks or once gossip calls it dead.
    cluster.power_off("server-3").unwrap();
    let after_kill = ["server-1", "server-4"];
    assert_both_route_identically(&cluster, &sidecars, "killed", &after_kill, FORMATION);
}
