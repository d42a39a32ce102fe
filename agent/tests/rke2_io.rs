//! I/O tests for the rke2 module against real sockets and processes on loopback: a local HTTP
//! server serving a stand-in installer, recording service-manager scripts, TLS servers answering
//! like RKE2's supervisor and API, and a TCP listener behaving like an LB without upstream.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rke2_bootstrap::rke2::config_yaml::{
    self, render, write_config, ExistingConfigPolicy, Rke2Config, WriteOutcome, MANAGED_MARKER,
};
use rke2_bootstrap::rke2::installer::{
    self, ensure_installed, InstallMethod, InstallOutcome, InstallType, InstallerConfig,
};
use rke2_bootstrap::rke2::probe::{install_crypto_provider, ClientIdentity, ProbePorts, Prober};
use rke2_bootstrap::rke2::service::{ServiceKind, ServiceManager};
use rke2_bootstrap::rke2::token::{ca_hash, JoinToken, Secret};
use rke2_testkit::wait_until_async;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("rke2_bootstrap=debug")
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server (plain or TLS), one request per connection.

/// `(path, request number, whether the client presented a verified certificate)`.
type Handler = Arc<dyn Fn(&str, usize, bool) -> (u16, Vec<u8>) + Send + Sync>;

struct TestServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server on 127.0.0.1; `handler` answers each request.
async fn serve(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let authed = stream.get_ref().1.peer_certificates().is_some();
                            answer(stream, handler, counter, authed).await;
                        }
                    }
                    None => answer(stream, handler, counter, false).await,
                }
            });
        }
    });
    TestServer {
        addr,
        requests,
        task,
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: Handler,
    counter: Arc<AtomicUsize>,
    authed: bool,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    let (status, body) = handler(&path, n, authed);
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

fn handler(f: impl Fn(&str, usize, bool) -> (u16, Vec<u8>) + Send + Sync + 'static) -> Handler {
    Arc::new(f)
}

// ---------------------------------------------------------------------------------------------
// Installer

/// A stand-in installer: records its INSTALL_RKE2_* environment and installs, as the tarball
/// does, a fake `rke2` that reports `version` and both units.
fn stand_in_installer(env_out: &Path, version: &str) -> String {
    format!(
        r#"#!/bin/sh
set -e
env | grep '^INSTALL_RKE2_' | sort > '{env_out}'
mkdir -p "$INSTALL_RKE2_TAR_PREFIX/bin"
cat > "$INSTALL_RKE2_TAR_PREFIX/bin/rke2" <<'STUB'
#!/bin/sh
echo "rke2 version {version} (0123abcd)"
echo "go version go1.22"
STUB
chmod 755 "$INSTALL_RKE2_TAR_PREFIX/bin/rke2"
mkdir -p "$INSTALL_RKE2_TAR_PREFIX/lib/systemd/system"
touch "$INSTALL_RKE2_TAR_PREFIX/lib/systemd/system/rke2-server.service" \
    "$INSTALL_RKE2_TAR_PREFIX/lib/systemd/system/rke2-agent.service"
echo "[INFO]  installed rke2 {version}"
echo "[WARN]  stand-in installer" >&2
"#,
        env_out = env_out.display()
    )
}

struct InstallFixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    env_out: PathBuf,
}

fn install_fixture() -> InstallFixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let state = dir.path().join("state");
    fs::create_dir_all(&root).unwrap();
    InstallFixture {
        env_out: dir.path().join("installer-env"),
        root,
        state,
        _dir: dir,
    }
}

