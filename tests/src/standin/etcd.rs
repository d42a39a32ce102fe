//! The stand-in servers' datastore: a real etcd (Debian's `etcd-server`, 3.4) per server, on the
//! host's own loopback address (client 2379, peer 2380), data under
//! `<root>/var/lib/rancher/rke2/server/db/etcd` as RKE2 keeps it. The same client reads etcd for
//! the harness's "one cluster" checks.
//!
//! Like RKE2's, the etcd serves clients over TLS only and requires a client certificate: its
//! serving certificate, `server/tls/etcd/server-client.{crt,key}`, is signed by the etcd server
//! CA `server/tls/etcd/server-ca.crt` (one CA for the whole cluster, handed to joining servers),
//! and it trusts only that CA for clients. Whoever talks to it (the stand-in, the harness, the
//! agent's rejoin sweep) presents that certificate, as `etcdctl` on an RKE2 server does. Peer
//! traffic stays plain HTTP here (RKE2 uses TLS there too, with a peer CA; nothing outside the
//! members talks to it).
//!
//! The client speaks etcd's v3 JSON gateway (`POST /v3/...`) over HTTP/1.0 (no chunked bodies),
//! so neither the stand-in nor the tests need etcdctl or a gRPC stack.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// Short raft timings: a member starts, and a lost leader is noticed, in about a second.
const HEARTBEAT_MS: u32 = 100;
const ELECTION_MS: u32 = 1000;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// The key of a node's password hash: RKE2 keeps it in the `<node>.node-password.rke2` secret of
/// `kube-system`, which lives in etcd like every other object.
pub fn node_password_key(node: &str) -> String {
    format!(
        "/registry/secrets/kube-system/{}.node-password.rke2",
        node.to_lowercase()
    )
}

/// The node name an etcd member stands for: RKE2 names members `<node-name>-<random suffix>`.
pub fn member_node_name(member_name: &str) -> &str {
    match member_name.rfind('-') {
        Some(i) if i > 1 => &member_name[..i],
        _ => member_name,
    }
}

pub fn peer_url(ip: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(ip, port))
}

/// A client URL: TLS only, as RKE2's etcd serves its clients.
pub fn client_url(ip: IpAddr, port: u16) -> String {
    format!("https://{}", SocketAddr::new(ip, port))
}

/// The files of an etcd TLS setup: the CA, and a certificate with its key that serves and
/// authenticates (RKE2's `server-client` certificate does both).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// A client configuration that trusts the CA and presents the certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let roots = crate::http::root_store(&read(&self.ca)?)
            .with_context(|| format!("etcd ca {}", self.ca.display()))?;
        let chain = CertificateDer::pem_slice_iter(&read(&self.cert)?)
            .collect::<std::result::Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?)
            .with_context(|| format!("parsing {}", self.key.display()))?;
        let config = rustls::ClientConfig::builder_with_provider(crate::http::crypto_provider())
            .with_safe_default_protocol_versions()
            .context("tls protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the etcd client certificate")?;
        Ok(Arc::new(config))
    }
}

/// One member as etcd lists it (a learner that never started has no name and no client URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// A member list and who answered it.
#[derive(Debug, Clone)]
pub struct MemberList {
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: Vec<Member>,
}

/// An error etcd itself returned (its own text, e.g. "etcdserver: too many learner members in
/// cluster"), as opposed to not reaching it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EtcdError {
    pub message: String,
}

