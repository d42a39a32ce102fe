//! Security and fault tests against the real `rke2-bootstrap` binary on loopback (the block
//! `blocks::SECURITY`: one id per test):
//!
//! - forged, random and replayed datagrams at a running agent's gossip port are counted and
//!   change nothing; hostile authentic messages do not stop its gossip;
//! - secrets (the cluster token, the gossip key) never appear in any agent log, the status
//!   endpoint or `members` output; secret files are 0600, their directories 0700;
//! - a vote that cannot be persisted (disk full) is never published: the agent fails loudly;
//! - the initializer killed with SIGKILL at each bring-up checkpoint resumes on restart and never
//!   initializes twice.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rke2_bootstrap::bringup::progress::{Plan, Progress};
use rke2_bootstrap::gossip::keyring::{seal, unix_ms_now};
use rke2_bootstrap::gossip::schema::{Phase, Role};
use rke2_bootstrap::gossip::{Announcement, Cluster, GossipConfig, Keyring};
use rke2_bootstrap::host_state::PersistedState;
use rke2_bootstrap_tests::blocks::SECURITY;
use rke2_bootstrap_tests::cluster::{transport_counter, ClusterSpec, TestCluster, GOSSIP_PORT};
use rke2_bootstrap_tests::{wait_until, workspace_bin, ChildGuard};
use rke2_testkit::wire;

