//! Day 2, a removal racing a join: a server gone for good becomes due for removal while another
//! server is joining, from either side of the race. etcd must only ever see one membership change
//! at a time, and neither change may wait for the other forever.
//!
//! - A join already in flight (its learner still catching up, as a learner copying a large
//!   datastore does for minutes) when the removal falls due: the steward defers the removal
//!   until the learner is a voter, then removes.
//! - A server powered on while the removal is not yet due: etcd refuses to add it while a voter
//!   is unreachable, so the steward must not wait for it; it joins once the removal is done.

use std::time::{Duration, Instant};

use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{etcd_history, ClusterSpec, TestCluster};
use rke2_bootstrap_tests::wait_until;

const FORMATION: Duration = Duration::from_secs(120);
/// Short, so that the test does not wait the production 15 minutes; long enough that gossip's
/// failure detector has long settled.
const GRACE: &str = "8s";
/// How long the joining server's learner takes to catch up: well beyond a power-off's becoming a
/// due removal (gossip's verdict, then the grace: about 12 s idle, more on a loaded machine), so
/// the removal falls due while the join is in flight.
const LEARNER_CATCHUP_MS: &str = "40000";
/// A removal and a join (grace, steward round, install, join turn, learner, ready).
const REPAIR: Duration = Duration::from_secs(120);

/// Adds a server host (not in the electorate: a replacement an operator powers on), with the
/// short grace and the given extra stand-in environment.
fn add_server(cluster: &mut TestCluster, name: &str, env: &[(&str, &str)]) {
    cluster.add_host(name, "server").unwrap();
    cluster.set_on_hosts(&[name], "departed-server-grace-period", GRACE);
    let host = cluster.host_mut(name);
    host.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
}

#[test]
fn a_removal_racing_a_join_never_overlaps_it_and_neither_waits_forever() {
    let started = Instant::now();
    let servers = ["host-1", "host-2", "host-3"];
    let spec =
        ClusterSpec::new(blocks::DAY2_RACES.id(0), &servers.map(|s| (s, "server"))).with_lb();
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.set_on_hosts(&servers, "departed-server-grace-period", GRACE);
    cluster.start_lb().unwrap();
    cluster.start_all().unwrap();
    cluster.wait_formed(&servers, 3, FORMATION);
    eprintln!("formed after {:?}", started.elapsed());
    let history = cluster.watch_etcd("host-1").unwrap();

    // Act 1: host-4 joins, slowly; host-2 loses power for good once host-4 is a learner.
    add_server(
        &mut cluster,
        "host-4",
        &[("STANDIN_LEARNER_CATCHUP_MS", LEARNER_CATCHUP_MS)],
    );
    cluster.start("host-4").unwrap();
    wait_until(FORMATION, Duration::from_millis(100), || {
        let views = cluster
            .etcd_views(&["host-1"])
            .map_err(|e| format!("{e:#}"))?;
        let learning = views[0]
            .1
            .members
            .iter()
            .any(|m| m.is_learner && m.name.starts_with("host-4"));
        if learning {
            Ok(())
        } else {
            Err(format!("host-4 is not a learner yet: {views:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs_tail()));
    cluster.power_off("host-2").unwrap();
    let act1 = ["host-1", "host-3", "host-4"];
    cluster
        .wait_for_one_etcd_cluster(&act1, REPAIR)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("act 1 repaired after {:?}", started.elapsed());
    // The steward saw the removal due while host-4 was learning, and said why it waited.
    let deferred = cluster
        .host("host-1")
        .all_logs()
        .lines()
        .any(|l| l.contains("etcd removal deferred") && l.contains("waiting for host-4"));
    assert!(deferred, "{}", cluster.host("host-1").log());

    // Act 2: host-3 loses power for good and a replacement, host-5, is powered on at once.
    cluster.power_off("host-3").unwrap();
    add_server(&mut cluster, "host-5", &[]);
    cluster.start("host-5").unwrap();
    let act2 = ["host-1", "host-4", "host-5"];
    let repaired = cluster.wait_servers(&act2, REPAIR);
    let samples = history.stop();
    etcd_history::print_changes(&samples);
    repaired.unwrap_or_else(|e| panic!("{e:#}"));

    // One change at a time, in the order each race allows: host-4's learner became a voter
    // before host-2 went (3, 4, 3), and host-5 came in only after host-3 went (3, 2, 3).
    etcd_history::check_one_change_at_a_time(&samples).unwrap();
    assert_eq!(
        etcd_history::member_counts(&samples),
        [3, 4, 3, 2, 3],
        "member counts over both races"
    );
    let changes = etcd_history::changes(&samples);
    let host2_gone = changes
        .iter()
        .position(|s| !s.lists("host-2", None))
        .expect("host-2 removed");
    assert!(
        changes[host2_gone - 1].lists("host-4", Some(false)),
        "host-2 removed before host-4 was a voter: {changes:?}"
    );
    // Two removals, one per departed server, each by one steward.
    let removed: Vec<String> = cluster
        .steward_removals(&["host-1", "host-4"])
        .into_iter()
        .map(|r| r.node)
        .collect();
    assert_eq!(removed, ["host-2", "host-3"]);
    // What host-5 met while host-3's member was still listed, for the test's output.
    let refusals = std::fs::read_to_string(
        cluster
            .root_of("host-5")
            .join("var/log/rke2-server.service.log"),
    )
    .unwrap_or_default()
    .lines()
    .filter(|l| l.contains("unhealthy") || l.contains("refused"))
    .count();
    eprintln!(
        "host-5's join was refused {refusals} times before the removal; test took {:?}",
        started.elapsed()
    );
}
