//! The stand-ins, exercised through their contracts: the installer script, the fake service
//! manager, the `rke2-standin` server and agent, and the harness pieces around them.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rke2_bootstrap::rke2::kube::{self, KubeAdmin, NodeDeletion};
use rke2_bootstrap_tests::blocks;
use rke2_bootstrap_tests::http::{
    https_get_blocking, https_get_blocking_as, https_request_blocking_as, ClientIdentity, Response,
    Trust,
};
use rke2_bootstrap_tests::process::processes_under;
use rke2_bootstrap_tests::standin::{ca_hash, etcd, Token};
use rke2_bootstrap_tests::{
    fixture_path, install_script, wait_until, ChildGuard, FailMode, HostRoot, InstallerServer,
    TcpProxy,
};

const SERVER: &str = "rke2-server.service";
const AGENT: &str = "rke2-agent.service";
const POLL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(20);

/// The stand-in built for this very test run (cargo builds it before integration tests).
fn standin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rke2-standin"))
}

/// Runs the installer script for `host` with extra environment; returns its output.
fn run_installer(host: &HostRoot, env: &[(&str, &str)]) -> Output {
    let mut cmd = installer_command(env);
    cmd.env("INSTALL_RKE2_TAR_PREFIX", host.tar_prefix());
    cmd.output().expect("running the installer")
}

fn installer_command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg(fixture_path("install.sh"));
    for (key, _) in std::env::vars() {
        if key.starts_with("INSTALL_RKE2_") || key.starts_with("STANDIN_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

fn install(host: &HostRoot, kind: &str) {
    let out = run_installer(host, &[("INSTALL_RKE2_TYPE", kind)]);
    assert!(out.status.success(), "installer failed: {out:?}");
}

/// `fake-systemctl --root <host> --standin <standin> <args>` with extra environment.
fn systemctl(host: &HostRoot, args: &[&str], env: &[(&str, &str)]) -> Output {
    let argv = host.service_manager_command(&standin());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("STANDIN_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("running fake-systemctl")
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Each host gets its own node name (from its address): RKE2 refuses a second node of one name.
fn server_config(ip: IpAddr, token: &str, server: Option<SocketAddr>, sans: &[&str]) -> String {
    let name = format!("node-{ip}").replace('.', "-");
    named_server_config(&name, ip, token, server, sans)
}

fn named_server_config(
    name: &str,
    ip: IpAddr,
    token: &str,
    server: Option<SocketAddr>,
    sans: &[&str],
) -> String {
    let mut yaml = format!("token: \"{token}\"\nnode-ip: \"{ip}\"\nnode-name: \"{name}\"\n");
    if let Some(server) = server {
        yaml.push_str(&format!("server: \"https://{server}\"\n"));
    }
    if !sans.is_empty() {
        yaml.push_str("tls-san:\n");
        for san in sans {
            yaml.push_str(&format!("  - \"{san}\"\n"));
        }
    }
    yaml.push_str("write-kubeconfig-mode: \"0644\"\n");
    yaml
}

/// A host with rke2 installed and config.yaml written.
fn host_with_config(name: &str, kind: &str, yaml: &str) -> HostRoot {
    let host = HostRoot::new(name).unwrap();
    install(&host, kind);
    host.write_config_yaml(yaml).unwrap();
    host
}

fn get(addr: SocketAddr, path: &str, trust: &Trust) -> anyhow::Result<Response> {
    https_get_blocking(addr, path, &[], trust, Duration::from_secs(5))
}

fn supervisor(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 9345)
}

fn api(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 6443)
}

/// Drops the host and checks that none of its processes survived.
fn assert_clean(host: HostRoot) {
    let path = host.path().to_path_buf();
    drop(host);
    assert_no_processes(&path);
}

fn assert_no_processes(root: &Path) {
    let left = processes_under(root);
    assert!(
        left.is_empty(),
        "processes left under {}: {left:?}",
        root.display()
    );
}

/// Starts a first server on `ip` and waits until it is ready (the start blocks until then).
fn first_server(name: &str, ip: IpAddr, token: &str, sans: &[&str]) -> HostRoot {
    let host = host_with_config(name, "server", &server_config(ip, token, None, sans));
    let out = systemctl(&host, &["enable", "--now", SERVER], &[]);
    assert_eq!(
        code(&out),
        0,
        "enable --now failed: {out:?}\n{}",
        host.unit_log(SERVER)
    );
    host
}

// --- installer ------------------------------------------------------------------------------------

#[test]
fn installer_records_env_and_installs_rke2() {
    let host = HostRoot::new("installer").unwrap();
    let out = run_installer(
        &host,
        &[
            ("INSTALL_RKE2_TYPE", "agent"),
            ("INSTALL_RKE2_VERSION", "v1.30.4+rke2r1"),
            ("INSTALL_RKE2_CHANNEL", "stable"),
            ("INSTALL_RKE2_METHOD", "tar"),
        ],
    );
    assert!(out.status.success(), "{out:?}");

    let records = host.install_env_records();
    assert_eq!(records.len(), 1, "{records:?}");
    let rec = &records[0];
    assert_eq!(rec["INSTALL_RKE2_TYPE"], "agent");
    assert_eq!(rec["INSTALL_RKE2_VERSION"], "v1.30.4+rke2r1");
    assert_eq!(rec["INSTALL_RKE2_CHANNEL"], "stable");
    assert_eq!(rec["INSTALL_RKE2_METHOD"], "tar");
    assert_eq!(
        rec["INSTALL_RKE2_TAR_PREFIX"],
        host.tar_prefix().display().to_string()
    );
    assert_eq!(rec.len(), 5, "only INSTALL_RKE2_* is recorded: {rec:?}");

    let rke2 = host.join("/usr/local/bin/rke2");
    let version = Command::new(&rke2).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        "rke2 version v1.30.4+rke2r1"
    );
    for unit in [SERVER, AGENT] {
        assert!(
            host.join(format!("/usr/local/lib/systemd/system/{unit}"))
                .is_file(),
            "{unit} not installed"
        );
    }

    // A second run appends a second record; without a version the default is reported.
    let out = run_installer(&host, &[]);
    assert!(out.status.success(), "{out:?}");
    let records = host.install_env_records();
    assert_eq!(records.len(), 2);
    assert!(!records[1].contains_key("INSTALL_RKE2_TYPE"));
    let version = Command::new(&rke2).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        "rke2 version v1.31.0+rke2r1"
    );
    assert_clean(host);
}

