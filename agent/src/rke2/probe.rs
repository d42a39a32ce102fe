//! Readiness and identity probes against RKE2 servers and the registration address.
//!
//! Every probe is one short, bounded request; nothing is retried here (the caller's loop decides
//! when to ask again). Probes answer "yes" only on a complete, correct HTTP answer, so a load
//! balancer that accepts TCP but has no live upstream counts as not answering.
//!
//! TLS: probes accept any server certificate. RKE2 serves a certificate signed by the cluster's
//! own CA, which no host trusts in advance; trust in a cluster comes from the CA hash in the join
//! token ([`Prober::verify_ca`]), never from a probe answering. Proxies from the environment are
//! ignored: probes target node addresses and must measure those, not a proxy.
//!
//! Authentication for `/readyz`: upstream kube-apiserver lets anonymous clients read `/readyz`
//! (the `system:public-info-viewer` role is bound to `system:unauthenticated`), but RKE2 starts
//! kube-apiserver with `--anonymous-auth=false` (inherited from k3s's control-plane defaults), so an
//! anonymous probe gets 401 on a perfectly ready server. The API probe therefore presents a
//! [`ClientIdentity`]: on a node that has joined, the kubelet's client certificate
//! ([`KUBELET_CLIENT_CERT`], [`KUBELET_CLIENT_KEY`]) is an authenticated identity, and every
//! authenticated user may read `/readyz`. Without one, the probe still works against stand-ins and
//! clusters that allow anonymous health checks, and warns once when it meets a 401.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::token::{ca_hash, normalize_ca_hash};
use crate::fsutil;

/// Default per-probe timeout (connect, TLS, request and body together).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Larger answers are not what a probed endpoint sends; cut them off.
const MAX_PROBE_BODY: usize = 64 * 1024;
/// A CA bundle larger than this is not a CA bundle.
const MAX_CACERTS_BODY: usize = 1024 * 1024;

/// Installs the ring crypto provider as the process default for rustls, once. Needed before any
/// rustls client or server config is built without an explicit provider; harmless if another part
/// of the process already installed one.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The kubelet client certificate RKE2 writes on every node (server or agent) once it has joined.
pub const KUBELET_CLIENT_CERT: &str = "/var/lib/rancher/rke2/agent/client-kubelet.crt";
/// The key for [`KUBELET_CLIENT_CERT`].
pub const KUBELET_CLIENT_KEY: &str = "/var/lib/rancher/rke2/agent/client-kubelet.key";

/// A TLS client certificate and key (PEM) the API probe presents. `Debug` hides the key.
#[derive(Clone)]
pub struct ClientIdentity {
    pem: Vec<u8>,
}

impl ClientIdentity {
    /// From PEM certificate (chain) and PEM private key (PKCS#8, PKCS#1 or SEC1). Checked now, so
    /// a broken pair fails here rather than on every probe.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let mut pem = cert_pem.to_vec();
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(key_pem);
        reqwest::Identity::from_pem(&pem).context("client certificate or key is not valid PEM")?;
        Ok(Self { pem })
    }

    /// From a certificate file and a key file; errors name the file.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = fs::read(cert)
            .with_context(|| format!("reading client certificate {}", cert.display()))?;
        let key_pem =
            fs::read(key).with_context(|| format!("reading client key {}", key.display()))?;
        Self::from_pem(&cert_pem, &key_pem).with_context(|| {
            format!(
                "loading client identity from {} and {}",
                cert.display(),
                key.display()
            )
        })
    }

    /// The node's kubelet client identity under `root`; present only after the node joined.
    pub fn rke2_node(root: &Path) -> Result<Self> {
        Self::from_files(
            &fsutil::under_root(root, KUBELET_CLIENT_CERT),
            &fsutil::under_root(root, KUBELET_CLIENT_KEY),
        )
    }

    /// The identity for a reqwest client.
    pub(crate) fn reqwest_identity(&self) -> Result<reqwest::Identity> {
        reqwest::Identity::from_pem(&self.pem).context("loading a client identity")
    }

    /// SHA-256 of the certificate and key: tells a renewed identity from the loaded one.
    fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(&self.pem).into()
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIdentity(<redacted>)")
    }
}

/// Ports probed. Defaults are RKE2's; tests and loopback demos may use others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePorts {
    /// RKE2 supervisor: `/ping`, `/cacerts`, node registration.
    pub supervisor: u16,
    /// kube-apiserver: `/readyz`.
    pub api: u16,
}

impl Default for ProbePorts {
    fn default() -> Self {
        Self {
            supervisor: 9345,
            api: 6443,
        }
    }
}

