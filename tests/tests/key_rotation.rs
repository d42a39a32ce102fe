//! Key rotation as operators do it: add the new key everywhere, make it primary everywhere, drop
//! the old one, and after each step run every process's reload command as its unit's
//! `ExecReload=` does (`rke2-bootstrap reload-keys`, `rke2-lb-sidecar --reload-keys`). Each
//! reload returns once the process uses the new file; a key file that does not load fails the
//! reload, saying why, and the process keeps the keys it had.

use std::process::Output;
use std::time::Duration;

use rke2_bootstrap::fsutil;
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{layout, transport_counter, ClusterSpec, TestCluster};
use rke2_bootstrap_tests::{wait_until, workspace_bin};

const FORMATION: Duration = Duration::from_secs(120);
const HOSTS: [&str; 2] = ["server-1", "agent-1"];

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes the shared key file, one key per line, primary first.
fn write_keys(cluster: &TestCluster, keys: &[&str]) {
    let mut text = keys.join("\n");
    text.push('\n');
    fsutil::write_file_atomic(&cluster.key_file, text.as_bytes(), 0o600).unwrap();
}

/// Every process's reload, as its unit runs it: the agents' and the sidecar's outputs.
fn reload_everywhere(cluster: &TestCluster) -> Vec<(String, Output)> {
    let mut outs: Vec<(String, Output)> = HOSTS
        .iter()
        .map(|name| {
            let out = cluster
                .host_command(cluster.host(name), &["reload-keys"])
                .output()
                .unwrap();
            (name.to_string(), out)
        })
        .collect();
    outs.push(("lb".into(), cluster.lb().reload_keys().unwrap()));
    outs
}

/// Every reload succeeded with `keys` keys accepted; returns the primary key id they name.
#[track_caller]
fn all_reloaded(outs: &[(String, Output)], keys: usize) -> String {
    let mut primaries: Vec<String> = Vec::new();
    for (name, out) in outs {
        let said = text(out);
        assert!(out.status.success(), "{name}: {said}");
        let want = format!("{keys} key{} accepted", if keys == 1 { "" } else { "s" });
        assert!(said.contains(&want), "{name}: {said}");
        let primary = said
            .split("primary key ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("{name}: no primary key in {said}"));
        primaries.push(primary.to_string());
    }
    primaries.dedup();
    assert_eq!(primaries.len(), 1, "different primaries: {outs:?}");
    primaries.remove(0)
}

fn keygen() -> String {
    let out = std::process::Command::new(workspace_bin("rke2-bootstrap"))
        .arg("keygen")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A transport counter of `name`'s gossip.
fn counter(cluster: &TestCluster, name: &str, counter: &str) -> u64 {
    transport_counter(&cluster.host(name).transport(), counter)
}

/// Gossip flows on the keys in use: every host keeps receiving datagrams it can open, and none is
/// refused for its key.
fn gossip_flows(cluster: &TestCluster) {
    for name in HOSTS {
        let (received, refused) = (
            counter(cluster, name, "received"),
            counter(cluster, name, "rejected_auth"),
        );
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            let now = counter(cluster, name, "received");
            (now >= received + 3)
                .then_some(())
                .ok_or_else(|| format!("{name} received {now}, {received} before"))
        })
        .unwrap();
        assert_eq!(
            counter(cluster, name, "rejected_auth"),
            refused,
            "{name} refused datagrams for their key"
        );
    }
}

#[test]
fn every_rotation_step_reloads_every_process_and_a_bad_key_file_fails_the_reload() {
    let spec = ClusterSpec::new(
        blocks::KEY_ROTATION.id(0),
        &layout(&["server-1"], &["agent-1"]),
    )
    .with_lb();
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_lb().unwrap();
    cluster.start_all().unwrap();
    cluster.wait_formed(&HOSTS, 1, FORMATION);
    let old = std::fs::read_to_string(&cluster.key_file)
        .unwrap()
        .trim()
        .to_string();
    let new = keygen();

    // 1. The new key is added everywhere: accepted, not yet used to seal.
    write_keys(&cluster, &[&old, &new]);
    let first_primary = all_reloaded(&reload_everywhere(&cluster), 2);

    // A key file broken by a bad edit: every reload fails and says why; the keys stay.
    std::fs::write(&cluster.key_file, "not a key\n").unwrap();
    for (name, out) in reload_everywhere(&cluster) {
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {said}");
        assert!(
            said.contains("did not load") && said.contains("line 1"),
            "{name}: {said}"
        );
    }
    gossip_flows(&cluster);

    // 2. The new key becomes primary everywhere; 3. the old key goes.
    write_keys(&cluster, &[&new, &old]);
    let second_primary = all_reloaded(&reload_everywhere(&cluster), 2);
    assert_ne!(first_primary, second_primary, "the primary did not change");
    write_keys(&cluster, &[&new]);
    assert_eq!(
        all_reloaded(&reload_everywhere(&cluster), 1),
        second_primary
    );
    // One cluster on the new key alone.
    gossip_flows(&cluster);
    cluster
        .wait_for_lb_servers(&["server-1"], Duration::from_secs(10))
        .unwrap();
}
