//! Just enough HTTP/1.1 (one request per connection, `Connection: close`) and TLS plumbing for
//! the stand-ins and the harness: request-head parsing, response writing, and an HTTPS GET client
//! that either trusts a given CA or, for the first `/cacerts` fetch, any certificate.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest request or response head we accept.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body we read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The ring provider, used explicitly everywhere so no process-wide default is needed.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The credential of an `Authorization: Bearer <secret>` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, rest) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
    }
}

/// Reads a request head (up to the blank line); the body, if any, is ignored.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request> {
    let head = read_head(stream).await?;
    let text = std::str::from_utf8(&head).context("request head is not utf-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("malformed request line {request_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("unsupported protocol {version:?}");
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        headers: parse_headers(lines),
    })
}

/// Writes a complete response and flushes it; the caller closes the connection.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
    include_body: bool,
) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if include_body {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    Ok(())
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response as read by [`https_get`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Whom an HTTPS client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any certificate: only for fetching `/cacerts` before the CA is known (the token's hash, when
    /// there is one, is what protects that step).
    Any,
    /// Certificates chaining to this CA (PEM), valid for the host name used.
    CaPem(Vec<u8>),
}

/// Parsed `https://host[:port]` base URL (a path, if any, is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub host: String,
    pub port: u16,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .trim()
            .strip_prefix("https://")
            .with_context(|| format!("{url:?} is not an https:// url"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            bail!("{url:?} has no host");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .with_context(|| format!("{url:?}: unterminated ipv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().with_context(|| format!("{url:?}: bad port"))?,
                None => 443,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_string(),
                    port.parse().with_context(|| format!("{url:?}: bad port"))?,
                ),
                None => (authority.to_string(), 443),
            }
        };
        Ok(BaseUrl { host, port })
    }

    pub fn https(host: IpAddr, port: u16) -> Self {
        BaseUrl {
            host: host.to_string(),
            port,
        }
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// A TLS client certificate (chain) and key, PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(<redacted>)")
    }
}

impl ClientIdentity {
    /// Reads a certificate file and a key file.
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        Ok(ClientIdentity {
            cert_pem: std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
            key_pem: std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
        })
    }
}

/// `GET <base><path>` over TLS, one request per connection, with an overall timeout.
/// `headers` are extra request headers (`("Authorization", "Bearer x")`).
pub async fn https_get(
    base: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
    trust: &Trust,
    timeout: Duration,
) -> Result<Response> {
    https_get_as(base, path, headers, trust, None, timeout).await
}

/// [`https_get`], presenting a client certificate when `identity` is given.
pub async fn https_get_as(
    base: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    timeout: Duration,
) -> Result<Response> {
    https_request_as("GET", base, path, headers, trust, identity, timeout).await
}

/// A request of any method without a body (`DELETE`), as [`https_get_as`].
pub async fn https_request_as(
    method: &str,
    base: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    timeout: Duration,
) -> Result<Response> {
    tokio::time::timeout(
        timeout,
        https_request_inner(method, base, path, headers, trust, identity),
    )
    .await
    .with_context(|| format!("{method} {base}{path}: no answer within {timeout:?}"))?
}

