//! Just enough HTTP/1.1 (one request per connection, `Connection: close`) and TLS plumbing for
//! the stand-ins and the harness: request-head parsing, response writing, and an HTTPS GET client
//! that either trusts a given CA or, for the first `/cacerts` fetch, any certificate.
//!
//! One idea per file: the server side in `server.rs`, the client side in `client.rs`; the head
//! parsing both share is here.

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

mod client;
mod server;

pub use client::{
    https_get, https_get_as, https_get_blocking, https_get_blocking_as, https_request_as,
    https_request_blocking_as, read_response, root_store, BaseUrl, ClientIdentity, Response, Trust,
};
pub use server::{read_request, reason, write_response, Request};

/// Largest request or response head we accept.
const MAX_HEAD: usize = 16 * 1024;

/// Largest response body we read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The ring provider, used explicitly everywhere so no process-wide default is needed.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