/// Issues probes with shared HTTP clients.
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
    /// Like `client`, plus the client identity when one is set; used for `/readyz`.
    api_client: reqwest::Client,
    /// Fingerprint of the identity `api_client` presents, if any.
    identity: Option<[u8; 32]>,
    ports: ProbePorts,
    timeout: Duration,
    warned_unauthorized: Arc<AtomicBool>,
}

impl Prober {
    /// A prober with [`DEFAULT_PROBE_TIMEOUT`].
    pub fn new(ports: ProbePorts) -> Result<Self> {
        Self::with_timeout(ports, DEFAULT_PROBE_TIMEOUT)
    }

    /// A prober whose every request is bounded by `timeout`.
    pub fn with_timeout(ports: ProbePorts, timeout: Duration) -> Result<Self> {
        install_crypto_provider();
        let client = base_builder(timeout)
            .danger_accept_invalid_certs(true)
            .build()
            .context("building the probe HTTP client")?;
        Ok(Self {
            api_client: client.clone(),
            client,
            identity: None,
            ports,
            timeout,
            warned_unauthorized: Arc::new(AtomicBool::new(false)),
        })
    }

    /// This prober presenting `identity` to the API's `/readyz` (see the module docs for why RKE2
    /// needs it). Build a new prober when the certificate is renewed.
    pub fn with_client_identity(mut self, identity: &ClientIdentity) -> Result<Self> {
        let fingerprint = identity.fingerprint();
        let identity = reqwest::Identity::from_pem(&identity.pem)
            .context("loading the probe client identity")?;
        self.api_client = base_builder(self.timeout)
            .danger_accept_invalid_certs(true)
            .identity(identity)
            .build()
            .context("building the API probe HTTP client")?;
        self.identity = Some(fingerprint);
        Ok(self)
    }

    /// Presents the node's kubelet identity under `root` from now on, if RKE2 has written it and
    /// it differs from the one loaded: RKE2 renews that certificate, and a prober that kept the
    /// old one would see every `/readyz` refused. Cheap enough to call before every probe (two
    /// small files read and hashed). `Ok(true)` when a new identity was loaded; a pair caught
    /// half-written (new certificate, old key) is loaded too and replaced on the next call.
    pub fn refresh_node_identity(&mut self, root: &Path) -> Result<bool> {
        let Ok(identity) = ClientIdentity::rke2_node(root) else {
            // Not written yet, or being replaced: keep what we have.
            return Ok(false);
        };
        if self.identity == Some(identity.fingerprint()) {
            return Ok(false);
        }
        let renewed = self.identity.is_some();
        *self = self.clone().with_client_identity(&identity)?;
        tracing::info!(
            renewed,
            "loaded the node's kubelet client identity for /readyz probes"
        );
        Ok(true)
    }

    /// Whether `/readyz` probes authenticate.
    pub fn has_client_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The ports this prober uses.
    pub fn ports(&self) -> ProbePorts {
        self.ports
    }

    /// `GET https://<ip>:9345/ping` answers 200 with body `pong`.
    ///
    /// The supervisor answers this early in startup, before the node can serve joins, so it shows
    /// the process is up, not that the node is ready (see [`Prober::server_ready`]).
    pub async fn supervisor_ping(&self, ip: IpAddr) -> bool {
        self.ping(&ip.to_string()).await
    }