#[test]
fn installer_refuses_the_real_prefix() {
    let host = HostRoot::new("refuse").unwrap();
    let inside = host.path().display().to_string();
    for prefix in [
        "/usr/local",
        "/usr/local/",
        "//usr//local",
        "",
        "usr/local",
        "/usr",
        "/",
        &format!("{inside}/../usr/local"),
        // A prefix whose root (two levels up) would be `/`.
        "/opt/x",
    ] {
        let mut cmd = installer_command(&[]);
        cmd.env("INSTALL_RKE2_TAR_PREFIX", prefix);
        let out = cmd.output().unwrap();
        assert!(
            !out.status.success(),
            "prefix {prefix:?} was accepted: {out:?}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
            "prefix {prefix:?}: no message"
        );
    }
    // Unset altogether.
    let out = installer_command(&[]).output().unwrap();
    assert!(!out.status.success());
    assert!(host.install_env_records().is_empty());

    // Invalid requests are refused like the real installer refuses them.
    for env in [
        [("INSTALL_RKE2_TYPE", "worker")],
        [("INSTALL_RKE2_METHOD", "zip")],
        [("INSTALL_RKE2_ARTIFACT_PATH", "/nonexistent/artifacts")],
    ] {
        let out = run_installer(&host, &env);
        assert_eq!(code(&out), 1, "{env:?} accepted: {out:?}");
    }
    assert!(!host.join("/usr/local/bin/rke2").exists());
    assert_clean(host);
}

