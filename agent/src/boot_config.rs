//! The config a PXE boot entry names (`rke2_bootstrap.config=<url>`, pinned by
//! `rke2_bootstrap.config_sha256=`): fetched once and kept in the state directory, so that a host
//! rebooting while the config server is down starts all the same.
//!
//! The pin names the content: a kept copy with the pinned digest *is* the config the boot entry
//! names, so it is used without asking the network at all (every boot after the first is as fast
//! as one without a fetch, and needs nothing but the host's own disk). A boot entry with a new
//! pin fetches again and replaces the copy; a copy with another digest is never used.
//!
//! The copy lives in the state directory as set outside the fetched config (the image's file,
//! the kernel command line, the environment, the flags): a fetched config that moved the state
//! directory could not be found before it is read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::Digest;
use tracing::{info, warn};

use crate::fsutil;
use crate::rke2::probe::read_limited;

/// The kept copy's name in the state directory.
pub const KEPT_FILE: &str = "boot-config.yaml";

/// A config is a page of YAML; anything this large is not one.
const MAX_BYTES: usize = 1 << 20;

/// How a fetch is retried while the network comes up.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    /// Doubled after each failed attempt.
    pub first_backoff: Duration,
    /// For each attempt.
    pub timeout: Duration,
}

impl Retry {
    /// At boot: five attempts over about half a minute (1 + 2 + 4 + 8 s between them); the unit
    /// restarts the agent after that, so a long outage costs restarts, not a stuck boot.
    pub const AT_BOOT: Retry = Retry {
        attempts: 5,
        first_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
    };
}

/// Where the config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Obtained {
    /// The kept copy had the pinned digest: no fetch.
    Kept,
    /// Fetched now, checked, and kept for the next boots.
    Fetched,
}

/// The config named by `url` with SHA-256 `pin` (hex), as a file to layer: the kept copy in
/// `state_dir` when it has the pinned digest, otherwise fetched (retried as `retry` says),
/// checked against the pin before a byte of it is parsed, and kept.
pub async fn obtain(
    url: &str,
    pin: &str,
    state_dir: &Path,
    retry: Retry,
) -> Result<(PathBuf, Obtained)> {
    let kept = state_dir.join(KEPT_FILE);
    let kept_digest = match std::fs::read(&kept) {
        Ok(bytes) => Some(sha256_hex(&bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => {
            warn!(path = %kept.display(), error = %err, "cannot read the kept boot config; fetching it");
            None
        }
    };
    if kept_digest
        .as_deref()
        .is_some_and(|d| d.eq_ignore_ascii_case(pin))
    {
        info!(path = %kept.display(), "boot config: the kept copy has the pinned digest");
        return Ok((kept, Obtained::Kept));
    }
    let body = match fetch(url, retry).await {
        Ok(body) => body,
        Err(err) => {
            let kept_note = match &kept_digest {
                Some(d) => format!(
                    "; the kept copy {} has sha256 {d}, not the pinned one, so it is not used",
                    kept.display()
                ),
                None => String::new(),
            };
            return Err(err.context(format!("fetching the boot config {url}{kept_note}")));
        }
    };
    let actual = sha256_hex(&body);
    if !actual.eq_ignore_ascii_case(pin) {
        bail!("the boot config {url} has sha256 {actual}, the kernel command line pins {pin}");
    }
    fsutil::create_dir_with_mode(state_dir, fsutil::SECRET_DIR_MODE)?;
    fsutil::write_file_atomic(&kept, &body, fsutil::SECRET_FILE_MODE)?;
    info!(path = %kept.display(), "boot config fetched and kept");
    Ok((kept, Obtained::Fetched))
}

/// GET `url`, retried; the body, at most [`MAX_BYTES`].
async fn fetch(url: &str, retry: Retry) -> Result<Vec<u8>> {
    let client = reqwest::Client::builder()
        .timeout(retry.timeout)
        .build()
        .context("building the http client")?;
    let mut backoff = retry.first_backoff;
    let mut attempt = 1;
    loop {
        match fetch_once(&client, url).await {
            Ok(body) => return Ok(body),
            Err(err) if attempt >= retry.attempts => {
                return Err(err.context(format!("after {attempt} attempts")))
            }
            Err(err) => {
                warn!(url, attempt, error = %format!("{err:#}"), "boot config fetch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
        }
    }
}

async fn fetch_once(client: &reqwest::Client, url: &str) -> Result<Vec<u8>> {
    let mut response = client.get(url).send().await?.error_for_status()?;
    read_limited(&mut response, MAX_BYTES).await
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    const ONCE: Retry = Retry {
        attempts: 1,
        first_backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(5),
    };

    /// A config server on an ephemeral port of 127.0.0.1 answering every request with `body`;
    /// returns its URL and how many requests it answered.
    fn serve(body: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/prod.yaml", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        (url, served)
    }

    /// A URL nothing listens on.
    fn nobody() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/prod.yaml", listener.local_addr().unwrap());
        drop(listener);
        url
    }

    const CONFIG: &[u8] = b"cluster-name: prod\nservers: 3\n";

    #[tokio::test]
    async fn fetched_once_then_kept_and_used_without_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (url, served) = serve(CONFIG);
        let pin = sha256_hex(CONFIG);
        let (path, how) = obtain(&url, &pin, &state, ONCE).await.unwrap();
        assert_eq!(how, Obtained::Fetched);
        assert_eq!(std::fs::read(&path).unwrap(), CONFIG);
        assert_eq!(path, state.join(KEPT_FILE));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The next boot: the server is gone, the kept copy has the pin.
        let (path, how) = obtain(&nobody(), &pin.to_uppercase(), &state, ONCE)
            .await
            .unwrap();
        assert_eq!(
            (how, std::fs::read(&path).unwrap()),
            (Obtained::Kept, CONFIG.to_vec())
        );
        assert_eq!(served.load(Ordering::SeqCst), 1, "asked the network again");
    }

    #[tokio::test]
    async fn a_new_pin_fetches_again_and_a_copy_with_another_digest_is_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_path_buf();
        std::fs::write(state.join(KEPT_FILE), b"cluster-name: old\n").unwrap();
        let pin = sha256_hex(CONFIG);
        // The server is down: the old copy is not used, and the error says why.
        let err = obtain(&nobody(), &pin, &state, ONCE).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("the kept copy") && text.contains("not the pinned one"),
            "{text}"
        );
        // The server answers: the new config replaces the copy.
        let (url, _) = serve(CONFIG);
        let (path, how) = obtain(&url, &pin, &state, ONCE).await.unwrap();
        assert_eq!(
            (how, std::fs::read(path).unwrap()),
            (Obtained::Fetched, CONFIG.to_vec())
        );
    }

    #[tokio::test]
    async fn content_that_does_not_match_the_pin_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _) = serve(b"cluster-name: someone-else\n");
        let pin = sha256_hex(CONFIG);
        let err = obtain(&url, &pin, dir.path(), ONCE).await.unwrap_err();
        assert!(err.to_string().contains("pins"), "{err:#}");
        assert!(!dir.path().join(KEPT_FILE).exists());
    }

    #[tokio::test]
    async fn an_outage_is_retried_then_named() {
        let retry = Retry {
            attempts: 3,
            first_backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
        };
        let dir = tempfile::tempdir().unwrap();
        let url = nobody();
        let err = obtain(&url, &sha256_hex(CONFIG), dir.path(), retry)
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&url) && text.contains("after 3 attempts"),
            "{text}"
        );
    }
}
