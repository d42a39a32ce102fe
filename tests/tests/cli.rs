//! The command line as an operator meets it: one-line configuration errors naming the culprit
//! with exit status 2, `keygen`, and `members --json` against a running agent.

use std::process::{Command, Output};
use std::time::Duration;

use rke2_bootstrap::gossip::schema::MemberSummary;
use rke2_bootstrap_tests::blocks;
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
    // A kernel command line that exists but cannot be read (here a directory) is an error, not
    // "no overrides": a PXE host would otherwise start with the image's settings alone.
    let dir_path = dir.path().to_str().unwrap();
    let out = Command::new(workspace_bin("rke2-bootstrap"))
        .args(["agent", "--kernel-cmdline", dir_path, "--node-name", "a"])
        .env_remove("RKE2_BOOTSTRAP_CONFIG")
        .output()
        .expect("running rke2-bootstrap");
    assert_config_error(&out, &["kernel command line", dir_path]);

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
    let ip = blocks::CLI.ip(0, 1).to_string();
    let bind = format!("{ip}:7947");
    let base = [
        "--node-name",
        "a",
        "--bind-addr",
        &bind,
        "--initial-servers",
        &ip,
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
    let spec = ClusterSpec::new(blocks::CLI.id(0), &[("m-1", "server"), ("m-2", "agent")]);
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
    // Aligned: every column of every row starts under its header.
    let header = table.lines().next().unwrap();
    for column in ["GOSSIP ADDR", "ROLE", "PHASE", "STATUS", "READY", "ETCD"] {
        let at = header.find(column).unwrap();
        // The rows end at the blank line before what this host waits for.
        for row in table.lines().skip(1).take_while(|l| !l.is_empty()) {
            let before = &row[..at];
            assert!(
                before.ends_with("  ") && !row[at..].starts_with(' '),
                "{column} misaligned:\n{table}"
            );
        }
    }

    // Into a reader that is already gone (what `| head` becomes): no complaint, exit 0.
    for json in [false, true] {
        let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
        cmd.args(["members", "--kernel-cmdline", "/nonexistent"])
            .args([
                "--node-name",
                "x",
                "--status-socket",
                socket.to_str().unwrap(),
            ]);
        if json {
            cmd.arg("--json");
        }
        assert_quiet_into_closed_pipe(&mut cmd);
    }
}

/// Runs `cmd` with its stdout a pipe whose reader has already gone, as when `head` has read what
/// it wanted: every write fails with a broken pipe. The command must neither complain nor fail.
fn assert_quiet_into_closed_pipe(cmd: &mut Command) {
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(reader);
    let out = cmd
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{cmd:?}: {:?}, stderr: {stderr}",
        out.status
    );
}