/// The rpm method as the real installer runs it where yum exists: one package per run, each
/// shipping only its own unit, so a host that installed the server package has no
/// rke2-agent.service until the installer runs again for the agent type.
#[test]
fn installer_rpm_method_ships_one_unit_per_package() {
    let host = HostRoot::new("rpm").unwrap();
    let units = |host: &HostRoot| {
        ["rke2-server.service", "rke2-agent.service"]
            .map(|u| host.join(format!("/usr/lib/systemd/system/{u}")).exists())
    };
    // With yum, rpm is the default method.
    let out = run_installer(&host, &[("STANDIN_HAS_YUM", "1")]);
    assert!(out.status.success(), "{out:?}");
    assert!(host.join("/usr/bin/rke2").exists());
    assert!(!host.join("/usr/local/bin/rke2").exists());
    assert_eq!(units(&host), [true, false]);
    let out = systemctl(&host, &["start", "rke2-agent.service"], &[]);
    assert_eq!(code(&out), 5, "no agent unit yet: {out:?}");

    let out = run_installer(
        &host,
        &[
            ("INSTALL_RKE2_METHOD", "rpm"),
            ("INSTALL_RKE2_TYPE", "agent"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(units(&host), [true, true]);
    let packages = std::fs::read_to_string(host.join("/var/lib/rpm/standin-packages")).unwrap();
    assert_eq!(
        packages.lines().collect::<Vec<_>>(),
        ["rke2-common", "rke2-server", "rke2-agent"]
    );
    // An air-gap artifact path turns the rpm default off, as in the real installer.
    let tar = HostRoot::new("rpm-airgap").unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let out = run_installer(
        &tar,
        &[
            ("STANDIN_HAS_YUM", "1"),
            (
                "INSTALL_RKE2_ARTIFACT_PATH",
                artifacts.path().to_str().unwrap(),
            ),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(tar.join("/usr/local/bin/rke2").exists());
    assert_clean(host);
    assert_clean(tar);
}

#[test]
fn installer_fail_and_sleep_knobs() {
    let host = HostRoot::new("knobs").unwrap();
    let out = run_installer(&host, &[("STANDIN_INSTALL_FAIL", "7")]);
    assert_eq!(code(&out), 7, "{out:?}");
    assert_eq!(
        host.install_env_records().len(),
        1,
        "a failed run is still recorded"
    );
    assert!(!host.join("/usr/local/bin/rke2").exists());

    // Killed mid-install: the run is recorded, nothing is installed, nothing is left running.
    let mut cmd = installer_command(&[("STANDIN_INSTALL_SLEEP", "30")]);
    cmd.env("INSTALL_RKE2_TAR_PREFIX", host.tar_prefix())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut child = ChildGuard::spawn(&mut cmd).unwrap();
    wait_until(TIMEOUT, POLL, || host.install_env_records().len() == 2).unwrap();
    child.kill_group();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(!host.join("/usr/local/bin/rke2").exists());
    drop(child);
    assert_clean(host);
}

#[test]
fn installer_server_serves_the_script_and_injects_failures() {
    let server = InstallerServer::start(install_script()).unwrap();
    assert!(server.url().starts_with("http://127.0.0.1:"));
    let fetch = |path: &str| -> (Option<u16>, Vec<u8>) {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok());
        let body = match text.find("\r\n\r\n") {
            Some(i) => raw[i + 4..].to_vec(),
            None => Vec::new(),
        };
        (status, body)
    };
    assert_eq!(fetch("/"), (Some(200), install_script()));
    assert_eq!(fetch("/install.sh").0, Some(200));
    assert_eq!(fetch("/other").0, Some(404));

    server.fail_next(1, FailMode::Status500);
    server.fail_next(1, FailMode::Close);
    assert_eq!(fetch("/").0, Some(500));
    assert_eq!(fetch("/"), (None, Vec::new()));
    assert_eq!(fetch("/").0, Some(200));
    assert_eq!(server.requests(), 6);
    assert_eq!(server.served(), 3);

    server.set_script(b"#!/bin/sh\nexit 0\n".to_vec());
    assert_eq!(fetch("/").1, b"#!/bin/sh\nexit 0\n");
}

// --- fake service manager ----------------------------------------------------------------------------

#[test]
fn service_manager_refuses_what_systemctl_refuses() {
    let host = HostRoot::new("svc-refuse").unwrap();
    // Not installed yet: the unit does not exist.
    assert_eq!(code(&systemctl(&host, &["start", SERVER], &[])), 5);
    assert_eq!(
        code(&systemctl(&host, &["enable", "--now", SERVER], &[])),
        1
    );
    assert_eq!(code(&systemctl(&host, &["is-active", SERVER], &[])), 3);
    assert_eq!(code(&systemctl(&host, &["frobnicate", SERVER], &[])), 1);
    assert_eq!(code(&systemctl(&host, &["daemon-reload"], &[])), 0);
    install(&host, "server");
    assert_eq!(code(&systemctl(&host, &["is-enabled", SERVER], &[])), 1);
    // No config.yaml: the stand-in exits and start reports the failure.
    let out = systemctl(&host, &["start", SERVER], &[]);
    assert_eq!(code(&out), 1, "{out:?}");
    assert!(host.unit_log(SERVER).contains("config.yaml"));

    let log = host.systemctl_log();
    let verbs: Vec<&str> = log.iter().map(|(_, args)| args.as_str()).collect();
    assert_eq!(
        verbs,
        [
            "start rke2-server.service",
            "enable --now rke2-server.service",
            "is-active rke2-server.service",
            "frobnicate rke2-server.service",
            "daemon-reload",
            "is-enabled rke2-server.service",
            "start rke2-server.service",
        ]
    );
    assert!(log.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(log[0].0 > 1_600_000_000_000, "unix milliseconds");
    assert_clean(host);
}

#[test]
fn first_server_answers_ping_and_cacerts_before_readyz() {
    let ip = blocks::STANDIN.ip(1, 1);
    let lb = blocks::STANDIN.ip(1, 100).to_string();
    let host = host_with_config(
        "first",
        "server",
        &server_config(ip, "s3cret", None, &["lb.example.test", &lb]),
    );
    host.set_unit_env("rke2-server", &[("STANDIN_API_DELAY_MS", "6000")])
        .unwrap();
    let out = systemctl(
        &host,
        &["enable", "--now", "--no-block", "rke2-server"],
        &[],
    );
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(host
        .join("/etc/systemd/system/multi-user.target.wants/rke2-server.service")
        .exists());

    let pong = wait_until(TIMEOUT, POLL, || get(supervisor(ip), "/ping", &Trust::Any)).unwrap();
    assert_eq!((pong.status, pong.text().as_str()), (200, "pong"));
    // The supervisor answers while the API is still starting.
    let early = get(api(ip), "/readyz", &Trust::Any).unwrap();
    assert_eq!(early.status, 503, "{}", early.text());
    // Nor does it serve joins yet.
    let early_join = https_get_blocking(
        supervisor(ip),
        "/standin/ca-key",
        &[("Authorization", "Bearer s3cret")],
        &Trust::Any,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(early_join.status, 503);

    let cacerts = get(supervisor(ip), "/cacerts", &Trust::Any).unwrap();
    assert_eq!(cacerts.status, 200);
    assert_eq!(Some(cacerts.body.clone()), host.server_ca_pem());
    let token = host.server_token().unwrap();
    assert_eq!(token, Token::full(&ca_hash(&cacerts.body), "s3cret"));
    // etcd was started before the supervisor listened, but writes its WAL on its own time.
    wait_until(TIMEOUT, POLL, || host.etcd_dir_exists()).expect("etcd writes its data dir");
    let ca = Trust::CaPem(cacerts.body.clone());

    // Ready later, over a connection verified against the cluster CA for the node's address, for
    // the node's own kubelet identity (an anonymous client gets 401, as from RKE2).
    let node = host.kubelet_identity().expect("kubelet identity written");
    assert!(
        std::fs::read_to_string(host.rke2().kubelet_client_key())
            .unwrap()
            .starts_with("-----BEGIN EC PRIVATE KEY-----"),
        "the kubelet key is SEC1, as RKE2 writes it"
    );
    let as_node = |path: &str| {
        https_get_blocking_as(api(ip), path, &[], &ca, Some(&node), Duration::from_secs(5))
    };
    let ready = wait_until(TIMEOUT, POLL, || {
        as_node("/readyz").ok().filter(|r| r.status == 200)
    })
    .unwrap();
    assert_eq!(ready.text(), "ok");
    assert_eq!(get(api(ip), "/readyz", &ca).unwrap().status, 401);
    assert_eq!(as_node("/livez").unwrap().status, 200);
    assert_eq!(get(api(ip), "/api", &ca).unwrap().status, 404);
    assert_eq!(get(supervisor(ip), "/nope", &ca).unwrap().status, 404);
    assert_eq!(
        get(supervisor(ip), "/standin/ca-key", &ca).unwrap().status,
        401
    );
    let key = https_get_blocking(
        supervisor(ip),
        "/standin/ca-key",
        &[("Authorization", "Bearer s3cret")],
        &ca,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(key.status, 200);
    assert_eq!(
        Some(key.body),
        std::fs::read(host.rke2().ca_key()).ok(),
        "the join endpoint hands out the cluster ca key"
    );

    // is-active / stop.
    let pid = host.unit_pid(SERVER).expect("running");
    assert_eq!(code(&systemctl(&host, &["is-active", SERVER], &[])), 0);
    assert_eq!(code(&systemctl(&host, &["stop", SERVER], &[])), 0);
    assert_eq!(code(&systemctl(&host, &["is-active", SERVER], &[])), 3);
    assert!(!rke2_bootstrap_tests::pid_alive(pid));
    assert!(host.unit_log(SERVER).contains("received sigterm"));
    assert!(get(supervisor(ip), "/ping", &Trust::Any).is_err());
    assert_clean(host);
}

#[test]
fn start_blocks_until_ready_and_is_idempotent() {
    let ip = blocks::STANDIN.ip(2, 1);
    let host = host_with_config("blocking", "server", &server_config(ip, "t", None, &[]));
    let started = Instant::now();
    let out = systemctl(
        &host,
        &["start", SERVER],
        &[("STANDIN_API_DELAY_MS", "700")],
    );
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(started.elapsed() >= Duration::from_millis(700));
    // Ready means the API answers now.
    let bearer = https_get_blocking(
        api(ip),
        "/readyz",
        &[("Authorization", "Bearer t")],
        &Trust::Any,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(bearer.status, 200);

    let pid = host.unit_pid(SERVER).unwrap();
    assert_eq!(code(&systemctl(&host, &["start", SERVER], &[])), 0);
    assert_eq!(
        code(&systemctl(&host, &["enable", "--now", SERVER], &[])),
        0
    );
    assert_eq!(host.unit_pid(SERVER), Some(pid), "start is idempotent");
    // The unit's main pid (which restarts the service, as Restart=always does) and the stand-in.
    let processes = host.processes();
    assert_eq!(processes.len(), 2, "{processes:?}");
    assert!(processes.contains(&pid), "{processes:?}");

    // Restart: a new process, the same cluster identity.
    let hash = host.ca_hash().unwrap();
    assert_eq!(code(&systemctl(&host, &["restart", SERVER], &[])), 0);
    let new_pid = host.unit_pid(SERVER).unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(host.ca_hash().unwrap(), hash);

    // A crash (kill -9) shows as inactive; start brings it back with the same CA.
    host.kill_standins();
    assert_eq!(code(&systemctl(&host, &["is-active", SERVER], &[])), 3);
    assert_eq!(code(&systemctl(&host, &["start", SERVER], &[])), 0);
    assert_eq!(host.ca_hash().unwrap(), hash);
    assert!(host.unit_log(SERVER).contains("reusing the cluster ca"));
    assert_clean(host);
}

// --- joining ---------------------------------------------------------------------------------------

#[test]
fn joiner_with_the_full_token_gets_the_same_ca() {
    let first_ip = blocks::STANDIN.ip(3, 1);
    let first = first_server("first", first_ip, "s3cret", &[]);
    let token = first.server_token().unwrap();
    assert!(token.starts_with("K10"));

    let join_ip = blocks::STANDIN.ip(3, 2);
    let joiner = host_with_config(
        "joiner",
        "server",
        &server_config(join_ip, &token, Some(supervisor(first_ip)), &[]),
    );
    let out = systemctl(&joiner, &["enable", "--now", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}\n{}", joiner.unit_log(SERVER));
    assert_eq!(joiner.server_ca_pem(), first.server_ca_pem());
    assert_eq!(joiner.server_token(), Some(token.clone()));
    assert!(joiner.etcd_dir_exists());
    let cacerts = get(supervisor(join_ip), "/cacerts", &Trust::Any).unwrap();
    assert_eq!(Some(cacerts.body), first.server_ca_pem());

    // A short token works too (no CA check, trust on first use), and a joiner of the joiner
    // lands in the same cluster.
    let third_ip = blocks::STANDIN.ip(3, 3);
    let third = host_with_config(
        "third",
        "server",
        &server_config(third_ip, "s3cret", Some(supervisor(join_ip)), &[]),
    );
    // etcd refuses a new member until every voting member has been connected for 5 s ("unhealthy
    // cluster"), and the joiner was promoted just now: like rke2, the third exits and its unit
    // restarts it (RestartSec=5s) until etcd accepts it.
    let out = systemctl(&third, &["start", "--no-block", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}");
    wait_until(Duration::from_secs(40), POLL, || {
        code(&systemctl(&third, &["is-active", SERVER], &[])) == 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", third.unit_log(SERVER)));
    assert_eq!(third.ca_hash(), first.ca_hash());

    // Reboot of a joined server while the first one is down: it keeps its identity.
    assert_eq!(code(&systemctl(&first, &["stop", SERVER], &[])), 0);
    joiner.kill_standins();
    assert_eq!(code(&systemctl(&joiner, &["start", SERVER], &[])), 0);
    assert_eq!(joiner.ca_hash(), first.ca_hash());
    assert_clean(third);
    assert_clean(joiner);
    assert_clean(first);
}

#[test]
fn joiner_waits_until_the_first_server_serves_joins() {
    let first_ip = blocks::STANDIN.ip(9, 1);
    let first = host_with_config(
        "first",
        "server",
        &server_config(first_ip, "s3cret", None, &[]),
    );
    let out = systemctl(
        &first,
        &["start", "--no-block", SERVER],
        &[("STANDIN_API_DELAY_MS", "1500")],
    );
    assert_eq!(code(&out), 0, "{out:?}");
    let joiner = host_with_config(
        "joiner",
        "server",
        &server_config(
            blocks::STANDIN.ip(9, 2),
            "s3cret",
            Some(supervisor(first_ip)),
            &[],
        ),
    );
    let out = systemctl(&joiner, &["start", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}\n{}", joiner.unit_log(SERVER));
    assert_eq!(joiner.ca_hash(), first.ca_hash());
    assert!(
        joiner.unit_log(SERVER).contains("waiting for"),
        "{}",
        joiner.unit_log(SERVER)
    );
    assert_clean(joiner);
    assert_clean(first);
}

#[test]
fn joiner_with_a_wrong_token_fails() {
    let first_ip = blocks::STANDIN.ip(4, 1);
    let first = first_server("first", first_ip, "right", &[]);
    let hash = first.ca_hash().unwrap();
    let env = [("STANDIN_JOIN_TIMEOUT_MS", "5000")];

    // Wrong secret: 401, fatal at once.
    let wrong_secret = host_with_config(
        "wrong-secret",
        "server",
        &server_config(
            blocks::STANDIN.ip(4, 2),
            &Token::full(&hash, "wrong"),
            Some(supervisor(first_ip)),
            &[],
        ),
    );
    let out = systemctl(&wrong_secret, &["start", SERVER], &env);
    assert_ne!(code(&out), 0);
    let log = wrong_secret.unit_log(SERVER);
    assert!(log.contains("401"), "{log}");
    assert!(wrong_secret.server_ca_pem().is_none());
    assert!(!wrong_secret.etcd_dir_exists());

    // Right secret, wrong CA hash: refuses before sending the secret.
    let wrong_hash = host_with_config(
        "wrong-hash",
        "server",
        &server_config(
            blocks::STANDIN.ip(4, 3),
            &Token::full(&"0".repeat(64), "right"),
            Some(supervisor(first_ip)),
            &[],
        ),
    );
    let out = systemctl(&wrong_hash, &["start", SERVER], &env);
    assert_ne!(code(&out), 0);
    let log = wrong_hash.unit_log(SERVER);
    assert!(log.contains("ca hash mismatch"), "{log}");
    assert!(!first
        .unit_log(SERVER)
        .contains(&blocks::STANDIN.ip(4, 3).to_string()));

    // A node whose data was created with one token does not start with another.
    let first_cfg = server_config(first_ip, "changed", None, &[]);
    first.write_config_yaml(&first_cfg).unwrap();
    assert_ne!(code(&systemctl(&first, &["restart", SERVER], &[])), 0);
    assert!(first
        .unit_log(SERVER)
        .contains("does not match the one this node's data was created with"));
    assert_clean(wrong_secret);
    assert_clean(wrong_hash);
    assert_clean(first);
}

#[test]
fn joiner_retries_until_the_lb_has_an_upstream_and_needs_the_lb_in_tls_san() {
    let lb_ip = blocks::STANDIN.ip(5, 100);
    let lb = TcpProxy::start(SocketAddr::new(lb_ip, 9345), None).unwrap();
    let first_ip = blocks::STANDIN.ip(5, 1);
    let first = first_server("first", first_ip, "s3cret", &[&lb_ip.to_string()]);
    let token = first.server_token().unwrap();

    // Start the joiner while the LB has no upstream; it keeps retrying.
    let joiner = host_with_config(
        "joiner",
        "server",
        &server_config(blocks::STANDIN.ip(5, 2), &token, Some(lb.addr()), &[]),
    );
    let out = systemctl(&joiner, &["start", "--no-block", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}");
    wait_until(TIMEOUT, POLL, || lb.connections() >= 2).unwrap();
    assert!(joiner.server_ca_pem().is_none());
    assert!(joiner.unit_pid(SERVER).is_some(), "still retrying");

    lb.set_upstream(Some(supervisor(first_ip)));
    wait_until(TIMEOUT, POLL, || joiner.ca_hash()).unwrap();
    assert_eq!(joiner.ca_hash(), first.ca_hash());

    // A cluster whose certificates do not name the LB address: joining through the LB fails.
    let other_ip = blocks::STANDIN.ip(5, 3);
    let other = first_server("other", other_ip, "s3cret", &[]);
    lb.set_upstream(Some(supervisor(other_ip)));
    let bad = host_with_config(
        "bad",
        "server",
        &server_config(
            blocks::STANDIN.ip(5, 4),
            &other.server_token().unwrap(),
            Some(lb.addr()),
            &[],
        ),
    );
    let out = systemctl(&bad, &["start", SERVER], &[]);
    assert_ne!(code(&out), 0);
    let log = bad.unit_log(SERVER);
    assert!(log.contains("tls-san"), "{log}");
    for host in [bad, other, joiner, first] {
        assert_clean(host);
    }
}

#[test]
fn agent_joins_and_stays_running() {
    let first_ip = blocks::STANDIN.ip(6, 1);
    let first = first_server("first", first_ip, "s3cret", &[]);
    let token = first.server_token().unwrap();

    let agent = HostRoot::new("agent").unwrap();
    install(&agent, "agent");
    agent
        .write_config_yaml(&format!(
            "token: \"{token}\"\nnode-name: agent\nserver: \"https://{}\"\n",
            supervisor(first_ip)
        ))
        .unwrap();
    let out = systemctl(&agent, &["enable", "--now", AGENT], &[]);
    assert_eq!(code(&out), 0, "{out:?}\n{}", agent.unit_log(AGENT));
    assert!(agent.agent_joined());
    assert!(agent.join("/var/lib/rancher/rke2/agent").is_dir());
    assert!(agent.unit_pid(AGENT).is_some());
    assert_eq!(code(&systemctl(&agent, &["is-active", AGENT], &[])), 0);
    assert_eq!(code(&systemctl(&agent, &["is-active", SERVER], &[])), 3);
    assert!(agent.server_ca_pem().is_none(), "agents hold no server CA");
    assert!(agent.rke2().kubelet_client_cert().is_file());

    // An agent with a wrong token does not join.
    let stranger = HostRoot::new("stranger").unwrap();
    install(&stranger, "agent");
    stranger
        .write_config_yaml(&format!(
            "token: wrong\nnode-name: stranger\nserver: \"https://{}\"\n",
            supervisor(first_ip)
        ))
        .unwrap();
    assert_ne!(code(&systemctl(&stranger, &["start", AGENT], &[])), 0);
    assert!(!stranger.agent_joined());

    assert_eq!(code(&systemctl(&agent, &["stop", AGENT], &[])), 0);
    assert_eq!(code(&systemctl(&agent, &["is-active", AGENT], &[])), 3);
    assert_clean(stranger);
    assert_clean(agent);
    assert_clean(first);
}

// --- harness ---------------------------------------------------------------------------------------

#[test]
fn child_guard_kills_the_whole_group_and_host_roots_kill_their_standins() {
    // A child that leaves a grandchild behind in its group.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 300 & echo $!; exec sleep 300"])
        .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(&mut cmd).unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = guard.child_mut().stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
    }
    let grandchild: i32 = line.trim().parse().unwrap();
    let child = guard.id() as i32;
    assert!(rke2_bootstrap_tests::pid_alive(grandchild));
    drop(guard);
    wait_until(TIMEOUT, POLL, || {
        !rke2_bootstrap_tests::pid_alive(grandchild) && !rke2_bootstrap_tests::pid_alive(child)
    })
    .unwrap();

    // Dropping a host root kills the stand-ins its service manager started.
    let ip = blocks::STANDIN.ip(7, 1);
    let host = first_server("dropped", ip, "t", &[]);
    let pid = host.unit_pid(SERVER).unwrap();
    let path = host.path().to_path_buf();
    drop(host);
    assert!(!rke2_bootstrap_tests::pid_alive(pid));
    assert!(!path.exists());
    assert_no_processes(&path);
    assert!(get(supervisor(ip), "/ping", &Trust::Any).is_err());
}

#[test]
fn api_can_deny_anonymous_probes() {
    let ip = blocks::STANDIN.ip(8, 1);
    let host = host_with_config("anon", "server", &server_config(ip, "s3cret", None, &[]));
    host.set_unit_env(
        "rke2-server",
        &[
            ("STANDIN_API_ANONYMOUS", "deny"),
            ("STANDIN_API_DELAY_MS", "0"),
        ],
    )
    .unwrap();
    let out = systemctl(&host, &["start", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}\n{}", host.unit_log(SERVER));
    assert_eq!(get(api(ip), "/readyz", &Trust::Any).unwrap().status, 401);
    let authed = https_get_blocking(
        api(ip),
        "/readyz",
        &[("Authorization", "Bearer s3cret")],
        &Trust::Any,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(authed.status, 200);

    // The node's kubelet client certificate is an authenticated identity, as on RKE2.
    let identity = host.kubelet_identity().expect("kubelet client identity");
    let as_node = https_get_blocking_as(
        api(ip),
        "/readyz",
        &[],
        &Trust::Any,
        Some(&identity),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(as_node.status, 200);

    // A certificate from another cluster is refused outright.
    let other = rke2_bootstrap_tests::standin::ClusterCa::generate().unwrap();
    let (cert, key) = other
        .client_cert("system:node:x", "system:nodes", None)
        .unwrap();
    let stranger = ClientIdentity {
        cert_pem: cert.into_bytes(),
        key_pem: key.into_bytes(),
    };
    let refused = https_get_blocking_as(
        api(ip),
        "/readyz",
        &[],
        &Trust::Any,
        Some(&stranger),
        Duration::from_secs(5),
    );
    assert!(
        refused.is_err() || refused.as_ref().unwrap().status != 200,
        "{refused:?}"
    );
    assert_clean(host);
}

// --- day-2: node objects and the admin API ---------------------------------------------------------

/// Runs a future on a runtime of its own (the agent's API client is async; these tests are not).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// The node names etcd's members stand for, as seen from `host`'s member.
fn member_nodes(host: &HostRoot, ip: IpAddr) -> Vec<String> {
    let client = etcd::Client::for_host(SocketAddr::new(ip, 2379), &host.rke2()).unwrap();
    let members = client.member_list().unwrap().members;
    sorted(
        members
            .iter()
            .map(|m| etcd::member_node_name(&m.name).to_string())
            .collect(),
    )
}

fn etcd_has(host: &HostRoot, ip: IpAddr, key: &str) -> bool {
    let client = etcd::Client::for_host(SocketAddr::new(ip, 2379), &host.rke2()).unwrap();
    client.get(key).unwrap().is_some()
}

#[test]
fn an_admin_deletes_a_dead_servers_node_and_its_etcd_member_goes_with_it() {
    let ips = [
        blocks::STANDIN_ADMIN.ip(0, 1),
        blocks::STANDIN_ADMIN.ip(0, 2),
        blocks::STANDIN_ADMIN.ip(0, 3),
    ];
    // "server-1" and "server-10": deleting the first must not touch the second's member.
    let first = host_with_config(
        "server-1",
        "server",
        &named_server_config("server-1", ips[0], "s3cret", None, &[]),
    );
    let out = systemctl(&first, &["enable", "--now", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}\n{}", first.unit_log(SERVER));
    let token = first.server_token().unwrap();
    let second = host_with_config(
        "server-10",
        "server",
        &named_server_config("server-10", ips[1], &token, Some(supervisor(ips[0])), &[]),
    );
    let out = systemctl(&second, &["enable", "--now", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}\n{}", second.unit_log(SERVER));
    // etcd adds the third member only once the second has been connected for 5 s: the unit
    // restarts the third until then, as rke2's does.
    let third = host_with_config(
        "server-2",
        "server",
        &named_server_config("server-2", ips[2], &token, Some(supervisor(ips[0])), &[]),
    );
    let out = systemctl(&third, &["enable", "--now", "--no-block", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}");
    let agent = HostRoot::new("agent-1").unwrap();
    install(&agent, "agent");
    agent
        .write_config_yaml(&format!(
            "token: \"{token}\"\nnode-name: agent-1\nserver: \"https://{}\"\n",
            supervisor(ips[0])
        ))
        .unwrap();
    let out = systemctl(&agent, &["enable", "--now", AGENT], &[]);
    assert_eq!(code(&out), 0, "{out:?}\n{}", agent.unit_log(AGENT));
    wait_until(Duration::from_secs(60), POLL, || {
        code(&systemctl(&third, &["is-active", SERVER], &[])) == 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", third.unit_log(SERVER)));

    // Each server wrote RKE2's admin credentials, the key and the kubeconfig private.
    let rke2 = second.rke2();
    for secret in [rke2.admin_client_key(), rke2.kubeconfig()] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", secret.display());
    }
    let kubeconfig = std::fs::read_to_string(rke2.kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains(&format!("server: https://{}\n", api(ips[1]))),
        "{kubeconfig}"
    );
    {
        use base64::Engine;
        let embedded = base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(rke2.admin_client_cert()).unwrap());
        assert!(kubeconfig.contains(&format!("client-certificate-data: {embedded}\n")));
    }

    // (c) Every node that registered has a Node, the servers and the agent.
    let admin = KubeAdmin::new(api(ips[1]), second.path()).unwrap();
    let all = ["agent-1", "server-1", "server-10", "server-2"];
    wait_until(TIMEOUT, POLL, || {
        block_on(admin.nodes())
            .ok()
            .filter(|nodes| sorted(nodes.clone()) == all)
    })
    .unwrap();

    // (b) Without credentials: 401. With a kubelet's certificate (it authenticates, and may read
    // nodes): 403, which the agent's client reports as not an admin.
    let ca = Trust::CaPem(second.server_ca_pem().unwrap());
    let anonymous = https_request_blocking_as(
        "DELETE",
        api(ips[1]),
        "/api/v1/nodes/server-1",
        &[],
        &ca,
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let kubelet_view = tempfile::tempdir().unwrap();
    let under = |path: &str| rke2_bootstrap::fsutil::under_root(kubelet_view.path(), path);
    std::fs::create_dir_all(under(kube::ADMIN_CLIENT_CERT).parent().unwrap()).unwrap();
    std::fs::copy(rke2.kubelet_client_cert(), under(kube::ADMIN_CLIENT_CERT)).unwrap();
    std::fs::copy(rke2.kubelet_client_key(), under(kube::ADMIN_CLIENT_KEY)).unwrap();
    std::fs::copy(rke2.ca_cert(), under(kube::API_SERVER_CA)).unwrap();
    let as_kubelet = KubeAdmin::new(api(ips[1]), kubelet_view.path()).unwrap();
    assert_eq!(sorted(block_on(as_kubelet.nodes()).unwrap()), all);
    let refused = format!(
        "{:#}",
        block_on(as_kubelet.delete_node("server-1")).unwrap_err()
    );
    assert!(
        refused.contains("forbidden: the client-admin certificate is not an admin"),
        "{refused}"
    );
    assert!(refused.contains("system:node:server-10"), "{refused}");
    assert_eq!(
        member_nodes(&second, ips[1]),
        ["server-1", "server-10", "server-2"]
    );

    // (a) server-1 dies; an admin deletes its Node: its etcd member and node password go with
    // it, server-10's stay, and the two left keep a ready cluster. Right after the stop etcd may
    // be electing a new leader (503): the delete is retried until it goes through.
    assert_eq!(code(&systemctl(&first, &["stop", SERVER], &[])), 0);
    let deleted = wait_until(TIMEOUT, POLL, || block_on(admin.delete_node("server-1"))).unwrap();
    assert_eq!(deleted, NodeDeletion::Deleted);
    assert_eq!(member_nodes(&second, ips[1]), ["server-10", "server-2"]);
    let password = rke2_bootstrap::rke2::rejoin::node_password_key;
    assert!(!etcd_has(&second, ips[1], &password("server-1")));
    assert!(etcd_has(&second, ips[1], &password("server-10")));
    assert!(!etcd_has(&second, ips[1], "/registry/minions/server-1"));
    assert_eq!(
        sorted(block_on(admin.nodes()).unwrap()),
        ["agent-1", "server-10", "server-2"]
    );
    let node = second.kubelet_identity().unwrap();
    for ip in [ips[1], ips[2]] {
        wait_until(TIMEOUT, POLL, || {
            https_get_blocking_as(api(ip), "/readyz", &[], &ca, Some(&node), TIMEOUT)
                .ok()
                .filter(|r| r.status == 200)
        })
        .unwrap_or_else(|e| panic!("{ip} not ready after the delete: {e}"));
    }

    // (d) Gone, or never there: absent.
    assert_eq!(
        block_on(admin.delete_node("server-1")).unwrap(),
        NodeDeletion::Absent
    );
    assert_eq!(
        block_on(admin.delete_node("nobody")).unwrap(),
        NodeDeletion::Absent
    );

    // An agent's Node carries no etcd role: its password goes, no member does.
    assert_eq!(code(&systemctl(&agent, &["stop", AGENT], &[])), 0);
    assert_eq!(
        block_on(admin.delete_node("agent-1")).unwrap(),
        NodeDeletion::Deleted
    );
    assert!(!etcd_has(&second, ips[1], &password("agent-1")));
    assert_eq!(member_nodes(&second, ips[1]), ["server-10", "server-2"]);

    // Without quorum (server-2 stopped, server-10 alone of two) the API cannot write: 503, and
    // nothing is removed.
    assert_eq!(code(&systemctl(&third, &["stop", SERVER], &[])), 0);
    wait_until(TIMEOUT, POLL, || {
        https_get_blocking_as(api(ips[1]), "/readyz", &[], &ca, Some(&node), TIMEOUT)
            .ok()
            .filter(|r| r.status == 503)
    })
    .unwrap();
    let unavailable = format!("{:#}", block_on(admin.delete_node("server-2")).unwrap_err());
    assert!(unavailable.contains("503"), "{unavailable}");
    assert!(unavailable.contains("unavailable"), "{unavailable}");
    let out = systemctl(&third, &["start", SERVER], &[]);
    assert_eq!(code(&out), 0, "{out:?}\n{}", third.unit_log(SERVER));
    let nodes = wait_until(TIMEOUT, POLL, || block_on(admin.nodes())).unwrap();
    assert_eq!(sorted(nodes), ["server-10", "server-2"]);
    assert_eq!(member_nodes(&second, ips[1]), ["server-10", "server-2"]);

    for host in [agent, third, second, first] {
        assert_clean(host);
    }
}
