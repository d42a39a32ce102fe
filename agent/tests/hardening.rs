//! Fault and security tests of the library on loopback (the block `AGENT_HARDENING`): the shipped
//! example configs load, persisting fails loudly and leaves the last good state, peers whose
//! clocks are off by more than the replay window are rejected and counted (and come back when the
//! clock does), and a node of another cluster name never joins even with the same key.

use std::collections::BTreeMap;
use std::future::ready;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rke2_bootstrap::config::{AgentConfig, Layers, AGENT_KEYS};
use rke2_bootstrap::gossip::keyring::{open, seal, ReplayGuard, HEADER_LEN};
use rke2_bootstrap::gossip::{Announcement, Cluster, GossipConfig, Keyring, Liveness, Role};
use rke2_bootstrap::host_state::{PersistedState, StateDir};
use rke2_testkit::blocks::AGENT_HARDENING;
use rke2_testkit::wait_until_async;

const KEY: [u8; 32] = [0x3c; 32];
const CLUSTER: &str = "hardening";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn load_text(text: &str) -> Result<AgentConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    AgentConfig::load(&Layers {
        file: Some(path),
        flags: BTreeMap::from([("node-name".to_string(), "node-1".to_string())]),
        ..Layers::default()
    })
    .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Shipped configuration examples.

