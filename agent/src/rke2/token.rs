//! The RKE2 join token: generating the shared secret, parsing and formatting both token forms, and
//! hashing the cluster CA so a joiner can pin it before it sends the secret anywhere.
//!
//! RKE2 (like k3s) accepts two forms:
//! - short: just the secret (`my-shared-secret`). A joiner using it cannot tell the real cluster
//!   from anything else answering on the registration address.
//! - full: `K10<ca-hash>::<user>:<secret>`, where `<ca-hash>` is the sha256 (hex) of the CA bundle
//!   served at `https://<server>:9345/cacerts` and `<user>` is `server` for the server token (what
//!   RKE2 writes to `/var/lib/rancher/rke2/server/token`) or `node` for the agent token. A joiner
//!   fetches `/cacerts` without verification, compares its hash with the token, then requires the
//!   server's TLS certificate to chain to that CA before sending credentials.
//!
//! k3s also accepts kubeadm-style bootstrap tokens (`<6 chars>.<16 chars>`) in place of
//! `<user>:<secret>`; those parse here too so that an operator-supplied token is never rejected.
//!
//! Secrets are wrapped in [`Secret`], whose `Debug` redacts, so a stray `?token` in a log line
//! cannot leak one. Reading the secret out is always an explicit `expose` call.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The fixed prefix that marks a full token.
pub const TOKEN_PREFIX: &str = "K10";
/// Length of a sha256 digest in hex.
pub const CA_HASH_HEX_LEN: usize = 64;
/// The user RKE2 puts in the server token; used when a short secret is turned into a full token.
pub const SERVER_TOKEN_USER: &str = "server";
/// The user RKE2 puts in the agent (node) token.
pub const NODE_TOKEN_USER: &str = "node";
pub use crate::secret::{generate_secret, Secret, GENERATED_SECRET_BYTES};

/// The CA hash a full token carries: sha256 (lowercase hex) of what k3s hashes of the bundle
/// served at `/cacerts`.
///
/// For RKE2's own self-signed cluster CA (a single PEM certificate) that is the bundle's bytes;
/// for a custom CA whose bundle holds several certificates, k3s hashes the DER of the root the
/// first certificate chains to (see [`super::ca_bundle`]), and so does this.
pub fn ca_hash(ca_pem_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(super::ca_bundle::hashed_bytes(ca_pem_bytes)))
}

/// Validates and normalizes (lowercase) a CA hash.
pub fn normalize_ca_hash(hash: &str) -> Result<String> {
    let hash = hash.trim();
    if hash.len() != CA_HASH_HEX_LEN || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "CA hash must be {CA_HASH_HEX_LEN} hex characters (sha256), got {} characters",
            hash.len()
        );
    }
    Ok(hash.to_ascii_lowercase())
}

/// A join token in either form. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_hash: Option<String>,
    /// `None` for a short token and for a bootstrap-token credential.
    user: Option<String>,
    secret: Secret,
}

impl JoinToken {
    /// A short token: only the secret.
    pub fn from_secret(secret: Secret) -> Self {
        Self {
            ca_hash: None,
            user: None,
            secret,
        }
    }

    /// The full server token for `secret` and a cluster whose `/cacerts` hashes to `ca_hash`:
    /// `K10<ca_hash>::server:<secret>`, what RKE2 itself writes to its server token file.
    pub fn full_server(secret: Secret, ca_hash: &str) -> Result<Self> {
        Ok(Self {
            ca_hash: Some(normalize_ca_hash(ca_hash)?),
            user: Some(SERVER_TOKEN_USER.to_string()),
            secret,
        })
    }

    /// This token pinned to a CA: a short token becomes a full `server` token; a full token gets
    /// its hash replaced.
    pub fn with_ca_hash(self, ca_hash: &str) -> Result<Self> {
        Ok(Self {
            ca_hash: Some(normalize_ca_hash(ca_hash)?),
            user: self
                .user
                .or_else(|| (!is_bootstrap_token(self.secret.expose())).then(server_user)),
            secret: self.secret,
        })
    }