    /// `GET https://<ip>:6443/readyz` answers 200.
    ///
    /// `/readyz` aggregates kube-apiserver's own checks (etcd reachable, informers synced,
    /// post-start hooks done), which is what a joiner or the LB needs. RKE2 answers 401 to an
    /// anonymous client; see the module docs and [`Prober::with_client_identity`]. 401 and 403
    /// count as not ready.
    pub async fn api_readyz(&self, ip: IpAddr) -> bool {
        let url = url_for(&ip.to_string(), self.ports.api, "/readyz");
        match get(&self.api_client, &url, MAX_PROBE_BODY).await {
            Ok((200, _)) => true,
            Ok((status @ (401 | 403), _)) => {
                if self.identity.is_none()
                    && !self.warned_unauthorized.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        %url,
                        status,
                        "kube-apiserver refuses anonymous /readyz; probe with the node's client \
                         identity (kubelet client certificate) once it exists"
                    );
                } else {
                    tracing::debug!(%url, status, "readyz probe: not authorized");
                }
                false
            }
            Ok((status, _)) => {
                tracing::debug!(%url, status, "readyz probe: not ready");
                false
            }
            Err(error) => {
                tracing::debug!(%url, error = %format!("{error:#}"), "readyz probe failed");
                false
            }
        }
    }

    /// A server is ready to be routed to and joined through when both the supervisor answers
    /// `/ping` and the API answers `/readyz`: port 9345 alone answers before the node can serve
    /// joins.
    pub async fn server_ready(&self, ip: IpAddr) -> bool {
        let (ping, readyz) = tokio::join!(self.supervisor_ping(ip), self.api_readyz(ip));
        ping && readyz
    }

    /// Whether the registration address (the LB, or a server) has a live supervisor behind it:
    /// `GET https://<host>:9345/ping` answers 200 `pong`. An LB that accepts the TCP connection
    /// but has no upstream closes it or never answers: not answering. `host` is a DNS name or an
    /// IP literal without a port (the port comes from [`ProbePorts`]).
    pub async fn registration_answers(&self, host: &str) -> bool {
        self.ping(host).await
    }

    /// The cluster CA bundle served at `https://<host>:9345/cacerts`, fetched without verifying
    /// the server (this is the bootstrap step). Never trust it without comparing its hash; see
    /// [`Prober::verify_ca`].
    pub async fn fetch_cacerts(&self, host: &str) -> Result<Vec<u8>> {
        let url = url_for(host, self.ports.supervisor, "/cacerts");
        let (status, body) = self
            .get(&url, MAX_CACERTS_BODY)
            .await
            .with_context(|| format!("fetching the cluster CA from {url}"))?;
        if status != 200 {
            bail!("fetching the cluster CA from {url}: HTTP status {status}");
        }
        if !looks_like_pem_bundle(&body) {
            bail!("the answer from {url} is not a PEM certificate bundle");
        }
        Ok(body)
    }

    /// Pins the cluster CA before any secret is sent (the meaning of a `K10<hash>` token): the
    /// bundle at `/cacerts` must hash to `expected_hash`, and the server must then prove it holds
    /// a certificate for `host` issued by that CA. The second step matters: the CA certificate is
    /// public, so anyone can serve its bytes; only the real cluster has a key it signed.
    pub async fn verify_ca(&self, host: &str, expected_hash: &str) -> Result<()> {
        let expected = normalize_ca_hash(expected_hash).context("the pinned CA hash")?;
        let bundle = self.fetch_cacerts(host).await?;
        let actual = ca_hash(&bundle);
        if actual != expected {
            bail!(
                "cluster CA served by {host} does not match the token: expected sha256 \
                 {expected}, got {actual}; refusing to send the join token"
            );
        }
        let certs = parse_ca_bundle(&bundle)
            .with_context(|| format!("parsing the cluster CA bundle from {host}"))?;
        let mut builder = base_builder(self.timeout);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
        let pinned = builder
            .build()
            .context("building the CA-pinned HTTP client")?;
        let url = url_for(host, self.ports.supervisor, "/cacerts");
        let response = pinned.get(&url).send().await.with_context(|| {
            format!(
                "the server at {url} did not present a certificate for {host} issued by the \
                 pinned cluster CA; refusing to send the join token"
            )
        })?;
        tracing::debug!(%host, ca_hash = %actual, status = response.status().as_u16(), "cluster CA verified");
        Ok(())
    }

    async fn ping(&self, host: &str) -> bool {
        let url = url_for(host, self.ports.supervisor, "/ping");
        match self.get(&url, MAX_PROBE_BODY).await {
            Ok((status, body)) if is_pong(status, &body) => true,
            Ok((status, _)) => {
                tracing::debug!(%url, status, "ping probe: unexpected answer");
                false
            }
            Err(error) => {
                tracing::debug!(%url, error = %format!("{error:#}"), "ping probe failed");
                false
            }
        }
    }

    async fn get(&self, url: &str, limit: usize) -> Result<(u16, Vec<u8>)> {
        get(&self.client, url, limit).await
    }
}

/// One GET; returns the status and up to `limit` bytes of body (more is an error).
async fn get(client: &reqwest::Client, url: &str, limit: usize) -> Result<(u16, Vec<u8>)> {
    let mut response = client.get(url).send().await?;
    let status = response.status().as_u16();
    let body = read_limited(&mut response, limit).await?;
    Ok((status, body))
}

/// Settings shared by every probe client: bounded time, no proxy, no redirects, no roots from the
/// host store (probes accept anything; pinned clients trust only the cluster CA), no connection
/// reuse (every probe measures a fresh connection, as a joiner would make).
fn base_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
}

