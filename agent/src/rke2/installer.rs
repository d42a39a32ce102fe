//! Fetching and running the RKE2 installer (what `https://get.rke2.io` serves, RKE2's `install.sh`).
//!
//! The manual procedure is `curl -sfL https://get.rke2.io | INSTALL_RKE2_TYPE=agent sh -`. Here the
//! script is downloaded with bounded time and size, retried with backoff, optionally pinned by
//! sha256, written to the state dir and run as a file (so a truncated download can never be
//! half-executed), in its own process group under a deadline.
//!
//! Facts about the installer this relies on (from RKE2's install.sh):
//! - `INSTALL_RKE2_TYPE` is `server` (default) or `agent` and picks the `rke2-server`/`rke2-agent`
//!   unit; `INSTALL_RKE2_VERSION` wins over `INSTALL_RKE2_CHANNEL` (default `stable`);
//!   `INSTALL_RKE2_METHOD` is `rpm` (the default where yum exists) or `tar`;
//!   `INSTALL_RKE2_ARTIFACT_PATH` is an air-gap directory holding `sha256sum-<arch>.txt` and
//!   `rke2.linux-<arch>.tar.gz`, and also disables the rpm default.
//! - The tar method unpacks under `INSTALL_RKE2_TAR_PREFIX` (default `/usr/local`, or `/opt/rke2`
//!   when `/usr/local` is read-only or a mount point); rpm installs to `/usr/bin`. With a prefix
//!   other than `/usr/local` the script also moves the units to `/etc/systemd/system`.
//! - The installer must run as root and does not enable or start the service; that is
//!   [`super::service`]'s job.
//!
//! `root` (a temp dir in tests and the demo) only redirects the tar prefix; the rpm method always
//! installs into the real system.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::probe::{install_crypto_provider, read_limited};
use crate::child::{Bounded, KillScope, Stream};
use crate::fsutil;

/// Where the installer comes from unless configured otherwise.
pub const DEFAULT_INSTALLER_URL: &str = "https://get.rke2.io";
/// Agent setting naming the installer URL (used in error messages).
pub const INSTALLER_URL_KEY: &str = "installer-url";
/// Agent setting that permits a plain-http installer URL.
pub const ALLOW_INSECURE_INSTALLER_URL_KEY: &str = "allow-insecure-installer-url";
/// Agent setting pinning the installer's sha256.
pub const INSTALLER_SHA256_KEY: &str = "installer-sha256";
/// Agent setting naming the air-gap artifact directory.
pub const INSTALLER_ARTIFACT_PATH_KEY: &str = "installer-artifact-path";
/// The real installer is about 25 KiB; anything near this cap is not an installer.
pub const DEFAULT_MAX_SCRIPT_BYTES: usize = 10 * 1024 * 1024;
/// File name of the downloaded script inside `work_dir`.
pub const SCRIPT_FILE_NAME: &str = "rke2-install.sh";
/// How many stderr lines an installer failure carries.
const STDERR_TAIL_LINES: usize = 20;
/// After SIGTERM on timeout, how long the installer gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Bound on `rke2 --version`.
const VERSION_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Variables this module sets; inherited values are removed so a stale environment can never
/// contradict the configuration. Other `INSTALL_RKE2_*` variables pass through.
const MANAGED_ENV: &[&str] = &[
    "INSTALL_RKE2_TYPE",
    "INSTALL_RKE2_EXEC",
    "INSTALL_RKE2_VERSION",
    "INSTALL_RKE2_CHANNEL",
    "INSTALL_RKE2_METHOD",
    "INSTALL_RKE2_ARTIFACT_PATH",
    "INSTALL_RKE2_TAR_PREFIX",
];

/// Which RKE2 service the installer sets up (`INSTALL_RKE2_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallType {
    Server,
    Agent,
}