const FORMATION: Duration = Duration::from_secs(60);

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Standard base64, enough to turn the key file's line into the raw key.
fn base64_decode(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = alphabet.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

fn gossip_addr(cluster: &TestCluster, name: &str) -> SocketAddr {
    SocketAddr::new(cluster.host(name).ip, GOSSIP_PORT)
}

fn all_ready(cluster: &TestCluster, names: &[&str]) -> Result<(), String> {
    for observer in names {
        let members = cluster.members_seen_by(observer);
        for name in names {
            let ok = members
                .iter()
                .any(|m| m.name == *name && m.alive && m.ready && m.phase == Phase::Ready);
            if !ok {
                return Err(format!("{observer} does not see {name} alive and ready"));
            }
        }
    }
    Ok(())
}

/// One small cluster, then everything an attacker on the network or a curious local user could
/// try: forged datagrams, secrets in logs and status output, loose file modes.
#[test]
fn running_cluster_resists_forged_datagrams_and_keeps_secrets() {
    let mut spec = ClusterSpec::new(SECURITY.id(0), &[("sec-s1", "server"), ("sec-w1", "agent")]);
    spec.servers = 1;
    let mut cluster = TestCluster::new(spec).unwrap();
    cluster.start_all().unwrap();
    let names = ["sec-s1", "sec-w1"];
    cluster
        .wait_for_phase(&names, Phase::Ready, FORMATION)
        .unwrap();
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        all_ready(&cluster, &names)
    })
    .unwrap();

    // --- Forged and hostile datagrams at the server's gossip port. -------------------------
    let key_text = std::fs::read_to_string(&cluster.key_file).unwrap();
    let ours = Keyring::parse(&key_text, &cluster.key_file).unwrap();
    let name = format!("test-{}", SECURITY.id(0));
    let name = name.as_str();
    let target = gossip_addr(&cluster, "sec-s1");
    let before = cluster.host("sec-s1").transport();
    let socket = std::net::UdpSocket::bind(SocketAddr::new(SECURITY.ip(0, 99), 0)).unwrap();
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect()
    };
    let mut sent = [0u64; 4];
    for i in 0..50 {
        // Noise, and noise behind our magic.
        let mut noise = random(10 + i * 7);
        if i % 2 == 0 {
            noise[..3].copy_from_slice(b"RB\x01");
        }
        socket.send_to(&noise, target).unwrap();
        // Long enough noise behind our magic is taken for a sealed datagram, and fails
        // authentication; anything else is not even that.
        if i % 2 == 0 && noise.len() >= rke2_bootstrap::gossip::keyring::SEAL_OVERHEAD {
            sent[1] += 1;
        } else {
            sent[0] += 1;
        }
        // Another key; our key but another cluster name.
        let other = Keyring::new([i as u8; 32]);
        socket
            .send_to(
                &seal(&other, name, &random(40), unix_ms_now()).unwrap(),
                target,
            )
            .unwrap();
        socket
            .send_to(
                &seal(&ours, "test-153", &random(40), unix_ms_now()).unwrap(),
                target,
            )
            .unwrap();
        sent[1] += 2;
        // Authentic but stale, and an authentic datagram sent twice.
        let stale = seal(&ours, name, &random(40), unix_ms_now() - 600_000).unwrap();
        socket.send_to(&stale, target).unwrap();
        let garbage = seal(&ours, name, &random(60), unix_ms_now()).unwrap();
        socket.send_to(&garbage, target).unwrap();
        socket.send_to(&garbage, target).unwrap();
        sent[2] += 2;
        sent[3] += 1;
    }
    let hostile = wire::encode(&wire::lowered_max_version_ack(
        "sec-w1",
        1,
        gossip_addr(&cluster, "sec-w1"),
        "k",
        "v",
        u64::MAX,
    ));
    socket
        .send_to(&seal(&ours, name, &hostile, unix_ms_now()).unwrap(), target)
        .unwrap();
    sent[3] += 1;
    let counters = [
        "rejected_malformed",
        "rejected_auth",
        "rejected_replay",
        "rejected_decode",
    ];
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let now = cluster.host("sec-s1").transport();
        for (i, c) in counters.iter().enumerate() {
            let rose = transport_counter(&now, c) - transport_counter(&before, c);
            if rose < sent[i] {
                return Err(format!("{c} rose by {rose}, {} sent", sent[i]));
            }
        }
        Ok(())
    })
    .unwrap();
    // The cluster stays whole, well past the failure detector's horizon.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        all_ready(&cluster, &names).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let members = cluster.members_seen_by("sec-s1");
    assert_eq!(members.len(), 2, "no forged member appeared: {members:?}");

    // --- Secrets never leave their files. ---------------------------------------------------
    let s1 = cluster.host("sec-s1");
    let token_secret = std::fs::read_to_string(s1.state_dir().join("token"))
        .unwrap()
        .trim()
        .to_string();
    assert!(token_secret.len() >= 32);
    let server_token = s1.root.server_token().expect("rke2 server token");
    let gossip_key = key_text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap()
        .trim()
        .to_string();
    let key_hex: String = base64_decode(&gossip_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(key_hex.len(), 64);
    let secrets = [
        ("token secret", token_secret.as_str()),
        ("server token", server_token.as_str()),
        ("gossip key", gossip_key.as_str()),
        ("gossip key (hex)", key_hex.as_str()),
    ];
    let mut outputs: Vec<(String, String)> = Vec::new();
    for host in &cluster.hosts {
        outputs.push((format!("{} agent log", host.name), host.log()));
        let mut raw = String::new();
        std::os::unix::net::UnixStream::connect(host.status_socket())
            .unwrap()
            .read_to_string(&mut raw)
            .unwrap();
        outputs.push((format!("{} status endpoint", host.name), raw));
        for json in [true, false] {
            let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
            cmd.arg("members")
                .args(["--node-name", &host.name])
                .arg("--status-socket")
                .arg(host.status_socket());
            if json {
                cmd.arg("--json");
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            outputs.push((
                format!("{} members (json: {json})", host.name),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            ));
        }
    }
    assert!(outputs.iter().any(|(_, text)| text.contains("sec-w1")));
    for (what, text) in &outputs {
        for (secret_name, secret) in &secrets {
            assert!(
                !text.contains(secret),
                "the {secret_name} appears in the {what}"
            );
        }
    }

    // --- File modes. ---------------------------------------------------------------------------
    for host in &cluster.hosts {
        let state = host.state_dir();
        assert_eq!(mode(&state), 0o700, "{}", state.display());
        assert_eq!(
            mode(&state.join("state.json")),
            0o600,
            "{} state",
            host.name
        );
        assert_eq!(mode(&host.status_socket()), 0o600, "{} socket", host.name);
        let config = host.root.join("/etc/rancher/rke2/config.yaml");
        assert_eq!(mode(&config), 0o600, "{}", config.display());
    }
    assert_eq!(mode(&s1.state_dir().join("token")), 0o600);
}

// ---------------------------------------------------------------------------------------------
// Disk full when the vote must be persisted.

/// What the observer saw of the agent: its phase and its published vote.
type Sighting = (Phase, Option<String>);

/// The agent runs with a file-size limit of 64 bytes (`RLIMIT_FSIZE`, which binds root too,
/// with SIGXFSZ ignored so writes fail with EFBIG like on a full disk): the state file holding
/// its vote cannot be written. An observer in gossip must never see that vote, and the agent
/// must exit non-zero saying why.
#[test]
fn vote_that_cannot_be_persisted_is_never_published() {
    // Two candidates: this agent and an in-process gossip member standing for the other server,
    // which also records what it sees. The agent waits for it, then votes.
    let mut spec = ClusterSpec::new(SECURITY.id(1), &[("full-1", "server")]);
    // Two seats: this agent's and the in-process member's below (host .99).
    spec.initial_servers = Some(vec![
        SECURITY.ip(1, 11).to_string(),
        SECURITY.ip(1, 99).to_string(),
    ]);
    spec.servers = 1;
    let cluster = TestCluster::new(spec).unwrap();
    let host = cluster.host("full-1");
    let mut cmd = cluster.agent_command(host);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    unsafe {
        cmd.pre_exec(|| {
            use nix::libc;
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = Keyring::load(&cluster.key_file).unwrap();
    let observer_addr = SocketAddr::new(SECURITY.ip(1, 99), GOSSIP_PORT);
    let observer = runtime.block_on(async {
        let mut config = GossipConfig::new(
            format!("test-{}", SECURITY.id(1)),
            "full-0",
            observer_addr,
            key,
        );
        config.seeds = vec![format!("{}:{GOSSIP_PORT}", host.ip)];
        Cluster::join(config, &Announcement::new(Role::Server, observer_addr.ip()))
            .await
            .unwrap()
    });
    let seen: Arc<Mutex<Vec<Sighting>>> = Arc::default();
    let recorder = {
        let seen = seen.clone();
        let mut view = observer.watch();
        runtime.spawn(async move {
            loop {
                for m in view.borrow_and_update().iter() {
                    if m.name == "full-1" {
                        let vote = m
                            .announced
                            .vote
                            .as_ref()
                            .map(|v| format!("{}:{}", v.round, v.candidate));
                        seen.lock().unwrap().push((m.announced.phase, vote));
                    }
                }
                if view.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    let mut child = ChildGuard::spawn(&mut cmd).unwrap();
    let mut stderr = child.child_mut().stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the agent exits when it cannot persist its vote");
    let log = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("persisting state"), "{log}");
    assert!(!host.state_dir().join("state.json").exists());

    // Give the last announcements time to arrive, then check what gossip carried.
    std::thread::sleep(Duration::from_millis(500));
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the observer never saw the agent");
    assert!(
        seen.iter().all(|(_, vote)| vote.is_none()),
        "a vote that is not on disk was published: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(phase, _)| matches!(phase, Phase::Failed | Phase::Leaving)),
        "the failure was announced: {seen:?}"
    );
    drop(observer);
}

// ---------------------------------------------------------------------------------------------
// The initializer killed at each checkpoint.

fn read_state(path: &Path) -> Option<PersistedState> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The checkpoints in the order a first server reaches them.
fn checkpoint(state: &PersistedState) -> usize {
    let step = match state.progress {
        Progress::Electing => 0,
        Progress::Settled(_) => 1,
        Progress::Configured(_) => 2,
        Progress::Started(_) => 3,
        Progress::Joined(_) | Progress::Decommissioned(_) => 4,
    };
    [
        state.election.vote.is_some(),
        state.installed,
        step >= 1 && state.election.initializer_of.is_some(),
        step >= 2,
        step >= 3,
        step >= 4,
    ]
    .iter()
    .take_while(|done| **done)
    .count()
}

const CHECKPOINTS: [&str; 7] = [
    "nothing",
    "vote",
    "installed",
    "settled as initializer",
    "configured",
    "started",
    "joined",
];

/// A single server with `bootstrap-expect 1`. For each checkpoint in turn the agent is started,
/// killed with SIGKILL as soon as its state file shows that checkpoint (polled every few
/// milliseconds), and started again. Whatever it had done is resumed, nothing done twice: one
/// vote, one token, one config, the stand-in rke2-server started once with one CA, and the host
/// ends up ready as the cluster's only initializer.
#[test]
fn initializer_killed_at_each_checkpoint_resumes_and_never_reinitializes() {
    let mut spec = ClusterSpec::new(SECURITY.id(2), &[("kill-1", "server")]);
    spec.servers = 1;
    let mut cluster = TestCluster::new(spec).unwrap();
    let state_file = cluster.host("kill-1").state_dir().join("state.json");
    let mut killed_at = Vec::new();
    let mut first: Option<PersistedState> = None;
    let mut token: Option<String> = None;
    let mut server_pid: Option<i32> = None;

    for target in 1..CHECKPOINTS.len() {
        let reached = read_state(&state_file).map(|s| checkpoint(&s)).unwrap_or(0);
        if reached >= target {
            continue;
        }
        cluster.start("kill-1").unwrap();
        let state = wait_until(Duration::from_secs(60), Duration::from_millis(2), || {
            read_state(&state_file).filter(|s| checkpoint(s) >= target)
        })
        .unwrap_or_else(|e| panic!("{e}{}", cluster.logs_tail()));
        cluster.kill_agent("kill-1").unwrap();
        let state = read_state(&state_file).unwrap_or(state);
        killed_at.push(CHECKPOINTS[checkpoint(&state)]);

        // What was decided stays decided.
        let host = cluster.host("kill-1");
        match &first {
            None => first = Some(state.clone()),
            Some(first) => {
                assert_eq!(state.election.vote, first.election.vote, "the vote changed");
            }
        }
        if let Some(first) = first.as_ref().and_then(|f| f.election.initializer_of) {
            assert_eq!(state.election.initializer_of.unwrap_or(first), first);
        }
        let now_token = std::fs::read_to_string(host.state_dir().join("token")).ok();
        if token.is_some() {
            assert_eq!(now_token, token, "the token changed");
        }
        token = token.or(now_token);
        let pid = host.root.unit_pid("rke2-server");
        if server_pid.is_some() {
            assert_eq!(pid, server_pid, "rke2-server was restarted or stopped");
        }
        server_pid = server_pid.or(pid);
    }

    cluster.start("kill-1").unwrap();
    cluster
        .wait_for_phase(&["kill-1"], Phase::Ready, FORMATION)
        .unwrap();
    let host = cluster.host("kill-1");
    let state = read_state(&state_file).unwrap();
    assert_eq!(state.progress, Progress::Joined(Plan::Initialize));
    assert!(state.installed);
    assert_eq!(state.election.initializer_of, Some(0));
    assert_eq!(host.root.unit_pid("rke2-server"), server_pid);
    assert_eq!(
        state.ca_hash,
        host.root.ca_hash(),
        "the CA is the one rke2 created"
    );
    let config = host.root.config_yaml().unwrap();
    assert!(
        config.get("server").is_none(),
        "the first server never joins anyone"
    );
    let token = token.unwrap();
    assert_eq!(config["token"].as_str(), Some(token.trim()));
    assert_eq!(cluster.hosts_that_initialized(), ["kill-1"]);
    // The installer may run again only when killed between running it and recording it.
    assert!(host.root.install_env_records().len() <= 2);

    let distinct: BTreeSet<&str> = killed_at.iter().copied().collect();
    eprintln!("killed at: {killed_at:?}");
    assert!(
        distinct.len() >= 4,
        "too few distinct kill points: {killed_at:?}"
    );
}
