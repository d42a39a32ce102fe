//! Bad input a user can give: each ends in one clear error line and an exit status a service
//! manager acts on sensibly (1: restart may help; 2: fix the configuration), with nothing
//! half-written, and a restart after the fix goes on normally.
//!
//! Every test runs one server host that is its own whole cluster (`bootstrap-expect: 1`), so
//! the host is the first-server candidate and walks the whole bring-up.

use std::net::TcpListener;
use std::process::ExitStatus;
use std::time::Duration;

use rke2_bootstrap::gossip::schema::Phase;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};

const HOST: &str = "solo";
const EXIT: Duration = Duration::from_secs(60);
const READY: Duration = Duration::from_secs(60);

fn solo(test_id: u8, flags: &[(&str, &str)]) -> TestCluster {
    let mut cluster = TestCluster::new(ClusterSpec::new(test_id, &[(HOST, "server")])).unwrap();
    cluster.host_mut(HOST).extra = flags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cluster
}

/// The agent's last line on stderr: `rke2-bootstrap: error: ...` or `...: configuration error:`.
fn error_line(cluster: &TestCluster) -> String {
    let log = cluster.host(HOST).log();
    log.lines()
        .rev()
        .find(|l| l.starts_with("rke2-bootstrap: "))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"))
        .to_string()
}

/// Nothing of RKE2 on the host: no config.yaml, no binary, no service started, and the
/// persisted bring-up checkpoints all unset.
#[track_caller]
fn assert_nothing_half_written(cluster: &TestCluster) {
    let host = cluster.host(HOST);
    assert!(
        !host.root.rke2().config_yaml().exists(),
        "config.yaml was written"
    );
    assert!(
        !host.root.join("/usr/local/bin/rke2").exists(),
        "rke2 was installed"
    );
    assert!(
        host.service_calls().is_empty(),
        "a service was started: {:?}",
        host.service_calls()
    );
    if let Some(state) = host.persisted_state() {
        for checkpoint in ["config_written", "installed", "service_started", "joined"] {
            assert_eq!(state[checkpoint], false, "{checkpoint}: {state}");
        }
    }
}

#[track_caller]
fn assert_exit(status: ExitStatus, code: i32, cluster: &TestCluster) {
    assert_eq!(
        status.code(),
        Some(code),
        "{status:?}\n{}",
        cluster.host(HOST).log()
    );
}

/// After the fix, the same host (same disk) forms its cluster as if nothing had happened.
fn restart_fixed_and_expect_ready(cluster: &mut TestCluster, remove_flag: Option<&str>) {
    let host = cluster.host_mut(HOST);
    host.env.clear();
    if let Some(flag) = remove_flag {
        host.extra.retain(|(k, _)| k != flag);
    }
    cluster.start(HOST).unwrap();
    cluster
        .wait_for_phase(&[HOST], Phase::Ready, READY)
        .unwrap();
    assert_eq!(cluster.hosts_that_initialized(), [HOST]);
    assert_eq!(cluster.new_cluster_events(), [(HOST.to_string(), 1)]);
}

#[test]
fn unreachable_installer_url_is_retried_then_fails() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let mut cluster = solo(20, &[("installer-url", &url)]);
    cluster.start(HOST).unwrap();
    let status = cluster.wait_exit(HOST, EXIT).unwrap();
    assert_exit(status, 1, &cluster);
    let line = error_line(&cluster);
    assert!(
        line.contains(&format!("downloading installer from {url} failed after")),
        "{line}"
    );
    let log = cluster.host(HOST).log();
    assert!(
        log.contains("installer download failed; retrying"),
        "not retried:\n{log}"
    );
    assert_eq!(cluster.installer.requests(), 0);
    assert!(cluster.host(HOST).root.install_env_records().is_empty());
    assert_nothing_half_written(&cluster);

    restart_fixed_and_expect_ready(&mut cluster, Some("installer-url"));
}

#[test]
fn installer_checksum_mismatch_is_never_run() {
    let wrong = "0".repeat(64);
    let mut cluster = solo(21, &[("installer-sha256", &wrong)]);
    cluster.start(HOST).unwrap();
    let status = cluster.wait_exit(HOST, EXIT).unwrap();
    assert_exit(status, 1, &cluster);
    let line = error_line(&cluster);
    assert!(
        line.contains("does not match `installer-sha256`") && line.contains(&wrong),
        "{line}"
    );
    assert!(line.contains("not running it"), "{line}");
    // Downloaded once (a wrong answer is not retried), never run.
    assert_eq!(cluster.installer.served(), 1);
    assert!(cluster.host(HOST).root.install_env_records().is_empty());
    assert_nothing_half_written(&cluster);

    restart_fixed_and_expect_ready(&mut cluster, Some("installer-sha256"));
}

#[test]
fn installer_exiting_non_zero_fails_with_its_code() {
    let mut cluster = solo(22, &[]);
    cluster
        .host_mut(HOST)
        .env
        .push(("STANDIN_INSTALL_FAIL".into(), "7".into()));
    cluster.start(HOST).unwrap();
    let status = cluster.wait_exit(HOST, EXIT).unwrap();
    assert_exit(status, 1, &cluster);
    let line = error_line(&cluster);
    assert!(line.contains('7'), "exit code not named: {line}");
    assert!(line.contains("failing on purpose"), "no stderr tail: {line}");
    // It ran (and recorded its environment) once.
    assert_eq!(cluster.host(HOST).root.install_env_records().len(), 1);
    assert_nothing_half_written(&cluster);

    restart_fixed_and_expect_ready(&mut cluster, None);
}

