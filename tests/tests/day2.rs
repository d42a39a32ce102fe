//! Day 2 against the etcd-backed stand-in: servers powered off for good are removed after the
//! departed grace, `auto` workers are promoted to restore `servers`, and the LB follows each step.

use std::time::Duration;

use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{etcd_history, ClusterSpec, TestCluster};
use rke2_bootstrap_tests::standin::etcd;
use rke2_bootstrap_tests::wait_until;

const FORMATION: Duration = Duration::from_secs(120);
/// Short, so that the tests do not wait the production 15 minutes; long enough that gossip's
/// failure detector has long settled.
const GRACE: &str = "8s";
/// A removal (grace + a steward round) and then a promotion (settle time, install, join turn,
/// etcd learner, ready).
const REPAIR: Duration = Duration::from_secs(120);

/// `hosts` all `role: auto` with the given `servers` target, an LB in front, a short grace.
fn auto_cluster(test_id: u8, hosts: &[&str], servers: u32) -> TestCluster {
    let layout: Vec<(&str, &'static str)> = hosts.iter().map(|h| (*h, "auto")).collect();
    let mut spec = ClusterSpec::new(test_id, &layout).with_lb();
    spec.servers = servers;
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.set_on_hosts(hosts, "departed-server-grace-period", GRACE);
    cluster.start_lb().unwrap();
    cluster.start_all().unwrap();
    cluster
}

/// The ETCD column of `members` on `observer`, per server name.
fn etcd_column(cluster: &TestCluster, observer: &str) -> Vec<(String, Option<String>)> {
    let mut column: Vec<(String, Option<String>)> = cluster
        .members_seen_by(observer)
        .into_iter()
        .filter(|m| m.role == Role::Server && m.alive)
        .map(|m| (m.name, m.etcd))
        .collect();
    column.sort();
    column
}

/// Three servers and two `auto` workers; one server loses power for good. After the grace the
/// steward removes its etcd member, the lowest-named worker becomes a server and joins through the
/// LB, and the etcd member list is the three live servers again, with the LB routing to them.
/// When the lost server comes back after all, RKE2 rejoins it, and with four servers for three
/// the highest-named `auto` server steps down to a worker.
#[test]
fn a_server_gone_for_good_is_removed_and_an_auto_worker_promoted() {
    let hosts = ["host-1", "host-2", "host-3", "host-4", "host-5"];
    let mut cluster = auto_cluster(blocks::DAY2.id(0), &hosts, 3);
    let (servers, workers) = cluster.wait_formed(&hosts, 3, FORMATION);
    // Every host, a worker included, shows the servers' etcd standing from the steward's roster.
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let column = etcd_column(&cluster, workers[0]);
        let want: Vec<(String, Option<String>)> = servers
            .iter()
            .map(|s| (s.to_string(), Some("voter".to_string())))
            .collect();
        if column == want {
            Ok(())
        } else {
            Err(format!("{column:?}"))
        }
    })
    .unwrap();

    let gone = servers[1];
    cluster.power_off(gone).unwrap();
    let live: Vec<&str> = servers.iter().copied().filter(|s| *s != gone).collect();
    // The LB drops it at once (gossip's failure detector), long before the grace.
    cluster
        .wait_for_lb_servers(&live, Duration::from_secs(30))
        .unwrap();

    let promoted = workers[0];
    let mut after: Vec<&str> = live.clone();
    after.push(promoted);
    cluster
        .wait_servers(&after, REPAIR)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(cluster.role_of(promoted), Some(Role::Server));
    assert_eq!(
        cluster.role_of(workers[1]),
        Some(Role::Agent),
        "two promoted"
    );
    // One removal, by one server, through the API as the cluster admin (RKE2's controllers
    // remove the member and the password with the Node).
    let removals = cluster.steward_removals(&live);
    let removers: Vec<&str> = removals
        .iter()
        .filter(|r| r.node == gone)
        .map(|r| r.by.as_str())
        .collect();
    assert_eq!(removers.len(), 1, "{removers:?}\n{}", cluster.logs_tail());
    // The promoted host runs the server and no longer the agent.
    assert_service_call(&cluster, promoted, "disable --now rke2-agent");

    // The server was only off for long: back, RKE2 rejoins it as a new member (it finds its
    // member removed), and etcd has four voters for three. The steward says so, and the
    // highest-named `auto` server steps down to a worker: three servers again.
    let history = cluster.watch_etcd(live[0]).unwrap();
    cluster.start(gone).unwrap();
    let mut four = after.clone();
    four.push(gone);
    four.sort_unstable();
    let demoted = four[3];
    let three = &four[..3];
    let stepped_down = wait_until(REPAIR, Duration::from_millis(500), || {
        let views = cluster
            .etcd_views(&[live[0]])
            .map_err(|e| format!("{e:#}"))?;
        let mut names: Vec<&str> = views[0]
            .1
            .members
            .iter()
            .map(|m| etcd::member_node_name(&m.name))
            .collect();
        names.sort_unstable();
        let demoted_is_a_ready_worker = cluster
            .host(demoted)
            .status()
            .is_some_and(|s| s.role == Role::Agent && s.phase == Phase::Ready);
        if names == three && demoted_is_a_ready_worker {
            Ok(())
        } else {
            Err(format!(
                "etcd lists {names:?}; {demoted}: {:?}",
                cluster
                    .host(demoted)
                    .status()
                    .map(|s| (s.role, s.phase, s.reason))
            ))
        }
    });
    let samples = history.stop();
    etcd_history::print_changes(&samples);
    stepped_down.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs_tail()));
    cluster
        .wait_servers(three, Duration::from_secs(30))
        .unwrap();
    etcd_history::check_one_change_at_a_time(&samples).unwrap();
    assert_eq!(
        etcd_history::member_counts(&samples).last(),
        Some(&3),
        "{samples:?}"
    );
    assert!(
        etcd_history::member_counts(&samples).contains(&4),
        "never four voters: {samples:?}"
    );
    let steward_log = cluster.host(live[0]).log();
    assert!(
        steward_log.contains("more servers than the target"),
        "{steward_log}"
    );
    assert_service_call(&cluster, demoted, "disable --now rke2-server");
}