/// The agent config embedded in each cloud-init example loads as written.
#[test]
fn cloud_init_example_configs_load() {
    let dir = repo_file("packaging/cloud-init");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        let files = doc["write_files"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        for file in files {
            if file["path"].as_str() != Some("/etc/rke2-bootstrap/config.yaml") {
                continue;
            }
            let content = file["content"].as_str().unwrap();
            if let Err(err) = load_text(content) {
                panic!(
                    "{}: the example agent config does not load: {err}",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} example configs found");
}

/// The packaged config file loads, and every commented-out example line names a real key (an
/// operator uncommenting one must not get "unknown key").
#[test]
fn packaged_config_file_and_its_examples_use_real_keys() {
    let text = std::fs::read_to_string(repo_file("packaging/config/config.yaml")).unwrap();
    // As shipped it names no seeds (every site has its own); a host adds them.
    load_text(&format!("{text}seeds: [10.0.0.11:7947]\n")).unwrap();
    let known: Vec<&str> = AGENT_KEYS.iter().map(|k| k.name).collect();
    for line in text.lines() {
        let Some(example) = line.strip_prefix("# ") else {
            continue;
        };
        let Some((key, value)) = example.split_once(':') else {
            continue;
        };
        // `# key: value` with a one-word value (or none, before a list): an example setting, not
        // prose. Placeholder values (`<sha256 ...>`) are not loaded, only the key is checked.
        let value = value.trim();
        let looks_like_setting = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.contains(char::is_whitespace);
        if looks_like_setting {
            assert!(
                known.contains(&key),
                "example line {line:?} uses unknown key `{key}`"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Persisting.

fn voted() -> PersistedState {
    let mut state = PersistedState::default();
    state.election.round = 0;
    state.election.vote = Some(rke2_bootstrap::gossip::schema::Vote {
        round: 0,
        candidate: "node-1".into(),
    });
    state
}

/// The temporary file `save` writes first cannot be created (a directory holds its name: this
/// fails for root too, unlike a read-only mode): `save` fails, says where, and the previous
/// state file is untouched.
#[test]
fn save_fails_loudly_and_keeps_the_last_good_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(&tmp.path().join("state")).unwrap();
    let before = PersistedState::default();
    dir.save(&before).unwrap();
    let blocker = dir
        .path()
        .join(format!(".state.json.tmp.{}", std::process::id()));
    std::fs::create_dir(&blocker).unwrap();
    let err = format!("{:#}", dir.save(&voted()).unwrap_err());
    assert!(err.contains("state.json"), "{err}");
    assert_eq!(dir.load().unwrap(), before, "the last good state is kept");
    std::fs::remove_dir(&blocker).unwrap();
    dir.save(&voted()).unwrap();
    assert_eq!(dir.load().unwrap(), voted());
}

/// The state dir path is taken by a regular file: opening it fails, naming it.
#[test]
fn state_dir_that_is_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state");
    std::fs::write(&path, "not a directory").unwrap();
    let err = format!("{:#}", StateDir::open(&path).unwrap_err());
    assert!(err.contains("state"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Clocks.

/// `127.<block>.<test>.<host>`: each test of this file takes its own third octet.
fn addr(test: u8, host: u8) -> SocketAddr {
    SocketAddr::from(([127, AGENT_HARDENING.id(0), test, host], 7947))
}

async fn node(
    name: &str,
    bind: SocketAddr,
    advertise: SocketAddr,
    seeds: &[SocketAddr],
    cluster: &str,
) -> Cluster {
    let mut config = GossipConfig::new(cluster, name, bind, Keyring::new(KEY));
    config.advertise_addr = Some(advertise);
    config.seeds = seeds.iter().map(|s| s.to_string()).collect();
    Cluster::join(config, &Announcement::new(Role::Server, bind.ip()))
        .await
        .expect("join")
}

fn liveness_of(node: &Cluster, name: &str) -> Option<Liveness> {
    node.watch()
        .borrow()
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.liveness)
}

/// How often these tests poll a node's view or counters.
const POLL: Duration = Duration::from_millis(50);

/// Stands between two nodes and re-seals every datagram with its timestamp shifted, so that one
/// node's clock looks `skew_ms` ahead of the other's (the key is known to the test). Node A
/// advertises `front_a`, node B `front_b`; with two nodes, whatever reaches `front_a` is from B
/// and whatever reaches `front_b` is from A.
struct SkewProxy {
    skew_ms: Arc<AtomicI64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SkewProxy {
    async fn start(front_a: SocketAddr, a: SocketAddr, front_b: SocketAddr, b: SocketAddr) -> Self {
        let skew_ms = Arc::new(AtomicI64::new(0));
        let sock_a = Arc::new(tokio::net::UdpSocket::bind(front_a).await.unwrap());
        let sock_b = Arc::new(tokio::net::UdpSocket::bind(front_b).await.unwrap());
        let forward = |inbound: Arc<tokio::net::UdpSocket>,
                       outbound: Arc<tokio::net::UdpSocket>,
                       to: SocketAddr,
                       sign: i64| {
            let skew_ms = skew_ms.clone();
            tokio::spawn(async move {
                let ring = Keyring::new(KEY);
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((len, _)) = inbound.recv_from(&mut buf).await else {
                        return;
                    };
                    let datagram = &buf[..len];
                    if len < HEADER_LEN {
                        continue;
                    }
                    let mut ts = [0u8; 8];
                    ts.copy_from_slice(&datagram[7..15]);
                    let sent = u64::from_be_bytes(ts);
                    let mut guard = ReplayGuard::new(Duration::from_secs(1));
                    let Ok(plain) = open(&ring, CLUSTER, datagram, sent, &mut guard) else {
                        continue;
                    };
                    let shifted = sent.saturating_add_signed(sign * skew_ms.load(Ordering::SeqCst));
                    let resealed = seal(&ring, CLUSTER, &plain, shifted).unwrap();
                    let _ = outbound.send_to(&resealed, to).await;
                }
            })
        };
        // B -> A arrives at A's front, leaves from B's front: B's clock reads `skew` ahead.
        let tasks = vec![
            forward(sock_a.clone(), sock_b.clone(), a, 1),
            forward(sock_b, sock_a, b, -1),
        ];
        SkewProxy { skew_ms, tasks }
    }

    fn set(&self, skew: Duration, ahead: bool) {
        let ms = skew.as_millis() as i64;
        self.skew_ms
            .store(if ahead { ms } else { -ms }, Ordering::SeqCst);
    }
}

impl Drop for SkewProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Within the ±120 s window a skewed peer is a normal member. When its clock jumps past the
/// window, each side rejects the other's datagrams (counted as replay rejections) and the
/// failure detector declares it dead; when the clock comes back, so does the member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jump_past_the_replay_window_isolates_and_recovers() {
    let (a_bind, b_bind, a_front, b_front) = (addr(1, 1), addr(1, 2), addr(1, 11), addr(1, 12));
    let proxy = SkewProxy::start(a_front, a_bind, b_front, b_bind).await;
    proxy.set(Duration::from_secs(90), true);
    let a = node("clock-a", a_bind, a_front, &[], CLUSTER).await;
    let b = node("clock-b", b_bind, b_front, &[a_front], CLUSTER).await;
    let both_alive = || {
        liveness_of(&a, "clock-b") == Some(Liveness::Alive)
            && liveness_of(&b, "clock-a") == Some(Liveness::Alive)
    };
    wait_until_async(Duration::from_secs(10), POLL, || ready(both_alive()))
        .await
        .expect("members 90 s apart to see each other");
    assert_eq!(a.stats().snapshot().rejected_replay, 0);
    assert_eq!(b.stats().snapshot().rejected_replay, 0);

    // B's clock steps 300 s ahead.
    proxy.set(Duration::from_secs(300), true);
    wait_until_async(Duration::from_secs(10), POLL, || {
        ready({
            a.stats().snapshot().rejected_replay >= 5
                && b.stats().snapshot().rejected_replay >= 5
                && liveness_of(&a, "clock-b") == Some(Liveness::Dead)
                && liveness_of(&b, "clock-a") == Some(Liveness::Dead)
        })
    })
    .await
    .expect("each side to reject the other and declare it dead");
    let received = a.stats().snapshot().received;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.stats().snapshot().received, received, "nothing accepted");

    // NTP steps it back.
    proxy.set(Duration::ZERO, true);
    wait_until_async(Duration::from_secs(10), POLL, || ready(both_alive()))
        .await
        .expect("the members to recover");
}

/// A host whose clock is 10 minutes behind from the start never becomes a member, and every
/// datagram it sends is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_a_clock_outside_the_window_never_joins() {
    let (a_bind, b_bind, a_front, b_front) = (addr(2, 1), addr(2, 2), addr(2, 11), addr(2, 12));
    let proxy = SkewProxy::start(a_front, a_bind, b_front, b_bind).await;
    proxy.set(Duration::from_secs(600), false);
    let a = node("late-a", a_bind, a_front, &[], CLUSTER).await;
    let b = node("late-b", b_bind, b_front, &[a_front], CLUSTER).await;
    wait_until_async(Duration::from_secs(10), POLL, || {
        ready(a.stats().snapshot().rejected_replay >= 10)
    })
    .await
    .expect("the skewed peer's datagrams to be rejected");
    assert_eq!(liveness_of(&a, "late-b"), None);
    assert_eq!(liveness_of(&b, "late-a"), None);
    assert_eq!(a.stats().snapshot().received, 0);
}

/// Same key, another cluster name: every datagram fails authentication, and neither side ever
/// lists the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_other_cluster_name_never_joins() {
    let a = node("prod-1", addr(3, 1), addr(3, 1), &[], "prod").await;
    let b = node(
        "staging-1",
        addr(3, 2),
        addr(3, 2),
        &[addr(3, 1)],
        "staging",
    )
    .await;
    wait_until_async(Duration::from_secs(10), POLL, || {
        ready(a.stats().snapshot().rejected_auth >= 5)
    })
    .await
    .expect("the other cluster's datagrams to be rejected");
    assert_eq!(liveness_of(&a, "staging-1"), None);
    assert_eq!(liveness_of(&b, "prod-1"), None);
    assert_eq!(a.stats().snapshot().received, 0);
    assert_eq!(b.stats().snapshot().received, 0);
}