fn quick_config(fx: &InstallFixture, url: String) -> InstallerConfig {
    let mut cfg = InstallerConfig::new(
        InstallType::Agent,
        fx.root.clone(),
        fx.state.join("installer"),
    );
    cfg.url = url;
    cfg.allow_insecure_http = true;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.download_timeout = Duration::from_secs(5);
    cfg.run_timeout = Duration::from_secs(20);
    cfg.attempts = 3;
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(50);
    cfg
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn download_and_run_passes_install_env() {
    init_logs();
    let fx = install_fixture();
    let version = "v1.30.2+rke2r1";
    let script = stand_in_installer(&fx.env_out, version);
    let body = script.clone().into_bytes();
    let server = serve(handler(move |_, _, _| (200, body.clone())), None).await;
    let artifacts = fx.state.join("artifacts");
    fs::create_dir_all(&artifacts).unwrap();

    let mut cfg = quick_config(&fx, format!("http://{}/install.sh", server.addr));
    cfg.sha256 = Some(sha256_hex(script.as_bytes()));
    cfg.version = Some(version.into());
    cfg.channel = Some("stable".into());
    cfg.method = Some(InstallMethod::Tar);
    cfg.artifact_path = Some(artifacts.clone());

    assert!(!installer::is_installed(&cfg).await);
    assert_eq!(
        ensure_installed(&cfg).await.unwrap(),
        InstallOutcome::Installed
    );
    assert_eq!(server.requests(), 1);

    let env = fs::read_to_string(&fx.env_out).unwrap();
    let expected = format!(
        "INSTALL_RKE2_ARTIFACT_PATH={}\nINSTALL_RKE2_CHANNEL=stable\nINSTALL_RKE2_METHOD=tar\n\
         INSTALL_RKE2_TAR_PREFIX={}\nINSTALL_RKE2_TYPE=agent\nINSTALL_RKE2_VERSION={version}\n",
        artifacts.display(),
        fx.root.join("usr/local").display()
    );
    assert_eq!(env, expected);

    let script_path = cfg.work_dir.join(installer::SCRIPT_FILE_NAME);
    let mode = fs::metadata(&script_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // Installed at the pinned version: nothing downloaded or run again.
    fs::remove_file(&fx.env_out).unwrap();
    assert_eq!(
        ensure_installed(&cfg).await.unwrap(),
        InstallOutcome::AlreadyInstalled
    );
    assert_eq!(server.requests(), 1);
    assert!(!fx.env_out.exists());

    // A different pinned version means not installed (upgrade path).
    cfg.version = Some("v1.31.0+rke2r1".into());
    assert!(!installer::is_installed(&cfg).await);
}

#[tokio::test]
async fn server_type_defaults_leave_optional_env_unset() {
    let fx = install_fixture();
    let script = stand_in_installer(&fx.env_out, "v1.30.2+rke2r1");
    let server = serve(
        handler(move |_, _, _| (200, script.clone().into_bytes())),
        None,
    )
    .await;
    let mut cfg = quick_config(&fx, format!("http://{}/", server.addr));
    cfg.install_type = InstallType::Server;
    ensure_installed(&cfg).await.unwrap();
    let env = fs::read_to_string(&fx.env_out).unwrap();
    assert_eq!(
        env,
        format!(
            "INSTALL_RKE2_TAR_PREFIX={}\nINSTALL_RKE2_TYPE=server\n",
            fx.root.join("usr/local").display()
        )
    );
}

#[tokio::test]
async fn checksum_mismatch_is_an_error_and_nothing_runs() {
    let fx = install_fixture();
    let script = stand_in_installer(&fx.env_out, "v1");
    let actual = sha256_hex(script.as_bytes());
    let server = serve(
        handler(move |_, _, _| (200, script.clone().into_bytes())),
        None,
    )
    .await;
    let mut cfg = quick_config(&fx, format!("http://{}/", server.addr));
    let expected = "0".repeat(64);
    cfg.sha256 = Some(expected.clone());

    let err = format!("{:#}", ensure_installed(&cfg).await.unwrap_err());
    assert!(err.contains(&expected) && err.contains(&actual), "{err}");
    assert!(err.contains("installer-sha256"), "{err}");
    assert_eq!(server.requests(), 1, "a mismatch is not retried");
    assert!(!fx.env_out.exists(), "the script must not run");
    assert!(!cfg.work_dir.join(installer::SCRIPT_FILE_NAME).exists());
}

#[tokio::test]
async fn plain_http_is_refused_without_the_flag() {
    let fx = install_fixture();
    let server = serve(handler(|_, _, _| (200, b"#!/bin/sh\n".to_vec())), None).await;
    let mut cfg = quick_config(&fx, format!("http://{}/", server.addr));
    cfg.allow_insecure_http = false;
    let err = format!("{:#}", installer::download(&cfg).await.unwrap_err());
    assert!(err.contains("installer-url"), "{err}");
    assert!(err.contains("allow-insecure-installer-url"), "{err}");
    assert_eq!(server.requests(), 0, "refused before any request");
}

#[tokio::test]
async fn unreachable_url_is_retried_then_a_clear_error() {
    init_logs();
    let fx = install_fixture();
    // A port that was just free: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/install.sh");
    let cfg = quick_config(&fx, url.clone());
    let started = Instant::now();
    let err = format!("{:#}", installer::download(&cfg).await.unwrap_err());
    assert!(err.contains(&url), "{err}");
    assert!(err.contains("after 3 attempts"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn server_errors_are_retried_and_can_recover() {
    let fx = install_fixture();
    let server = serve(
        handler(|_, n, _| {
            if n < 3 {
                (503, b"busy".to_vec())
            } else {
                (200, b"#!/bin/sh\nexit 0\n".to_vec())
            }
        }),
        None,
    )
    .await;
    let cfg = quick_config(&fx, format!("http://{}/", server.addr));
    let body = installer::download(&cfg).await.unwrap();
    assert_eq!(body, b"#!/bin/sh\nexit 0\n");
    assert_eq!(server.requests(), 3);

    let always_busy = serve(handler(|_, _, _| (503, Vec::new())), None).await;
    let cfg = quick_config(&fx, format!("http://{}/", always_busy.addr));
    let err = format!("{:#}", installer::download(&cfg).await.unwrap_err());
    assert!(
        err.contains("503") && err.contains("after 3 attempts"),
        "{err}"
    );
    assert_eq!(always_busy.requests(), 3);
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let fx = install_fixture();
    let server = serve(handler(|_, _, _| (404, Vec::new())), None).await;
    let cfg = quick_config(&fx, format!("http://{}/", server.addr));
    let err = format!("{:#}", installer::download(&cfg).await.unwrap_err());
    assert!(err.contains("404"), "{err}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let fx = install_fixture();
    let server = serve(handler(|_, _, _| (200, vec![b'#'; 4096])), None).await;
    let mut cfg = quick_config(&fx, format!("http://{}/", server.addr));
    cfg.max_script_bytes = 1024;
    let err = format!("{:#}", installer::download(&cfg).await.unwrap_err());
    assert!(err.contains("limit of 1024 bytes"), "{err}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn installer_exit_code_and_stderr_are_reported() {
    let fx = install_fixture();
    let cfg = quick_config(&fx, "https://unused.invalid/".into());
    let err = format!(
        "{:#}",
        installer::run(&cfg, b"echo starting\necho 'fatal: no curl' >&2\nexit 3\n")
            .await
            .unwrap_err()
    );
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("fatal: no curl"), "{err}");
}

#[tokio::test]
async fn run_timeout_kills_the_whole_process_group() {
    init_logs();
    let fx = install_fixture();
    let mut cfg = quick_config(&fx, "https://unused.invalid/".into());
    cfg.run_timeout = Duration::from_millis(500);
    let pid_file = fx.state.join("bg.pid");
    let script = format!("sleep 60 &\necho $! > '{}'\nsleep 60\n", pid_file.display());
    let started = Instant::now();
    let err = format!(
        "{:#}",
        installer::run(&cfg, script.as_bytes()).await.unwrap_err()
    );
    assert!(err.contains("did not finish"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until_gone(pid, Duration::from_secs(5)).await,
        "background child {pid} of the installer survived the timeout"
    );
}

#[tokio::test]
async fn installer_may_leave_a_daemon_running() {
    let fx = install_fixture();
    let cfg = quick_config(&fx, "https://unused.invalid/".into());
    let pid_file = fx.state.join("daemon.pid");
    let script = format!(
        "sleep 30 &\necho $! > '{}'\necho started\n",
        pid_file.display()
    );
    let started = Instant::now();
    installer::run(&cfg, script.as_bytes()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "run must not wait for background children holding the output pipes"
    );
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(is_running(pid), "the daemon keeps running");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test]
async fn missing_artifact_path_is_reported() {
    let fx = install_fixture();
    let mut cfg = quick_config(&fx, "https://unused.invalid/".into());
    cfg.artifact_path = Some(fx.state.join("no-such-dir"));
    let err = format!("{:#}", installer::run(&cfg, b"exit 0\n").await.unwrap_err());
    assert!(
        err.contains("installer-artifact-path") && err.contains("no-such-dir"),
        "{err}"
    );
}

#[tokio::test]
async fn installer_that_installs_nothing_is_an_error() {
    let fx = install_fixture();
    let server = serve(
        handler(|_, _, _| (200, b"echo pretending\n".to_vec())),
        None,
    )
    .await;
    let cfg = quick_config(&fx, format!("http://{}/", server.addr));
    let err = format!("{:#}", ensure_installed(&cfg).await.unwrap_err());
    assert!(err.contains("no suitable rke2 binary"), "{err}");
}

/// Whether a process exists and is not a zombie (a container's init may not reap orphans).
fn is_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn wait_until_gone(pid: i32, within: Duration) -> bool {
    wait_until_async(within, Duration::from_millis(50), || {
        std::future::ready(!is_running(pid))
    })
    .await
    .is_ok()
}

// ---------------------------------------------------------------------------------------------
// config.yaml on disk

fn seed_config() -> Rke2Config {
    Rke2Config::first_server(
        JoinToken::from_secret(Secret::new("my-shared-secret").unwrap()),
        vec!["rke2.demo.rancher.cn".into(), "192.168.205.84".into()],
    )
}

fn config_path(root: &Path) -> PathBuf {
    root.join("etc/rancher/rke2/config.yaml")
}

#[test]
fn config_is_written_0600_and_identical_content_is_skipped() {
    let root = tempfile::tempdir().unwrap();
    let rendered = render(&seed_config()).unwrap();
    let outcome = write_config(root.path(), &rendered, ExistingConfigPolicy::Refuse).unwrap();
    assert_eq!(outcome, WriteOutcome::Written);
    let path = config_path(root.path());
    assert_eq!(fs::read_to_string(&path).unwrap(), rendered);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    let outcome = write_config(root.path(), &rendered, ExistingConfigPolicy::Refuse).unwrap();
    assert_eq!(outcome, WriteOutcome::Unchanged);
    let inode_after = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    assert_eq!(inode, inode_after, "identical content is not rewritten");

    // Our own file with different content is simply replaced.
    let joining = render(&Rke2Config::joining_server(
        JoinToken::from_secret(Secret::new("my-shared-secret").unwrap()),
        "rke2.demo.rancher.cn",
        vec!["rke2.demo.rancher.cn".into()],
    ))
    .unwrap();
    let outcome = write_config(root.path(), &joining, ExistingConfigPolicy::Refuse).unwrap();
    assert_eq!(outcome, WriteOutcome::Written);
    assert_eq!(fs::read_to_string(&path).unwrap(), joining);
}

#[test]
fn loose_mode_on_unchanged_file_is_tightened() {
    let root = tempfile::tempdir().unwrap();
    let rendered = render(&seed_config()).unwrap();
    write_config(root.path(), &rendered, ExistingConfigPolicy::Refuse).unwrap();
    let path = config_path(root.path());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    write_config(root.path(), &rendered, ExistingConfigPolicy::Refuse).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn operator_config_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let path = config_path(root.path());
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let theirs = "token: my-shared-secret\ntls-san:\n  - rke2.demo.rancher.cn\n";
    fs::write(&path, theirs).unwrap();

    let rendered = render(&seed_config()).unwrap();
    let err = format!(
        "{:#}",
        write_config(root.path(), &rendered, ExistingConfigPolicy::Refuse).unwrap_err()
    );
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains(config_yaml::EXISTING_CONFIG_POLICY_KEY),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), theirs, "untouched");
}

#[test]
fn operator_config_is_backed_up() {
    let root = tempfile::tempdir().unwrap();
    let path = config_path(root.path());
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let theirs = "token: operator-secret\n";
    fs::write(&path, theirs).unwrap();

    let rendered = render(&seed_config()).unwrap();
    let outcome = write_config(root.path(), &rendered, ExistingConfigPolicy::Backup).unwrap();
    let WriteOutcome::BackedUp(backup) = outcome else {
        panic!("expected a backup, got {outcome:?}");
    };
    let name = backup.file_name().unwrap().to_string_lossy().to_string();
    let secs = name.strip_prefix("config.yaml.bak.").unwrap();
    assert!(secs.parse::<u64>().is_ok(), "{name}");
    assert_eq!(fs::read_to_string(&backup).unwrap(), theirs);
    let ours = fs::read_to_string(&path).unwrap();
    assert!(ours.starts_with(MANAGED_MARKER));
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A second operator file in the same second gets a distinct backup name.
    fs::write(&path, "token: again\n").unwrap();
    let WriteOutcome::BackedUp(second) =
        write_config(root.path(), &rendered, ExistingConfigPolicy::Backup).unwrap()
    else {
        panic!("expected a backup");
    };
    assert_ne!(second, backup);
    assert_eq!(fs::read_to_string(&backup).unwrap(), theirs);
}

// ---------------------------------------------------------------------------------------------
// Service manager

struct FakeSystemctl {
    _dir: tempfile::TempDir,
    record: PathBuf,
    exit_code: PathBuf,
    manager: ServiceManager,
}

/// A recording stand-in for systemctl: appends its arguments to a file, writes a message to
/// stderr, and exits with the code stored in another file. Run through `sh` so the freshly
/// written script is never exec'd directly (which can fail with "text file busy" while another
/// test thread forks).
fn fake_systemctl() -> FakeSystemctl {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("calls");
    let exit_code = dir.path().join("exit-code");
    let script = dir.path().join("systemctl");
    fs::write(&exit_code, "0").unwrap();
    fs::write(
        &script,
        format!(
            "echo \"$@\" >> '{}'\ncode=$(cat '{}')\n[ \"$code\" = 0 ] || echo \"Failed: $*\" >&2\n\
             [ \"$code\" = hang ] && exec sleep 5\nexit \"$code\"\n",
            record.display(),
            exit_code.display()
        ),
    )
    .unwrap();
    let manager = ServiceManager::new(vec!["sh".into(), script.display().to_string()]);
    FakeSystemctl {
        _dir: dir,
        record,
        exit_code,
        manager,
    }
}

#[tokio::test]
async fn service_manager_records_enable_now() {
    let fake = fake_systemctl();
    fake.manager
        .enable_now(ServiceKind::Server.unit())
        .await
        .unwrap();
    fake.manager
        .restart(ServiceKind::Agent.unit())
        .await
        .unwrap();
    fake.manager.stop(ServiceKind::Agent.unit()).await.unwrap();
    let calls = fs::read_to_string(&fake.record).unwrap();
    let lines: Vec<_> = calls.lines().collect();
    assert!(
        lines[0].contains("enable --now rke2-server.service"),
        "{calls}"
    );
    assert_eq!(lines[1], "--no-block restart rke2-agent.service");
    assert_eq!(lines[2], "stop rke2-agent.service");
}

#[tokio::test]
async fn service_manager_exit_code_contract() {
    let mut fake = fake_systemctl();
    let unit = ServiceKind::Agent.unit();
    assert!(fake.manager.is_active(unit).await.unwrap());

    fs::write(&fake.exit_code, "3").unwrap();
    assert!(!fake.manager.is_active(unit).await.unwrap());

    let err = format!("{:#}", fake.manager.enable_now(unit).await.unwrap_err());
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(
        err.contains("Failed: --no-block enable --now rke2-agent.service"),
        "{err}"
    );

    fs::write(&fake.exit_code, "hang").unwrap();
    fake.manager.timeout = Duration::from_millis(300);
    let err = format!("{:#}", fake.manager.is_active(unit).await.unwrap_err());
    assert!(err.contains("did not finish"), "{err}");

    let missing = ServiceManager::new(vec!["/nonexistent/systemctl".into()]);
    let err = format!("{:#}", missing.is_active(unit).await.unwrap_err());
    assert!(err.contains("/nonexistent/systemctl"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Probes

struct Pki {
    ca_pem: String,
    /// A kubelet-style client certificate and key, issued by the cluster's client CA.
    client_cert_pem: String,
    client_key_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

/// Like RKE2: a server CA that signs the serving certificate for 127.0.0.1, and a separate client
/// CA whose certificates the server accepts (but does not require) from clients.
fn pki() -> Pki {
    install_crypto_provider();
    let (server_ca, server_ca_key) = ca("rke2-server-ca@test");
    let (client_ca, client_ca_key) = ca("rke2-client-ca@test");

    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &server_ca, &server_ca_key)
        .unwrap();

    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:ha-w1");
    client_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params
        .signed_by(&client_key, &client_ca, &client_ca_key)
        .unwrap();

    let mut client_roots = rustls::RootCertStore::empty();
    client_roots.add(client_ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(client_roots))
        .allow_unauthenticated()
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    Pki {
        ca_pem: server_ca.pem(),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
}

/// A supervisor answering `/ping` and `/cacerts` (with `served_ca`), and an API answering
/// `/readyz` with `readyz_status`.
async fn fake_rke2(pki: &Pki, served_ca: String, readyz_status: u16) -> (TestServer, TestServer) {
    let supervisor = serve(
        handler(move |path, _, _| match path {
            "/ping" => (200, b"pong".to_vec()),
            "/cacerts" => (200, served_ca.clone().into_bytes()),
            _ => (404, Vec::new()),
        }),
        Some(pki.acceptor.clone()),
    )
    .await;
    let api = serve(
        handler(move |path, _, _| match path {
            "/readyz" => (readyz_status, b"ok".to_vec()),
            _ => (404, Vec::new()),
        }),
        Some(pki.acceptor.clone()),
    )
    .await;
    (supervisor, api)
}

fn prober_for(supervisor: u16, api: u16) -> Prober {
    Prober::with_timeout(ProbePorts { supervisor, api }, Duration::from_millis(1500)).unwrap()
}

#[tokio::test]
async fn probes_see_a_ready_server() {
    init_logs();
    let pki = pki();
    let (sup, api) = fake_rke2(&pki, pki.ca_pem.clone(), 200).await;
    let prober = prober_for(sup.addr.port(), api.addr.port());
    assert!(prober.supervisor_ping(LOCALHOST).await);
    assert!(prober.api_readyz(LOCALHOST).await);
    assert!(prober.server_ready(LOCALHOST).await);
    assert!(prober.registration_answers("127.0.0.1").await);
    assert!(prober.registration_answers("localhost").await);
}

#[tokio::test]
async fn ping_alone_is_not_ready() {
    let pki = pki();
    let (sup, api) = fake_rke2(&pki, pki.ca_pem.clone(), 500).await;
    let prober = prober_for(sup.addr.port(), api.addr.port());
    assert!(prober.supervisor_ping(LOCALHOST).await);
    assert!(!prober.api_readyz(LOCALHOST).await);
    assert!(!prober.server_ready(LOCALHOST).await);
}

#[tokio::test]
async fn wrong_ping_answer_is_not_answering() {
    let pki = pki();
    let sup = serve(
        handler(|_, _, _| (200, b"<html>welcome</html>".to_vec())),
        Some(pki.acceptor.clone()),
    )
    .await;
    let prober = prober_for(sup.addr.port(), 1);
    assert!(!prober.registration_answers("127.0.0.1").await);
    assert!(!prober.supervisor_ping(LOCALHOST).await);
}

#[tokio::test]
async fn lb_without_upstream_is_not_answering() {
    // Accepts TCP and closes at once, as a stream proxy with no live upstream does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let prober = prober_for(port, port);
    assert!(!prober.registration_answers("127.0.0.1").await);
    assert!(!prober.server_ready(LOCALHOST).await);
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the TCP connect did succeed"
    );
    task.abort();
}

#[tokio::test]
async fn silent_listener_times_out_quickly() {
    // Accepts TCP and never says anything.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let prober = Prober::with_timeout(
        ProbePorts {
            supervisor: port,
            api: port,
        },
        Duration::from_millis(300),
    )
    .unwrap();
    let started = Instant::now();
    assert!(!prober.registration_answers("127.0.0.1").await);
    assert!(started.elapsed() < Duration::from_secs(3));
    task.abort();
}

#[tokio::test]
async fn closed_port_is_not_answering() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let prober = prober_for(port, port);
    assert!(!prober.registration_answers("127.0.0.1").await);
    assert!(prober.fetch_cacerts("127.0.0.1").await.is_err());
}

#[tokio::test]
async fn cluster_ca_is_fetched_and_pinned() {
    let pki = pki();
    let (sup, api) = fake_rke2(&pki, pki.ca_pem.clone(), 200).await;
    let prober = prober_for(sup.addr.port(), api.addr.port());

    let fetched = prober.fetch_cacerts("127.0.0.1").await.unwrap();
    assert_eq!(fetched, pki.ca_pem.as_bytes());
    let hash = ca_hash(&fetched);
    prober.verify_ca("127.0.0.1", &hash).await.unwrap();
    prober
        .verify_ca("127.0.0.1", &hash.to_uppercase())
        .await
        .unwrap();

    let wrong = "ab".repeat(32);
    let err = format!(
        "{:#}",
        prober.verify_ca("127.0.0.1", &wrong).await.unwrap_err()
    );
    assert!(err.contains(&wrong) && err.contains(&hash), "{err}");

    // A full token built from the served CA carries the same pin.
    let token = JoinToken::from_secret(Secret::new("my-shared-secret").unwrap())
        .with_ca_hash(&hash)
        .unwrap();
    assert_eq!(token.ca_hash(), Some(hash.as_str()));
}

#[tokio::test]
async fn impostor_serving_the_real_ca_bytes_is_rejected() {
    // The impostor knows the real (public) CA certificate and serves it at /cacerts, so the hash
    // matches; but its TLS certificate comes from its own CA.
    let real = pki();
    let impostor = pki();
    let (sup, api) = fake_rke2(&impostor, real.ca_pem.clone(), 200).await;
    let prober = prober_for(sup.addr.port(), api.addr.port());
    let err = format!(
        "{:#}",
        prober
            .verify_ca("127.0.0.1", &ca_hash(real.ca_pem.as_bytes()))
            .await
            .unwrap_err()
    );
    assert!(err.contains("pinned cluster CA"), "{err}");
}

#[tokio::test]
async fn non_pem_cacerts_is_an_error() {
    let pki = pki();
    let (sup, api) = fake_rke2(&pki, "hello".into(), 200).await;
    let prober = prober_for(sup.addr.port(), api.addr.port());
    let err = format!("{:#}", prober.fetch_cacerts("127.0.0.1").await.unwrap_err());
    assert!(err.contains("not a PEM"), "{err}");
}

#[tokio::test]
async fn readyz_behind_anonymous_auth_false_needs_the_node_identity() {
    init_logs();
    let pki = pki();
    let (sup, _) = fake_rke2(&pki, pki.ca_pem.clone(), 200).await;
    // Like RKE2's kube-apiserver (--anonymous-auth=false): 401 unless a client certificate
    // issued by the client CA was presented.
    let api = serve(
        handler(|path, _, authed| match (path, authed) {
            ("/readyz", true) => (200, b"ok".to_vec()),
            _ => (401, b"Unauthorized".to_vec()),
        }),
        Some(pki.acceptor.clone()),
    )
    .await;
    let anonymous = prober_for(sup.addr.port(), api.addr.port());
    assert!(!anonymous.has_client_identity());
    assert!(anonymous.supervisor_ping(LOCALHOST).await);
    assert!(!anonymous.api_readyz(LOCALHOST).await);
    assert!(!anonymous.server_ready(LOCALHOST).await);

    // The kubelet client identity as RKE2 lays it out under the node's root.
    let root = tempfile::tempdir().unwrap();
    let agent_dir = root.path().join("var/lib/rancher/rke2/agent");
    fs::create_dir_all(&agent_dir).unwrap();
    fs::write(agent_dir.join("client-kubelet.crt"), &pki.client_cert_pem).unwrap();
    fs::write(agent_dir.join("client-kubelet.key"), &pki.client_key_pem).unwrap();
    let identity = ClientIdentity::rke2_node(root.path()).unwrap();
    assert!(!format!("{identity:?}").contains("PRIVATE KEY"));

    let authed = anonymous.with_client_identity(&identity).unwrap();
    assert!(authed.has_client_identity());
    assert!(authed.api_readyz(LOCALHOST).await);
    assert!(authed.server_ready(LOCALHOST).await);
}

#[test]
fn missing_node_identity_names_the_file() {
    let root = tempfile::tempdir().unwrap();
    let err = format!("{:#}", ClientIdentity::rke2_node(root.path()).unwrap_err());
    assert!(err.contains("client-kubelet.crt"), "{err}");
    let err = format!(
        "{:#}",
        ClientIdentity::from_pem(b"not pem", b"not pem either").unwrap_err()
    );
    assert!(err.contains("not valid PEM"), "{err}");
}