impl InstallType {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallType::Server => "server",
            InstallType::Agent => "agent",
        }
    }

    /// The systemd unit this type installs.
    pub fn unit(self) -> &'static str {
        match self {
            InstallType::Server => "rke2-server.service",
            InstallType::Agent => "rke2-agent.service",
        }
    }
}

/// What a host's state records about its RKE2 installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    Nothing,
    /// The installer ran for this type (the last one it ran for).
    Type(InstallType),
    /// The installer ran, recorded by an agent from before types were recorded.
    UnknownType,
}

/// Whether the installer must run before `needed`'s unit is started. The tarball ships both units,
/// but the rpm packages (the installer's default wherever yum exists) ship one each: an `auto`
/// host that installed the server package while preparing a first-server candidacy and then
/// settles as an agent has no `rke2-agent.service` until the installer runs again with
/// `INSTALL_RKE2_TYPE=agent`. A type installed earlier counts only if its unit is there.
pub fn installer_needed(
    installed: Installed,
    needed: InstallType,
    needed_unit_present: bool,
) -> bool {
    match installed {
        Installed::Nothing => true,
        Installed::Type(done) if done == needed => false,
        Installed::Type(_) | Installed::UnknownType => !needed_unit_present,
    }
}

/// Where systemd finds unit files (the tar method's `/usr/local` prefix, the rpm packages'
/// `/usr/lib`, the tar fallback prefix moving them to `/etc`), under `root`.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Whether `unit`'s file is installed under `root`.
pub fn unit_file_present(root: &Path, unit: &str) -> bool {
    UNIT_DIRS
        .iter()
        .any(|dir| fsutil::under_root(root, Path::new(dir).join(unit)).is_file())
}

/// How the installer installs (`INSTALL_RKE2_METHOD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallMethod {
    Rpm,
    Tar,
}

impl std::str::FromStr for InstallMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rpm" => Ok(InstallMethod::Rpm),
            "tar" => Ok(InstallMethod::Tar),
            other => Err(format!(
                "unknown install method {other:?}, expected rpm or tar"
            )),
        }
    }
}

impl InstallMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallMethod::Rpm => "rpm",
            InstallMethod::Tar => "tar",
        }
    }
}

/// Everything the installer step needs.
#[derive(Debug, Clone)]
pub struct InstallerConfig {
    /// Installer URL; `https://` unless `allow_insecure_http`.
    pub url: String,
    /// Expected sha256 (hex) of the script. Strongly recommended: get.rke2.io is a moving target.
    pub sha256: Option<String>,
    /// Permit `http://` (only for a trusted local mirror).
    pub allow_insecure_http: bool,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on one whole download attempt.
    pub download_timeout: Duration,
    /// Bound on running the script (the real one downloads a few hundred MB).
    pub run_timeout: Duration,
    /// Download attempts in total (at least 1).
    pub attempts: u32,
    /// First retry delay cap; doubles per attempt up to `backoff_max` (full jitter below it).
    pub backoff_base: Duration,
    /// Largest retry delay cap.
    pub backoff_max: Duration,
    /// Cap on the script size.
    pub max_script_bytes: usize,
    /// `INSTALL_RKE2_TYPE`.
    pub install_type: InstallType,
    /// `INSTALL_RKE2_VERSION`, e.g. `v1.30.2+rke2r1`.
    pub version: Option<String>,
    /// `INSTALL_RKE2_CHANNEL`, e.g. `stable`, `latest`, `v1.30`.
    pub channel: Option<String>,
    /// `INSTALL_RKE2_METHOD`.
    pub method: Option<InstallMethod>,
    /// `INSTALL_RKE2_ARTIFACT_PATH` (air gap), a host path used as given.
    pub artifact_path: Option<PathBuf>,
    /// File-system root the installation lands under (`/` in production).
    pub root: PathBuf,
    /// Where the script is written (under the agent's state dir).
    pub work_dir: PathBuf,
}

