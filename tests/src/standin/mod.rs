//! The RKE2 stand-in (`rke2-standin --root <root> --kind server|agent`): what the end-to-end tests
//! run in place of `rke2 server` / `rke2 agent`. It reads `<root>/etc/rancher/rke2/config.yaml`,
//! creates or joins a cluster CA exactly where RKE2 keeps its own, and serves the supervisor
//! (9345) and API (6443) endpoints the agent and the LB talk to, over TLS on the node's address.
//!
//! Environment knobs (all optional):
//! - `STANDIN_SUPERVISOR_PORT`, `STANDIN_API_PORT`: ports (9345, 6443).
//! - `STANDIN_API_DELAY_MS`: how long after the listeners are up `/readyz` (and the join endpoint
//!   `/standin/ca-key`) keep answering 503 (300); `/ping` and `/cacerts` answer at once.
//! - `STANDIN_JOIN_TIMEOUT_MS`: how long a joiner or agent retries reaching its server (60000).
//! - `STANDIN_API_ANONYMOUS`: `deny` (the default) answers 401, once ready, on `/readyz`, `/livez`
//!   and `/healthz` to a client that presents neither a certificate issued by the cluster CA (such
//!   as the kubelet client certificate every node gets, see [`Rke2Paths::kubelet_client_cert`],
//!   with a SEC1 key as RKE2 writes it) nor `Authorization: Bearer <secret>`, like RKE2's
//!   kube-apiserver, which runs with anonymous auth off; `allow` answers anyone.
//! - `STANDIN_KUBELET_CERT_TTL_MS`: kubelet client certificates valid only that long, renewed
//!   (a new key and certificate written in place) every third of it, as RKE2 renews them before
//!   they expire; unset, they are valid for years and never renewed.
//! - `STANDIN_READY_FILE`: a file created once the service is ready (servers: API ready; agents:
//!   joined) and removed on exit; the fake service manager uses it as systemd's `READY=1`. Under a
//!   real systemd (`NOTIFY_SOCKET` set, the systemd end-to-end test) `READY=1` is sent as well.
//! - `STANDIN_LEARNER_CATCHUP_MS`: how long a joining server's etcd learner takes to catch up
//!   before it asks to be promoted (0): a real learner copies the whole datastore first, minutes on
//!   a large cluster, and the day-2 tests need a join that is still in flight when something else
//!   becomes due.
//! - `STANDIN_ETCD`: the etcd binary (`etcd`, from Debian's `etcd-server`);
//!   `STANDIN_ETCD_CLIENT_PORT`, `STANDIN_ETCD_PEER_PORT`: its ports (2379, 2380).
//!
//! Servers keep their membership in a real etcd ([`etcd`]): the first server starts a new etcd
//! cluster; a joiner registers through the supervisor port with the token and its node password,
//! is added as a learner (etcd accepts one at a time), starts its member and promotes itself once
//! caught up. `/readyz` answers 200 only on a voting member of a cluster with quorum. A joiner
//! whose name still has a member, or whose node password differs from the stored one, is refused
//! with RKE2's own words and exits, as `rke2 server` does. Like RKE2's, that etcd serves its
//! clients only over TLS and only to certificates of the cluster's etcd server CA
//! (`server/tls/etcd/server-ca.crt`; each server's `server-client.{crt,key}` serves and
//! authenticates), which the first server creates and joiners receive with their etcd join.
//!
//! A server whose member was removed while it was down comes back as RKE2 (k3s's
//! `pkg/etcd`) does: its restarted etcd is refused by its peers as a removed member, the stand-in
//! writes the tombstone `db/etcd/tombstone` and exits (its unit restarts it); the next start finds
//! the tombstone, moves the data dir aside to `db/etcd-old-<unix seconds>` and joins through its
//! `server:` URL like any joiner: a new learner, a new member id, the same node name.
//!
//! For day-2 operations each server also writes RKE2's admin credentials
//! (`server/tls/client-admin.{crt,key}`, `CN=system:admin, O=system:masters`, and the kubeconfig
//! `/etc/rancher/rke2/rke2.yaml`), keeps a Node object per registered node in etcd, and serves
//! `GET /api/v1/nodes` and `DELETE /api/v1/nodes/<name>` on the API port with kube-apiserver's
//! authorization and k3s's controllers' effects on a delete ([`nodes`]).

pub mod config;
pub mod etcd;
pub mod nodes;
pub mod pki;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::RngCore;
use rke2_bootstrap::fsutil;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;

use crate::http::{self, BaseUrl, Request, Trust};
pub use config::{StandinConfig, Token};
pub use pki::{ca_hash, CertUser, ClusterCa};

pub const DEFAULT_SUPERVISOR_PORT: u16 = 9345;
pub const DEFAULT_API_PORT: u16 = 6443;
pub const DEFAULT_API_DELAY_MS: u64 = 300;
pub const DEFAULT_JOIN_TIMEOUT_MS: u64 = 60_000;

/// Which RKE2 service this stand-in plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Agent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::Agent => "agent",
        }
    }

    /// The systemd unit that runs this kind.
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Server => "rke2-server.service",
            Kind::Agent => "rke2-agent.service",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "server" => Ok(Kind::Server),
            "agent" => Ok(Kind::Agent),
            other => bail!("unknown kind {other:?}: expected server or agent"),
        }
    }
}

/// Where RKE2 (and so the stand-in) keeps its files, under a host root.
#[derive(Debug, Clone)]
pub struct Rke2Paths {
    root: PathBuf,
}

impl Rke2Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Rke2Paths { root: root.into() }
    }
    fn at(&self, host_path: &str) -> PathBuf {
        fsutil::under_root(&self.root, host_path)
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_yaml(&self) -> PathBuf {
        self.at("/etc/rancher/rke2/config.yaml")
    }
    pub fn server_dir(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/tls/server-ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/tls/server-ca.key")
    }
    pub fn token(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/token")
    }
    pub fn etcd_dir(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/db/etcd")
    }
    pub fn agent_dir(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/agent")
    }
    pub fn agent_joined(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/agent/joined")
    }
    /// The kubelet client certificate RKE2 writes on every node once it is a member (the stand-in
    /// signs it with the cluster CA; the API accepts it as an authenticated identity).
    pub fn kubelet_client_cert(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/agent/client-kubelet.crt")
    }
    pub fn kubelet_client_key(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/agent/client-kubelet.key")
    }
    /// The admin client certificate RKE2 writes on every server (`CN=system:admin`,
    /// `O=system:masters`), signed by the CA the API trusts for clients.
    pub fn admin_client_cert(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/tls/client-admin.crt")
    }
    pub fn admin_client_key(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/tls/client-admin.key")
    }
    /// The admin kubeconfig RKE2 writes on every server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.at("/etc/rancher/rke2/rke2.yaml")
    }
    /// The node's password: RKE2 generates it on first start and presents it with every
    /// registration; the cluster keeps its hash per node name.
    pub fn node_password(&self) -> PathBuf {
        self.at("/etc/rancher/node/password")
    }
    /// The etcd server CA (one per cluster, handed to joining servers), at RKE2's path.
    pub fn etcd_server_ca(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/tls/etcd/server-ca.crt")
    }
    pub fn etcd_server_ca_key(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/tls/etcd/server-ca.key")
    }
    /// etcd's serving certificate, also its client certificate (what `etcdctl` on an RKE2 server
    /// presents).
    pub fn etcd_server_client_cert(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/tls/etcd/server-client.crt")
    }
    pub fn etcd_server_client_key(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/tls/etcd/server-client.key")
    }
    /// The TLS files a client of this server's etcd uses.
    pub fn etcd_tls(&self) -> etcd::TlsFiles {
        etcd::TlsFiles {
            ca: self.etcd_server_ca(),
            cert: self.etcd_server_client_cert(),
            key: self.etcd_server_client_key(),
        }
    }
    /// The persisted etcd server CA, if both halves are on disk.
    pub fn load_etcd_ca(&self) -> Result<Option<ClusterCa>> {
        load_ca_pair(&self.etcd_server_ca(), &self.etcd_server_ca_key())
    }
    /// This server's etcd member name (`<node-name>-<suffix>`), kept next to its data.
    pub fn etcd_name(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/db/etcd/name")
    }
    /// k3s's tombstone: written when etcd reports this member removed from its cluster; the next
    /// start moves the data dir aside and joins anew.
    pub fn etcd_tombstone(&self) -> PathBuf {
        self.at("/var/lib/rancher/rke2/server/db/etcd/tombstone")
    }
    /// Whether this server's etcd has data (`member/wal`): RKE2's "already initialized".
    pub fn etcd_has_data(&self) -> bool {
        etcd::has_data(&self.etcd_dir())
    }

    /// The persisted CA, if both halves are on disk.
    pub fn load_ca(&self) -> Result<Option<ClusterCa>> {
        load_ca_pair(&self.ca_cert(), &self.ca_key())
    }
}