/// A client for one etcd endpoint, over TLS with a client certificate.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    pub fn new(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        Client { addr, tls }
    }

    /// A client of the etcd at `addr` with the certificates RKE2 keeps under `paths`.
    pub fn for_host(addr: SocketAddr, paths: &super::Rke2Paths) -> Result<Self> {
        Ok(Client::new(addr, paths.etcd_tls().client_config()?))
    }

    /// The same credentials, another member (by its client URL as etcd lists it,
    /// `https://ip:port`).
    pub fn at_url(&self, url: &str) -> Result<Self> {
        let hostport = url
            .strip_prefix("https://")
            .with_context(|| format!("{url:?} is not an https url"))?;
        Ok(Client {
            addr: hostport
                .trim_end_matches('/')
                .parse()
                .with_context(|| format!("{url:?} does not name ip:port"))?,
            tls: self.tls.clone(),
        })
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let tcp = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to etcd at {}", self.addr))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let conn = rustls::ClientConnection::new(self.tls.clone(), name)
            .context("starting tls with etcd")?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        tls.write_all(head.as_bytes())
            .with_context(|| format!("sending {path} to etcd at {}", self.addr))?;
        tls.write_all(body.as_bytes())?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // HTTP/1.0: the answer ends when the connection does, with or without close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading etcd's answer to {path} from {}", self.addr))
            }
        }
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .with_context(|| format!("etcd at {} sent no http head", self.addr))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed status line from etcd: {head:?}"))?;
        let value = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A v3 gateway call: the decoded answer, or etcd's own error.
    pub fn call(&self, path: &str, body: Value) -> Result<Value> {
        let (status, value) = self.request("POST", path, Some(&body))?;
        if let Some(message) = value.get("error").and_then(Value::as_str) {
            return Err(EtcdError {
                message: message.to_string(),
            }
            .into());
        }
        if status != 200 {
            bail!("etcd at {} answered {status} to {path}", self.addr);
        }
        Ok(value)
    }

    /// `GET /health`: a leader exists and a quorum read succeeds (true also on a learner).
    pub fn healthy(&self) -> bool {
        self.request("GET", "/health", None)
            .is_ok_and(|(status, v)| status == 200 && v["health"] == "true")
    }

    /// The member list. A learner refuses it ("rpc not supported for learner").
    pub fn member_list(&self) -> Result<MemberList> {
        let v = self.call("/v3/cluster/member/list", json!({}))?;
        Ok(MemberList {
            cluster_id: u64_field(&v["header"]["cluster_id"]),
            member_id: u64_field(&v["header"]["member_id"]),
            members: members(&v["members"]),
        })
    }

    /// Adds a learner; returns its id and the member list that includes it.
    pub fn add_learner(&self, peer_url: &str) -> Result<(u64, Vec<Member>)> {
        let v = self.call(
            "/v3/cluster/member/add",
            json!({"peerURLs": [peer_url], "isLearner": true}),
        )?;
        Ok((u64_field(&v["member"]["ID"]), members(&v["members"])))
    }

    pub fn promote(&self, id: u64) -> Result<()> {
        self.call("/v3/cluster/member/promote", json!({"ID": id.to_string()}))
            .map(drop)
    }

    pub fn remove(&self, id: u64) -> Result<()> {
        self.call("/v3/cluster/member/remove", json!({"ID": id.to_string()}))
            .map(drop)
    }

    /// `(cluster id, this member's id)` from `/v3/maintenance/status` (answered by learners too).
    pub fn status(&self) -> Result<(u64, u64)> {
        let v = self.call("/v3/maintenance/status", json!({}))?;
        Ok((
            u64_field(&v["header"]["cluster_id"]),
            u64_field(&v["header"]["member_id"]),
        ))
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let v = self.call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))?;
        v["kvs"]
            .as_array()
            .and_then(|kvs| kvs.first())
            .map(|kv| {
                base64::engine::general_purpose::STANDARD
                    .decode(kv["value"].as_str().unwrap_or_default())
                    .context("etcd returned a value that is not base64")
            })
            .transpose()
    }

    /// Every key under `prefix` with its value, in key order (etcd's range `[prefix, prefix+1)`).
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let v = self.call(
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))}),
        )?;
        let decode = |field: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(field.as_str().unwrap_or_default())
                .context("etcd returned a key or value that is not base64")
        };
        v["kvs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&decode(&kv["key"])?).into_owned();
                Ok((key, decode(&kv["value"])?))
            })
            .collect()
    }

    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.call(
            "/v3/kv/put",
            json!({"key": b64(key.as_bytes()), "value": b64(value)}),
        )
        .map(drop)
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.call("/v3/kv/deleterange", json!({"key": b64(key.as_bytes())}))
            .map(drop)
    }
}

/// The end of the range that holds exactly the keys starting with `prefix`: the prefix with its
/// last byte that is not 0xff incremented (etcd's own `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the key space.
    vec![0]
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The gateway writes 64-bit ids as strings.
fn u64_field(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn members(v: &Value) -> Vec<Member> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|m| Member {
                    id: u64_field(&m["ID"]),
                    name: m["name"].as_str().unwrap_or_default().to_string(),
                    peer_urls: strings(&m["peerURLs"]),
                    client_urls: strings(&m["clientURLs"]),
                    is_learner: m["isLearner"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How one etcd member starts.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub ip: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
    /// Client TLS: this certificate serves, and client certificates must be signed by the CA.
    pub tls: TlsFiles,
    /// `Some(initial cluster)` for a member that has no data yet: `new` when it is the only
    /// entry, `existing` when it joins. `None` once `member/wal` exists (etcd ignores them then).
    pub initial_cluster: Option<(String, bool)>,
    pub log: PathBuf,
}

impl Launch {
    pub fn args(&self) -> Vec<String> {
        let client = client_url(self.ip, self.client_port);
        let peer = peer_url(self.ip, self.peer_port);
        let mut args = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--heartbeat-interval={HEARTBEAT_MS}"),
            format!("--election-timeout={ELECTION_MS}"),
            // No metrics listener, no v2 store: only what RKE2's etcd serves to its peers.
            "--listen-metrics-urls=".into(),
            format!("--cert-file={}", self.tls.cert.display()),
            format!("--key-file={}", self.tls.key.display()),
            format!("--trusted-ca-file={}", self.tls.ca.display()),
            "--client-cert-auth=true".into(),
        ];
        if let Some((cluster, existing)) = &self.initial_cluster {
            args.push(format!("--initial-cluster={cluster}"));
            args.push(format!(
                "--initial-cluster-state={}",
                if *existing { "existing" } else { "new" }
            ));
        }
        args
    }

    /// Starts etcd as a child that dies with the stand-in (and with its process group).
    pub fn spawn(&self) -> Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn().with_context(|| {
            format!(
                "starting etcd ({}): install Debian's etcd-server package (tests/run.sh does)",
                self.binary.display()
            )
        })
    }
}

