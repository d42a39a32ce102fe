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
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::cluster::{ClusterSpec, TestCluster};
use rke2_bootstrap_tests::wait_until;

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
/// persisted bring-up still electing, nothing installed.
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
        assert_eq!(state["installed"], false, "{state}");
        assert_eq!(state["progress"]["step"], "electing", "{state}");
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

/// Waits until the host's status says it failed to install for `needle` and retries, and
/// returns that reason.
fn wait_for_install_retry(cluster: &TestCluster, needle: &str, timeout: Duration) -> String {
    wait_until(timeout, Duration::from_millis(100), || {
        let status = cluster.host(HOST).status();
        let reason = status
            .as_ref()
            .map(|s| s.reason.clone())
            .unwrap_or_default();
        match status {
            Some(s)
                if s.phase == Phase::Voting
                    && reason.contains("installer failed")
                    && reason.contains(needle)
                    && reason.ends_with("retrying") =>
            {
                Ok(reason)
            }
            _ => Err(reason),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", cluster.logs_tail()))
}

/// The installer is unreachable: every download is retried with backoff, the failure is shown
/// in the host's status, and the only candidate keeps its candidacy and tries again (a cluster of
/// one has nobody to hand over to). Nothing is written meanwhile.
#[test]
fn unreachable_installer_url_is_retried() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let mut cluster = solo(blocks::BAD_INPUT.id(0), &[("installer-url", &url)]);
    cluster.start(HOST).unwrap();
    let reason = wait_for_install_retry(
        &cluster,
        &format!("downloading installer from {url} failed after 5 attempts"),
        Duration::from_secs(60),
    );
    eprintln!("status: {reason}");
    let log = cluster.host(HOST).log();
    assert!(
        log.contains("installer download failed; retrying"),
        "each download is retried:\n{log}"
    );
    assert!(!log.contains("abdicat"), "{log}");
    assert!(cluster.host(HOST).status().is_some(), "the agent stopped");
    assert_eq!(cluster.installer.requests(), 0);
    assert!(cluster.host(HOST).root.install_env_records().is_empty());
    assert_nothing_half_written(&cluster);

    // The operator fixes the URL and restarts the agent.
    cluster.stop(HOST).unwrap();
    restart_fixed_and_expect_ready(&mut cluster, Some("installer-url"));
}

/// A pinned checksum that does not match: the script is never run.
#[test]
fn installer_checksum_mismatch_is_never_run() {
    let wrong = "0".repeat(64);
    let mut cluster = solo(blocks::BAD_INPUT.id(1), &[("installer-sha256", &wrong)]);
    cluster.start(HOST).unwrap();
    let reason = wait_for_install_retry(
        &cluster,
        "does not match `installer-sha256`",
        Duration::from_secs(30),
    );
    assert!(
        reason.contains(&wrong) && reason.contains("not running it"),
        "{reason}"
    );
    assert!(cluster.installer.served() >= 1);
    assert!(cluster.host(HOST).root.install_env_records().is_empty());
    assert_nothing_half_written(&cluster);

    cluster.stop(HOST).unwrap();
    restart_fixed_and_expect_ready(&mut cluster, Some("installer-sha256"));
}

/// The installer runs and exits non-zero: its exit code and last stderr lines are shown.
#[test]
fn installer_exiting_non_zero_is_reported_and_retried() {
    let mut cluster = solo(blocks::BAD_INPUT.id(2), &[]);
    cluster
        .host_mut(HOST)
        .env
        .push(("STANDIN_INSTALL_FAIL".into(), "7".into()));
    cluster.start(HOST).unwrap();
    let reason = wait_for_install_retry(&cluster, "exited with code 7", Duration::from_secs(30));
    assert!(
        reason.contains("failing on purpose"),
        "no stderr tail: {reason}"
    );
    assert!(!cluster.host(HOST).root.install_env_records().is_empty());
    assert_nothing_half_written(&cluster);

    cluster.stop(HOST).unwrap();
    restart_fixed_and_expect_ready(&mut cluster, None);
}

/// The same broken installer on every server (one image for all): candidates hand over after
/// repeated failures, but the last one never abdicates, so the cluster still forms once the
/// installer is fixed. Abdication is forever; abdicating the last candidate would strand the
/// cluster for good. A host that abdicated keeps running and voting: its seat counts toward
/// every quorum.
#[test]
fn the_last_candidate_never_abdicates() {
    let names = ["server-1", "server-2", "server-3"];
    let hosts: Vec<(&str, &'static str)> = names.iter().map(|n| (*n, "server")).collect();
    let mut cluster = TestCluster::new(ClusterSpec::new(blocks::BAD_INPUT.id(8), &hosts)).unwrap();
    for name in names {
        cluster
            .host_mut(name)
            .env
            .push(("STANDIN_INSTALL_FAIL".into(), "7".into()));
    }
    cluster.start_all().unwrap();
    // The first two give up their candidacy in turn, and their agents go on voting.
    for name in ["server-1", "server-2"] {
        wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
            cluster
                .host(name)
                .log()
                .contains("giving up the first-server candidacy")
        })
        .unwrap_or_else(|e| panic!("{e:#}{}", cluster.logs_tail()));
        assert!(
            cluster.host(name).is_running(),
            "{}",
            cluster.host(name).log()
        );
    }
    // The last one keeps trying, past the failures after which the others gave up.
    wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        let log = cluster.host("server-3").log();
        log.lines()
            .any(|l| l.contains("installing rke2 failed; retrying") && l.contains("attempt=3"))
            || log.contains("giving up")
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", cluster.logs_tail()));
    let log = cluster.host("server-3").log();
    assert!(
        !log.contains("giving up"),
        "the last candidate abdicated:\n{log}"
    );
    assert!(log.contains("no other candidate could take over"), "{log}");

    // The installer is fixed: every agent is (re)started with it, and the cluster forms around
    // the candidate that kept its candidacy.
    for name in names {
        cluster.stop(name).unwrap();
        cluster.host_mut(name).env.clear();
        cluster.start(name).unwrap();
    }
    cluster
        .wait_for_phase(&names, Phase::Ready, Duration::from_secs(60))
        .unwrap();
    assert_eq!(cluster.initializers(), ["server-3"]);
    assert_eq!(cluster.new_cluster_events(), [("server-3".to_string(), 1)]);
}

const OPERATOR_CONFIG: &str = "token: my-shared-secret\ntls-san:\n  - rke2.demo.rancher.cn\n";

#[test]
fn operator_config_yaml_is_refused_by_default() {
    let mut cluster = solo(blocks::BAD_INPUT.id(3), &[]);
    let host = cluster.host(HOST);
    host.root.write_config_yaml(OPERATOR_CONFIG).unwrap();
    cluster.start(HOST).unwrap();
    let status = cluster.wait_exit(HOST, EXIT).unwrap();
    assert_exit(status, 1, &cluster);
    let line = error_line(&cluster);
    assert!(
        line.contains("was not written by rke2-bootstrap")
            && line.contains("existing-config-policy: backup"),
        "{line}"
    );
    let host = cluster.host(HOST);
    assert_eq!(
        std::fs::read_to_string(host.root.rke2().config_yaml()).unwrap(),
        OPERATOR_CONFIG,
        "the operator's file was changed"
    );
    // Refused before taking part in anything: nothing downloaded, installed or started.
    assert_eq!(cluster.installer.requests(), 0);
    assert!(host
        .persisted_state()
        .is_none_or(|s| s["election"]["vote"].is_null()));
    assert!(!host.root.join("/usr/local/bin/rke2").exists());
    assert!(
        host.service_calls().is_empty(),
        "{:?}",
        host.service_calls()
    );

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
    let mut cluster = solo(
        blocks::BAD_INPUT.id(4),
        &[("existing-config-policy", "backup")],
    );
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
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("config.yaml.bak.")
        })
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
    let mut cluster = solo(
        blocks::BAD_INPUT.id(5),
        &[("token-file", "/nonexistent/rke2-bootstrap/token")],
    );
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

/// The harness's own promise, on the same failure: waiting for a phase an exited agent can never
/// reach ends with that reason, not after the whole timeout with a list of stale phases.
#[test]
fn waiting_for_a_phase_ends_when_the_agent_exits() {
    let mut cluster = solo(
        blocks::BAD_INPUT.id(9),
        &[("token-file", "/nonexistent/rke2-bootstrap/token")],
    );
    cluster.start(HOST).unwrap();
    let err = cluster
        .wait_for_phase(&[HOST], Phase::Ready, READY)
        .expect_err("an exited agent reached Ready");
    assert!(
        format!("{err:#}").contains(&format!("the agent of {HOST} exited")),
        "{err:#}"
    );
    assert_exit(cluster.wait_exit(HOST, EXIT).unwrap(), 1, &cluster);
}

#[test]
fn unreadable_token_file_stops_before_anything_is_done() {
    // Tests run as root, who reads any file whatever its mode: a directory cannot be read as one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let mut cluster = solo(blocks::BAD_INPUT.id(6), &[("token-file", &path)]);
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
    let mut cluster = solo(blocks::BAD_INPUT.id(7), &[("servers", "2")]);
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