/// The knobs read from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub supervisor_port: u16,
    pub api_port: u16,
    pub api_delay: Duration,
    pub join_timeout: Duration,
    pub api_anonymous: bool,
    pub kubelet_cert_ttl: Option<Duration>,
    pub ready_file: Option<PathBuf>,
    pub etcd_binary: PathBuf,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub learner_catchup: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        fn num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
                _ => Ok(default),
            }
        }
        let api_anonymous = match std::env::var("STANDIN_API_ANONYMOUS").as_deref() {
            Ok("allow") => true,
            Err(_) | Ok("") | Ok("deny") => false,
            Ok(other) => bail!("STANDIN_API_ANONYMOUS={other:?}: expected allow or deny"),
        };
        Ok(Settings {
            supervisor_port: num("STANDIN_SUPERVISOR_PORT", DEFAULT_SUPERVISOR_PORT)?,
            api_port: num("STANDIN_API_PORT", DEFAULT_API_PORT)?,
            api_delay: Duration::from_millis(num("STANDIN_API_DELAY_MS", DEFAULT_API_DELAY_MS)?),
            join_timeout: Duration::from_millis(num(
                "STANDIN_JOIN_TIMEOUT_MS",
                DEFAULT_JOIN_TIMEOUT_MS,
            )?),
            api_anonymous,
            kubelet_cert_ttl: match num("STANDIN_KUBELET_CERT_TTL_MS", 0u64)? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            ready_file: std::env::var_os("STANDIN_READY_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            etcd_binary: std::env::var_os("STANDIN_ETCD")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("etcd")),
            etcd_client_port: num("STANDIN_ETCD_CLIENT_PORT", etcd::CLIENT_PORT)?,
            etcd_peer_port: num("STANDIN_ETCD_PEER_PORT", etcd::PEER_PORT)?,
            learner_catchup: Duration::from_millis(num("STANDIN_LEARNER_CATCHUP_MS", 0u64)?),
        })
    }
}

/// Writes one lowercase log line to stderr.
pub fn log(kind: Kind, message: impl AsRef<str>) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    eprintln!("{ms} rke2-standin {}: {}", kind.as_str(), message.as_ref());
}

/// Runs the stand-in until SIGTERM/SIGINT (Ok) or a fatal error.
pub async fn run(root: &Path, kind: Kind, settings: Settings) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the sigterm handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the sigint handler")?;
    let paths = Rke2Paths::new(root);
    let work = async {
        let cfg = StandinConfig::load(&paths.config_yaml())?;
        match kind {
            Kind::Server => run_server(&paths, &cfg, &settings).await,
            Kind::Agent => run_agent(&paths, &cfg, &settings).await,
        }
    };
    let result = tokio::select! {
        result = work => result,
        _ = sigterm.recv() => {
            log(kind, "received sigterm, stopping");
            Ok(())
        }
        _ = sigint.recv() => {
            log(kind, "received sigint, stopping");
            Ok(())
        }
    };
    if let Some(ready) = &settings.ready_file {
        let _ = std::fs::remove_file(ready);
    }
    result
}

fn mark_ready(kind: Kind, settings: &Settings) {
    // Under a real systemd the installed units are `Type=notify`, like RKE2's: `systemctl start`
    // returns (and units ordered after it start) only once this arrives. Without NOTIFY_SOCKET
    // (the fake service manager) this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        log(kind, format!("cannot notify systemd: {e}"));
    }
    if let Some(path) = &settings.ready_file {
        if let Err(e) = std::fs::write(path, b"ready\n") {
            log(
                kind,
                format!("cannot write ready file {}: {e}", path.display()),
            );
        }
    }
}

/// Writes the node's kubelet client identity, signed by the cluster CA; with a TTL, keeps
/// renewing it in the background.
fn kubelet_identity(
    kind: Kind,
    paths: &Rke2Paths,
    ca: &ClusterCa,
    node: &str,
    ttl: Option<Duration>,
) -> Result<()> {
    write_kubelet_identity(paths, ca, node, ttl)?;
    if let Some(ttl) = ttl {
        let (paths, ca, node) = (paths.clone(), ca.clone(), node.to_string());
        tokio::spawn(async move {
            let mut renewals = 0u64;
            loop {
                tokio::time::sleep(ttl / 3).await;
                match write_kubelet_identity(&paths, &ca, &node, Some(ttl)) {
                    Ok(()) => {
                        renewals += 1;
                        log(
                            kind,
                            format!("renewed the kubelet client certificate ({renewals})"),
                        );
                    }
                    Err(e) => log(
                        kind,
                        format!("cannot renew the kubelet client certificate: {}", flat(&e)),
                    ),
                }
            }
        });
    }
    Ok(())
}

fn write_kubelet_identity(
    paths: &Rke2Paths,
    ca: &ClusterCa,
    node: &str,
    ttl: Option<Duration>,
) -> Result<()> {
    let (cert, key) = ca.client_cert(&format!("system:node:{node}"), "system:nodes", ttl)?;
    fsutil::create_dir_with_mode(&paths.agent_dir(), fsutil::SECRET_DIR_MODE)?;
    fsutil::write_file_atomic(
        &paths.kubelet_client_key(),
        key.as_bytes(),
        fsutil::SECRET_FILE_MODE,
    )?;
    fsutil::write_file_atomic(&paths.kubelet_client_cert(), cert.as_bytes(), 0o644)
}

/// RKE2's admin credentials on a server: `client-admin.{crt,key}` and the kubeconfig embedding
/// them with the CA and this server's API URL. Issued anew at every start, as the kubelet
/// identity is.
fn write_admin_credentials(paths: &Rke2Paths, ca: &ClusterCa, api: SocketAddr) -> Result<()> {
    let (cert, key) = ca.client_cert("system:admin", nodes::ADMIN_GROUP, None)?;
    // The key first: a reader that sees the new certificate finds its key in place.
    fsutil::write_file_atomic(
        &paths.admin_client_key(),
        key.as_bytes(),
        fsutil::SECRET_FILE_MODE,
    )?;
    fsutil::write_file_atomic(&paths.admin_client_cert(), cert.as_bytes(), 0o644)?;
    let config = kubeconfig(
        &format!("https://{api}"),
        &ca.cert_pem,
        cert.as_bytes(),
        key.as_bytes(),
    );
    // 0600 whatever config.yaml's write-kubeconfig-mode says: the stand-in does not read it.
    fsutil::write_file_atomic(
        &paths.kubeconfig(),
        config.as_bytes(),
        fsutil::SECRET_FILE_MODE,
    )
}

/// A kubeconfig in the shape RKE2 writes `rke2.yaml`: one cluster, user and context, all named
/// `default`, with the certificates embedded.
fn kubeconfig(server: &str, ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> String {
    use base64::Engine;
    let b64 = |pem: &[u8]| base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem),
    )
}

fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn read_stored_token(paths: &Rke2Paths) -> Result<Option<Token>> {
    match std::fs::read_to_string(paths.token()) {
        Ok(text) => Ok(Some(Token::parse(&text).with_context(|| {
            format!("parsing the stored token {}", paths.token().display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", paths.token().display())),
    }
}

/// A file holding one generated value: read it, or create it (RKE2's node password, the etcd
/// member name).
fn read_or_create(path: &Path, mode: u32, create: impl FnOnce() -> String) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let value = create();
    if let Some(dir) = path.parent() {
        fsutil::create_dir_with_mode(dir, fsutil::SECRET_DIR_MODE)?;
    }
    fsutil::write_file_atomic(path, format!("{value}\n").as_bytes(), mode)?;
    Ok(value)
}

fn node_password(paths: &Rke2Paths) -> Result<String> {
    read_or_create(
        &paths.node_password(),
        fsutil::SECRET_FILE_MODE,
        random_secret,
    )
}

fn node_name(cfg: &StandinConfig) -> String {
    cfg.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    })
}

/// The words of k3s's node-password check (`pkg/nodepassword`), as the joining node logs them.
pub const NODE_PASSWORD_REJECTED: &str = "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag";
/// k3s's etcd join refusal while a member of the same node name exists (`pkg/etcd`).
pub const DUPLICATE_NODE_NAME: &str =
    "duplicate node name found, please use a unique name for this node";

fn password_hash(password: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(password.as_bytes()))
}

/// k3s's `nodepassword.Ensure`: verifies the stored hash if there is one, stores it otherwise.
/// `Ok(false)`: the password does not match.
fn ensure_node_password(client: &etcd::Client, node: &str, password: &str) -> Result<bool> {
    let key = etcd::node_password_key(node);
    let hash = password_hash(password);
    match client.get(&key)? {
        Some(stored) => Ok(stored == hash.as_bytes()),
        None => {
            client.put(&key, hash.as_bytes())?;
            Ok(true)
        }
    }
}

/// What a joining server needs to start its etcd member, as `/standin/etcd-join` answers it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct EtcdJoin {
    initial_cluster: String,
    member_id: String,
    /// Client URLs of the voting members (where the joiner asks to be promoted).
    endpoints: Vec<String>,
    /// The cluster's etcd server CA, certificate and key (PEM), which RKE2 hands joining
    /// servers with the rest of its bootstrap data.
    #[serde(default)]
    etcd_ca_cert: String,
    #[serde(default)]
    etcd_ca_key: String,
}

async fn run_server(paths: &Rke2Paths, cfg: &StandinConfig, settings: &Settings) -> Result<()> {
    let kind = Kind::Server;
    let node_ip = cfg
        .node_ip
        .context("config.yaml has no node-ip: the stand-in server needs the address to serve on")?;
    let node = node_name(cfg);
    let password = node_password(paths)?;
    let config_token = cfg
        .token
        .as_deref()
        .map(Token::parse)
        .transpose()
        .context("the token in config.yaml")?;
    let stored_token = read_stored_token(paths)?;
    if let (Some(config), Some(stored)) = (&config_token, &stored_token) {
        if config.secret != stored.secret {
            bail!(
                "the token in config.yaml does not match the one this node's data was created with \
                 ({}): a node cannot change its cluster token",
                paths.token().display()
            );
        }
    }
    let start = etcd_start(
        paths.etcd_tombstone().exists(),
        paths.etcd_has_data(),
        cfg.server.is_some(),
    )
    .map_err(|why| anyhow::anyhow!("{why}"))?;
    if start == EtcdStart::RejoinAfterRemoval {
        log(
            kind,
            "tombstone file has been detected, removing data dir to rejoin the cluster",
        );
        let aside = move_etcd_data_aside(paths)?;
        log(
            kind,
            format!(
                "moved the etcd data dir aside to {}: joining the cluster as a new member",
                aside.display()
            ),
        );
    }
    // Like RKE2, `server:` is ignored once etcd has data: the member just restarts.
    let has_data = start == EtcdStart::Restart;
    let join_url = if has_data { None } else { cfg.server.clone() };

    let (ca, fresh) = match paths.load_ca()? {
        Some(ca) => {
            log(
                kind,
                format!("reusing the cluster ca found on disk (hash {})", ca.hash()),
            );
            (ca, false)
        }
        None => match &join_url {
            None if has_data => bail!(
                "etcd data exists in {} but the cluster ca is gone",
                paths.etcd_dir().display()
            ),
            None => {
                let ca = ClusterCa::generate()?;
                log(
                    kind,
                    format!("generated a new cluster ca (hash {})", ca.hash()),
                );
                (ca, true)
            }
            Some(url) => {
                let token = config_token
                    .as_ref()
                    .with_context(|| format!("joining {url} needs a token in config.yaml"))?;
                let base = BaseUrl::parse(url).context("the server url in config.yaml")?;
                log(kind, format!("joining the cluster at {base}"));
                let ca = join_cluster(kind, &base, token, settings.join_timeout).await?;
                log(
                    kind,
                    format!("got the cluster ca from {base} (ca hash {})", ca.hash()),
                );
                (ca, true)
            }
        },
    };
    ca.validate().context("the cluster ca")?;
    if let Some(expected) = config_token.as_ref().and_then(|t| t.ca_hash.as_deref()) {
        if expected != ca.hash() {
            log(
                kind,
                format!(
                    "warning: the token in config.yaml names ca hash {expected}, but this node's ca hash is {}",
                    ca.hash()
                ),
            );
        }
    }

    if fresh {
        let tls_dir = paths.ca_cert().parent().map(Path::to_path_buf);
        if let Some(dir) = tls_dir {
            fsutil::create_dir_with_mode(&dir, fsutil::SECRET_DIR_MODE)?;
        }
        // The key first: the CA counts as present only once the certificate is there too.
        fsutil::write_file_atomic(&paths.ca_key(), &ca.key_pem, fsutil::SECRET_FILE_MODE)?;
        fsutil::write_file_atomic(&paths.ca_cert(), &ca.cert_pem, 0o644)?;
    }
    let secret = config_token
        .map(|t| t.secret)
        .or(stored_token.map(|t| t.secret))
        .unwrap_or_else(|| {
            log(kind, "no token in config.yaml: generated one");
            random_secret()
        });
    fsutil::write_file_atomic(
        &paths.token(),
        Token::full(&ca.hash(), &secret).as_bytes(),
        fsutil::SECRET_FILE_MODE,
    )?;
    kubelet_identity(kind, paths, &ca, &node, settings.kubelet_cert_ttl)?;
    write_admin_credentials(paths, &ca, SocketAddr::new(node_ip, settings.api_port))?;

    // etcd: restart with data, start a new cluster, or join as a learner.
    let member_name = read_or_create(&paths.etcd_name(), 0o600, || {
        let mut suffix = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut suffix);
        format!("{node}-{}", hex::encode(suffix))
    })?;
    let peer = etcd::peer_url(node_ip, settings.etcd_peer_port);
    let (initial_cluster, promotion, etcd_ca) = if has_data {
        log(kind, "etcd has data: restarting its member");
        let etcd_ca = paths.load_etcd_ca()?.with_context(|| {
            format!(
                "etcd data exists in {} but the etcd server ca ({}) is gone",
                paths.etcd_dir().display(),
                paths.etcd_server_ca().display()
            )
        })?;
        (None, None, etcd_ca)
    } else if let Some(url) = &join_url {
        let base = BaseUrl::parse(url).context("the server url in config.yaml")?;
        let token = Token::full(&ca.hash(), &secret);
        let token = Token::parse(&token)?;
        let joined = register_member(
            kind,
            &base,
            &token,
            &ca.cert_pem,
            (&node, &password),
            (&member_name, &peer),
            settings.join_timeout,
        )
        .await?;
        log(
            kind,
            format!(
                "added to etcd as learner {} (initial cluster {})",
                joined.member_id, joined.initial_cluster
            ),
        );
        let id: u64 = joined.member_id.parse().context("member id")?;
        let etcd_ca = ClusterCa {
            cert_pem: joined.etcd_ca_cert.into_bytes(),
            key_pem: joined.etcd_ca_key.into_bytes(),
        };
        etcd_ca
            .validate()
            .context("the etcd server ca handed out by the cluster")?;
        (
            Some((joined.initial_cluster, true)),
            Some((id, joined.endpoints)),
            etcd_ca,
        )
    } else {
        log(
            kind,
            format!("initializing a new cluster (ca hash {})", ca.hash()),
        );
        (
            Some((format!("{member_name}={peer}"), false)),
            None,
            ClusterCa::generate_named("etcd-server-ca")?,
        )
    };
    write_etcd_tls(paths, &etcd_ca, node_ip)?;
    let launch = etcd::Launch {
        binary: settings.etcd_binary.clone(),
        name: member_name,
        data_dir: paths.etcd_dir(),
        ip: node_ip,
        client_port: settings.etcd_client_port,
        peer_port: settings.etcd_peer_port,
        tls: paths.etcd_tls(),
        initial_cluster,
        log: paths.root().join("var/log/etcd.log"),
    };
    // Only what etcd writes from this start on tells whether this member was removed: the log
    // is appended across starts.
    let log_from = std::fs::metadata(&launch.log).map_or(0, |m| m.len());
    let child = launch.spawn()?;
    let local = etcd::Client::for_host(SocketAddr::new(node_ip, settings.etcd_client_port), paths)?;
    if let Some((id, endpoints)) = promotion {
        let catchup = settings.learner_catchup;
        let local = local.clone();
        tokio::spawn(async move {
            if !catchup.is_zero() {
                log(kind, format!("etcd learner catching up for {catchup:?}"));
                tokio::time::sleep(catchup).await;
            }
            promote_when_caught_up(kind, id, local, endpoints).await
        });
    }

    let mut sans = vec![node_ip.to_string()];
    for san in &cfg.tls_san {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    let node_identity = (node, password);
    serve(
        kind,
        node_ip,
        &sans,
        (ca, etcd_ca),
        secret,
        settings,
        Etcd {
            child,
            local,
            log: launch.log.clone(),
            log_from,
            tombstone: paths.etcd_tombstone(),
        },
        node_identity,
    )
    .await
}