impl InstallerConfig {
    /// Production defaults for `install_type`, installing under `root`, scratch in `work_dir`.
    pub fn new(install_type: InstallType, root: PathBuf, work_dir: PathBuf) -> Self {
        Self {
            url: DEFAULT_INSTALLER_URL.to_string(),
            sha256: None,
            allow_insecure_http: false,
            connect_timeout: Duration::from_secs(10),
            download_timeout: Duration::from_secs(60),
            run_timeout: Duration::from_secs(20 * 60),
            attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            max_script_bytes: DEFAULT_MAX_SCRIPT_BYTES,
            install_type,
            version: None,
            channel: None,
            method: None,
            artifact_path: None,
            root,
            work_dir,
        }
    }

    /// Paths where an installed `rke2` binary may be: tar default prefix, tar fallback prefix,
    /// rpm.
    pub fn binary_candidates(&self) -> Vec<PathBuf> {
        ["/usr/local/bin/rke2", "/opt/rke2/bin/rke2", "/usr/bin/rke2"]
            .iter()
            .map(|p| fsutil::under_root(&self.root, p))
            .collect()
    }

    /// The environment the installer gets, in a fixed order. Pure, so it is testable on its own.
    pub fn install_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("INSTALL_RKE2_TYPE", self.install_type.as_str().to_string())];
        if let Some(version) = &self.version {
            env.push(("INSTALL_RKE2_VERSION", version.clone()));
        }
        if let Some(channel) = &self.channel {
            env.push(("INSTALL_RKE2_CHANNEL", channel.clone()));
        }
        if let Some(method) = self.method {
            env.push(("INSTALL_RKE2_METHOD", method.as_str().to_string()));
        }
        if let Some(path) = &self.artifact_path {
            env.push(("INSTALL_RKE2_ARTIFACT_PATH", path.display().to_string()));
        }
        if self.root != Path::new("/") {
            env.push((
                "INSTALL_RKE2_TAR_PREFIX",
                fsutil::under_root(&self.root, "/usr/local")
                    .display()
                    .to_string(),
            ));
        }
        env
    }
}

/// What [`ensure_installed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// RKE2 (at the pinned version, if any) was already there; nothing downloaded or run.
    AlreadyInstalled,
    /// The installer ran successfully.
    Installed,
}

/// Downloads the installer script: https only (unless allowed), bounded in time and size, retried
/// with exponential backoff and full jitter on transient failures, checked against the pinned
/// sha256. A checksum mismatch is not retried: the server answered, with the wrong thing.
pub async fn download(cfg: &InstallerConfig) -> Result<Vec<u8>> {
    let url = check_url(&cfg.url, cfg.allow_insecure_http)?;
    let expected = cfg.sha256.as_deref().map(normalize_sha256).transpose()?;
    let client = download_client(cfg)?;
    let attempts = cfg.attempts.max(1);
    let mut last_error = None;
    for attempt in 1..=attempts {
        match fetch_once(&client, &url, cfg.max_script_bytes).await {
            Ok(body) => {
                let actual = match check_script(&body, expected.as_deref()) {
                    Ok(actual) => actual,
                    Err(mismatch) => bail!("installer downloaded from {url} {mismatch}"),
                };
                if expected.is_none() {
                    tracing::warn!(
                        %url,
                        sha256 = %actual,
                        "installer checksum not pinned; set {INSTALLER_SHA256_KEY} to this value to pin it",
                    );
                }
                tracing::info!(%url, bytes = body.len(), sha256 = %actual, attempt, "downloaded installer");
                return Ok(body);
            }
            Err(Fetch::Permanent(error)) => {
                return Err(error.context(format!("downloading installer from {url}")));
            }
            Err(Fetch::Transient(error)) => {
                if attempt < attempts {
                    let delay = backoff_delay(cfg.backoff_base, cfg.backoff_max, attempt);
                    tracing::warn!(
                        %url,
                        attempt,
                        attempts,
                        delay_ms = delay.as_millis() as u64,
                        error = %format!("{error:#}"),
                        "installer download failed; retrying",
                    );
                    tokio::time::sleep(delay).await;
                }
                last_error = Some(error);
            }
        }
    }
    let error = last_error.unwrap_or_else(|| anyhow!("no attempt made"));
    Err(error.context(format!(
        "downloading installer from {url} failed after {attempts} attempts (check `{INSTALLER_URL_KEY}` and network access)"
    )))
}

