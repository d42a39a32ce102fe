//! One backend server of the LB, and the rules a server must pass to be one.
//!
//! Names and addresses come from the network and end up in an LB config file: a newline or `;`
//! in a name would let a peer write its own directives into the LB. The view builds upstreams
//! only through [`Upstream::new`], and the renderer checks every upstream it is handed again
//! (the fields are public, so a caller can build one by hand), both with the rules below.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Longest accepted name: a fully qualified host name.
const MAX_NAME_LEN: usize = 253;

/// One backend server of the LB. Ordered by name, then address, so every sidecar that sees the
/// same membership produces the same list in the same order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Upstream {
    pub name: String,
    pub addr: IpAddr,
}

impl Upstream {
    /// An upstream whose name and address pass [`validate_name`] and [`validate_addr`] (the
    /// name is checked first).
    pub fn new(name: impl Into<String>, addr: IpAddr) -> Result<Upstream, UpstreamError> {
        let upstream = Upstream {
            name: name.into(),
            addr,
        };
        upstream.validate()?;
        Ok(upstream)
    }

    /// Checks an upstream however it was built.
    pub fn validate(&self) -> Result<(), UpstreamError> {
        validate_name(&self.name)?;
        validate_addr(self.addr)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// Why a name or an address cannot be an upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("server name {name:?} is not allowed: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("address {addr} is not allowed: {reason}")]
    InvalidAddr { addr: IpAddr, reason: &'static str },
}

/// Accepts host-name-like names: ASCII letters, digits, `.`, `_`, `-`, starting with a letter or
/// digit. That keeps them inert in an nginx comment and valid as a HAProxy server name.
pub fn validate_name(name: &str) -> Result<(), UpstreamError> {
    let bad = |reason| {
        Err(UpstreamError::InvalidName {
            // Only a prefix: the error is logged, and the name may be anything a peer sent.
            name: name.chars().take(64).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 253 bytes");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Upstream addresses must be unicast host addresses.
pub fn validate_addr(addr: IpAddr) -> Result<(), UpstreamError> {
    let bad = |reason| Err(UpstreamError::InvalidAddr { addr, reason });
    if addr.is_unspecified() {
        return bad("unspecified");
    }
    if addr.is_multicast() {
        return bad("multicast");
    }
    if let IpAddr::V4(v4) = addr {
        if v4.is_broadcast() {
            return bad("broadcast");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_attempts_are_rejected() {
        for name in [
            "a\nb", "a;b", "a{", "}", "a#b", "a\"b", "a'b", "a b", "", "-a", ".a", "a\tb", "ä",
        ] {
            assert!(validate_name(name).is_err(), "{name:?}");
            assert!(Upstream::new(name, "10.0.0.1".parse().unwrap()).is_err());
        }
        assert!(validate_name(&"a".repeat(254)).is_err());
        for ok in ["ha-m1", "node_1.example.com", "1node"] {
            validate_name(ok).unwrap();
        }
    }

    #[test]
    fn only_unicast_host_addresses() {
        for addr in ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1"] {
            assert!(validate_addr(addr.parse().unwrap()).is_err(), "{addr}");
        }
        let up = Upstream::new("m1", "fd00::1".parse().unwrap()).unwrap();
        assert_eq!(up.to_string(), "m1@fd00::1");
    }

    #[test]
    fn the_name_is_checked_before_the_address() {
        let err = Upstream::new("a;b", "0.0.0.0".parse().unwrap()).unwrap_err();
        assert!(matches!(err, UpstreamError::InvalidName { .. }), "{err}");
    }
}
