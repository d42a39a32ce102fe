//! Secrets that travel: the cluster join secret (config.yaml, sealed gossip, the state dir).
//!
//! [`Secret`] is the one type that holds one. Its `Debug` and `Display` redact, it never
//! serializes, and reading it out is an explicit [`Secret::expose`] at the few places it must go
//! (RKE2's config file, the sealed gossip key-value, the 0600 token file), so a stray `?token` in
//! a log line or a derived `Debug` of a type holding one cannot leak it.

use std::fmt;

use anyhow::{bail, Result};
use rand::RngCore;

/// Bytes of randomness in a generated secret (hex encoded: 64 characters).
pub const GENERATED_SECRET_BYTES: usize = 32;

/// A secret string whose `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret. Rejects empty strings and surrounding whitespace, which RKE2 would keep
    /// literally and which are almost always a copy-paste accident.
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        if value.is_empty() {
            bail!("secret must not be empty");
        }
        if value.trim() != value {
            bail!("secret must not start or end with whitespace");
        }
        if value.chars().any(char::is_control) {
            bail!("secret must not contain control characters");
        }
        Ok(Self(value))
    }

    /// The secret itself. Callers decide where it may go (config.yaml, sealed gossip); never a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Compares in time independent of where the first difference is, so equality checks on secrets
/// do not leak a prefix through timing.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

/// A fresh cluster secret: 32 bytes from the operating system's CSPRNG, hex encoded. Hex keeps it
/// safe in YAML, shell and URLs, and it can never start with the `K10` full-token prefix.
pub fn generate_secret() -> Secret {
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret(hex::encode(bytes))
}