const OPERATOR_CONFIG: &str = "token: my-shared-secret\ntls-san:\n  - rke2.demo.rancher.cn\n";

#[test]
fn operator_config_yaml_is_refused_by_default() {
    let mut cluster = solo(23, &[]);
    let host = cluster.host(HOST);
    host.root.write_config_yaml(OPERATOR_CONFIG).unwrap();
    cluster.start(HOST).unwrap();
    let status = cluster.wait_exit(HOST, EXIT).unwrap();
    assert_exit(status, 1, &cluster);
    let line = error_line(&cluster);
    assert!(
        line.contains("was not written by rke2-bootstrap") && line.contains("existing-config-policy"),
        "{line}"
    );
    let host = cluster.host(HOST);
    assert_eq!(
        std::fs::read_to_string(host.root.rke2().config_yaml()).unwrap(),
        OPERATOR_CONFIG,
        "the operator's file was changed"
    );
    assert!(host.service_calls().is_empty(), "{:?}", host.service_calls());
    assert!(!host.root.etcd_dir_exists());

    // The operator opts in to having it moved aside.
    cluster
        .host_mut(HOST)
        .extra
        .push(("existing-config-policy".into(), "backup".into()));
    cluster.start(HOST).unwrap();
    cluster
        .wait_for_phase(&[HOST], Phase::Ready, READY)
        .unwrap();
    assert_eq!(cluster.new_cluster_events(), [(HOST.to_string(), 1)]);
}

#[test]
fn operator_config_yaml_is_backed_up_when_asked() {
    let mut cluster = solo(24, &[("existing-config-policy", "backup")]);
    cluster
        .host(HOST)
        .root
        .write_config_yaml(OPERATOR_CONFIG)
        .unwrap();
    cluster.start(HOST).unwrap();
    cluster
        .wait_for_phase(&[HOST], Phase::Ready, READY)
        .unwrap();
    let host = cluster.host(HOST);
    let dir = host.root.join("/etc/rancher/rke2");
    let backups: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("config.yaml.bak."))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(
        std::fs::read_to_string(backups[0].path()).unwrap(),
        OPERATOR_CONFIG
    );
    let ours = std::fs::read_to_string(host.root.rke2().config_yaml()).unwrap();
    assert!(ours.starts_with("# managed by rke2-bootstrap"), "{ours}");
    assert!(!ours.contains("my-shared-secret"), "{ours}");
}

#[test]
fn missing_token_file_stops_before_anything_is_done() {
    let mut cluster = solo(25, &[("token-file", "/nonexistent/rke2-bootstrap/token")]);
    cluster.start(HOST).unwrap();
    let status = cluster.wait_exit(HOST, EXIT).unwrap();
    assert_exit(status, 1, &cluster);
    let line = error_line(&cluster);
    assert!(
        line.contains("token file /nonexistent/rke2-bootstrap/token does not exist"),
        "{line}"
    );
    assert_eq!(cluster.installer.requests(), 0, "the installer was fetched");
    assert_nothing_half_written(&cluster);
}

#[test]
fn unreadable_token_file_stops_before_anything_is_done() {
    // Tests run as root, who reads any file whatever its mode: a directory cannot be read as one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let mut cluster = solo(26, &[("token-file", &path)]);
    cluster.start(HOST).unwrap();
    let status = cluster.wait_exit(HOST, EXIT).unwrap();
    assert_exit(status, 1, &cluster);
    let line = error_line(&cluster);
    assert!(
        line.contains(&format!("token file {path} is not a regular file")),
        "{line}"
    );
    assert_eq!(cluster.installer.requests(), 0, "the installer was fetched");
    assert_nothing_half_written(&cluster);

    // With a token file that reads, the cluster uses the operator's token.
    let file = dir.path().join("token");
    rke2_bootstrap::fsutil::write_file_atomic(&file, b"my-shared-secret\n", 0o600).unwrap();
    cluster
        .host_mut(HOST)
        .extra
        .retain(|(k, _)| k != "token-file");
    cluster
        .host_mut(HOST)
        .extra
        .push(("token-file".into(), file.display().to_string()));
    cluster.start(HOST).unwrap();
    cluster
        .wait_for_phase(&[HOST], Phase::Ready, READY)
        .unwrap();
    let config = cluster.host(HOST).root.config_yaml().unwrap();
    assert_eq!(config["token"].as_str(), Some("my-shared-secret"));
}

/// etcd needs an odd number of servers: an even target is a configuration error (exit 2).
#[test]
fn even_server_count_is_a_configuration_error() {
    let mut cluster = solo(27, &[("servers", "2")]);
    cluster.start(HOST).unwrap();
    let status = cluster.wait_exit(HOST, EXIT).unwrap();
    assert_exit(status, 2, &cluster);
    let line = error_line(&cluster);
    assert!(
        line.contains("configuration error") && line.contains("odd"),
        "{line}"
    );
    let host = cluster.host(HOST);
    assert!(host.persisted_state().is_none(), "state written");
    assert_nothing_half_written(&cluster);
}
