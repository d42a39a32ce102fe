//! The command line as an operator meets it: one-line configuration errors naming the culprit
//! with exit status 2, `keygen`, and `members --json` against a running agent.

use std::process::{Command, Output};
use std::time::Duration;

use rke2_bootstrap::gossip::schema::MemberSummary;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};
use rke2_bootstrap_tests::workspace_bin;

fn agent(args: &[&str]) -> Output {
    Command::new(workspace_bin("rke2-bootstrap"))
        .arg("agent")
        .args(["--kernel-cmdline", "/nonexistent"])
        .args(args)
        .env_remove("RKE2_BOOTSTRAP_CONFIG")
        .output()
        .expect("running rke2-bootstrap")
}

/// Exit 2 and a single stderr line that contains every `needle`.
fn assert_config_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}

#[test]
fn configuration_errors_are_one_line_naming_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");

    std::fs::write(&config, "node-name: a\nbootstrap-expected: 3\n").unwrap();
    assert_config_error(
        &agent(&["--config", config.to_str().unwrap()]),
        &["bootstrap-expected", "agent.yaml"],
    );

    assert_config_error(
        &agent(&["--node-name", "a", "--bind-addr", "10.0.0.300"]),
        &["bind-addr", "--bind-addr"],
    );
    assert_config_error(
        &agent(&["--config", "/nonexistent/agent.yaml"]),
        &["/nonexistent/agent.yaml"],
    );

    let out = Command::new(workspace_bin("rke2-bootstrap"))
        .args([
            "agent",
            "--kernel-cmdline",
            "/nonexistent",
            "--node-name",
            "a",
        ])
        .env("RKE2_BOOTSTRAP_SERVERS", "4")
        .output()
        .unwrap();
    assert_config_error(&out, &["servers", "RKE2_BOOTSTRAP_SERVERS", "odd"]);
}

#[test]
fn gossip_key_problems_name_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("gossip.key");
    let base = [
        "--node-name",
        "a",
        "--bind-addr",
        "127.9.0.1:7947",
        "--root",
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.push(dir.path().to_str().unwrap());
        args.extend_from_slice(extra);
        agent(&args)
    };
    let key_arg = key.to_str().unwrap();

    let missing = run(&["--gossip-key-file", key_arg]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains(key_arg));

    std::fs::write(&key, "c2hvcnQ=\n").unwrap(); // "short": 5 bytes, not 32
    let short = run(&["--gossip-key-file", key_arg]);
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert_eq!(short.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(key_arg) && stderr.contains("32"),
        "{stderr}"
    );

    std::fs::write(&key, "not base64 at all!\n").unwrap();
    let garbage = run(&["--gossip-key-file", key_arg]);
    assert!(String::from_utf8_lossy(&garbage.stderr).contains(key_arg));
}

#[test]
fn keygen_prints_a_fresh_32_byte_key() {
    let keygen = || {
        let out = Command::new(workspace_bin("rke2-bootstrap"))
            .arg("keygen")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (a, b) = (keygen(), keygen());
    assert_ne!(a, b);
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap()
            .len(),
        32
    );
}

#[test]
fn members_json_lists_every_member_with_the_documented_fields() {
    let spec = ClusterSpec::new(9, &[("m-1", "server"), ("m-2", "agent")]);
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_all().unwrap();
    let socket = cluster.host("m-1").status_socket();
    let members = rke2_bootstrap_tests::wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let out = Command::new(workspace_bin("rke2-bootstrap"))
                .args([
                    "members",
                    "--json",
                    "--kernel-cmdline",
                    "/nonexistent",
                    "--node-name",
                    "x",
                ])
                .args(["--status-socket", socket.to_str().unwrap()])
                .output()
                .unwrap();
            let members: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
            let all_alive = members
                .iter()
                .all(|m| m["alive"] == serde_json::Value::Bool(true));
            (members.len() == 2 && all_alive).then_some(members)
        },
    )
    .unwrap();
    for member in &members {
        for field in ["name", "gossip_addr", "role", "phase", "alive", "ready"] {
            assert!(member.get(field).is_some(), "{field} missing in {member}");
        }
        let typed: MemberSummary = serde_json::from_value(member.clone()).unwrap();
        assert!(typed.alive);
    }
    let table = Command::new(workspace_bin("rke2-bootstrap"))
        .args([
            "members",
            "--kernel-cmdline",
            "/nonexistent",
            "--node-name",
            "x",
        ])
        .args(["--status-socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("NAME") && table.contains("m-1") && table.contains("m-2"),
        "{table}"
    );
}
