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
//! - `STANDIN_API_ANONYMOUS=deny`: once ready, `/readyz`, `/livez` and `/healthz` answer 401 to a
//!   client that presents neither a certificate issued by the cluster CA (such as the kubelet
//!   client certificate every node gets, see [`Rke2Paths::kubelet_client_cert`]) nor
//!   `Authorization: Bearer <secret>`, like RKE2's kube-apiserver, which runs with anonymous auth
//!   off.
//! - `STANDIN_READY_FILE`: a file created once the service is ready (servers: API ready; agents:
//!   joined) and removed on exit; the fake service manager uses it as systemd's `READY=1`. Under a
//!   real systemd (`NOTIFY_SOCKET` set, the systemd end-to-end test) `READY=1` is sent as well.

pub mod config;
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
pub use pki::{ca_hash, ClusterCa};

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

    /// The persisted CA, if both halves are on disk.
    pub fn load_ca(&self) -> Result<Option<ClusterCa>> {
        let (cert, key) = (self.ca_cert(), self.ca_key());
        if !cert.exists() || !key.exists() {
            return Ok(None);
        }
        Ok(Some(ClusterCa {
            cert_pem: std::fs::read(&cert)
                .with_context(|| format!("reading {}", cert.display()))?,
            key_pem: std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?,
        }))
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
    pub ready_file: Option<PathBuf>,
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
            Err(_) | Ok("") | Ok("allow") => true,
            Ok("deny") => false,
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
            ready_file: std::env::var_os("STANDIN_READY_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
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

/// Writes the node's kubelet client identity, signed by the cluster CA.
fn write_kubelet_identity(paths: &Rke2Paths, ca: &ClusterCa, node: &str) -> Result<()> {
    let (cert, key) = ca.client_cert(&format!("system:node:{node}"), "system:nodes")?;
    fsutil::create_dir_with_mode(&paths.agent_dir(), fsutil::SECRET_DIR_MODE)?;
    fsutil::write_file_atomic(
        &paths.kubelet_client_key(),
        key.as_bytes(),
        fsutil::SECRET_FILE_MODE,
    )?;
    fsutil::write_file_atomic(&paths.kubelet_client_cert(), cert.as_bytes(), 0o644)
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

async fn run_server(paths: &Rke2Paths, cfg: &StandinConfig, settings: &Settings) -> Result<()> {
    let kind = Kind::Server;
    let node_ip = cfg
        .node_ip
        .context("config.yaml has no node-ip: the stand-in server needs the address to serve on")?;
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

    let (ca, fresh) = match paths.load_ca()? {
        Some(ca) => {
            log(
                kind,
                format!("reusing the cluster ca found on disk (hash {})", ca.hash()),
            );
            (ca, false)
        }
        None => match &cfg.server {
            None => {
                let ca = ClusterCa::generate()?;
                log(
                    kind,
                    format!("initializing a new cluster (ca hash {})", ca.hash()),
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
                    format!("joined the cluster at {base} (ca hash {})", ca.hash()),
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
    fsutil::create_dir_with_mode(&paths.etcd_dir(), fsutil::SECRET_DIR_MODE)?;
    write_kubelet_identity(paths, &ca, &node_ip.to_string())?;

    let mut sans = vec![node_ip.to_string()];
    for san in &cfg.tls_san {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    serve(kind, node_ip, &sans, ca, secret, settings).await
}

/// Shared by the listeners.
struct ServerState {
    ca_pem: Vec<u8>,
    key_pem: Vec<u8>,
    secret: String,
    api_ready_at: Instant,
    api_anonymous: bool,
}

#[derive(Clone, Copy, Debug)]
enum Port {
    Supervisor,
    Api,
}

async fn serve(
    kind: Kind,
    node_ip: IpAddr,
    sans: &[String],
    ca: ClusterCa,
    secret: String,
    settings: &Settings,
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
    });
    log(
        kind,
        format!(
            "serving the supervisor on {supervisor_addr} and the api on {api_addr} (api ready in {} ms; certificate names: {})",
            settings.api_delay.as_millis(),
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
    tokio::time::sleep_until(state.api_ready_at.into()).await;
    log(kind, "api is ready");
    mark_ready(kind, settings);
    tokio::select! {
        r = sup_task => r.context("supervisor listener task")?,
        r = api_task => r.context("api listener task")?,
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
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|certs| !certs.is_empty());
    let (status, content_type, body) = match port {
        Port::Supervisor => supervisor_route(&request, &state, peer),
        Port::Api => api_route(&request, &state, client_cert),
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

fn supervisor_route(request: &Request, state: &ServerState, peer: SocketAddr) -> Reply {
    if request.method != "GET" && request.method != "HEAD" {
        return (405, TEXT, b"method not allowed\n".to_vec());
    }
    match request.path.as_str() {
        "/ping" => (200, TEXT, b"pong".to_vec()),
        "/cacerts" => (200, TEXT, state.ca_pem.clone()),
        // Like RKE2's bootstrap endpoints, joins are served only once the node is up: /ping and
        // /cacerts answer earlier.
        "/standin/ca-key" if Instant::now() < state.api_ready_at => {
            (503, TEXT, b"server is not ready\n".to_vec())
        }
        "/standin/ca-key" => {
            if secret_matches(request.bearer(), &state.secret) {
                log(Kind::Server, format!("handed the cluster ca to {peer}"));
                (200, TEXT, state.key_pem.clone())
            } else {
                log(
                    Kind::Server,
                    format!("rejected a join from {peer}: wrong or missing token"),
                );
                (401, TEXT, b"unauthorized\n".to_vec())
            }
        }
        _ => not_found(),
    }
}

/// `client_cert`: the client presented a certificate issued by the cluster CA.
fn api_route(request: &Request, state: &ServerState, client_cert: bool) -> Reply {
    if Instant::now() < state.api_ready_at {
        return (
            503,
            TEXT,
            b"[-]etcd failed: not ready\nreadyz check failed\n".to_vec(),
        );
    }
    match request.path.as_str() {
        "/readyz" | "/livez" | "/healthz" => {
            if state.api_anonymous || client_cert || secret_matches(request.bearer(), &state.secret)
            {
                (200, TEXT, b"ok".to_vec())
            } else {
                (
                    401,
                    JSON,
                    br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
                        .to_vec(),
                )
            }
        }
        _ => not_found(),
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
        let key_pem = match authenticate(base, token, &ca_pem).await? {
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
) -> std::result::Result<Option<Vec<u8>>, Attempt> {
    let auth = format!("Bearer {}", token.secret);
    let response = http::https_get(
        base,
        "/standin/ca-key",
        &[("Authorization", &auth)],
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
        let key_pem = authenticate(&base, &token, &ca_pem)
            .await?
            .ok_or_else(|| Attempt::Retry(anyhow::anyhow!("empty ca key")))?;
        Ok(ClusterCa {
            cert_pem: ca_pem,
            key_pem,
        })
    })
    .await?;
    // Real agents get their kubelet certificate signed by the server; the stand-in signs its own.
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "agent".into());
    write_kubelet_identity(paths, &ca, &node)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_matches(Some("abc"), "abc"));
        assert!(!secret_matches(Some("abd"), "abc"));
        assert!(!secret_matches(Some("ab"), "abc"));
        assert!(!secret_matches(None, "abc"));
    }

    #[test]
    fn api_answers_503_until_ready() {
        let mut state = ServerState {
            ca_pem: vec![],
            key_pem: vec![],
            secret: "s".into(),
            api_ready_at: Instant::now() + Duration::from_secs(60),
            api_anonymous: false,
        };
        let req = |path: &str, auth: Option<&str>| Request {
            method: "GET".into(),
            path: path.into(),
            headers: auth
                .map(|a| [("authorization".to_string(), a.to_string())].into())
                .unwrap_or_default(),
        };
        assert_eq!(api_route(&req("/readyz", None), &state, false).0, 503);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let key = req("/standin/ca-key", Some("Bearer s"));
        assert_eq!(supervisor_route(&req("/ping", None), &state, peer).0, 200);
        assert_eq!(supervisor_route(&key, &state, peer).0, 503);
        state.api_ready_at = Instant::now();
        assert_eq!(supervisor_route(&key, &state, peer).0, 200);
        assert_eq!(
            supervisor_route(&req("/standin/ca-key", Some("Bearer x")), &state, peer).0,
            401
        );
        assert_eq!(api_route(&req("/readyz", None), &state, false).0, 401);
        assert_eq!(
            api_route(&req("/readyz", Some("Bearer s")), &state, false).0,
            200
        );
        assert_eq!(api_route(&req("/readyz", None), &state, true).0, 200);
        state.api_anonymous = true;
        assert_eq!(api_route(&req("/livez", None), &state, false).0, 200);
        assert_eq!(api_route(&req("/other", None), &state, false).0, 404);
    }
}
