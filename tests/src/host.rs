//! [`HostRoot`]: the file-system root of one simulated host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rke2_bootstrap::fsutil;

use crate::process::{canonical, kill_standins_under, pid_alive, processes_under};
use crate::standin::{ca_hash, Rke2Paths, Token};

/// Set to keep host roots after the test, for debugging (their paths are printed).
pub const KEEP_ROOTS_ENV: &str = "RKE2_TEST_KEEP_ROOTS";

/// A temp dir standing for one host's `/`. The agent runs with it as its root; the installer
/// installs under `<root>/usr/local`; the fake service manager keeps pid files in `<root>/run` and
/// logs in `<root>/var/log`. On drop, every stand-in started under it is killed and the dir is
/// removed (kept if `RKE2_TEST_KEEP_ROOTS` is set).
pub struct HostRoot {
    name: String,
    path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl HostRoot {
    /// A new empty root; `name` (a host name) only appears in the directory name and messages.
    pub fn new(name: &str) -> Result<HostRoot> {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("rke2-host-{safe}-"))
            .tempdir()
            .context("creating a host root")?;
        // Canonical, so that it matches what the scripts see after resolving symlinks.
        let path = canonical(dir.path());
        Ok(HostRoot {
            name: name.to_string(),
            path,
            dir: Some(dir),
        })
    }

    /// A root at `path` (created if missing) that outlives this value: only the stand-ins
    /// started under it are killed on drop.
    pub fn at(name: &str, path: &Path) -> Result<HostRoot> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(HostRoot {
            name: name.to_string(),
            path: canonical(path),
            dir: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A host path (`/etc/rancher/rke2`) under this root.
    pub fn join(&self, host_path: impl AsRef<Path>) -> PathBuf {
        fsutil::under_root(&self.path, host_path)
    }

    /// Where RKE2's files live under this root.
    pub fn rke2(&self) -> Rke2Paths {
        Rke2Paths::new(&self.path)
    }

    /// The `INSTALL_RKE2_TAR_PREFIX` for this host: `<root>/usr/local`.
    pub fn tar_prefix(&self) -> PathBuf {
        self.join("/usr/local")
    }

    /// The argv prefix of the service manager for this host: the fake systemctl with this root and
    /// the given stand-in binary; the agent appends `enable --now rke2-server.service` and the like.
    pub fn service_manager_command(&self, standin: &Path) -> Vec<String> {
        vec![
            crate::fixture_path("fake-systemctl").display().to_string(),
            "--root".into(),
            self.path.display().to_string(),
            "--standin".into(),
            standin.display().to_string(),
        ]
    }

    /// `<root>/etc/rancher/rke2/config.yaml`, parsed, if present.
    pub fn config_yaml(&self) -> Option<serde_yaml_ng::Value> {
        let text = std::fs::read_to_string(self.rke2().config_yaml()).ok()?;
        serde_yaml_ng::from_str(&text).ok()
    }

    /// Writes config.yaml directly (for tests that drive the stand-in without the agent).
    pub fn write_config_yaml(&self, yaml: &str) -> Result<()> {
        let path = self.rke2().config_yaml();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        fsutil::write_file_atomic(&path, yaml.as_bytes(), fsutil::SECRET_FILE_MODE)
    }

    /// One map per installer run, from `<root>/var/log/rke2-install.env`.
    pub fn install_env_records(&self) -> Vec<BTreeMap<String, String>> {
        let Ok(text) = std::fs::read_to_string(self.join("/var/log/rke2-install.env")) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        let mut current = BTreeMap::new();
        for line in text.lines() {
            if line == "---" {
                records.push(std::mem::take(&mut current));
            } else if let Some((k, v)) = line.split_once('=') {
                current.insert(k.to_string(), v.to_string());
            }
        }
        records
    }

    /// `(unix ms, arguments)` per service-manager call, from `<root>/var/log/systemctl.log`.
    pub fn systemctl_log(&self) -> Vec<(u64, String)> {
        let Ok(text) = std::fs::read_to_string(self.join("/var/log/systemctl.log")) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let (ms, args) = line.split_once(' ').unwrap_or((line, ""));
                Some((ms.parse().ok()?, args.to_string()))
            })
            .collect()
    }

    /// Writes systemd-style environment for a unit (`<root>/etc/default/<name>`, `name` like
    /// `rke2-server`), which the fake service manager passes to the stand-in: e.g.
    /// `STANDIN_API_DELAY_MS` for one host only.
    pub fn set_unit_env(&self, name: &str, vars: &[(&str, &str)]) -> Result<()> {
        let path = self.join(format!(
            "/etc/default/{}",
            name.trim_end_matches(".service")
        ));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        fsutil::write_file_atomic(&path, text.as_bytes(), 0o644)
    }

    /// The pid of a unit's running stand-in (`rke2-server.service`), from its pid file.
    pub fn unit_pid(&self, unit: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.join(format!("/run/{}.pid", full_unit(unit))))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        pid_alive(pid).then_some(pid)
    }

    /// The output of a unit's stand-in (`<root>/var/log/<unit>.log`).
    pub fn unit_log(&self, unit: &str) -> String {
        std::fs::read_to_string(self.join(format!("/var/log/{}.log", full_unit(unit))))
            .unwrap_or_default()
    }

    /// `<root>/var/lib/rancher/rke2/server/token`, trimmed.
    pub fn server_token(&self) -> Option<String> {
        std::fs::read_to_string(self.rke2().token())
            .ok()
            .map(|t| t.trim().to_string())
    }

    /// The token's secret part (what a short token would be).
    pub fn server_token_secret(&self) -> Option<String> {
        Token::parse(&self.server_token()?).ok().map(|t| t.secret)
    }

    /// The cluster CA certificate (PEM) this host holds, if it is a server that started.
    pub fn server_ca_pem(&self) -> Option<Vec<u8>> {
        std::fs::read(self.rke2().ca_cert()).ok()
    }

    /// The hash of the cluster CA this server holds: equal across hosts means one cluster.
    pub fn ca_hash(&self) -> Option<String> {
        self.server_ca_pem().map(|pem| ca_hash(&pem))
    }

    /// Whether RKE2's etcd has data (`member/wal`: the host is or was a server member).
    pub fn etcd_dir_exists(&self) -> bool {
        self.rke2().etcd_has_data()
    }

    /// The node's kubelet client identity (written by the stand-in on servers and agents), for
    /// authenticated `/readyz` requests.
    pub fn kubelet_identity(&self) -> Option<crate::http::ClientIdentity> {
        let rke2 = self.rke2();
        crate::http::ClientIdentity::from_files(
            &rke2.kubelet_client_cert(),
            &rke2.kubelet_client_key(),
        )
        .ok()
    }

    /// Whether the agent stand-in joined.
    pub fn agent_joined(&self) -> bool {
        self.rke2().agent_joined().is_file()
    }

    /// Live processes started with `--root <this root>`: stand-ins, service-manager calls in
    /// flight, and an agent if it takes its root that way.
    pub fn processes(&self) -> Vec<i32> {
        processes_under(&self.path)
    }

    /// SIGKILLs every stand-in of this host, like a power cut (pid files stay behind).
    pub fn kill_standins(&self) {
        kill_standins_under(&self.path);
    }
}

fn full_unit(unit: &str) -> String {
    if unit.contains('.') {
        unit.to_string()
    } else {
        format!("{unit}.service")
    }
}

impl Drop for HostRoot {
    fn drop(&mut self) {
        kill_standins_under(&self.path);
        if std::env::var_os(KEEP_ROOTS_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("kept host root of {}: {}", self.name, kept.display());
            }
        }
    }
}
