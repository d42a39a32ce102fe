//! Letting a host that lost its RKE2 data rejoin under its old name.
//!
//! RKE2 refuses such a host twice: etcd still lists a member of its node name ("duplicate node
//! name found") and the cluster still holds the hash of its old node password. A human would
//! delete the stale member and the `<node>.node-password.rke2` secret from a live server. Here a
//! ready server's agent does it, with the datastore RKE2 runs on that server, for a peer that
//! gossip (sealed with the cluster key, so the name is authenticated) shows alive but stuck short
//! of ready for [`STUCK_GRACE`]:
//!
//! - its etcd member is removed only while that member does not answer (a member that runs is
//!   never stale) and only while the cluster has quorum. Removing a member that does not answer
//!   never costs quorum: the members that answer stay, and the quorum of a smaller cluster is
//!   never larger;
//! - its node-password entry is removed: harmless for a node that merely joins slowly, since its
//!   next registration stores its password again.
//!
//! Servers gone for good are another matter, kept by [`crate::shape`]: their removal waits for
//! the departed grace and takes the one-at-a-time turn.
//!
//! etcd is reached as RKE2's own tools reach it: over TLS on the client port, trusting
//! `server/tls/etcd/server-ca.crt` and presenting `server/tls/etcd/server-client.{crt,key}`
//! (RKE2's etcd runs with client certificate auth; these are the files its etcd snapshot and
//! `etcdctl` recipes use). They are read again before each sweep that calls etcd, so a rotated
//! certificate is picked up.
//!
//! [`plan`] is the decision, pure and table-tested; [`spawn`] runs it against etcd.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::gossip::schema::{Liveness, Member, Phase, Role};
use crate::since::Since;

/// How long a peer must look alive and not ready before its leftovers are removed: longer than a
/// restarting server needs to bring its etcd member back.
pub const STUCK_GRACE: Duration = Duration::from_secs(15);
/// Where RKE2 keeps the CA its etcd's serving certificates are signed by.
pub const ETCD_SERVER_CA: &str = "/var/lib/rancher/rke2/server/tls/etcd/server-ca.crt";
/// The etcd client certificate on an RKE2 server (signed by [`ETCD_SERVER_CA`], client auth).
pub const ETCD_CLIENT_CERT: &str = "/var/lib/rancher/rke2/server/tls/etcd/server-client.crt";
/// The key of [`ETCD_CLIENT_CERT`].
pub const ETCD_CLIENT_KEY: &str = "/var/lib/rancher/rke2/server/tls/etcd/server-client.key";
/// RKE2's etcd client port on a server.
pub const ETCD_CLIENT_PORT: u16 = 2379;
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One etcd member as the sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub id: u64,
    /// `<node-name>-<suffix>`; empty for a learner that never started.
    pub name: String,
    /// Not yet promoted to a voter (a join in flight).
    pub learner: bool,
    /// Its client URL answered just now (any answer: the process runs).
    pub answering: bool,
    /// Where its clients reach it (`ip:port` of its client URLs).
    pub client_addrs: Vec<SocketAddr>,
}

impl EtcdMember {
    /// The node an etcd member stands for: RKE2 names members `<node-name>-<suffix>`.
    pub fn node_name(&self) -> &str {
        match self.name.rfind('-') {
            Some(i) if i > 1 => &self.name[..i],
            _ => &self.name,
        }
    }
}

/// What one sweep does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    RemoveMember { node: String, id: u64 },
    ForgetPassword { node: String },
}

/// The decision: for each stuck node, its members that do not answer and its password entry.
/// Nothing at all without quorum (etcd would refuse, and a cluster without quorum is no place to
/// judge which member is stale).
pub fn plan(stuck: &[String], members: &[EtcdMember], quorum: bool) -> Vec<Step> {
    if !quorum {
        return Vec::new();
    }
    let mut steps = Vec::new();
    for node in stuck {
        for m in members {
            if !m.name.is_empty() && m.node_name() == node && !m.answering {
                steps.push(Step::RemoveMember {
                    node: node.clone(),
                    id: m.id,
                });
            }
        }
        steps.push(Step::ForgetPassword { node: node.clone() });
    }
    steps
}

/// Peers that look alive but have not been ready for [`STUCK_GRACE`], tracked across sweeps.
#[derive(Debug, Default)]
pub struct StuckClock {
    since: Since<String>,
}

impl StuckClock {
    pub fn observe(&mut self, now: Instant, self_name: &str, members: &[Member]) -> Vec<String> {
        let waiting = members
            .iter()
            .filter(|m| {
                m.name != self_name
                    && m.liveness == Liveness::Alive
                    && !m.announced.ready
                    // A host with its RKE2 data restarts its own member, however slowly (a big
                    // datastore, a slow disk after a reboot): never stale. Only a wiped or
                    // reinstalled host is refused for what its old self left behind.
                    && !m.announced.rke2_data
                    && matches!(m.announced.role, Role::Server | Role::Agent)
                    && matches!(
                        m.announced.phase,
                        Phase::Initializing | Phase::Joining | Phase::WaitingToJoin
                    )
            })
            .map(|m| m.name.clone());
        self.since.observe(now, waiting);
        let mut stuck: Vec<String> = self.since.at_least(now, STUCK_GRACE).cloned().collect();
        stuck.sort();
        stuck
    }
}