/// Writes the etcd server CA (the same on every server) and this server's `server-client`
/// certificate, renewed at every start as RKE2 renews its certificates.
fn write_etcd_tls(paths: &Rke2Paths, etcd_ca: &ClusterCa, node_ip: IpAddr) -> Result<()> {
    if let Some(dir) = paths.etcd_server_ca().parent() {
        fsutil::create_dir_with_mode(dir, fsutil::SECRET_DIR_MODE)?;
    }
    fsutil::write_file_atomic(
        &paths.etcd_server_ca_key(),
        &etcd_ca.key_pem,
        fsutil::SECRET_FILE_MODE,
    )?;
    fsutil::write_file_atomic(&paths.etcd_server_ca(), &etcd_ca.cert_pem, 0o644)?;
    let sans = [
        node_ip.to_string(),
        "127.0.0.1".to_string(),
        "localhost".to_string(),
    ];
    let (cert, key) = etcd_ca.server_client_cert(&sans)?;
    // The key first: a reader that sees the new certificate finds its key in place.
    fsutil::write_file_atomic(
        &paths.etcd_server_client_key(),
        key.as_bytes(),
        fsutil::SECRET_FILE_MODE,
    )?;
    fsutil::write_file_atomic(&paths.etcd_server_client_cert(), cert.as_bytes(), 0o644)
}

/// The local etcd member: its process, a client for it, and where to look for its removal.
struct Etcd {
    child: tokio::process::Child,
    local: etcd::Client,
    /// etcd's log, and its length before this start.
    log: PathBuf,
    log_from: u64,
    tombstone: PathBuf,
}

/// How a server's etcd starts, from what is on disk and whether config.yaml names a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EtcdStart {
    /// Data and no tombstone: the member restarts (`server:` is ignored, as RKE2 ignores it).
    Restart,
    /// A tombstone: the member was removed from the cluster. The data goes aside and the server
    /// joins through `server:` as a new member.
    RejoinAfterRemoval,
    /// No data and a `server:`: join as a learner.
    Join,
    /// No data and no `server:`: a new cluster.
    Initialize,
}

/// k3s's order: the tombstone first (it outranks the data it sits in), then data, then `server:`.
/// A tombstone without a `server:` is refused here (the stand-in's choice, stricter than a plain
/// start): the removed member's cluster lives on elsewhere, and starting a new one from nothing
/// would split it.
fn etcd_start(
    tombstone: bool,
    has_data: bool,
    server: bool,
) -> std::result::Result<EtcdStart, String> {
    match (tombstone, has_data, server) {
        (true, _, true) => Ok(EtcdStart::RejoinAfterRemoval),
        (true, _, false) => Err(
            "this node was removed from its etcd cluster (tombstone file found) and config.yaml names no server to rejoin through; refusing to start a new cluster"
                .into(),
        ),
        (false, true, _) => Ok(EtcdStart::Restart),
        (false, false, true) => Ok(EtcdStart::Join),
        (false, false, false) => Ok(EtcdStart::Initialize),
    }
}

/// Moves `db/etcd` to `db/etcd-old-<unix seconds>` (k3s's backup of a data dir it gives up
/// on), tombstone, member name and all: the next member gets a new name and no old state.
fn move_etcd_data_aside(paths: &Rke2Paths) -> Result<PathBuf> {
    let dir = paths.etcd_dir();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let aside = etcd::moved_aside_dir(&dir, now);
    std::fs::rename(&dir, &aside).with_context(|| {
        format!(
            "moving the etcd data dir {} aside to {}",
            dir.display(),
            aside.display()
        )
    })?;
    Ok(aside)
}

/// What etcd wrote to `log` past `from` (empty when unreadable: the next look reads it again).
fn etcd_log_since(log: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        if file.seek(SeekFrom::Start(from)).is_ok() {
            let mut bytes = Vec::new();
            if file.read_to_end(&mut bytes).is_ok() {
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    text
}

/// Returns once etcd's log since this start says its member was removed (etcd 3.4 then stops
/// serving; this does not rely on its process exiting).
async fn member_removed(log: &Path, from: u64) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if etcd::removed_from_cluster(&etcd_log_since(log, from)) {
            return;
        }
    }
}

/// k3s on `errMemberRemoved`: writes the tombstone and gives up this start, in its own words;
/// the unit's restart then rejoins.
fn removed_member_exit(kind: Kind, tombstone: &Path) -> anyhow::Error {
    if let Err(e) = fsutil::write_file_atomic(tombstone, b"", 0o600) {
        return anyhow::anyhow!(
            "this node's etcd member was removed, but writing the tombstone {} failed: {e:#}",
            tombstone.display()
        );
    }
    log(
        kind,
        "this node has been removed from the cluster please restart rke2 to rejoin the cluster",
    );
    anyhow::anyhow!(
        "etcd member removed from the cluster: wrote the tombstone {}; the next start rejoins",
        tombstone.display()
    )
}

