//! Key rotation in a live cluster: add the new key everywhere, make it primary everywhere, drop
//! the old one, and after each step have every agent and sidecar re-read its key file.
//!
//! A running process re-reads its file on SIGHUP ([`reload_on_sighup`]); a file that does not
//! load leaves the running keys untouched. The outcome goes into the status report
//! ([`KeyringStatus`]), so that [`request_reload`] (`rke2-bootstrap reload-keys`,
//! `rke2-lb-sidecar --reload-keys`, each unit's `ExecReload=`) can send the signal, wait for that
//! reload's outcome and fail when the file did not load. With a plain `kill -HUP`, `systemctl
//! reload` returned before the reload and succeeded whatever it did, so an operator could go on
//! to make a new key primary everywhere while one host had never loaded it, and cut that host
//! off the cluster.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{error, info};

use crate::gossip::keyring::{Keyring, KeyringStatus, SharedKeyring};
use crate::status_socket::{self, StatusReport};

/// How long `reload-keys` waits for the running process: a reload is one file read, so this only
/// runs out when the process is stuck.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Re-reads `path` into `keyring` on every SIGHUP, and records each outcome in `report`. The
/// handler is in place when this returns (SIGHUP's default action ends the process, so a reload
/// right after the start must not arrive before it); the task runs until aborted.
pub fn reload_on_sighup(
    path: PathBuf,
    keyring: SharedKeyring,
    report: Arc<Mutex<StatusReport>>,
) -> Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let hup = signal(SignalKind::hangup()).context("installing the sighup handler")?;
    Ok(tokio::spawn(reload_each(hup, path, keyring, report)))
}

async fn reload_each(
    mut hup: tokio::signal::unix::Signal,
    path: PathBuf,
    keyring: SharedKeyring,
    report: Arc<Mutex<StatusReport>>,
) {
    while hup.recv().await.is_some() {
        let outcome = Keyring::load(&path);
        let Ok(mut report) = report.lock() else {
            return;
        };
        let status = &mut report.keyring;
        status.reloads += 1;
        match outcome {
            Ok(next) => {
                info!(primary = %next.primary_id(), keys = next.key_ids().len(), "gossip keyring reloaded");
                *status = KeyringStatus {
                    reloads: status.reloads,
                    ..KeyringStatus::of(&next)
                };
                keyring.replace(next);
            }
            Err(err) => {
                error!(error = %err, "gossip keyring reload failed; keeping the current keys");
                status.last_error = Some(err.to_string());
            }
        }
    }
}

/// Asks the process serving `socket` to reload its key file and waits up to `timeout` for the
/// outcome: the keys it now uses, or an error saying why the file did not load.
pub fn request_reload(socket: &Path, timeout: Duration) -> Result<KeyringStatus> {
    let before = status_socket::fetch(socket).with_context(|| {
        format!(
            "asking the running process for its keys (status socket {})",
            socket.display()
        )
    })?;
    let pid = i32::try_from(before.pid).ok().filter(|p| *p > 0).context(
        "the running process does not say its pid (an older version): restart it instead",
    )?;
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .with_context(|| format!("sending SIGHUP to pid {pid}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = status_socket::fetch(socket)
            .with_context(|| format!("reading the status socket {}", socket.display()))?;
        if now.keyring.reloads > before.keyring.reloads {
            return match now.keyring.last_error {
                Some(why) => {
                    bail!("the key file did not load, the current keys stay in use: {why}")
                }
                None => Ok(now.keyring),
            };
        }
        if Instant::now() >= deadline {
            bail!("pid {pid} did not reload its keys within {timeout:?}");
        }
    }
}