/// Writes `script` to `<work_dir>/rke2-install.sh` (0700, atomically) and runs `sh` on it with the
/// `INSTALL_RKE2_*` environment, in its own process group, under `run_timeout`. Output is logged
/// line by line. On timeout the whole group is terminated (SIGTERM, then SIGKILL). A non-zero exit
/// is an error carrying the code and the last lines of stderr.
pub async fn run(cfg: &InstallerConfig, script: &[u8]) -> Result<()> {
    if let Some(path) = &cfg.artifact_path {
        if !path.is_dir() {
            bail!(
                "`{INSTALLER_ARTIFACT_PATH_KEY}` {} is not a directory",
                path.display()
            );
        }
    }
    if cfg.version.is_some() && cfg.channel.is_some() {
        tracing::warn!("both installer version and channel set; the installer uses the version");
    }
    fsutil::create_dir_with_mode(&cfg.work_dir, fsutil::SECRET_DIR_MODE)?;
    let script_path = cfg.work_dir.join(SCRIPT_FILE_NAME);
    fsutil::write_file_atomic(&script_path, script, 0o700)?;

    let env = cfg.install_env();
    let shown_env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(
        script = %script_path.display(),
        env = %shown_env.join(" "),
        timeout_ms = cfg.run_timeout.as_millis() as u64,
        "running installer"
    );
    let mut command = Bounded::new("sh", &[&script_path], cfg.run_timeout)
        .kill(KillScope::Group)
        .term_grace(TERM_GRACE)
        .current_dir(&cfg.work_dir);
    for name in MANAGED_ENV {
        command = command.env_remove(name);
    }
    for (name, value) in &env {
        command = command.env(name, value);
    }
    let finished = command
        .run_streaming(|stream, line| match stream {
            Stream::Stdout => tracing::info!(stream = stream.as_str(), line, "installer output"),
            Stream::Stderr => tracing::warn!(stream = stream.as_str(), line, "installer output"),
        })
        .await
        .with_context(|| format!("installer {}", script_path.display()))?;
    if finished.status.success() {
        tracing::info!(script = %script_path.display(), "installer finished");
        return Ok(());
    }
    let lines: Vec<&str> = finished.stderr.lines().collect();
    let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
    let how = match finished.status.code() {
        Some(code) => format!("exited with code {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            format!(
                "was killed by signal {}",
                finished.status.signal().unwrap_or(0)
            )
        }
    };
    bail!(
        "installer {} {how}; last stderr lines:\n{}",
        script_path.display(),
        if tail.is_empty() {
            "(none)".to_string()
        } else {
            tail.join("\n")
        }
    )
}

/// Whether RKE2 is installed under `root` (tar prefix `/usr/local` or `/opt/rke2`, or rpm's
/// `/usr/bin`) with the unit of the configured type, and, when a version is pinned, whether `rke2 --version` reports it. A pinned version
/// that differs counts as not installed, so [`ensure_installed`] runs the installer (an upgrade).
pub async fn is_installed(cfg: &InstallerConfig) -> bool {
    let Some(binary) = installed_binary(cfg) else {
        return false;
    };
    // The rpm packages ship one unit each: a binary from the other package is not enough.
    let unit = cfg.install_type.unit();
    if !unit_file_present(&cfg.root, unit) {
        tracing::info!(unit, "rke2 is installed but not its unit for this role");
        return false;
    }
    let Some(version) = &cfg.version else {
        return true;
    };
    match Bounded::new(&binary, &["--version"], VERSION_CHECK_TIMEOUT)
        .run()
        .await
    {
        Ok(output) if output.status.success() => {
            let matches = output.stdout.contains(version.as_str());
            if !matches {
                tracing::info!(
                    binary = %binary.display(),
                    pinned = %version,
                    reported = %output.stdout.lines().next().unwrap_or(""),
                    "installed rke2 is not the pinned version"
                );
            }
            matches
        }
        Ok(output) => {
            tracing::warn!(binary = %binary.display(), status = %output.status, "rke2 --version failed");
            false
        }
        Err(error) => {
            tracing::warn!(binary = %binary.display(), error = %format!("{error:#}"), "could not run rke2 --version");
            false
        }
    }
}

