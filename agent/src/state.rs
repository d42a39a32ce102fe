//! What the agent persists under its state dir, so that a crash or reboot resumes where it left
//! off and never redoes a finished step (above all: never initializes a second cluster).
//!
//! One JSON document, written atomically (0600, fsync file and directory) before anything derived
//! from it is published in gossip. A vote that was published was persisted first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::election::ElectionState;
use crate::fsutil::{self, SECRET_DIR_MODE, SECRET_FILE_MODE};
use crate::gossip::schema::Role;
use crate::rke2::installer::{InstallType, Installed};

const STATE_FILE: &str = "state.json";
/// Marker for the service unit: this host is part of a cluster (see packaging).
const JOINED_MARKER: &str = "joined";
const TOKEN_FILE: &str = "token";

/// The persisted progress of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// Format version, for upgrades of this file.
    pub version: u32,
    pub election: ElectionState,
    /// `server` or `agent` once decided (an `auto` host decides once).
    pub role: Option<Role>,
    /// Bring-up checkpoints, in order.
    pub config_written: bool,
    pub installed: bool,
    /// The type the installer last ran for (`None` with `installed` in a state written before
    /// types were recorded). The rpm packages ship one unit each, so a host that settles on
    /// another role than it installed for may need the installer again.
    #[serde(default)]
    pub installed_type: Option<InstallType>,
    pub service_started: bool,
    /// RKE2 passed its readiness probes at least once: this host is part of the cluster.
    pub joined: bool,
    /// The cluster identity (CA hash) this host belongs to, once known.
    pub ca_hash: Option<String>,
}

impl PersistedState {
    /// What the installer step has done, for [`crate::rke2::installer::installer_needed`].
    pub fn installed(&self) -> Installed {
        match (self.installed, self.installed_type) {
            (false, _) => Installed::Nothing,
            (true, Some(t)) => Installed::Type(t),
            (true, None) => Installed::UnknownType,
        }
    }
}

/// The state directory and its files.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating with 0700) the state directory.
    pub fn open(dir: &Path) -> Result<StateDir> {
        fsutil::create_dir_with_mode(dir, SECRET_DIR_MODE)
            .with_context(|| format!("preparing state dir {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads the persisted state; a missing file is a fresh host. A corrupt file is an error, not
    /// a fresh start: starting over could mean voting twice.
    pub fn load(&self) -> Result<PersistedState> {
        let path = self.dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "state file {} is corrupt; refusing to start over (move it away only if this host never voted)",
                    path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState { version: 1, ..Default::default() }),
            Err(err) => Err(err).with_context(|| format!("reading state file {}", path.display())),
        }
    }

    /// Persists durably. Callers publish nothing derived from `state` before this returns `Ok`.
    pub fn save(&self, state: &PersistedState) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(state).context("encoding state")?;
        fsutil::write_file_atomic(&path, &json, SECRET_FILE_MODE)
            .with_context(|| format!("persisting state to {}", path.display()))?;
        if state.joined {
            let marker = self.dir.join(JOINED_MARKER);
            if !marker.exists() {
                fsutil::write_file_atomic(&marker, b"", 0o644)?;
            }
        }
        Ok(())
    }

    /// The generated cluster token, if this host generated or received one.
    pub fn load_token(&self) -> Result<Option<String>> {
        let path = self.dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(token) => Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading token {}", path.display())),
        }
    }

    pub fn save_token(&self, token: &str) -> Result<()> {
        fsutil::write_file_atomic(
            &self.dir.join(TOKEN_FILE),
            token.as_bytes(),
            SECRET_FILE_MODE,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn roundtrip_and_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        assert_eq!(dir.load().unwrap().version, 1);
        let state = PersistedState {
            version: 1,
            installed: true,
            joined: true,
            role: Some(Role::Server),
            ..Default::default()
        };
        dir.save(&state).unwrap();
        assert_eq!(dir.load().unwrap(), state);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join("state.json")), 0o600);
        assert!(dir.path().join("joined").exists());
        dir.save_token("s3cret").unwrap();
        assert_eq!(mode(&dir.path().join("token")), 0o600);
        assert_eq!(dir.load_token().unwrap().as_deref(), Some("s3cret"));
    }

    #[test]
    fn a_state_from_before_install_types_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let mut old = serde_json::to_value(PersistedState {
            version: 1,
            installed: true,
            role: Some(Role::Agent),
            ..Default::default()
        })
        .unwrap();
        old.as_object_mut().unwrap().remove("installed_type");
        std::fs::write(tmp.path().join("state.json"), old.to_string()).unwrap();
        let state = dir.load().unwrap();
        assert_eq!(state.installed(), Installed::UnknownType);
        let state = PersistedState {
            installed_type: Some(InstallType::Server),
            ..state
        };
        dir.save(&state).unwrap();
        assert_eq!(
            dir.load().unwrap().installed(),
            Installed::Type(InstallType::Server)
        );
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_fresh_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("state.json"), b"{not json").unwrap();
        let err = format!("{:#}", dir.load().unwrap_err());
        assert!(err.contains("corrupt"), "{err}");
    }
}
