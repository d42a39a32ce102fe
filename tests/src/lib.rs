//! Test harness shared by the end-to-end tests and the benchmark, and the RKE2 stand-in's logic.
//!
//! - [`InstallerServer`]: serves the installer script over HTTP on 127.0.0.1, with fault injection.
//! - [`HostRoot`]: one temp dir per simulated host, with readers for what the agent and the
//!   stand-ins leave there.
//! - [`ChildGuard`]: no process started by a test outlives it.
//! - [`wait_until`] / [`wait_until_async`], [`loopback_ip`] and the test address [`blocks`]: from
//!   the workspace's test kit (`rke2-testkit`), re-exported.
//! - [`netem::GossipRelay`]: delay, jitter and loss on a test's gossip traffic.
//! - [`TcpProxy`]: a TCP forwarder standing for a load balancer (with or without an upstream).
//! - [`standin`]: the stand-in for `rke2 server` / `rke2 agent` (the `rke2-standin` binary).
//! - [`cluster::LbHost`]: the LB host (the real sidecar before real nginx or HAProxy, or rendering
//!   only).
//! - [`demo`]: the `rke2-demo` binary's logic, a whole cluster on this machine for a newcomer.
//!
//! Fixtures (in `fixtures/`): `install.sh` (the installer stand-in) and `fake-systemctl` (the
//! service-manager stand-in); see the comments at the top of each.

pub mod cluster;
pub mod demo;
pub mod history;
pub mod host;
pub mod http;
pub mod installer_server;
pub mod netem;
pub mod process;
pub mod proxy;
pub mod standin;

pub use rke2_testkit::{blocks, wait};

use std::path::{Path, PathBuf};

pub use host::HostRoot;
pub use installer_server::{FailMode, InstallerServer};
pub use process::{kill_standins_under, pid_alive, ChildGuard};
pub use proxy::TcpProxy;
pub use rke2_testkit::{loopback_ip, wait_until, wait_until_async, Ready};

/// Overrides the directory where [`workspace_bin`] looks for binaries.
pub const BIN_DIR_ENV: &str = "RKE2_TEST_BIN_DIR";

/// A file under `tests/fixtures/`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The installer stand-in served in place of get.rke2.io.
pub fn install_script() -> Vec<u8> {
    let path = fixture_path("install.sh");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The `rke2-standin` binary.
pub fn standin_bin() -> PathBuf {
    workspace_bin("rke2-standin")
}

/// A binary of this workspace (`rke2-bootstrap`, `rke2-lb-sidecar`, `rke2-standin`), found next
/// to the running test: tests run from `<target>/<profile>/deps/`, binaries sit in
/// `<target>/<profile>/`. Panics, saying how to build them, when missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    find_workspace_bin(name).unwrap_or_else(|err| panic!("{err}"))
}

/// [`workspace_bin`], with an error that says how to build it instead of a panic.
pub fn find_workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = bin_dir();
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "binary {name} not found in {}: run `cargo build --workspace --bins` first (or set {BIN_DIR_ENV})",
        dir.display()
    );
    Ok(path)
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("locating the running test binary");
    let mut dir = exe
        .parent()
        .expect("the test binary has a parent directory")
        .to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first executable file named `program` in `dirs`, in order, as a shell finds it on PATH.
pub fn find_executable(program: &str, dirs: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    dirs.into_iter()
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// `program` on the current PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    find_executable(program, std::env::split_paths(&std::env::var_os("PATH")?))
}

/// A PATH on which `hidden` programs cannot be found, as on a machine where they are not
/// installed: `dir` is filled with links to every other program of the current PATH (first one
/// wins, as for the shell), and is the whole of the returned PATH.
pub fn path_without(hidden: &[&str], dir: &Path) -> std::io::Result<std::ffi::OsString> {
    std::fs::create_dir_all(dir)?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    for source in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&source) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let link = dir.join(&name);
            if !is_executable(&entry.path())
                || hidden.iter().any(|h| name == *h)
                || link.symlink_metadata().is_ok()
            {
                continue;
            }
            std::os::unix::fs::symlink(entry.path(), &link)?;
        }
    }
    Ok(dir.as_os_str().to_owned())
}