/// Registers this server through the supervisor port (`/standin/etcd-join`): retried while the
/// server is not there or not ready; refusals (duplicate name, node password, etcd's own "too
/// many learner members in cluster") end the start, as they end `rke2 server`.
async fn register_member(
    kind: Kind,
    base: &BaseUrl,
    token: &Token,
    ca_pem: &[u8],
    (node, password): (&str, &str),
    (member_name, peer): (&str, &str),
    timeout: Duration,
) -> Result<EtcdJoin> {
    retry(kind, base, timeout, || async {
        let auth = format!("Bearer {}", token.secret);
        let response = http::https_get(
            base,
            "/standin/etcd-join",
            &[
                ("Authorization", &auth),
                ("rke2-Node-Name", node),
                ("rke2-Node-Password", password),
                ("Etcd-Member-Name", member_name),
                ("Etcd-Peer-Url", peer),
            ],
            &Trust::CaPem(ca_pem.to_vec()),
            ATTEMPT_TIMEOUT,
        )
        .await
        .map_err(Attempt::Retry)?;
        let text = response.text();
        match response.status {
            200 => serde_json::from_slice(&response.body)
                .context("the answer of /standin/etcd-join")
                .map_err(Attempt::Fatal),
            401 => Err(Attempt::Fatal(anyhow::anyhow!(
                "{base} rejected this node's token (401 unauthorized)"
            ))),
            403 => Err(Attempt::Fatal(anyhow::anyhow!("{}", text.trim()))),
            409 => Err(Attempt::Fatal(anyhow::anyhow!(
                "etcd cluster join failed: {}",
                text.trim()
            ))),
            other => Err(Attempt::Retry(anyhow::anyhow!(
                "/standin/etcd-join answered {other}: {}",
                text.trim()
            ))),
        }
    })
    .await
}

/// A learner asks to be promoted until etcd agrees that it caught up with the leader.
async fn promote_when_caught_up(kind: Kind, id: u64, local: etcd::Client, endpoints: Vec<String>) {
    let clients: Vec<etcd::Client> = endpoints
        .iter()
        .filter_map(|u| local.at_url(u).ok())
        .collect();
    let mut attempts = 0u32;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        attempts += 1;
        let clients = clients.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut last = None;
            for client in clients {
                match client.promote(id) {
                    Ok(()) => return Ok(true),
                    Err(e) if format!("{e:#}").contains("not a learner") => return Ok(false),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no voting member to ask")))
        })
        .await;
        match outcome {
            Ok(Ok(true)) => {
                log(
                    kind,
                    format!("etcd member {id} promoted to a voting member"),
                );
                return;
            }
            Ok(Ok(false)) => return,
            Ok(Err(e)) if attempts == 1 || attempts % 20 == 0 => {
                log(
                    kind,
                    format!("etcd member {id} not promoted yet: {}", flat(&e)),
                );
            }
            _ => {}
        }
    }
}

/// Shared by the listeners.
struct ServerState {
    ca_pem: Vec<u8>,
    key_pem: Vec<u8>,
    secret: String,
    api_ready_at: Instant,
    api_anonymous: bool,
    /// The API delay passed, the local member votes and the cluster has quorum (kept current by
    /// [`watch_etcd`]).
    etcd_ready: std::sync::atomic::AtomicBool,
    /// The local etcd member (where registrations are checked and recorded).
    etcd: Option<etcd::Client>,
    /// The etcd server CA, handed to joining servers.
    etcd_ca: ClusterCa,
}

impl ServerState {
    /// Set by [`watch_etcd`] once the API delay passed and etcd is ready, only after the ready
    /// file is written: whoever sees the API ready sees the unit active.
    fn ready(&self) -> bool {
        self.etcd_ready.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Clone, Copy, Debug)]
enum Port {
    Supervisor,
    Api,
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    kind: Kind,
    node_ip: IpAddr,
    sans: &[String],
    (ca, etcd_ca): (ClusterCa, ClusterCa),
    secret: String,
    settings: &Settings,
    mut etcd: Etcd,
    (node, password): (String, String),
) -> Result<()> {
    let serving = ca.serving_cert(sans)?;
    let supervisor_tls = ServerConfig::builder_with_provider(http::crypto_provider())
        .with_safe_default_protocol_versions()
        .context("tls protocol versions")?
        .with_no_client_auth()
        .with_single_cert(serving.chain.clone(), serving.key.clone_key())
        .context("serving certificate")?;
    // The API, like kube-apiserver, accepts (but does not require) client certificates issued by
    // the cluster CA.
    let client_verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(http::root_store(&ca.cert_pem)?),
        http::crypto_provider(),
    )
    .allow_unauthenticated()
    .build()
    .context("client certificate verifier")?;
    let api_tls = ServerConfig::builder_with_provider(http::crypto_provider())
        .with_safe_default_protocol_versions()
        .context("tls protocol versions")?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(serving.chain, serving.key)
        .context("serving certificate")?;

    let supervisor_addr = SocketAddr::new(node_ip, settings.supervisor_port);
    let api_addr = SocketAddr::new(node_ip, settings.api_port);
    let supervisor = TcpListener::bind(supervisor_addr)
        .await
        .with_context(|| format!("binding the supervisor port {supervisor_addr}"))?;
    let api = TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding the api port {api_addr}"))?;
    let state = Arc::new(ServerState {
        ca_pem: ca.cert_pem,
        key_pem: ca.key_pem,
        secret,
        api_ready_at: Instant::now() + settings.api_delay,
        api_anonymous: settings.api_anonymous,
        etcd_ready: false.into(),
        etcd: Some(etcd.local.clone()),
        etcd_ca,
    });
    log(
        kind,
        format!(
            "serving the supervisor on {supervisor_addr} and the api on {api_addr} (etcd client {}; certificate names: {})",
            etcd.local.addr,
            sans.join(", ")
        ),
    );

    let sup_task = tokio::spawn(accept_loop(
        supervisor,
        TlsAcceptor::from(Arc::new(supervisor_tls)),
        state.clone(),
        Port::Supervisor,
    ));
    let api_task = tokio::spawn(accept_loop(
        api,
        TlsAcceptor::from(Arc::new(api_tls)),
        state.clone(),
        Port::Api,
    ));
    let watch = watch_etcd(kind, state.clone(), etcd.local, settings, node, password);
    tokio::select! {
        r = sup_task => r.context("supervisor listener task")?,
        r = api_task => r.context("api listener task")?,
        status = etcd.child.wait() => {
            let status = status.context("waiting for etcd")?;
            if etcd::removed_from_cluster(&etcd_log_since(&etcd.log, etcd.log_from)) {
                return Err(removed_member_exit(kind, &etcd.tombstone));
            }
            bail!("etcd exited ({status}); its log is var/log/etcd.log under the host root")
        }
        () = member_removed(&etcd.log, etcd.log_from) => Err(removed_member_exit(kind, &etcd.tombstone)),
        () = watch => unreachable!("the etcd watch never ends"),
    }
}