/// Installs RKE2 unless [`is_installed`]: download, run, then confirm the binary appeared (an
/// installer that exits 0 without installing is an error, not a success).
pub async fn ensure_installed(cfg: &InstallerConfig) -> Result<InstallOutcome> {
    if is_installed(cfg).await {
        tracing::info!(
            install_type = cfg.install_type.as_str(),
            "rke2 already installed; skipping installer"
        );
        return Ok(InstallOutcome::AlreadyInstalled);
    }
    let script = download(cfg).await?;
    run(cfg, &script).await?;
    if !is_installed(cfg).await {
        let looked: Vec<String> = cfg
            .binary_candidates()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        bail!(
            "installer finished but no suitable rke2 binary was found (looked at {}{})",
            looked.join(", "),
            cfg.version
                .as_deref()
                .map(|v| format!(", version {v}"))
                .unwrap_or_default()
        );
    }
    Ok(InstallOutcome::Installed)
}

fn installed_binary(cfg: &InstallerConfig) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    cfg.binary_candidates()
        .into_iter()
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The installer URL, checked against the scheme policy before any network access.
pub fn check_url(raw: &str, allow_insecure_http: bool) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(raw.trim())
        .with_context(|| format!("`{INSTALLER_URL_KEY}` {raw:?} is not a valid URL"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure_http => {
            tracing::warn!(%url, "downloading the installer over plain http (allowed by {ALLOW_INSECURE_INSTALLER_URL_KEY})");
            Ok(url)
        }
        "http" => bail!(
            "`{INSTALLER_URL_KEY}` {url} uses plain http, which lets anyone on the path run code \
             as root on this host; use https, or set `{ALLOW_INSECURE_INSTALLER_URL_KEY}: true` \
             for a trusted local mirror"
        ),
        other => bail!("`{INSTALLER_URL_KEY}` {url} has unsupported scheme {other:?}; use https"),
    }
}

