//! The client side: HTTPS requests (async and blocking) that trust a given CA, any certificate
//! (the first `/cacerts` fetch), or present a client certificate.

use super::*;

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