/// Keeps `etcd_ready` current: the member answers the member list (a learner cannot) and etcd's
/// `/health` passes (a leader and a quorum read). Marks the service ready the first time, and
/// records this node's password and its Node the first time the cluster can store them.
async fn watch_etcd(
    kind: Kind,
    state: Arc<ServerState>,
    client: etcd::Client,
    settings: &Settings,
    node: String,
    password: String,
) {
    let mut last: Option<String> = None;
    let mut marked = false;
    let mut password_stored = false;
    loop {
        let client_now = client.clone();
        let check = tokio::task::spawn_blocking(move || -> std::result::Result<(), String> {
            let client = client_now;
            let list = client.member_list().map_err(|e| flat(&e))?;
            let me = list.members.iter().find(|m| m.id == list.member_id);
            if me.is_none_or(|m| m.is_learner) {
                return Err("this member is a learner".into());
            }
            if !client.healthy() {
                return Err("no quorum (etcd /health fails)".into());
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let ready = check.is_ok();
        if ready && Instant::now() >= state.api_ready_at && !marked {
            log(kind, "api is ready");
            mark_ready(kind, settings);
            marked = true;
        }
        state.etcd_ready.store(
            ready && Instant::now() >= state.api_ready_at,
            std::sync::atomic::Ordering::SeqCst,
        );
        let summary = match &check {
            Ok(()) => "etcd ready: a voting member with quorum".to_string(),
            Err(why) => format!("etcd not ready: {why}"),
        };
        if last.as_deref() != Some(summary.as_str()) {
            log(kind, &summary);
            last = Some(summary);
        }
        if ready && !password_stored {
            let (node, password) = (node.clone(), password.clone());
            let client = client.clone();
            // As the kubelet creates its Node once the API answers: the first server gets its
            // Node here, and a server restarted after its Node was deleted gets it back.
            let stored = tokio::task::spawn_blocking(move || {
                let matches = ensure_node_password(&client, &node, &password)?;
                nodes::put_node(&client, &node, true)?;
                Ok::<_, anyhow::Error>(matches)
            })
            .await;
            match stored {
                Ok(Ok(true)) => password_stored = true,
                Ok(Ok(false)) => {
                    log(kind, NODE_PASSWORD_REJECTED);
                    password_stored = true;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<ServerState>,
    port: Port,
) -> Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log(Kind::Server, format!("accept on {port:?} failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                handle_connection(tcp, peer, acceptor, state, port),
            )
            .await;
        });
    }
}

async fn handle_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<ServerState>,
    port: Port,
) -> Result<()> {
    // Plain TCP health checks (connect, then close) end here without a log line.
    let mut tls = acceptor.accept(tcp).await?;
    let request = http::read_request(&mut tls).await?;
    // Only certificates the verifier accepted get here.
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| pki::cert_user(leaf).ok());
    let (status, content_type, body) = match port {
        Port::Supervisor => match supervisor_route(&request, &state, peer) {
            Route::Reply(reply) => reply,
            // Registrations read and write etcd: off the async workers.
            Route::Register(registration) => {
                let state = state.clone();
                tokio::task::spawn_blocking(move || register(&state, registration, peer))
                    .await
                    .unwrap_or_else(|e| (500, TEXT, format!("{e}\n").into_bytes()))
            }
        },
        Port::Api => {
            let caller = api_caller(&request, &state, cert);
            match api_route(&request, &state, &caller) {
                ApiRoute::Reply(reply) => reply,
                ApiRoute::Nodes(nodes_request) => match state.etcd.clone() {
                    // etcd calls block: off the async workers.
                    Some(client) => {
                        tokio::task::spawn_blocking(move || nodes::serve(&client, nodes_request))
                            .await
                            .unwrap_or_else(|e| (500, TEXT, format!("{e}\n").into_bytes()))
                    }
                    None => (503, TEXT, b"no datastore\n".to_vec()),
                },
            }
        }
    };
    let with_body = request.method != "HEAD";
    http::write_response(&mut tls, status, content_type, &body, with_body).await?;
    use tokio::io::AsyncWriteExt;
    let _ = tls.shutdown().await;
    Ok(())
}

type Reply = (u16, &'static str, Vec<u8>);

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn not_found() -> Reply {
    (404, TEXT, b"404 page not found\n".to_vec())
}

/// Compares secrets without an early exit on the first differing byte.
fn secret_matches(given: Option<&str>, secret: &str) -> bool {
    let Some(given) = given else { return false };
    let (a, b) = (given.as_bytes(), secret.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a supervisor request needs: an answer now, or a registration against etcd.
enum Route {
    Reply(Reply),
    Register(Registration),
}

/// An authenticated registration: an agent fetching the CA key, or a server joining etcd.
#[derive(Debug)]
struct Registration {
    node: Option<(String, String)>,
    /// `(member name, peer url)` of a joining server.
    member: Option<(String, String)>,
}

fn supervisor_route(request: &Request, state: &ServerState, peer: SocketAddr) -> Route {
    if request.method != "GET" && request.method != "HEAD" {
        return Route::Reply((405, TEXT, b"method not allowed\n".to_vec()));
    }
    let path = request.path.as_str();
    match path {
        "/ping" => Route::Reply((200, TEXT, b"pong".to_vec())),
        "/cacerts" => Route::Reply((200, TEXT, state.ca_pem.clone())),
        // Like RKE2's bootstrap endpoints, joins are served only once the node is up: /ping and
        // /cacerts answer earlier.
        "/standin/ca-key" | "/standin/etcd-join" if !state.ready() => {
            Route::Reply((503, TEXT, b"server is not ready\n".to_vec()))
        }
        "/standin/ca-key" | "/standin/etcd-join" => {
            if !secret_matches(request.bearer(), &state.secret) {
                log(
                    Kind::Server,
                    format!("rejected a join from {peer}: wrong or missing token"),
                );
                return Route::Reply((401, TEXT, b"unauthorized\n".to_vec()));
            }
            let node = match (
                request.header("rke2-node-name"),
                request.header("rke2-node-password"),
            ) {
                (Some(n), Some(p)) => Some((n.to_string(), p.to_string())),
                _ => None,
            };
            let member = match (
                request.header("etcd-member-name"),
                request.header("etcd-peer-url"),
            ) {
                (Some(n), Some(u)) => Some((n.to_string(), u.to_string())),
                _ => None,
            };
            if path == "/standin/etcd-join" && (node.is_none() || member.is_none()) {
                return Route::Reply((
                    400,
                    TEXT,
                    b"an etcd join names the node, its password and the member\n".to_vec(),
                ));
            }
            Route::Register(Registration { node, member })
        }
        _ => Route::Reply(not_found()),
    }
}

/// Checks the node password, then (servers) adds the joiner to etcd as a learner.
fn register(state: &ServerState, registration: Registration, peer: SocketAddr) -> Reply {
    let Some(client) = &state.etcd else {
        return (503, TEXT, b"no datastore\n".to_vec());
    };
    if let Some((node, password)) = &registration.node {
        match ensure_node_password(client, node, password) {
            Ok(true) => {}
            Ok(false) => {
                log(
                    Kind::Server,
                    format!("rejected {node} from {peer}: node password does not match"),
                );
                return (
                    403,
                    TEXT,
                    format!("{NODE_PASSWORD_REJECTED}\n").into_bytes(),
                );
            }
            Err(e) => return (503, TEXT, format!("{}\n", flat(&e)).into_bytes()),
        }
    }
    let Some((member_name, peer_url)) = registration.member else {
        if let Some((node, _)) = &registration.node {
            if let Err(e) = nodes::put_node(client, node, false) {
                return (503, TEXT, format!("{}\n", flat(&e)).into_bytes());
            }
        }
        log(Kind::Server, format!("handed the cluster ca to {peer}"));
        return (200, TEXT, state.key_pem.clone());
    };
    let node = registration.node.map(|(n, _)| n).unwrap_or_default();
    match add_member(client, &node, &member_name, &peer_url) {
        Ok(mut join) => {
            // The learner is in: a failed write here only delays its Node until it is ready
            // (every server stores its own then).
            if let Err(e) = nodes::put_node(client, &node, true) {
                log(
                    Kind::Server,
                    format!("cannot store the node object of {node}: {}", flat(&e)),
                );
            }
            join.etcd_ca_cert = String::from_utf8_lossy(&state.etcd_ca.cert_pem).into_owned();
            join.etcd_ca_key = String::from_utf8_lossy(&state.etcd_ca.key_pem).into_owned();
            log(
                Kind::Server,
                format!(
                    "added {member_name} ({peer_url}) as etcd learner {}",
                    join.member_id
                ),
            );
            (200, JSON, serde_json::to_vec(&join).unwrap_or_default())
        }
        Err(JoinRefused::Conflict(why)) => {
            log(
                Kind::Server,
                format!("refused the etcd join of {member_name}: {why}"),
            );
            (409, TEXT, format!("{why}\n").into_bytes())
        }
        Err(JoinRefused::Unavailable(e)) => (503, TEXT, format!("{}\n", flat(&e)).into_bytes()),
    }
}

enum JoinRefused {
    /// RKE2 would fail the start with this text.
    Conflict(String),
    /// The datastore did not answer: worth retrying.
    Unavailable(anyhow::Error),
}

/// k3s's join: a member of the same node name under another member name is a duplicate; a
/// member already added for this peer URL that never started is reused; otherwise a learner is
/// added (etcd refuses a second one).
fn add_member(
    client: &etcd::Client,
    node: &str,
    member_name: &str,
    peer_url: &str,
) -> std::result::Result<EtcdJoin, JoinRefused> {
    let list = client.member_list().map_err(JoinRefused::Unavailable)?;
    for m in &list.members {
        if !m.name.is_empty() && m.name != member_name && etcd::member_node_name(&m.name) == node {
            return Err(JoinRefused::Conflict(DUPLICATE_NODE_NAME.into()));
        }
    }
    let existing = list
        .members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| u == peer_url) && m.name.is_empty());
    let (id, members) =
        match existing {
            Some(m) => (m.id, list.members.clone()),
            None => client.add_learner(peer_url).map_err(|e| {
                match e.downcast_ref::<etcd::EtcdError>() {
                    Some(refusal) => JoinRefused::Conflict(refusal.message.clone()),
                    None => JoinRefused::Unavailable(e),
                }
            })?,
        };
    let mut cluster = Vec::new();
    for m in &members {
        let name = if m.id == id {
            member_name
        } else {
            m.name.as_str()
        };
        if name.is_empty() {
            continue;
        }
        for url in &m.peer_urls {
            cluster.push(format!("{name}={url}"));
        }
    }
    let endpoints = members
        .iter()
        .filter(|m| !m.is_learner)
        .flat_map(|m| m.client_urls.clone())
        .collect();
    Ok(EtcdJoin {
        initial_cluster: cluster.join(","),
        member_id: id.to_string(),
        endpoints,
        etcd_ca_cert: String::new(),
        etcd_ca_key: String::new(),
    })
}

/// What an API request needs: an answer now, or a nodes request against etcd.
#[derive(Debug)]
enum ApiRoute {
    Reply(Reply),
    Nodes(nodes::NodesRequest),
}

/// Who the caller is: a client certificate issued by the cluster CA (`cert`: its subject, only
/// set once the verifier accepted it), else the cluster token as a bearer, else nobody.
fn api_caller(request: &Request, state: &ServerState, cert: Option<CertUser>) -> nodes::Caller {
    match cert {
        Some(user) => nodes::Caller::Cert(user),
        None if secret_matches(request.bearer(), &state.secret) => nodes::Caller::ClusterToken,
        None => nodes::Caller::Anonymous,
    }
}

fn api_route(request: &Request, state: &ServerState, caller: &nodes::Caller) -> ApiRoute {
    if !state.ready() {
        // Also every nodes request: an apiserver whose etcd has no quorum cannot write.
        return ApiRoute::Reply((
            503,
            TEXT,
            b"[-]etcd failed: reason withheld\nreadyz check failed\n".to_vec(),
        ));
    }
    match request.path.as_str() {
        "/readyz" | "/livez" | "/healthz" => {
            if state.api_anonymous || caller.authenticated() {
                ApiRoute::Reply((200, TEXT, b"ok".to_vec()))
            } else {
                ApiRoute::Reply(nodes::unauthorized())
            }
        }
        path => match nodes::route(&request.method, path, caller) {
            Some(Ok(request)) => ApiRoute::Nodes(request),
            Some(Err(reply)) => ApiRoute::Reply(reply),
            None => ApiRoute::Reply(not_found()),
        },
    }
}

/// Why one join attempt failed: worth retrying (server not there yet) or not (wrong token, wrong
/// CA, certificate not valid for the name used).
enum Attempt {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

/// Fetches `/cacerts` (any certificate accepted; the token's hash, if any, must match), then the
/// CA key with the token's secret over a connection verified against that CA. Retries connection
/// failures until `timeout`.
async fn join_cluster(
    kind: Kind,
    base: &BaseUrl,
    token: &Token,
    timeout: Duration,
) -> Result<ClusterCa> {
    retry(kind, base, timeout, || async {
        let ca_pem = fetch_cacerts(base, token).await?;
        let key_pem = match authenticate(base, token, &ca_pem, None).await? {
            Some(key) => key,
            None => return Err(Attempt::Retry(anyhow::anyhow!("empty ca key"))),
        };
        let ca = ClusterCa {
            cert_pem: ca_pem,
            key_pem,
        };
        ca.validate()
            .context("the ca key served does not match the ca")
            .map_err(Attempt::Fatal)?;
        Ok(ca)
    })
    .await
}

async fn retry<T, F, Fut>(
    kind: Kind,
    base: &BaseUrl,
    timeout: Duration,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, Attempt>>,
{
    let deadline = Instant::now() + timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                if Instant::now() >= deadline {
                    return Err(e.context(format!(
                        "gave up reaching {base} after {} s ({tries} attempts)",
                        timeout.as_secs()
                    )));
                }
                if tries == 1 || tries % 10 == 0 {
                    log(kind, format!("waiting for {base}: {}", flat(&e)));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn flat(e: &anyhow::Error) -> String {
    format!("{e:#}").to_lowercase()
}

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

async fn fetch_cacerts(base: &BaseUrl, token: &Token) -> std::result::Result<Vec<u8>, Attempt> {
    let response = http::https_get(base, "/cacerts", &[], &Trust::Any, ATTEMPT_TIMEOUT)
        .await
        .map_err(Attempt::Retry)?;
    if response.status != 200 || response.body.is_empty() {
        return Err(Attempt::Retry(anyhow::anyhow!(
            "/cacerts answered {}",
            response.status
        )));
    }
    if let Some(expected) = &token.ca_hash {
        let actual = ca_hash(&response.body);
        if &actual != expected {
            return Err(Attempt::Fatal(anyhow::anyhow!(
                "ca hash mismatch: the token expects a cluster ca with hash {expected}, but {base} serves one with hash {actual}; refusing to join"
            )));
        }
    }
    Ok(response.body)
}

/// Presents the token's secret; returns the CA key (Some) or fails with 401 as fatal.
async fn authenticate(
    base: &BaseUrl,
    token: &Token,
    ca_pem: &[u8],
    node: Option<(&str, &str)>,
) -> std::result::Result<Option<Vec<u8>>, Attempt> {
    let auth = format!("Bearer {}", token.secret);
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some((name, password)) = node {
        headers.push(("rke2-Node-Name", name));
        headers.push(("rke2-Node-Password", password));
    }
    let response = http::https_get(
        base,
        "/standin/ca-key",
        &headers,
        &Trust::CaPem(ca_pem.to_vec()),
        ATTEMPT_TIMEOUT,
    )
    .await
    .map_err(|e| {
        if is_certificate_error(&e) {
            Attempt::Fatal(e.context(format!(
                "the server's certificate is not valid for {}: add it to tls-san on the servers",
                base.host
            )))
        } else {
            Attempt::Retry(e)
        }
    })?;
    match response.status {
        200 => Ok((!response.body.is_empty()).then_some(response.body)),
        401 => Err(Attempt::Fatal(anyhow::anyhow!(
            "{base} rejected this node's token (401 unauthorized)"
        ))),
        // Like RKE2's agent, which keeps waiting ("server is not ready: Node password
        // rejected...") until the node's password entry is removed.
        403 => Err(Attempt::Retry(anyhow::anyhow!(
            "server is not ready: {}",
            response.text().trim()
        ))),
        other => Err(Attempt::Retry(anyhow::anyhow!(
            "/standin/ca-key answered {other}"
        ))),
    }
}

fn is_certificate_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let tls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        matches!(tls, Some(rustls::Error::InvalidCertificate(_)))
    })
}

async fn run_agent(paths: &Rke2Paths, cfg: &StandinConfig, settings: &Settings) -> Result<()> {
    let kind = Kind::Agent;
    let url = cfg
        .server
        .as_deref()
        .context("config.yaml has no server: an agent needs the server url")?;
    let token = Token::parse(
        cfg.token
            .as_deref()
            .context("config.yaml has no token: an agent needs the cluster token")?,
    )
    .context("the token in config.yaml")?;
    let base = BaseUrl::parse(url).context("the server url in config.yaml")?;
    let node = node_name(cfg);
    let password = node_password(paths)?;
    log(kind, format!("connecting to {base}"));
    let ca = retry(kind, &base, settings.join_timeout, || async {
        let ca_pem = fetch_cacerts(&base, &token).await?;
        let ping = http::https_get(
            &base,
            "/ping",
            &[],
            &Trust::CaPem(ca_pem.clone()),
            ATTEMPT_TIMEOUT,
        )
        .await
        .map_err(Attempt::Retry)?;
        if ping.status != 200 {
            return Err(Attempt::Retry(anyhow::anyhow!(
                "/ping answered {}",
                ping.status
            )));
        }
        let key_pem = authenticate(&base, &token, &ca_pem, Some((&node, &password)))
            .await?
            .ok_or_else(|| Attempt::Retry(anyhow::anyhow!("empty ca key")))?;
        Ok(ClusterCa {
            cert_pem: ca_pem,
            key_pem,
        })
    })
    .await?;
    // Real agents get their kubelet certificate signed by the server; the stand-in signs its own.
    kubelet_identity(kind, paths, &ca, &node, settings.kubelet_cert_ttl)?;
    let record = format!("server={base}\nca-hash={}\n", ca.hash());
    fsutil::write_file_atomic(&paths.agent_joined(), record.as_bytes(), 0o644)?;
    log(
        kind,
        format!("joined the cluster at {base} (ca hash {})", ca.hash()),
    );
    mark_ready(kind, settings);
    std::future::pending::<()>().await;
    Ok(())
}

/// A CA from its certificate and key files, if both are on disk.
fn load_ca_pair(cert: &Path, key: &Path) -> Result<Option<ClusterCa>> {
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    Ok(Some(ClusterCa {
        cert_pem: std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
        key_pem: std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_rejoins_through_the_server_and_outranks_the_data() {
        assert_eq!(
            etcd_start(true, true, true),
            Ok(EtcdStart::RejoinAfterRemoval)
        );
        assert_eq!(
            etcd_start(true, false, true),
            Ok(EtcdStart::RejoinAfterRemoval)
        );
        let refused = etcd_start(true, true, false).unwrap_err();
        assert!(refused.contains("no server to rejoin through"), "{refused}");
        // A member still listed restarts as before, `server:` or not.
        assert_eq!(etcd_start(false, true, true), Ok(EtcdStart::Restart));
        assert_eq!(etcd_start(false, true, false), Ok(EtcdStart::Restart));
        assert_eq!(etcd_start(false, false, true), Ok(EtcdStart::Join));
        assert_eq!(etcd_start(false, false, false), Ok(EtcdStart::Initialize));
    }

    #[test]
    fn the_data_dir_goes_aside_with_its_tombstone_and_member_name() {
        let root = tempfile::tempdir().unwrap();
        let paths = Rke2Paths::new(root.path());
        std::fs::create_dir_all(paths.etcd_dir().join("member/wal")).unwrap();
        std::fs::write(paths.etcd_name(), "host-2-0a1b2c3d\n").unwrap();
        std::fs::write(paths.etcd_tombstone(), "").unwrap();
        let aside = move_etcd_data_aside(&paths).unwrap();
        assert!(!paths.etcd_dir().exists() && !paths.etcd_has_data());
        assert!(aside.join("tombstone").exists() && aside.join("name").exists());
        let name = aside.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("etcd-old-"), "{name}");
        assert_eq!(aside.parent(), paths.etcd_dir().parent());
    }

    #[test]
    fn only_what_etcd_wrote_since_this_start_counts() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("etcd.log");
        std::fs::write(
            &log,
            "E | rafthttp: the member has been permanently removed from the cluster\n",
        )
        .unwrap();
        let from = std::fs::metadata(&log).unwrap().len();
        assert!(!etcd::removed_from_cluster(&etcd_log_since(&log, from)));
        assert!(etcd::removed_from_cluster(&etcd_log_since(&log, 0)));
        assert_eq!(etcd_log_since(&dir.path().join("absent"), 0), "");
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_matches(Some("abc"), "abc"));
        assert!(!secret_matches(Some("abd"), "abc"));
        assert!(!secret_matches(Some("ab"), "abc"));
        assert!(!secret_matches(None, "abc"));
    }

    fn reply(route: Route) -> u16 {
        match route {
            Route::Reply((status, _, _)) => status,
            Route::Register(_) => 0,
        }
    }

    #[test]
    fn api_answers_503_until_etcd_is_ready() {
        let mut state = ServerState {
            ca_pem: vec![],
            key_pem: vec![],
            secret: "s".into(),
            api_ready_at: Instant::now(),
            api_anonymous: false,
            etcd_ready: false.into(),
            etcd: None,
            etcd_ca: ClusterCa {
                cert_pem: vec![],
                key_pem: vec![],
            },
        };
        let req = |path: &str, auth: Option<&str>| Request {
            method: "GET".into(),
            path: path.into(),
            headers: auth
                .map(|a| [("authorization".to_string(), a.to_string())].into())
                .unwrap_or_default(),
        };
        let kubelet = nodes::Caller::Cert(CertUser {
            name: "system:node:a".into(),
            groups: vec!["system:nodes".into()],
        });
        let admin = nodes::Caller::Cert(CertUser {
            name: "system:admin".into(),
            groups: vec![nodes::ADMIN_GROUP.into()],
        });
        let api = |request: &Request, state: &ServerState, cert: Option<&nodes::Caller>| {
            let caller = match cert {
                Some(caller) => caller.clone(),
                None => api_caller(request, state, None),
            };
            match api_route(request, state, &caller) {
                ApiRoute::Reply((status, _, _)) => status,
                ApiRoute::Nodes(_) => 0,
            }
        };
        assert_eq!(api(&req("/readyz", None), &state, Some(&kubelet)), 503);
        let mut delete = req("/api/v1/nodes/a", None);
        delete.method = "DELETE".into();
        // Without quorum the API cannot write: 503 before any authorization.
        assert_eq!(api(&delete, &state, Some(&admin)), 503);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let key = req("/standin/ca-key", Some("Bearer s"));
        assert_eq!(
            reply(supervisor_route(&req("/ping", None), &state, peer)),
            200
        );
        assert_eq!(reply(supervisor_route(&key, &state, peer)), 503);
        state.etcd_ready = true.into();
        // An authenticated registration goes on to etcd.
        assert_eq!(reply(supervisor_route(&key, &state, peer)), 0);
        assert_eq!(
            reply(supervisor_route(
                &req("/standin/ca-key", Some("Bearer x")),
                &state,
                peer
            )),
            401
        );
        assert_eq!(
            reply(supervisor_route(
                &req("/standin/etcd-join", Some("Bearer s")),
                &state,
                peer
            )),
            400
        );
        assert_eq!(api(&req("/readyz", None), &state, None), 401);
        assert_eq!(api(&req("/readyz", Some("Bearer s")), &state, None), 200);
        assert_eq!(api(&req("/readyz", Some("Bearer x")), &state, None), 401);
        assert_eq!(api(&req("/readyz", None), &state, Some(&kubelet)), 200);
        // Nodes: an admin's delete goes on to etcd; a kubelet's is refused, an anonymous one
        // is not even authenticated.
        assert_eq!(api(&delete, &state, Some(&admin)), 0);
        assert_eq!(api(&delete, &state, Some(&kubelet)), 403);
        assert_eq!(api(&delete, &state, None), 401);
        assert_eq!(api(&req("/api/v1/nodes", None), &state, Some(&kubelet)), 0);
        assert_eq!(
            api(&req("/api/v1/nodes", Some("Bearer s")), &state, None),
            0
        );
        state.api_anonymous = true;
        assert_eq!(api(&req("/livez", None), &state, None), 200);
        // Anonymous health checks do not make anonymous callers of the nodes API.
        assert_eq!(api(&delete, &state, None), 401);
        assert_eq!(api(&req("/other", None), &state, None), 404);
    }
}