/// `name`'s agent ran `systemctl <words>`.
#[track_caller]
fn assert_service_call(cluster: &TestCluster, name: &str, words: &str) {
    let calls = cluster.host(name).service_calls();
    assert!(
        calls.iter().any(|(_, c)| c.contains(words)),
        "{name} never ran {words:?}: {calls:?}"
    );
}

/// `rke2-bootstrap decommission` on `name` (its agent's flags), returning the output.
fn decommission(cluster: &TestCluster, name: &str, args: &[&str]) -> std::process::Output {
    let mut subcommand = vec!["decommission"];
    subcommand.extend_from_slice(args);
    cluster
        .host_command(cluster.host(name), &subcommand)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `out` says `node` was decommissioned, and the cluster is down to `left` (etcd, the LB).
#[track_caller]
fn decommissioned(cluster: &TestCluster, out: &std::process::Output, node: &str, left: &[&str]) {
    assert!(out.status.success(), "{}", text(out));
    assert!(
        text(out).contains(&format!("decommissioned {node}")),
        "{}",
        text(out)
    );
    cluster.wait_servers(left, Duration::from_secs(30)).unwrap();
}

/// Decommission is refused while the cluster without the server would lose quorum (one of three
/// servers is off, a second would leave one of two answering), and for a live host named from
/// elsewhere. It is accepted from another server for a host that is gone (`--node`), and on a
/// healthy server itself: the server's node and member go, its RKE2 is disabled, the LB follows,
/// and its agent never brings it back.
#[test]
fn decommission_is_refused_when_it_would_break_quorum_and_accepted_when_not() {
    let servers = ["server-1", "server-2", "server-3"];
    let spec = ClusterSpec::new(blocks::DAY2.id(1), &servers.map(|s| (s, "server"))).with_lb();
    let mut cluster = TestCluster::new(spec).unwrap();
    // The power-off below must not be repaired by the steward while the test looks.
    cluster.set_on_hosts(&servers, "departed-server-grace-period", "15m");
    cluster.start_lb().unwrap();
    cluster.start_all().unwrap();
    cluster.wait_formed(&servers, servers.len(), FORMATION);

    // A live host cannot be decommissioned from elsewhere.
    let out = decommission(&cluster, "server-1", &["--node", "server-3", "--confirm"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("alive in gossip"), "{}", text(&out));

    // One server off: taking a second away would leave one of two members answering.
    cluster.power_off("server-3").unwrap();
    cluster.stop_agent("server-2").unwrap();
    let out = decommission(&cluster, "server-2", &["--confirm"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("refused") && text(&out).contains("1 of 2"),
        "{}",
        text(&out)
    );
    cluster.start("server-2").unwrap();
    cluster.start("server-3").unwrap();
    cluster.wait_formed(&servers, servers.len(), FORMATION);

    // A server whose disk died, named from another server: accepted once gossip has given up
    // on it. Without --confirm it only says what it would do (exit 2).
    cluster.power_off("server-3").unwrap();
    wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        let dry = decommission(&cluster, "server-1", &["--node", "server-3"]);
        match dry.status.code() {
            Some(2) if text(&dry).contains("leaving 2 voters") => Ok(()),
            _ => Err(text(&dry)),
        }
    })
    .unwrap();
    let out = decommission(&cluster, "server-1", &["--node", "server-3", "--confirm"]);
    decommissioned(&cluster, &out, "server-3", &servers[..2]);

    // A healthy server on itself: accepted, down to one server.
    cluster.stop_agent("server-2").unwrap();
    let dry = decommission(&cluster, "server-2", &[]);
    assert_eq!(dry.status.code(), Some(2), "{}", text(&dry));
    assert!(text(&dry).contains("leaving 1 voter)"), "{}", text(&dry));
    let out = decommission(&cluster, "server-2", &["--confirm"]);
    decommissioned(&cluster, &out, "server-2", &servers[..1]);
    assert_service_call(&cluster, "server-2", "disable --now rke2-server");
    // Its agent stays out: started again, it exits at once, successfully, saying why.
    cluster.start("server-2").unwrap();
    let status = cluster
        .wait_exit("server-2", Duration::from_secs(20))
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        cluster.host("server-2").log().contains("decommissioned"),
        "{}",
        cluster.host("server-2").log()
    );
}
