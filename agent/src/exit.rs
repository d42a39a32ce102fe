//! One exit-code contract for both binaries (`rke2-bootstrap` and `rke2-lb-sidecar`), and the one
//! place that prints why a program stops:
//!
//! - 0: stopped as asked (or our reader went away: `members | head`);
//! - 1: a runtime failure; restarting may help;
//! - 2: bad configuration, key file or command line; restarting will not help until an operator
//!   fixes it.
//!
//! The units keep restarting either way (a host nobody logs into must never give up: a fixed
//! configuration may arrive by PXE or cloud-init later); the code tells an operator and a
//! monitoring check which of the two it is. Every path that stops a binary goes through
//! [`config_error`] or [`outcome`], never a literal number.

use std::fmt::Display;
use std::process::ExitCode;

use crate::gossip::keyring::KeyringError;
use crate::process::error_line_prefix;

/// Restarting will not help: the configuration, a key file or the command line must be fixed.
pub const CONFIGURATION: u8 = 2;
/// A runtime failure.
pub const RUNTIME: u8 = 1;

/// A configuration problem found before anything started: one line on stderr, exit 2.
pub fn config_error(program: &str, err: impl Display) -> ExitCode {
    eprintln!(
        "{}{program}: configuration error: {err}",
        error_line_prefix()
    );
    ExitCode::from(CONFIGURATION)
}

/// How a run ended: the error chain printed once on stderr, and its exit code.
pub fn outcome(program: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if is_configuration(&err) => config_error(program, format!("{err:#}")),
        Err(err) => {
            eprintln!("{}{program}: error: {err:#}", error_line_prefix());
            ExitCode::from(RUNTIME)
        }
    }
}

/// Whether the error is only that our reader went away (`members | head`): not a failure, and
/// nothing to say about it (ripgrep and the like exit 0 quietly too).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Errors found at run time that are still the operator's configuration: a key file that does
/// not load (read when gossip starts, and again on every reload).
fn is_configuration(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| cause.downcast_ref::<KeyringError>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_error_anywhere_in_the_chain_is_configuration() {
        let key = anyhow::Error::new(KeyringError::Empty {
            path: "/etc/rke2-bootstrap/gossip.key".into(),
        })
        .context("joining gossip");
        assert!(is_configuration(&key));
        assert!(!is_configuration(&anyhow::anyhow!("etcd is down")));
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("printing members");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&key));
    }
}