async fn https_request_inner(
    method: &str,
    base: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
    trust: &Trust,
    identity: Option<&ClientIdentity>,
) -> Result<Response> {
    let config = client_config(trust, identity)?;
    let server_name = ServerName::try_from(base.host.clone())
        .with_context(|| format!("{:?} is not a valid server name", base.host))?;
    let tcp = TcpStream::connect((base.host.as_str(), base.port))
        .await
        .with_context(|| format!("connecting to {base}"))?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("tls handshake with {base}"))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rke2-standin\r\nAccept: */*\r\nConnection: close\r\n",
        base.host
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    read_response(&mut tls)
        .await
        .with_context(|| format!("reading the answer of {base}{path}"))
}

/// Reads a `Connection: close` response: head, then `Content-Length` bytes or up to EOF.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Response> {
    let (head, mut body) = read_head_and_rest(stream).await?;
    let text = std::str::from_utf8(&head).context("response head is not utf-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let headers = parse_headers(lines);
    let length = headers
        .get("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut buf = [0u8; 8192];
    loop {
        if let Some(len) = length {
            if body.len() >= len {
                body.truncate(len);
                break;
            }
        }
        if body.len() > MAX_BODY {
            bail!("response body larger than {MAX_BODY} bytes");
        }
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            // A peer that closes without a TLS close_notify: what we have is the body.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(len) = length {
        if body.len() < len {
            bail!("truncated body: {} of {len} bytes", body.len());
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> BTreeMap<String, String> {
    lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>> {
    Ok(read_head_and_rest(stream).await?.0)
}

/// Reads up to the end of the head; returns the head (without the blank line) and whatever was
/// read past it.
async fn read_head_and_rest<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        if let Some(end) = find(&data, b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            data.truncate(end);
            return Ok((data, rest));
        }
        if data.len() > MAX_HEAD {
            bail!("head larger than {MAX_HEAD} bytes");
        }
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            bail!("connection closed before the end of the head");
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The certificates of a PEM bundle as a trust store.
pub fn root_store(pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.context("parsing the ca pem")?)
            .context("adding the ca to the trust store")?;
    }
    if roots.is_empty() {
        bail!("the ca pem holds no certificate");
    }
    Ok(roots)
}

fn client_config(trust: &Trust, identity: Option<&ClientIdentity>) -> Result<ClientConfig> {
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("tls protocol versions")?;
    let builder = match trust {
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))),
        Trust::CaPem(pem) => builder.with_root_certificates(root_store(pem)?),
    };
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(&identity.cert_pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .context("parsing the client certificate")?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&identity.key_pem)
                .context("parsing the client key")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key")?
        }
    };
    Ok(config)
}

/// Accepts any server certificate but still checks the handshake signatures, so the connection is
/// at least bound to the key of the certificate presented.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Blocking form of [`https_get`] for synchronous tests: runs on its own thread and runtime, so it
/// works inside or outside an async context.
pub fn https_get_blocking(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    trust: &Trust,
    timeout: Duration,
) -> Result<Response> {
    https_get_blocking_as(addr, path, headers, trust, None, timeout)
}

/// [`https_get_blocking`], presenting a client certificate when `identity` is given.
pub fn https_get_blocking_as(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    timeout: Duration,
) -> Result<Response> {
    https_request_blocking_as("GET", addr, path, headers, trust, identity, timeout)
}

/// Blocking form of [`https_request_as`].
pub fn https_request_blocking_as(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    timeout: Duration,
) -> Result<Response> {
    let method = method.to_string();
    let identity = identity.cloned();
    let base = BaseUrl::https(addr.ip(), addr.port());
    let path = path.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let trust = trust.clone();
    std::thread::spawn(move || -> Result<Response> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        runtime.block_on(https_request_as(
            &method,
            &base,
            &path,
            &headers,
            &trust,
            identity.as_ref(),
            timeout,
        ))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("https client thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        assert_eq!(
            BaseUrl::parse("https://127.0.0.5:9345").unwrap(),
            BaseUrl {
                host: "127.0.0.5".into(),
                port: 9345
            }
        );
        assert_eq!(
            BaseUrl::parse("https://lb.example.com:9345/").unwrap(),
            BaseUrl {
                host: "lb.example.com".into(),
                port: 9345
            }
        );
        assert_eq!(
            BaseUrl::parse("https://[::1]:6443").unwrap(),
            BaseUrl {
                host: "::1".into(),
                port: 6443
            }
        );
        assert_eq!(BaseUrl::parse("https://host").unwrap().port, 443);
        assert!(BaseUrl::parse("http://host:1").is_err());
        assert!(BaseUrl::parse("https://").is_err());
        assert_eq!(
            BaseUrl::parse("https://[::1]:6443").unwrap().to_string(),
            "https://[::1]:6443"
        );
    }

    #[tokio::test]
    async fn reads_requests_and_responses() {
        let mut input: &[u8] =
            b"GET /ping?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n\r\n";
        let req = read_request(&mut input).await.unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ping");
        assert_eq!(req.bearer(), Some("s3cret"));

        let mut out = Vec::new();
        write_response(&mut out, 200, "text/plain", b"pong", true)
            .await
            .unwrap();
        let resp = read_response(&mut out.as_slice()).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "pong");

        let mut truncated: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(read_response(&mut truncated).await.is_err());
        let mut no_head: &[u8] = b"HTTP/1.1 200 OK\r\n";
        assert!(read_response(&mut no_head).await.is_err());
    }
}
