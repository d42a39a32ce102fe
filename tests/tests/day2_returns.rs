//! Day 2, the harder returns: a server that comes back after the steward removed its etcd member
//! rejoins as RKE2 does (tombstone, data moved aside, a new member), and two of five servers
//! powered off in a row are removed and replaced one membership change at a time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rke2_bootstrap::gossip::schema::Role;
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{etcd_history, ClusterSpec, TestCluster};
use rke2_bootstrap_tests::standin::etcd;

const FORMATION: Duration = Duration::from_secs(120);
/// Short, so that the tests do not wait the production 15 minutes; long enough that gossip's
/// failure detector has long settled.
const GRACE: &str = "8s";
/// A removal (grace + a steward round), then a rejoin or a promotion (settle time, install, join
/// turn, etcd learner, ready).
const REPAIR: Duration = Duration::from_secs(120);

/// `layout` with the given `servers` target, an LB in front, a short grace on every host.
fn cluster_with_grace(test_id: u8, layout: &[(&str, &'static str)], servers: u32) -> TestCluster {
    let mut spec = ClusterSpec::new(test_id, layout).with_lb();
    spec.servers = servers;
    let mut cluster = TestCluster::new(spec).unwrap();
    let names: Vec<&str> = layout.iter().map(|(name, _)| *name).collect();
    cluster.set_on_hosts(&names, "departed-server-grace-period", GRACE);
    cluster.start_lb().unwrap();
    cluster.start_all().unwrap();
    cluster
}

/// The etcd member id of `node`'s member, as etcd on `observer` lists it.
fn member_id(cluster: &TestCluster, observer: &str, node: &str) -> u64 {
    let views = cluster.etcd_views(&[observer]).unwrap();
    views[0]
        .1
        .members
        .iter()
        .find(|m| etcd::member_node_name(&m.name) == node)
        .unwrap_or_else(|| panic!("etcd on {observer} lists no member of {node}: {views:?}"))
        .id
}

/// The RKE2 stand-in's own log on `name` (kept across its restarts).
fn standin_log(cluster: &TestCluster, name: &str) -> String {
    std::fs::read_to_string(
        cluster
            .root_of(name)
            .join("var/log/rke2-server.service.log"),
    )
    .unwrap_or_default()
}

/// Three servers; one is powered off until the steward removed its etcd member, then comes
/// back. Its restarted etcd is refused as a removed member, RKE2 writes the tombstone and exits,
/// and on its unit's restart moves the data aside and joins anew: etcd lists all three again,
/// voters all, with a new member id for the returning one, and the LB routes to three.
#[test]
fn a_server_back_after_its_removal_rejoins_cleanly() {
    back_after_removal(blocks::DAY2_RETURNS.id(1), Returning::AnotherServer);
}

/// The same for the first server, whose config has no `server:`: back before gossip shows it the
/// cluster, it must still join through the LB once RKE2 moves its data aside, never start a
/// second cluster.
#[test]
fn the_first_server_back_after_its_removal_rejoins_and_never_initializes_again() {
    back_after_removal(blocks::DAY2_RETURNS.id(2), Returning::FirstServer);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returning {
    FirstServer,
    AnotherServer,
}

fn back_after_removal(test_id: u8, returning: Returning) {
    let started = Instant::now();
    let hosts = ["host-1", "host-2", "host-3"];
    let layout: Vec<(&str, &'static str)> = hosts.iter().map(|h| (*h, "server")).collect();
    let mut cluster = cluster_with_grace(test_id, &layout, 3);
    cluster.wait_formed(&hosts, 3, FORMATION);

    let first = cluster.the_only_initialization();
    let gone = match returning {
        Returning::FirstServer => *hosts.iter().find(|h| **h == first).unwrap(),
        Returning::AnotherServer => *hosts.iter().rev().find(|h| **h != first).unwrap(),
    };
    let live: Vec<&str> = hosts.iter().copied().filter(|h| *h != gone).collect();
    let old_id = member_id(&cluster, live[0], gone);

    cluster.power_off(gone).unwrap();
    cluster
        .wait_for_lb_servers(&live, Duration::from_secs(30))
        .unwrap();
    // The steward removes it after the grace.
    cluster
        .wait_for_one_etcd_cluster(&live, REPAIR)
        .unwrap_or_else(|e| panic!("{e:#}"));

    cluster.start(gone).unwrap();
    cluster
        .wait_servers(&hosts, REPAIR)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", standin_log(&cluster, gone)));

    let new_id = member_id(&cluster, live[0], gone);
    assert_ne!(new_id, old_id, "{gone} kept its etcd member id");
    let log = standin_log(&cluster, gone);
    for words in [
        "this node has been removed from the cluster please restart rke2 to rejoin the cluster",
        "tombstone file has been detected, removing data dir to rejoin the cluster",
        "moved the etcd data dir aside to",
        &format!("added to etcd as learner {new_id}"),
    ] {
        assert!(
            log.contains(words),
            "{words:?} not in the stand-in log:\n{log}"
        );
    }
    let aside: Vec<String> =
        std::fs::read_dir(cluster.root_of(gone).join("var/lib/rancher/rke2/server/db"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("etcd-old-"))
            .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // One removal, by one server.
    let removed = cluster.steward_removals(&live);
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0].node, gone);
    // One cluster, created once, whoever came back (the first server's config now names the
    // cluster, so RKE2's own record is the witness).
    assert_eq!(cluster.new_cluster_events(), [(first.clone(), 1)]);
    eprintln!("test took {:?}", started.elapsed());
}

/// Five servers and two `auto` workers; two servers lose power a few seconds apart. The steward
/// removes them one at a time, then both workers are promoted one at a time: etcd ends with the
/// three live servers and the two promoted workers as voters, and never held two learners.
#[test]
fn two_of_five_servers_powered_off_in_a_row_are_replaced_one_at_a_time() {
    let started = Instant::now();
    let hosts = [
        "host-1", "host-2", "host-3", "host-4", "host-5", "host-6", "host-7",
    ];
    let layout: Vec<(&str, &'static str)> = hosts.iter().map(|h| (*h, "auto")).collect();
    let mut cluster = cluster_with_grace(blocks::DAY2_RETURNS.id(0), &layout, 5);
    let (servers, workers) = cluster.wait_formed(&hosts, 5, FORMATION);
    eprintln!("formed after {:?}", started.elapsed());

    let gone = [servers[1], servers[3]];
    let live: Vec<&str> = servers
        .iter()
        .copied()
        .filter(|s| !gone.contains(s))
        .collect();
    // Watch etcd on a server that stays, through the whole repair.
    let history = cluster.watch_etcd(live[0]).unwrap();

    cluster.power_off(gone[0]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    cluster.power_off(gone[1]).unwrap();

    let mut after: Vec<&str> = live.clone();
    after.extend(&workers);
    let repaired = cluster.wait_servers(&after, REPAIR);
    let samples = history.stop();
    repaired.unwrap_or_else(|e| panic!("{e:#}"));
    for w in &workers {
        assert_eq!(cluster.role_of(w), Some(Role::Server), "{w}");
    }

    etcd_history::print_changes(&samples);
    // Never two joins in flight, and a removal only while no other member was learning.
    assert!(samples.len() > 50, "{} samples", samples.len());
    etcd_history::check_one_change_at_a_time(&samples).unwrap();
    // The two removals, one after the other, by the steward.
    let removed = cluster.steward_removals(&live);
    assert_eq!(removed.len(), 2, "{removed:?}");
    let nodes: BTreeSet<&str> = removed.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(
        nodes,
        gone.iter().copied().collect::<BTreeSet<_>>(),
        "{removed:?}"
    );
    assert_ne!(removed[0].at, removed[1].at, "{removed:?}");
    // etcd never held both departed servers' seats gone and a replacement at once before both
    // removals: the member count only went 5, 4, 3, 4, 5.
    assert_eq!(
        etcd_history::member_counts(&samples),
        [5, 4, 3, 4, 5],
        "member counts over the repair"
    );
    eprintln!(
        "test took {:?} ({} samples)",
        started.elapsed(),
        samples.len()
    );
}