    /// Parses either form. Surrounding whitespace (a trailing newline from a file) is ignored.
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            bail!("token must not be empty");
        }
        let Some(rest) = raw.strip_prefix(TOKEN_PREFIX) else {
            return Ok(Self::from_secret(Secret::new(raw)?));
        };
        let Some((hash, credentials)) = rest.split_once("::") else {
            // RKE2 rejects this too: a K10 prefix announces the full form.
            bail!(
                "token starts with {TOKEN_PREFIX} but is not of the form \
                 {TOKEN_PREFIX}<ca-hash>::<user>:<secret>"
            );
        };
        let ca_hash = if hash.is_empty() {
            None
        } else {
            Some(normalize_ca_hash(hash).context("invalid CA hash in full token")?)
        };
        if is_bootstrap_token(credentials) {
            return Ok(Self {
                ca_hash,
                user: None,
                secret: Secret::new(credentials)?,
            });
        }
        let Some((user, secret)) = credentials.split_once(':') else {
            bail!("full token credentials must be <user>:<secret> after the `::`");
        };
        if secret.is_empty() {
            bail!("full token has an empty secret after `{user}:`");
        }
        Ok(Self {
            ca_hash,
            user: Some(user.to_string()),
            secret: Secret::new(secret).context("invalid secret in full token")?,
        })
    }

    /// The pinned CA hash, if this is a full token with one.
    pub fn ca_hash(&self) -> Option<&str> {
        self.ca_hash.as_deref()
    }

    /// The user part of a full token (`server`, `node`, ...).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The bare secret (for a short token, the whole token).
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Whether a joiner using this token can verify the cluster CA.
    pub fn is_pinned(&self) -> bool {
        self.ca_hash.is_some()
    }

    /// The token as RKE2 reads it (`token:` in config.yaml). Contains the secret.
    pub fn expose(&self) -> String {
        match (&self.ca_hash, &self.user) {
            (None, None) => self.secret.expose().to_string(),
            (hash, user) => {
                let hash = hash.as_deref().unwrap_or("");
                match user {
                    Some(user) => format!("{TOKEN_PREFIX}{hash}::{user}:{}", self.secret.expose()),
                    None => format!("{TOKEN_PREFIX}{hash}::{}", self.secret.expose()),
                }
            }
        }
    }
}

fn server_user() -> String {
    SERVER_TOKEN_USER.to_string()
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("user", &self.user)
            .field("secret", &self.secret)
            .finish()
    }
}

