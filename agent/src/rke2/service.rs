//! Starting and inspecting the RKE2 systemd units through `systemctl` (or a stand-in command).
//!
//! Exit-code contract (systemctl's, which a stand-in must follow):
//! - `enable_now`, `stop`, `restart`: exit 0 means the request was accepted; any other exit is an
//!   error carrying the code and the end of stderr.
//! - `is_active`: runs `is-active --quiet <unit>`; exit 0 means active, any other exit (3 for
//!   inactive or failed, 4 for an unknown unit) means not active. Only failing to run the command
//!   at all, a timeout, or death by signal is an error.
//!
//! `enable_now` and `restart` pass `--no-block`: RKE2's units have no start timeout and a first
//! server may take minutes to report started, so waiting on systemctl would stall the agent with
//! no information. Whether the node came up is answered by the readiness probes
//! ([`super::probe`]) and [`ServiceManager::is_active`], not by systemctl's exit code.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::child::{run_bounded, Finished, KillScope};

/// Default bound on one systemctl invocation.
pub const DEFAULT_SERVICE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of stderr an error carries.
const STDERR_TAIL_BYTES: usize = 2048;

/// Which RKE2 service a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    Server,
    Agent,
}

impl ServiceKind {
    /// The systemd unit the installer creates for this kind.
    pub fn unit(self) -> &'static str {
        match self {
            ServiceKind::Server => "rke2-server.service",
            ServiceKind::Agent => "rke2-agent.service",
        }
    }
}

/// Runs service-manager commands: `<command...> <verb> <flags> <unit>`.
#[derive(Debug, Clone)]
pub struct ServiceManager {
    /// Program and leading arguments, e.g. `["systemctl"]` or `["systemctl", "--root=/x"]`.
    pub command: Vec<String>,
    /// Bound on each invocation; the process is killed when it is exceeded.
    pub timeout: Duration,
}

impl Default for ServiceManager {
    fn default() -> Self {
        Self {
            command: vec!["systemctl".to_string()],
            timeout: DEFAULT_SERVICE_TIMEOUT,
        }
    }
}

impl ServiceManager {
    /// A manager running `command` (program first) with the default timeout.
    pub fn new(command: Vec<String>) -> Self {
        Self {
            command,
            ..Self::default()
        }
    }

    /// `systemctl --no-block enable --now <unit>`: enabled for the next boot and started now.
    pub async fn enable_now(&self, unit: &str) -> Result<()> {
        self.expect_success(&["--no-block", "enable", "--now", unit])
            .await
    }

    /// `systemctl is-active --quiet <unit>`: `Ok(true)` on exit 0, `Ok(false)` on any other exit.
    pub async fn is_active(&self, unit: &str) -> Result<bool> {
        let output = self.run(&["is-active", "--quiet", unit]).await?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(code) => {
                tracing::debug!(unit, code, "unit not active");
                Ok(false)
            }
            None => bail!(
                "`{}` was killed by a signal",
                self.describe(&["is-active", "--quiet", unit])
            ),
        }
    }

    /// `systemctl disable --now <unit>` (blocking: the caller starts a unit that must not run
    /// beside it, now or after a reboot).
    pub async fn disable_now(&self, unit: &str) -> Result<()> {
        self.expect_success(&["disable", "--now", unit]).await
    }

    /// `systemctl stop <unit>` (blocking: stopping is quick and the caller needs it done).
    pub async fn stop(&self, unit: &str) -> Result<()> {
        self.expect_success(&["stop", unit]).await
    }

    /// `systemctl --no-block restart <unit>`.
    pub async fn restart(&self, unit: &str) -> Result<()> {
        self.expect_success(&["--no-block", "restart", unit]).await
    }

    async fn expect_success(&self, args: &[&str]) -> Result<()> {
        let output = self.run(args).await?;
        if output.status.success() {
            tracing::info!(command = %self.describe(args), "service command succeeded");
            return Ok(());
        }
        let stderr = output.stderr.trim();
        let start = stderr
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| stderr.len() - i <= STDERR_TAIL_BYTES)
            .unwrap_or(stderr.len());
        let how = match output.status.code() {
            Some(code) => format!("exited with code {code}"),
            None => "was killed by a signal".to_string(),
        };
        bail!(
            "`{}` {how}: {}",
            self.describe(args),
            if stderr.is_empty() {
                "(no stderr)"
            } else {
                &stderr[start..]
            }
        )
    }

    async fn run(&self, args: &[&str]) -> Result<Finished> {
        let (program, leading) = self
            .command
            .split_first()
            .context("service manager command is empty")?;
        let argv: Vec<&str> = leading
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        tracing::debug!(command = %self.describe(args), "running service command");
        // The process alone on a timeout: what systemctl started belongs to systemd.
        run_bounded(program, &argv, self.timeout, KillScope::Process).await
    }

    fn describe(&self, args: &[&str]) -> String {
        self.command
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_match_the_installer() {
        assert_eq!(ServiceKind::Server.unit(), "rke2-server.service");
        assert_eq!(ServiceKind::Agent.unit(), "rke2-agent.service");
    }

    #[tokio::test]
    async fn empty_command_is_an_error() {
        let m = ServiceManager::new(Vec::new());
        assert!(m.is_active("x").await.is_err());
    }
}