/// `member/wal` under an etcd data dir: the member has data (RKE2's "already initialized").
pub fn has_data(data_dir: &Path) -> bool {
    data_dir.join("member").join("wal").is_dir()
}

/// What etcd reports once a peer has refused it as a removed member (rafthttp's
/// `errMemberRemoved`; the peer answered 410 Gone). The same words in 3.4's default logger and in
/// its structured one, since both carry the error's own text.
const MEMBER_REMOVED: &str = "permanently removed from the cluster";

/// Whether etcd's log (what it wrote since this start) says its member was removed: the signal
/// k3s acts on (`ErrNotify` carrying `errMemberRemoved`). It is etcd's own verdict, made by a
/// peer that knows the current membership, so it cannot be a transient view: a member that
/// merely cannot reach its peers never sees it, and one that was removed sees it as soon as it
/// reaches any peer.
pub fn removed_from_cluster(log_since_start: &str) -> bool {
    log_since_start.contains(MEMBER_REMOVED)
}

/// Where k3s moves an etcd data dir it gives up on (`db/etcd` to `db/etcd-old-<unix seconds>`),
/// so nothing is lost and the next start has no data.
pub fn moved_aside_dir(data_dir: &Path, unix_seconds: u64) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "etcd".into());
    data_dir.with_file_name(format!("{name}-old-{unix_seconds}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_past_the_prefix() {
        assert_eq!(prefix_end(b"/registry/minions/"), b"/registry/minions0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn a_removed_member_is_told_apart_from_one_that_cannot_reach_its_peers() {
        // etcd 3.4's default logger, then its structured one.
        assert!(removed_from_cluster(
            "2026-12-06 14:40:01.123 E | rafthttp: the member has been permanently removed from the cluster\n\
             2026-12-06 14:40:01.124 I | etcdserver: the data-dir used by this member must be removed."
        ));
        assert!(removed_from_cluster(
            r#"{"level":"warn","msg":"server error","error":"the member has been permanently removed from the cluster"}"#
        ));
        // Peers that do not answer, or a cluster without a leader: not a removal.
        assert!(!removed_from_cluster(
            "W | rafthttp: health check for peer 5f2b could not connect: dial tcp 127.0.133.2:2380: connect: connection refused\n\
             I | raft: 8e9e is starting a new election at term 7"
        ));
        assert!(!removed_from_cluster(""));
    }

    #[test]
    fn data_is_moved_aside_next_to_itself() {
        assert_eq!(
            moved_aside_dir(
                Path::new("/r/var/lib/rancher/rke2/server/db/etcd"),
                1765000000
            ),
            Path::new("/r/var/lib/rancher/rke2/server/db/etcd-old-1765000000")
        );
    }

    #[test]
    fn member_names_map_to_node_names() {
        assert_eq!(member_node_name("server-1-0a1b2c3d"), "server-1");
        assert_eq!(member_node_name("server-1"), "server");
        assert_eq!(member_node_name("a-1"), "a-1");
        assert_eq!(member_node_name(""), "");
    }

    #[test]
    fn gateway_members_parse_with_absent_defaults() {
        let v = json!([
            {"ID": "12", "name": "a-1", "peerURLs": ["http://127.0.0.1:2380"], "clientURLs": ["http://127.0.0.1:2379"]},
            {"ID": "13", "peerURLs": ["http://127.0.0.2:2380"], "isLearner": true}
        ]);
        let m = members(&v);
        assert_eq!(m[0].id, 12);
        assert!(!m[0].is_learner);
        assert_eq!(m[1].name, "");
        assert!(m[1].is_learner);
        assert!(m[1].client_urls.is_empty());
    }
}