/// The key of a node's password entry: the `<node>.node-password.rke2` secret in `kube-system`.
pub fn node_password_key(node: &str) -> String {
    format!(
        "/registry/secrets/kube-system/{}.node-password.rke2",
        node.to_lowercase()
    )
}

/// etcd's v3 JSON gateway on this server, over TLS with RKE2's etcd client certificate.
#[derive(Debug, Clone)]
pub struct Etcd {
    http: reqwest::Client,
    base: String,
}

impl Etcd {
    /// A client for the etcd at `client_addr`, with the certificates RKE2 wrote under `root`;
    /// errors name the file that is missing or unusable.
    pub fn new(client_addr: SocketAddr, root: &Path) -> Result<Self> {
        let http = super::probe::mutual_tls_client(
            root,
            super::probe::MutualTls {
                what: "etcd",
                ca: ETCD_SERVER_CA,
                cert: ETCD_CLIENT_CERT,
                key: ETCD_CLIENT_KEY,
            },
            CALL_TIMEOUT,
        )?;
        Ok(Etcd {
            http,
            base: format!("https://{client_addr}"),
        })
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("calling etcd {path}"))?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            bail!("etcd {path}: {error}");
        }
        if !status.is_success() {
            bail!("etcd {path} answered {status}");
        }
        Ok(value)
    }

    /// A leader and a quorum read (`/health`).
    pub async fn has_quorum(&self) -> bool {
        let url = format!("{}/health", self.base);
        match self.http.get(url).send().await {
            Ok(r) => r.bytes().await.is_ok_and(|b| {
                serde_json::from_slice::<Value>(&b).is_ok_and(|v| v["health"] == "true")
            }),
            Err(_) => false,
        }
    }

    /// Members, each probed at its client URL. Fails on a learner (etcd refuses it the list).
    pub async fn members(&self) -> Result<Vec<EtcdMember>> {
        let v = self.call("/v3/cluster/member/list", json!({})).await?;
        let mut members = Vec::new();
        for m in v["members"].as_array().cloned().unwrap_or_default() {
            let id = match &m["ID"] {
                Value::String(s) => s.parse().unwrap_or(0),
                other => other.as_u64().unwrap_or(0),
            };
            let mut answering = false;
            let mut client_addrs = Vec::new();
            for url in m["clientURLs"].as_array().cloned().unwrap_or_default() {
                if let Some(url) = url.as_str() {
                    answering |= listens(url).await;
                    client_addrs.extend(url_addr(url));
                }
            }
            members.push(EtcdMember {
                id,
                name: m["name"].as_str().unwrap_or_default().to_string(),
                learner: m["isLearner"].as_bool().unwrap_or(false),
                answering,
                client_addrs,
            });
        }
        Ok(members)
    }

    pub async fn remove_member(&self, id: u64) -> Result<()> {
        self.call("/v3/cluster/member/remove", json!({"ID": id.to_string()}))
            .await
            .map(drop)
    }

    /// Deletes a key; `true` if it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let v = self.call("/v3/kv/deleterange", json!({"key": key})).await?;
        Ok(v["deleted"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            > 0)
    }
}

/// The `ip:port` of an etcd URL (`https://ip:port`, `https://[v6]:port`).
fn url_addr(url: &str) -> Option<SocketAddr> {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// Whether an etcd client URL (`https://ip:port`) accepts connections: its member runs. Judged
/// by TCP alone, never by a TLS or HTTP answer: a certificate problem on this side must not make
/// a running member look stale.
async fn listens(url: &str) -> bool {
    let hostport = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    matches!(
        tokio::time::timeout(CALL_TIMEOUT, tokio::net::TcpStream::connect(hostport)).await,
        Ok(Ok(_))
    )
}

/// Runs the sweep on a server for as long as the agent runs. Quiet while nobody is stuck (no
/// etcd calls at all), and on a node whose etcd is not a voting member. `root` is where RKE2's
/// files are (`/` on a real host).
pub fn spawn(
    view: watch::Receiver<Arc<Vec<Member>>>,
    self_name: String,
    etcd_client: SocketAddr,
    root: PathBuf,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut clock = StuckClock::default();
        loop {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            let members = view.borrow().clone();
            let now = Instant::now();
            let stuck = clock.observe(now, &self_name, &members);
            if stuck.is_empty() {
                continue;
            }
            // Loaded afresh: RKE2 renews these certificates.
            let etcd = match Etcd::new(etcd_client, &root) {
                Ok(etcd) => etcd,
                Err(err) => {
                    warn!(error = %format!("{err:#}"), "rejoin sweep cannot reach etcd");
                    continue;
                }
            };
            if let Err(err) = sweep(&etcd, &stuck).await {
                debug!(error = %format!("{err:#}"), "rejoin sweep skipped");
            }
        }
    })
}