/// The pinned installer checksum as 64 lowercase hex digits (a `sha256:` prefix is accepted).
pub fn normalize_sha256(raw: &str) -> Result<String> {
    let hash = raw.trim();
    let hash = hash.strip_prefix("sha256:").unwrap_or(hash);
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{INSTALLER_SHA256_KEY}` must be 64 hex characters, got {raw:?}");
    }
    Ok(hash.to_ascii_lowercase())
}

/// The download client: host trust store (the real get.rke2.io has a public certificate), proxies
/// from the environment honored (corporate networks), redirects followed but never to http unless
/// allowed.
fn download_client(cfg: &InstallerConfig) -> Result<reqwest::Client> {
    install_crypto_provider();
    let allow_http = cfg.allow_insecure_http;
    let redirect = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if attempt.url().scheme() != "https" && !allow_http {
            attempt.error("redirect to a non-https URL refused")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.download_timeout)
        .redirect(redirect)
        .user_agent(concat!("rke2-bootstrap/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the installer HTTP client")
}

enum Fetch {
    /// Worth retrying: connection trouble, timeouts, 5xx, 408, 429.
    Transient(anyhow::Error),
    /// Retrying cannot help: 4xx, oversized body.
    Permanent(anyhow::Error),
}

async fn fetch_once(
    client: &reqwest::Client,
    url: &reqwest::Url,
    limit: usize,
) -> std::result::Result<Vec<u8>, Fetch> {
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| classify(anyhow::Error::new(e)))?;
    if let Some(retry) = status_retryable(response.status().as_u16()) {
        let error = anyhow!("HTTP status {}", response.status());
        return Err(if retry {
            Fetch::Transient(error)
        } else {
            Fetch::Permanent(error)
        });
    }
    let body = read_limited(&mut response, limit).await.map_err(|e| {
        if e.downcast_ref::<reqwest::Error>().is_some() {
            Fetch::Transient(e)
        } else {
            Fetch::Permanent(
                e.context(format!("`{INSTALLER_URL_KEY}` does not serve an installer")),
            )
        }
    })?;
    if body.is_empty() {
        return Err(Fetch::Transient(anyhow!("empty response body")));
    }
    Ok(body)
}

/// How the download loop treats an HTTP status: `None` for success (read the body), otherwise
/// whether another attempt could help (5xx, 408 and 429 may; other codes, redirects that were
/// not followed included, will not).
pub fn status_retryable(status: u16) -> Option<bool> {
    match status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(true),
        _ => Some(false),
    }
}

/// The downloaded script's sha256 (hex), checked against the pin (already normalized by
/// [`normalize_sha256`]) when there is one. A mismatch is final: the server answered, with the
/// wrong thing.
pub fn check_script(body: &[u8], pinned: Option<&str>) -> Result<String> {
    let actual = hex::encode(Sha256::digest(body));
    if let Some(expected) = pinned {
        if expected != actual {
            bail!(
                "does not match `{INSTALLER_SHA256_KEY}`: expected sha256 {expected}, got \
                 {actual}; not running it"
            );
        }
    }
    Ok(actual)
}

fn classify(error: anyhow::Error) -> Fetch {
    match error.downcast_ref::<reqwest::Error>() {
        Some(e) if e.is_redirect() || e.is_builder() => Fetch::Permanent(error),
        _ => Fetch::Transient(error),
    }
}

/// Full jitter: uniform in `[0, min(max, base * 2^(attempt-1))]`, so many hosts booting together
/// do not retry in lockstep.
pub fn backoff_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let cap = base.saturating_mul(factor).min(max);
    let millis = cap.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
}

#[cfg(test)]
mod install_decision_tests {
    use super::*;

    #[test]
    fn the_installer_runs_again_only_for_a_missing_unit_of_another_type() {
        use InstallType::{Agent, Server};
        // Never installed: run.
        assert!(installer_needed(Installed::Nothing, Agent, false));
        assert!(installer_needed(Installed::Nothing, Server, true));
        // Installed for this type: done, as before.
        assert!(!installer_needed(Installed::Type(Agent), Agent, false));
        // The rpm path: the server package while preparing, then settled as an agent.
        assert!(installer_needed(Installed::Type(Server), Agent, false));
        // The tarball ships both units: nothing to do.
        assert!(!installer_needed(Installed::Type(Server), Agent, true));
        // A state from before types were recorded: judged by the unit alone.
        assert!(installer_needed(Installed::UnknownType, Agent, false));
        assert!(!installer_needed(Installed::UnknownType, Agent, true));
    }

    #[test]
    fn unit_files_are_found_where_either_method_puts_them() {
        let root = tempfile::tempdir().unwrap();
        assert!(!unit_file_present(root.path(), "rke2-agent.service"));
        for dir in ["usr/lib/systemd/system", "usr/local/lib/systemd/system"] {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
            std::fs::write(root.path().join(dir).join("rke2-agent.service"), "").unwrap();
            assert!(unit_file_present(root.path(), "rke2-agent.service"));
            assert!(!unit_file_present(root.path(), "rke2-server.service"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: &str) -> InstallerConfig {
        InstallerConfig::new(
            InstallType::Agent,
            PathBuf::from(root),
            PathBuf::from("/var/lib/rke2-bootstrap/installer"),
        )
    }

    #[test]
    fn env_for_production_root_has_no_tar_prefix() {
        let mut c = cfg("/");
        c.version = Some("v1.30.2+rke2r1".into());
        c.method = Some(InstallMethod::Tar);
        assert_eq!(
            c.install_env(),
            vec![
                ("INSTALL_RKE2_TYPE", "agent".to_string()),
                ("INSTALL_RKE2_VERSION", "v1.30.2+rke2r1".to_string()),
                ("INSTALL_RKE2_METHOD", "tar".to_string()),
            ]
        );
    }

    #[test]
    fn env_under_temp_root_redirects_tar_prefix() {
        let mut c = cfg("/tmp/h1");
        c.install_type = InstallType::Server;
        c.channel = Some("stable".into());
        c.artifact_path = Some("/srv/rke2-artifacts".into());
        assert_eq!(
            c.install_env(),
            vec![
                ("INSTALL_RKE2_TYPE", "server".to_string()),
                ("INSTALL_RKE2_CHANNEL", "stable".to_string()),
                (
                    "INSTALL_RKE2_ARTIFACT_PATH",
                    "/srv/rke2-artifacts".to_string()
                ),
                ("INSTALL_RKE2_TAR_PREFIX", "/tmp/h1/usr/local".to_string()),
            ]
        );
    }

    #[test]
    fn binary_candidates_cover_tar_fallback_and_rpm() {
        let c = cfg("/tmp/h1");
        assert_eq!(
            c.binary_candidates(),
            vec![
                PathBuf::from("/tmp/h1/usr/local/bin/rke2"),
                PathBuf::from("/tmp/h1/opt/rke2/bin/rke2"),
                PathBuf::from("/tmp/h1/usr/bin/rke2"),
            ]
        );
    }

    #[test]
    fn url_policy() {
        assert!(check_url(DEFAULT_INSTALLER_URL, false).is_ok());
        let http = "http://mirror.local/install.sh";
        let err = check_url(http, false).unwrap_err().to_string();
        assert!(err.contains(INSTALLER_URL_KEY) && err.contains(ALLOW_INSECURE_INSTALLER_URL_KEY));
        assert!(check_url(http, true).is_ok());
        assert!(check_url("ftp://mirror.local/install.sh", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }

    #[test]
    fn status_and_pin_verdicts() {
        assert_eq!(status_retryable(200), None);
        assert_eq!(status_retryable(204), None);
        for retry in [408, 429, 500, 503, 599] {
            assert_eq!(status_retryable(retry), Some(true), "{retry}");
        }
        for fatal in [100, 301, 304, 400, 403, 404, 600] {
            assert_eq!(status_retryable(fatal), Some(false), "{fatal}");
        }
        let sum = check_script(b"#!/bin/sh\n", None).unwrap();
        assert_eq!(check_script(b"#!/bin/sh\n", Some(&sum)).unwrap(), sum);
        let err = check_script(b"#!/bin/sh\nevil\n", Some(&sum)).unwrap_err();
        assert!(err.to_string().contains(INSTALLER_SHA256_KEY), "{err}");
    }

    #[test]
    fn sha256_normalization() {
        let h = "AB".repeat(32);
        assert_eq!(normalize_sha256(&h).unwrap(), "ab".repeat(32));
        assert_eq!(
            normalize_sha256(&format!("sha256:{h}")).unwrap(),
            "ab".repeat(32)
        );
        assert!(normalize_sha256("abc").is_err());
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 1..40 {
            let cap = base
                .saturating_mul(1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX))
                .min(max);
            for _ in 0..20 {
                assert!(backoff_delay(base, max, attempt) <= cap);
            }
        }
        // Jitter: not always the same value.
        let samples: std::collections::HashSet<_> =
            (0..50).map(|_| backoff_delay(base, max, 5)).collect();
        assert!(samples.len() > 1);
    }
}