impl FromStr for JoinToken {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// kubeadm bootstrap token shape: `[a-z0-9]{6}.[a-z0-9]{16}`.
fn is_bootstrap_token(s: &str) -> bool {
    let valid = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(s.split_once('.'), Some((id, secret)) if valid(id, 6) && valid(secret, 16))
}

/// Reads a token file (the `token-file` setting): contents trimmed, must be non-empty, and must
/// parse as a token. Errors name the file. A file readable by group or others is accepted (the
/// operator may have reasons) but logged, because anyone who can read it can join the cluster.
pub fn read_token_file(path: &Path) -> Result<JoinToken> {
    let metadata = fs::metadata(path).with_context(|| match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("token file {} does not exist", path.display())
        }
        _ => format!("token file {} is not accessible", path.display()),
    })?;
    if !metadata.is_file() {
        bail!("token file {} is not a regular file", path.display());
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:o}"),
            "token file is readable by group or others; anyone who can read it can join the cluster"
        );
    }
    let raw = fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    if raw.trim().is_empty() {
        bail!("token file {} is empty", path.display());
    }
    JoinToken::parse(&raw).with_context(|| format!("parsing token file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HASH: &str = "2b1e0b6c9a7f4d3e8c5a1f0e9d8c7b6a5f4e3d2c1b0a99887766554433221100";

    #[test]
    fn generated_secrets_are_long_hex_and_distinct() {
        let a = generate_secret();
        let b = generate_secret();
        assert_eq!(a.expose().len(), 2 * GENERATED_SECRET_BYTES);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        // Round-trips as a short token.
        let t = JoinToken::parse(a.expose()).unwrap();
        assert_eq!(t.secret(), &a);
        assert!(!t.is_pinned());
    }

    #[test]
    fn short_token_round_trips() {
        let t = JoinToken::parse("my-shared-secret\n").unwrap();
        assert_eq!(t.ca_hash(), None);
        assert_eq!(t.user(), None);
        assert_eq!(t.secret().expose(), "my-shared-secret");
        assert_eq!(t.expose(), "my-shared-secret");
    }

    #[test]
    fn full_server_token_round_trips() {
        let raw = format!("K10{HASH}::server:my-shared-secret");
        let t = JoinToken::parse(&raw).unwrap();
        assert_eq!(t.ca_hash(), Some(HASH));
        assert_eq!(t.user(), Some("server"));
        assert_eq!(t.secret().expose(), "my-shared-secret");
        assert_eq!(t.expose(), raw);
    }

    #[test]
    fn node_and_other_users_parse() {
        let t = JoinToken::parse(&format!("K10{HASH}::node:abc")).unwrap();
        assert_eq!(t.user(), Some("node"));
        let t = JoinToken::parse(&format!("K10{HASH}::someone:a:b")).unwrap();
        assert_eq!(t.user(), Some("someone"));
        assert_eq!(t.secret().expose(), "a:b");
    }

    #[test]
    fn empty_hash_and_bootstrap_forms_parse() {
        let t = JoinToken::parse("K10::server:s3cret").unwrap();
        assert_eq!(t.ca_hash(), None);
        assert_eq!(t.user(), Some("server"));
        assert_eq!(t.expose(), "K10::server:s3cret");

        let t = JoinToken::parse(&format!("K10{HASH}::abcdef.0123456789abcdef")).unwrap();
        assert_eq!(t.user(), None);
        assert_eq!(t.secret().expose(), "abcdef.0123456789abcdef");
        assert_eq!(t.expose(), format!("K10{HASH}::abcdef.0123456789abcdef"));
    }

    #[test]
    fn uppercase_hash_is_normalized() {
        let t = JoinToken::parse(&format!("K10{}::server:x", HASH.to_uppercase())).unwrap();
        assert_eq!(t.ca_hash(), Some(HASH));
    }

    #[test]
    fn malformed_full_tokens_are_rejected() {
        for bad in [
            "",
            "   ",
            "K10abc",
            "K10abc::server:x",
            &format!("K10{HASH}::server:"),
            &format!("K10{HASH}::justasecret"),
            &format!("K10{}::server:x", "g".repeat(64)),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn short_token_is_pinned_as_server_token() {
        let t = JoinToken::parse("my-shared-secret")
            .unwrap()
            .with_ca_hash(HASH)
            .unwrap();
        assert_eq!(t.expose(), format!("K10{HASH}::server:my-shared-secret"));
        let direct =
            JoinToken::full_server(Secret::new("my-shared-secret").unwrap(), HASH).unwrap();
        assert_eq!(t, direct);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = JoinToken::parse(&format!("K10{HASH}::server:topsecret-value")).unwrap();
        let shown = format!("{t:?} {:?}", t.secret());
        assert!(!shown.contains("topsecret-value"), "{shown}");
        assert!(
            shown.contains(HASH),
            "the hash is public and useful: {shown}"
        );
    }

    #[test]
    fn ca_hash_is_sha256_of_exact_bytes() {
        // sha256("abc"), a published test vector.
        assert_eq!(
            ca_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(ca_hash(b"abc\n"), ca_hash(b"abc"));
    }

    #[test]
    fn token_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-token");
        let err = format!("{:#}", read_token_file(&missing).unwrap_err());
        assert!(
            err.contains("missing-token") && err.contains("does not exist"),
            "{err}"
        );

        let empty = dir.path().join("empty-token");
        fs::write(&empty, "  \n").unwrap();
        let err = format!("{:#}", read_token_file(&empty).unwrap_err());
        assert!(
            err.contains("empty-token") && err.contains("empty"),
            "{err}"
        );

        let err = format!("{:#}", read_token_file(dir.path()).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");

        let good = dir.path().join("token");
        fs::write(&good, "my-shared-secret\n").unwrap();
        fs::set_permissions(&good, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_token_file(&good).unwrap().secret().expose(),
            "my-shared-secret"
        );
    }

    #[test]
    fn unreadable_token_file_is_a_clear_error() {
        if nix::unistd::geteuid().is_root() {
            return; // root reads anything
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked-token");
        fs::write(&path, "x").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        let err = format!("{:#}", read_token_file(&path).unwrap_err());
        assert!(err.contains("locked-token"), "{err}");
    }

    proptest! {
        #[test]
        fn full_tokens_round_trip(secret in "[!-~]{1,40}", user in "[a-z]{1,8}") {
            let raw = format!("K10{HASH}::{user}:{secret}");
            let t = JoinToken::parse(&raw).unwrap();
            prop_assert_eq!(t.expose(), raw);
        }

        #[test]
        fn short_tokens_round_trip(secret in "[!-~]{1,40}") {
            prop_assume!(!secret.starts_with(TOKEN_PREFIX));
            let t = JoinToken::parse(&secret).unwrap();
            prop_assert_eq!(t.expose(), secret);
        }
    }
}