async fn sweep(etcd: &Etcd, stuck: &[String]) -> Result<()> {
    let members = etcd.members().await?;
    let quorum = etcd.has_quorum().await;
    if !quorum {
        warn!(stuck = ?stuck, "peers are stuck joining but etcd has no quorum: removing nothing");
    }
    for step in plan(stuck, &members, quorum) {
        match step {
            Step::RemoveMember { node, id } => match etcd.remove_member(id).await {
                Ok(()) => {
                    info!(node = %node, member_id = id, "removed a stale etcd member")
                }
                Err(err) => {
                    warn!(node = %node, member_id = id, error = %format!("{err:#}"), "cannot remove a stale etcd member")
                }
            },
            Step::ForgetPassword { node } => {
                if etcd.delete(&node_password_key(&node)).await? {
                    info!(node = %node, "removed the node password entry of a host that is rejoining");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, answering: bool) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            learner: false,
            answering,
            client_addrs: Vec::new(),
        }
    }

    #[test]
    fn a_stuck_node_loses_its_silent_member_and_its_password() {
        let members = [
            member(1, "server-1-aaaa", false),
            member(2, "server-2-bbbb", true),
            member(3, "server-3-cccc", true),
        ];
        assert_eq!(
            plan(&["server-1".into()], &members, true),
            [
                Step::RemoveMember {
                    node: "server-1".into(),
                    id: 1
                },
                Step::ForgetPassword {
                    node: "server-1".into()
                },
            ]
        );
    }

    #[test]
    fn a_member_that_answers_is_never_stale() {
        let members = [
            member(1, "server-1-aaaa", true),
            member(2, "server-2-b", true),
        ];
        assert_eq!(
            plan(&["server-1".into()], &members, true),
            [Step::ForgetPassword {
                node: "server-1".into()
            }]
        );
    }

    #[test]
    fn nothing_without_quorum() {
        let members = [
            member(1, "server-1-aaaa", false),
            member(2, "server-2-b", false),
        ];
        assert!(plan(&["server-1".into()], &members, false).is_empty());
    }

    #[test]
    fn names_match_whole_node_names_and_unstarted_learners_are_left_alone() {
        let members = [
            member(1, "server-10-aaaa", false),
            member(2, "", false),
            member(3, "server-1-cccc", true),
        ];
        assert_eq!(
            plan(&["server-1".into()], &members, true),
            [Step::ForgetPassword {
                node: "server-1".into()
            }]
        );
        // An agent has no member: only its password goes.
        assert_eq!(
            plan(&["agent-1".into()], &members, true),
            [Step::ForgetPassword {
                node: "agent-1".into()
            }]
        );
    }

    fn peer(name: &str, role: Role, phase: Phase) -> Member {
        use crate::gossip::schema::Announcement;
        let mut a = Announcement::new(role, "127.0.0.1".parse().unwrap());
        a.phase = phase;
        a.ready = phase == Phase::Ready;
        Member::from_announcement(name, 1, "127.0.0.1:7947".parse().unwrap(), true, &a)
    }

    #[test]
    fn a_restarting_server_with_its_data_is_never_stuck_however_slow() {
        let mut clock = StuckClock::default();
        let t0 = Instant::now();
        let mut slow = peer("s", Role::Server, Phase::Joining);
        slow.announced.rke2_data = true;
        let view = vec![peer("me", Role::Server, Phase::Ready), slow];
        assert!(clock.observe(t0, "me", &view).is_empty());
        assert!(clock.observe(t0 + STUCK_GRACE * 20, "me", &view).is_empty());
    }

    #[test]
    fn peers_count_as_stuck_only_after_the_grace_while_they_keep_waiting() {
        let mut clock = StuckClock::default();
        let t0 = Instant::now();
        let view = vec![
            peer("me", Role::Server, Phase::Ready),
            peer("a", Role::Server, Phase::Initializing),
            peer("b", Role::Agent, Phase::Joining),
            peer("c", Role::Server, Phase::Ready),
            peer("lb", Role::Observer, Phase::Observing),
        ];
        assert!(clock.observe(t0, "me", &view).is_empty());
        let later = t0 + STUCK_GRACE;
        // "a" became ready in between: its clock starts over when it waits again.
        let mut a_ready = view.clone();
        a_ready[1] = peer("a", Role::Server, Phase::Ready);
        assert!(clock
            .observe(t0 + STUCK_GRACE / 2, "me", &a_ready)
            .is_empty());
        assert_eq!(clock.observe(later, "me", &view), ["b"]);
        assert_eq!(clock.observe(later + STUCK_GRACE, "me", &view), ["a", "b"]);
    }

    #[test]
    fn member_names_map_to_node_names() {
        assert_eq!(member(1, "server-1-0a1b2c3d", true).node_name(), "server-1");
        assert_eq!(member(1, "a-1", true).node_name(), "a-1");
    }
}