#[test]
fn no_command_complains_when_its_reader_is_gone() {
    let agent = || {
        let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
        cmd.env_remove("RKE2_BOOTSTRAP_CONFIG");
        cmd
    };
    assert_quiet_into_closed_pipe(agent().arg("keygen"));
    assert_quiet_into_closed_pipe(agent().arg("--help"));
    assert_quiet_into_closed_pipe(agent().args([
        "check-config",
        "--kernel-cmdline",
        "/nonexistent",
        "--node-name",
        "a",
        "--initial-servers",
        "a",
    ]));
    let config = repo_file("packaging/config/lb-sidecar.yaml");
    let mut sidecar = Command::new(workspace_bin("rke2-lb-sidecar"));
    sidecar
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .env_clear();
    assert_quiet_into_closed_pipe(&mut sidecar);
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// `check-config` (agent) and `--check-config` (sidecar): the configuration as the service would
/// load it, without starting anything.
fn check_config(sidecar: bool, file: &std::path::Path) -> Output {
    let mut cmd = if sidecar {
        let mut cmd = Command::new(workspace_bin("rke2-lb-sidecar"));
        cmd.arg("--check-config");
        cmd
    } else {
        let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
        cmd.args(["check-config", "--kernel-cmdline", "/nonexistent"]);
        cmd
    };
    cmd.arg("--config")
        .arg(file)
        .env_clear()
        .output()
        .expect("running check-config")
}

#[test]
fn check_config_accepts_the_shipped_configs_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // Every config a cloud-init example writes, and the packaged defaults.
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(repo_file("packaging/cloud-init")).unwrap() {
        let path = entry.unwrap().path();
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for file in doc["write_files"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            let sidecar = match file["path"].as_str() {
                Some("/etc/rke2-bootstrap/config.yaml") => false,
                Some("/etc/rke2-bootstrap/lb-sidecar.yaml") => true,
                _ => continue,
            };
            let embedded = dir.path().join(path.file_name().unwrap());
            std::fs::write(&embedded, file["content"].as_str().unwrap()).unwrap();
            let out = check_config(sidecar, &embedded);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked.push((path.clone(), sidecar));
        }
    }
    assert!(
        checked.iter().filter(|(_, s)| *s).count() >= 2,
        "{checked:?}"
    );
    assert!(
        checked.iter().filter(|(_, s)| !*s).count() >= 3,
        "{checked:?}"
    );
    // The packaged agent config names no seeds, so no electorate: as shipped it is refused with
    // the key to set, and accepted once a host adds its seeds.
    let packaged = repo_file("packaging/config/config.yaml");
    assert_config_error(&check_config(false, &packaged), &["initial-servers"]);
    let with_seeds = dir.path().join("packaged-with-seeds.yaml");
    std::fs::write(
        &with_seeds,
        std::fs::read_to_string(&packaged).unwrap() + "seeds: [10.0.0.11:7947]\n",
    )
    .unwrap();
    for (path, sidecar) in [
        (with_seeds, false),
        (repo_file("packaging/config/lb-sidecar.yaml"), true),
    ] {
        let out = check_config(sidecar, &path);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A key an older draft of the examples used: refused, naming the key and the file.
    let bad = dir.path().join("lb.yaml");
    std::fs::write(&bad, "lb: nginx\noutput-file: /etc/nginx/rke2.conf\n").unwrap();
    assert_config_error(&check_config(true, &bad), &["output-file", "lb.yaml"]);
    let bad = dir.path().join("agent.yaml");
    std::fs::write(&bad, "servers: two\n").unwrap();
    assert_config_error(&check_config(false, &bad), &["servers", "agent.yaml"]);
}

/// Every `# key: ...` example at the top level of the packaged sidecar config names a real key
/// (one the sidecar accepts as a flag), so uncommenting it cannot fail with "unknown key".
#[test]
fn packaged_sidecar_config_examples_use_real_keys() {
    let help = Command::new(workspace_bin("rke2-lb-sidecar"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let text = std::fs::read_to_string(repo_file("packaging/config/lb-sidecar.yaml")).unwrap();
    let mut seen = 0;
    for line in text.lines() {
        let Some((key, _)) = line.strip_prefix("# ").and_then(|l| l.split_once(':')) else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            continue;
        }
        seen += 1;
        assert!(
            help.contains(&format!("--{key} <")),
            "example line {line:?} uses `{key}`, which the sidecar does not know"
        );
    }
    assert!(seen >= 5, "only {seen} example keys found");
}

/// `election release`: without `--confirm` it says what it would do and why that can break a
/// cluster, and writes nothing (exit 2); with it, this host's acknowledgement of the claim is
/// void and the claim is never acknowledged again.
#[test]
fn election_release_voids_an_acknowledgement_only_when_confirmed() {
    use rke2_bootstrap::election::ElectionState;
    use rke2_bootstrap::gossip::schema::Vote;
    use rke2_bootstrap::host_state::{PersistedState, StateDir};

    let root = tempfile::tempdir().unwrap();
    let dir = StateDir::open(&root.path().join("var/lib/rke2-bootstrap")).unwrap();
    let claim = Vote {
        round: 0,
        candidate: "a".into(),
    };
    let acked = PersistedState {
        election: ElectionState {
            vote: Some(claim.clone()),
            ack: Some(claim.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    dir.save(&acked).unwrap();
    let release = |extra: &[&str]| {
        Command::new(workspace_bin("rke2-bootstrap"))
            .args(["election", "release", "--claim", "0:a"])
            .args(["--kernel-cmdline", "/nonexistent", "--node-name", "b"])
            .arg("--root")
            .arg(root.path())
            .args(extra)
            .env_remove("RKE2_BOOTSTRAP_CONFIG")
            .output()
            .unwrap()
    };
    let refused = release(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--confirm") && stderr.contains("two clusters"),
        "{stderr}"
    );
    assert_eq!(dir.load().unwrap(), acked, "written without a confirmation");

    let done = release(&["--confirm"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let state = dir.load().unwrap();
    assert_eq!(state.election.ack, None);
    assert_eq!(state.election.released, vec![claim]);
    assert!(String::from_utf8_lossy(&done.stdout).contains("acknowledgement is void"));
}

/// One exit-code contract for both binaries: a key file that does not load is a configuration
/// problem (exit 2, one line naming the file), for the sidecar as for the agent.
#[test]
fn both_binaries_exit_2_on_a_key_file_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("gossip.key");
    std::fs::write(&key, "c2hvcnQ=\n").unwrap(); // 5 bytes, not 32
    let sidecar = Command::new(workspace_bin("rke2-lb-sidecar"))
        .args(["--cluster-name", "exit-codes", "--node-name", "lb"])
        .args(["--bind-addr", &format!("{}:7947", blocks::CLI.ip(0, 3))])
        .args(["--lb", "haproxy"])
        .arg("--config-file")
        .arg(dir.path().join("haproxy.cfg"))
        .arg("--state-dir")
        .arg(dir.path().join("sidecar-state"))
        .arg("--gossip-key-file")
        .arg(&key)
        .env_clear()
        .output()
        .unwrap();
    let ip = blocks::CLI.ip(0, 4).to_string();
    let bind = format!("{ip}:7947");
    let agent = agent(&[
        "--node-name",
        "a",
        "--bind-addr",
        &bind,
        "--initial-servers",
        &ip,
        "--root",
        dir.path().to_str().unwrap(),
        "--gossip-key-file",
        key.to_str().unwrap(),
    ]);
    for (name, out) in [("rke2-lb-sidecar", sidecar), ("rke2-bootstrap", agent)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name}: configuration error"))
                && stderr.contains(key.to_str().unwrap()),
            "{name}: {stderr}"
        );
    }
}

/// A PXE host keeps the config its boot entry names (`rke2_bootstrap.config=`, pinned by its
/// SHA-256) in its state directory: loaded again while the config server is down, as after a
/// reboot in an outage, the configuration comes from the kept copy.
#[test]
fn a_boot_config_is_kept_and_loads_while_its_server_is_down() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = b"cluster-name: from-pxe\nrole: agent\n".to_vec();
    let pin = hex::encode(sha2::Sha256::digest(&config));
    let server = rke2_bootstrap_tests::InstallerServer::start(config.clone()).unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "BOOT_IMAGE=/vmlinuz ro rke2_bootstrap.config={} rke2_bootstrap.config_sha256={pin} \
             rke2_bootstrap.allow_insecure_config_url=1\n",
            server.url()
        ),
    )
    .unwrap();
    let check = || {
        let out = Command::new(workspace_bin("rke2-bootstrap"))
            .arg("check-config")
            .arg("--kernel-cmdline")
            .arg(&cmdline)
            .args(["--node-name", "pxe-1"])
            .arg("--root")
            .arg(&root)
            .env_clear()
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("cluster from-pxe"), "{text}");
    };
    check();
    assert_eq!(server.served(), 1);
    let kept = root.join("var/lib/rke2-bootstrap/boot-config.yaml");
    assert_eq!(std::fs::read(&kept).unwrap(), config);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    drop(server);
    check();
}

/// `reload-keys` (the unit's `ExecReload=`) with no agent running: a failed reload that says
/// what it asked and where, not a hang or a silent success.
#[test]
fn reload_keys_without_a_running_agent_fails_saying_where_it_asked() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("status.sock");
    let out = Command::new(workspace_bin("rke2-bootstrap"))
        .args(["reload-keys", "--kernel-cmdline", "/nonexistent"])
        .args(["--node-name", "a"])
        .arg("--status-socket")
        .arg(&socket)
        .env_clear()
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("asking the running process for its keys")
            && said.contains(&socket.display().to_string()),
        "{said}"
    );
}