/// Reads a response body, failing once it exceeds `limit` bytes.
pub(crate) async fn read_limited(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>> {
    if let Some(len) = response.content_length() {
        if len > limit as u64 {
            bail!("response body of {len} bytes exceeds the limit of {limit} bytes");
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            bail!("response body exceeds the limit of {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether an (unverified) `/cacerts` answer holds at least one PEM certificate.
pub fn looks_like_pem_bundle(body: &[u8]) -> bool {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    body.windows(BEGIN.len()).any(|w| w == BEGIN)
}

/// The certificates of a CA bundle whose hash matched the pin, for the pinned client.
pub fn parse_ca_bundle(bundle: &[u8]) -> Result<Vec<reqwest::Certificate>> {
    Ok(reqwest::Certificate::from_pem_bundle(bundle)?)
}

/// Whether a `/ping` answer is the supervisor's: status 200 and body `pong`.
pub fn is_pong(status: u16, body: &[u8]) -> bool {
    status == 200 && body.trim_ascii() == b"pong"
}

/// `https://<host>:<port><path>`, bracketing IPv6 literals.
fn url_for(host: &str, port: u16, path: &str) -> String {
    let host = host.trim();
    match host.parse::<Ipv6Addr>() {
        Ok(ip) => format!("https://[{ip}]:{port}{path}"),
        Err(_) => format!("https://{host}:{port}{path}"),
    }
}

/// The files of a mutual-TLS client of one of RKE2's services (paths as on the host).
#[derive(Debug, Clone, Copy)]
pub struct MutualTls {
    /// The service, for errors ("etcd", "the kubernetes api").
    pub what: &'static str,
    /// The CA its serving certificate is signed by; nothing else is trusted.
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
}

/// An HTTP client trusting only `tls.ca` and presenting `tls.cert`, with the files RKE2 wrote
/// under `root`; errors name the file that is missing or unusable. Built afresh by each caller
/// that needs it, since RKE2 renews these certificates.
pub fn mutual_tls_client(
    root: &Path,
    tls: MutualTls,
    timeout: Duration,
) -> Result<reqwest::Client> {
    install_crypto_provider();
    let ca_path = crate::fsutil::under_root(root, tls.ca);
    let ca_pem = std::fs::read(&ca_path)
        .with_context(|| format!("reading the ca of {} {}", tls.what, ca_path.display()))?;
    let identity = ClientIdentity::from_files(
        &crate::fsutil::under_root(root, tls.cert),
        &crate::fsutil::under_root(root, tls.key),
    )
    .with_context(|| format!("loading the client certificate for {}", tls.what))?;
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .tls_built_in_root_certs(false)
        .identity(identity.reqwest_identity()?);
    for cert in parse_ca_bundle(&ca_pem)
        .with_context(|| format!("parsing the ca of {} {}", tls.what, ca_path.display()))?
    {
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .with_context(|| format!("building the client of {}", tls.what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a fresh self-signed kubelet identity under `root`, as RKE2 does on renewal.
    fn write_identity(root: &Path) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = fsutil::under_root(root, KUBELET_CLIENT_CERT);
        fs::create_dir_all(cert_path.parent().unwrap()).unwrap();
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(
            fsutil::under_root(root, KUBELET_CLIENT_KEY),
            key.serialize_pem(),
        )
        .unwrap();
    }

    #[test]
    fn the_node_identity_is_loaded_once_written_and_again_when_renewed() {
        let root = tempfile::tempdir().unwrap();
        let mut prober = Prober::new(ProbePorts::default()).unwrap();
        assert!(!prober.refresh_node_identity(root.path()).unwrap());
        assert!(!prober.has_client_identity());
        write_identity(root.path());
        assert!(prober.refresh_node_identity(root.path()).unwrap());
        assert!(prober.has_client_identity());
        // Unchanged files: nothing to do.
        assert!(!prober.refresh_node_identity(root.path()).unwrap());
        let first = prober.identity;
        write_identity(root.path());
        assert!(prober.refresh_node_identity(root.path()).unwrap());
        assert_ne!(prober.identity, first);
        // Files gone for a moment (being replaced): the loaded identity stays.
        fs::remove_file(fsutil::under_root(root.path(), KUBELET_CLIENT_KEY)).unwrap();
        assert!(!prober.refresh_node_identity(root.path()).unwrap());
        assert!(prober.has_client_identity());
    }

    #[test]
    fn urls_bracket_ipv6() {
        assert_eq!(
            url_for("127.0.0.2", 9345, "/ping"),
            "https://127.0.0.2:9345/ping"
        );
        assert_eq!(url_for("::1", 6443, "/readyz"), "https://[::1]:6443/readyz");
        assert_eq!(
            url_for("lb.example", 9345, "/cacerts"),
            "https://lb.example:9345/cacerts"
        );
    }

    #[test]
    fn default_ports_are_rke2s() {
        assert_eq!(
            ProbePorts::default(),
            ProbePorts {
                supervisor: 9345,
                api: 6443
            }
        );
    }
}
