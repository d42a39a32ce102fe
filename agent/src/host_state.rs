//! What the agent persists under its state dir, so that a crash or reboot resumes where it left
//! off and never redoes a finished step (above all: never initializes a second cluster).
//!
//! One JSON document, written atomically (0600, fsync file and directory) before anything derived
//! from it is published in gossip. A vote that was published was persisted first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::bringup::progress::{Plan, Progress};
use crate::election::ElectionState;
use crate::fsutil::{self, SECRET_DIR_MODE, SECRET_FILE_MODE};
use crate::gossip::schema::Role;
use crate::rke2::installer::{InstallType, Installed};
use crate::secret::Secret;

const STATE_FILE: &str = "state.json";
/// Marker for the service unit: this host is part of a cluster (see packaging).
const JOINED_MARKER: &str = "joined";
const TOKEN_FILE: &str = "token";

/// The current format of the state file.
pub const STATE_VERSION: u32 = 2;

/// The persisted progress of this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// Format version, for upgrades of this file.
    pub version: u32,
    pub election: ElectionState,
    /// Where the bring-up stands; the role this host plays is its plan's.
    pub progress: Progress,
    /// The RKE2 installer ran to the end on this host (a candidate installs while still electing).
    pub installed: bool,
    /// The type the installer last ran for (`None` with `installed` in a state written before
    /// types were recorded). The rpm packages ship one unit each, so a host that settles on
    /// another role than it installed for may need the installer again.
    #[serde(default)]
    pub installed_type: Option<InstallType>,
    /// The cluster identity (CA hash) this host belongs to, once known.
    pub ca_hash: Option<String>,
}

impl Default for PersistedState {
    fn default() -> Self {
        PersistedState {
            version: STATE_VERSION,
            election: ElectionState::default(),
            progress: Progress::Electing,
            installed: false,
            installed_type: None,
            ca_hash: None,
        }
    }
}

impl PersistedState {
    /// The role this host plays, once the election settled it.
    pub fn role(&self) -> Option<Role> {
        self.progress.role()
    }

    /// Reads any format this agent ever wrote.
    fn parse(bytes: &[u8]) -> Result<PersistedState> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(default)]
            version: u32,
        }
        let Version { version } = serde_json::from_slice(bytes)?;
        match version {
            STATE_VERSION => Ok(serde_json::from_slice(bytes)?),
            0 | 1 => Ok(serde_json::from_slice::<StateV1>(bytes)?.upgrade()),
            newer => anyhow::bail!(
                "written by a newer agent (format {newer}, this agent reads up to {STATE_VERSION})"
            ),
        }
    }
}

/// The first format: the bring-up as flags beside an optional role.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateV1 {
    #[allow(dead_code)]
    version: u32,
    election: ElectionState,
    role: Option<Role>,
    config_written: bool,
    installed: bool,
    service_started: bool,
    joined: bool,
    ca_hash: Option<String>,
}

impl StateV1 {
    /// The flags were set in order, so the furthest one set is the step. A settled role without
    /// a won election was a decision to join.
    fn upgrade(self) -> PersistedState {
        let progress = match self.role {
            None => Progress::Electing,
            Some(role) => {
                let plan = if self.election.initializer_of.is_some() {
                    Plan::Initialize
                } else {
                    Plan::join_as(role)
                };
                if self.joined {
                    Progress::Joined(plan)
                } else if self.service_started {
                    Progress::Started(plan)
                } else if self.config_written {
                    Progress::Configured(plan)
                } else {
                    Progress::Settled(plan)
                }
            }
        };
        PersistedState {
            version: STATE_VERSION,
            election: self.election,
            progress,
            installed: self.installed,
            installed_type: None,
            ca_hash: self.ca_hash,
        }
    }
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
            Ok(bytes) => PersistedState::parse(&bytes).with_context(|| {
                format!(
                    "state file {} is corrupt; refusing to start over (move it away only if this host never voted)",
                    path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(err) => Err(err).with_context(|| format!("reading state file {}", path.display())),
        }
    }

    /// Persists durably. Callers publish nothing derived from `state` before this returns `Ok`.
    pub fn save(&self, state: &PersistedState) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(state).context("encoding state")?;
        fsutil::write_file_atomic(&path, &json, SECRET_FILE_MODE)
            .with_context(|| format!("persisting state to {}", path.display()))?;
        if state.progress.is_joined() {
            let marker = self.dir.join(JOINED_MARKER);
            if !marker.exists() {
                fsutil::write_file_atomic(&marker, b"", 0o644)?;
            }
        }
        Ok(())
    }

    /// The generated cluster token, if this host generated or received one.
    pub fn load_token(&self) -> Result<Option<Secret>> {
        let path = self.dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(token) if token.trim().is_empty() => Ok(None),
            Ok(token) => Secret::new(token.trim())
                .map(Some)
                .with_context(|| format!("token file {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading token {}", path.display())),
        }
    }

    pub fn save_token(&self, token: &Secret) -> Result<()> {
        fsutil::write_file_atomic(
            &self.dir.join(TOKEN_FILE),
            token.expose().as_bytes(),
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
        assert_eq!(dir.load().unwrap(), PersistedState::default());
        let state = PersistedState {
            installed: true,
            progress: Progress::Joined(Plan::JoinAsServer),
            ..Default::default()
        };
        dir.save(&state).unwrap();
        assert_eq!(dir.load().unwrap(), state);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join("state.json")), 0o600);
        assert!(dir.path().join("joined").exists());
        dir.save_token(&Secret::new("s3cret").unwrap()).unwrap();
        assert_eq!(mode(&dir.path().join("token")), 0o600);
        assert_eq!(dir.load_token().unwrap().unwrap().expose(), "s3cret");
    }

    #[test]
    fn a_state_from_before_install_types_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let mut old = serde_json::to_value(PersistedState {
            installed: true,
            progress: Progress::Settled(Plan::JoinAsAgent),
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

    #[test]
    fn the_first_format_is_upgraded_to_the_step_it_had_reached() {
        let v1 = |role: &str, flags: [bool; 3], initializer: bool| {
            format!(
                r#"{{"version":1,"election":{{"round":0,"vote":null,"initializer_of":{init},"abdicated":null}},
                    "role":{role},"config_written":{},"installed":true,"service_started":{},
                    "joined":{},"ca_hash":null}}"#,
                flags[0],
                flags[1],
                flags[2],
                init = if initializer { "0" } else { "null" },
            )
        };
        let cases = [
            (v1("null", [false; 3], false), Progress::Electing),
            (
                v1(r#""agent""#, [false; 3], false),
                Progress::Settled(Plan::JoinAsAgent),
            ),
            (
                v1(r#""server""#, [true, false, false], true),
                Progress::Configured(Plan::Initialize),
            ),
            (
                v1(r#""server""#, [true, true, false], false),
                Progress::Started(Plan::JoinAsServer),
            ),
            (
                v1(r#""server""#, [true, true, true], true),
                Progress::Joined(Plan::Initialize),
            ),
        ];
        for (json, want) in cases {
            let state =
                PersistedState::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e:#}: {json}"));
            assert_eq!(state.progress, want, "{json}");
            assert_eq!(state.installed(), Installed::UnknownType);
            assert_eq!(state.version, STATE_VERSION);
        }
    }

    #[test]
    fn a_newer_format_is_refused_not_guessed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("state.json"), br#"{"version":9}"#).unwrap();
        let err = format!("{:#}", dir.load().unwrap_err());
        assert!(err.contains("newer agent (format 9"), "{err}");
    }
}
