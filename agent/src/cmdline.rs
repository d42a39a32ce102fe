//! Configuration from the kernel command line, for PXE-booted hosts.
//!
//! One network-booted image serves every host of a cluster: what differs per host (its role, a
//! seed list, where to fetch the full config) travels on the kernel command line, which the boot
//! loader (iPXE, GRUB) fills in per host. This module is the pure parser of that line, the text
//! of `/proc/cmdline`; it reads no file and opens no socket.
//!
//! Recognised arguments (everything else on the line belongs to the kernel or init and is ignored):
//!
//! - `rke2_bootstrap.<key>=<value>`: an override of config key `<key>`, one of [`KNOWN_KEYS`].
//!   Keys are kebab-case; underscores are accepted in their place (`cluster_name` is
//!   `cluster-name`), and so is `rke2-bootstrap.` as the prefix, the same way the kernel treats `-`
//!   and `_` in parameter names. List keys ([`LIST_KEYS`], e.g. `seeds`) take a comma-separated
//!   list; the parsed value is normalised to items joined by `,` without spaces.
//! - `rke2_bootstrap.config=<url>` with `rke2_bootstrap.config_sha256=<64 hex digits>`: a config
//!   file to fetch at boot. The digest is mandatory: a config fetched over the network decides
//!   which cluster the host joins, so it must be pinned. The URL must be `https://` unless
//!   `rke2_bootstrap.allow_insecure_config_url=1` is also given (then `http://` is accepted; the
//!   digest still protects the content).
//!
//! Values may be quoted with double quotes (`rke2_bootstrap.node-name="a b"`); the quotes are
//! removed, and whitespace inside them is kept. There are no escapes, as on the kernel's own
//! command line, so a value cannot contain a double quote. When an argument appears more than
//! once, the last one wins, so a per-host argument appended by the boot loader overrides a default
//! baked into the image's boot entry.
//!
//! `/proc/cmdline` is readable by every local user: never put a secret on it. The gossip key and
//! the RKE2 token are files ([`gossip-key-file`, `token-file`](KNOWN_KEYS)), not values.

use std::collections::BTreeMap;

/// Every config key (the same list as `config::AGENT_KEYS`, checked by a test), kebab-case, as in the config file (`cluster-name: ...`), the flags
/// (`--cluster-name`) and the environment (`RKE2_BOOTSTRAP_CLUSTER_NAME`).
pub const KNOWN_KEYS: &[&str] = &[
    "cluster-name",
    "node-name",
    "role",
    "bind-addr",
    "advertise-addr",
    "seeds",
    "gossip-key-file",
    "root",
    "state-dir",
    "bootstrap-expect",
    "servers",
    "registration-address",
    "registration-ip",
    "token-file",
    "installer-url",
    "installer-sha256",
    "allow-insecure-installer-url",
    "rke2-version",
    "rke2-channel",
    "rke2-install-method",
    "installer-artifact-path",
    "installer-timeout",
    "service-manager",
    "control-plane-taint",
    "existing-config-policy",
    "rke2-config",
    "gossip-interval",
    "gossip-idle-interval",
    "dead-member-grace-period",
    "status-socket",
];

/// Keys whose value is a list; on the command line, a comma-separated one.
pub const LIST_KEYS: &[&str] = &["seeds"];

/// Keys that cannot be set on the command line, and why.
const NOT_ON_CMDLINE: &[(&str, &str)] = &[(
    "rke2-config",
    "it is a map; put it in the config file, or in a config fetched with rke2_bootstrap.config=<url>",
)];

/// Keys whose value is a SHA-256 digest in hex.
const SHA256_KEYS: &[&str] = &["installer-sha256"];

/// The prefixes of our arguments; the kernel treats `-` and `_` in parameter names alike.
const PREFIXES: &[&str] = &["rke2_bootstrap.", "rke2-bootstrap."];

/// Argument (after the prefix, normalised to kebab-case) naming a config file to fetch at boot.
pub const CONFIG_URL_ARG: &str = "config";
/// Argument pinning the fetched config's SHA-256.
pub const CONFIG_SHA256_ARG: &str = "config-sha256";
/// Argument that allows a plain `http://` config URL.
pub const ALLOW_INSECURE_ARG: &str = "allow-insecure-config-url";

/// What the kernel command line asks of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    /// Config key (kebab-case, one of [`KNOWN_KEYS`]) to value. List values are joined by `,`.
    pub overrides: BTreeMap<String, String>,
    /// A config file to fetch at boot: (URL, lowercase hex SHA-256 the content must have).
    pub config_url: Option<(String, String)>,
}

impl KernelCmdline {
    /// The items of a list override (e.g. `seeds`), if it was given.
    pub fn list(&self, key: &str) -> Option<Vec<&str>> {
        self.overrides.get(key).map(|v| v.split(',').collect())
    }

    /// Whether the command line carried nothing for this agent.
    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty() && self.config_url.is_none()
    }
}

impl std::str::FromStr for KernelCmdline {
    type Err = CmdlineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// A malformed `rke2_bootstrap.*` argument. Every variant names the argument as it appeared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel argument `{arg}`: unknown key `{key}`; known keys: {}", KNOWN_KEYS.join(", "))]
    UnknownKey { arg: String, key: String },
    #[error("kernel argument `{arg}`: `{key}` cannot be set on the kernel command line: {reason}")]
    NotSettable {
        arg: String,
        key: String,
        reason: &'static str,
    },
    #[error("kernel argument `{arg}`: empty value (expected `rke2_bootstrap.<key>=<value>`)")]
    EmptyValue { arg: String },
    #[error("kernel argument `{arg}`: unterminated double quote")]
    UnterminatedQuote { arg: String },
    #[error("kernel argument `{arg}`: bad SHA-256: {reason}")]
    BadSha256 { arg: String, reason: String },
    #[error("kernel argument `{arg}`: bad list item `{item}`: {reason}")]
    BadListItem {
        arg: String,
        item: String,
        reason: &'static str,
    },
    #[error(
        "kernel argument `{arg}`: a config URL must be pinned: add \
         rke2_bootstrap.config_sha256=<sha256 of the file>"
    )]
    UrlWithoutSha256 { arg: String },
    #[error("kernel argument `{arg}`: a config SHA-256 without rke2_bootstrap.config=<url>")]
    Sha256WithoutUrl { arg: String },
    #[error(
        "kernel argument `{arg}`: the config URL is not https://; use https, or add \
         rke2_bootstrap.allow_insecure_config_url=1 to accept plain http (the SHA-256 pin still \
         applies)"
    )]
    InsecureUrl { arg: String },
    #[error("kernel argument `{arg}`: bad config URL: {reason}")]
    BadUrl { arg: String, reason: &'static str },
    #[error("kernel argument `{arg}`: expected 1 or 0")]
    BadFlag { arg: String },
}

/// One whitespace-separated argument of the command line.
struct Token<'a> {
    /// The argument as it appeared, quotes included (for error messages).
    raw: &'a str,
    /// The argument with its double quotes removed.
    text: String,
    /// A double quote was opened and never closed (the token then runs to the end of the line).
    unterminated: bool,
}

/// The kernel's `isspace`: unlike `char::is_ascii_whitespace`, it includes vertical tab.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Splits the command line into arguments: whitespace separates them except inside double quotes.
fn tokenize(line: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.next_if(|&(_, c)| is_space(c)).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut text = String::new();
        let mut in_quote = false;
        let mut end = line.len();
        while let Some(&(i, c)) = chars.peek() {
            if !in_quote && is_space(c) {
                end = i;
                break;
            }
            chars.next();
            if c == '"' {
                in_quote = !in_quote;
            } else {
                text.push(c);
            }
        }
        tokens.push(Token {
            raw: &line[start..end],
            text,
            unterminated: in_quote,
        });
    }
    tokens
}

/// Where one of the config-URL arguments was seen: (argument as it appeared, value).
type Seen = Option<(String, String)>;

/// Parses the kernel command line (the contents of `/proc/cmdline`).
pub fn parse(line: &str) -> Result<KernelCmdline, CmdlineError> {
    let mut result = KernelCmdline::default();
    let mut url: Seen = None;
    let mut sha: Seen = None;
    let mut allow_insecure = false;

    for token in tokenize(line) {
        if token.unterminated {
            // An open quote swallows the rest of the line. If that swallowed one of our arguments,
            // the operator meant something else: say so rather than silently dropping it.
            if PREFIXES.iter().any(|p| token.raw.contains(p)) {
                return Err(CmdlineError::UnterminatedQuote {
                    arg: token.raw.to_string(),
                });
            }
            continue;
        }
        let Some(rest) = PREFIXES.iter().find_map(|p| token.text.strip_prefix(p)) else {
            continue;
        };
        let arg = token.raw.to_string();
        let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
        let key = name.replace('_', "-");

        match key.as_str() {
            CONFIG_URL_ARG | CONFIG_SHA256_ARG | ALLOW_INSECURE_ARG => {}
            k if KNOWN_KEYS.contains(&k) => {
                if let Some((_, reason)) = NOT_ON_CMDLINE.iter().find(|(nk, _)| *nk == k) {
                    return Err(CmdlineError::NotSettable { arg, key, reason });
                }
            }
            _ => return Err(CmdlineError::UnknownKey { arg, key }),
        }
        if value.is_empty() {
            return Err(CmdlineError::EmptyValue { arg });
        }

        match key.as_str() {
            CONFIG_URL_ARG => url = Some((arg, value.to_string())),
            CONFIG_SHA256_ARG => {
                let digest = parse_sha256(value).map_err(|reason| CmdlineError::BadSha256 {
                    arg: arg.clone(),
                    reason,
                })?;
                sha = Some((arg, digest));
            }
            ALLOW_INSECURE_ARG => {
                allow_insecure = match value {
                    "1" => true,
                    "0" => false,
                    _ => return Err(CmdlineError::BadFlag { arg }),
                }
            }
            k if LIST_KEYS.contains(&k) => {
                let list = parse_list(&arg, value)?;
                result.overrides.insert(key, list);
            }
            k if SHA256_KEYS.contains(&k) => {
                let digest = parse_sha256(value).map_err(|reason| CmdlineError::BadSha256 {
                    arg: arg.clone(),
                    reason,
                })?;
                result.overrides.insert(key, digest);
            }
            _ => {
                result.overrides.insert(key, value.to_string());
            }
        }
    }

    result.config_url = match (url, sha) {
        (None, None) => None,
        (None, Some((arg, _))) => return Err(CmdlineError::Sha256WithoutUrl { arg }),
        (Some((arg, _)), None) => return Err(CmdlineError::UrlWithoutSha256 { arg }),
        (Some((arg, url)), Some((_, digest))) => {
            check_url(&arg, &url, allow_insecure)?;
            Some((url, digest))
        }
    };
    Ok(result)
}

/// A SHA-256 in hex: exactly 64 hex digits, returned lowercase.
fn parse_sha256(value: &str) -> Result<String, String> {
    if value.len() != 64 {
        return Err(format!(
            "expected 64 hex digits, got {} characters",
            value.chars().count()
        ));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("`{c}` is not a hex digit"));
    }
    Ok(value.to_ascii_lowercase())
}

/// A comma-separated list of `host:port` items (IPv6 hosts in brackets), normalised.
fn parse_list(arg: &str, value: &str) -> Result<String, CmdlineError> {
    let mut items = Vec::new();
    for item in value.split(',') {
        let item = item.trim_matches(is_space);
        let bad = |reason| CmdlineError::BadListItem {
            arg: arg.to_string(),
            item: item.to_string(),
            reason,
        };
        if item.is_empty() {
            return Err(bad("empty item (stray comma?)"));
        }
        let Some((host, port)) = item.rsplit_once(':') else {
            return Err(bad("expected host:port"));
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("empty host"));
        }
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if host.contains(':') && !bracketed {
            return Err(bad("an IPv6 address must be in brackets: [addr]:port"));
        }
        if host.chars().any(|c| is_space(c) || c == '/') {
            return Err(bad("a host cannot contain whitespace or `/`"));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        }
        items.push(item);
    }
    Ok(items.join(","))
}

/// The config URL: `https://host...`, or `http://host...` when explicitly allowed.
fn check_url(arg: &str, url: &str, allow_insecure: bool) -> Result<(), CmdlineError> {
    let bad = |reason| CmdlineError::BadUrl {
        arg: arg.to_string(),
        reason,
    };
    let scheme_end = url
        .find("://")
        .ok_or_else(|| bad("expected https://host/path"))?;
    let scheme = url[..scheme_end].to_ascii_lowercase();
    match scheme.as_str() {
        "https" => {}
        "http" if allow_insecure => {}
        "http" => {
            return Err(CmdlineError::InsecureUrl {
                arg: arg.to_string(),
            })
        }
        _ => return Err(bad("the scheme must be https (or http when allowed)")),
    }
    let rest = &url[scheme_end + 3..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("no host"));
    }
    if url.chars().any(|c| is_space(c) || c.is_control()) {
        return Err(bad("a URL cannot contain whitespace or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ok(line: &str) -> KernelCmdline {
        parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn err(line: &str) -> CmdlineError {
        match parse(line) {
            Ok(v) => panic!("{line:?} parsed as {v:?}"),
            Err(e) => e,
        }
    }

    fn one(key: &str, value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(key.to_string(), value.to_string())])
    }

    #[test]
    fn empty_and_foreign_lines_give_nothing() {
        assert!(ok("").is_empty());
        assert!(ok("   \n").is_empty());
        let real =
            "BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=UUID=1b2c ro quiet console=ttyS0,115200n8 \
                    ip=dhcp init=/lib/systemd/systemd -- single\n";
        assert!(ok(real).is_empty());
        // Near misses of our prefix belong to someone else.
        assert!(ok("rke2_bootstrap=1 rke2_bootstrapx.role=server rke2.role=server").is_empty());
    }

    #[test]
    fn overrides_between_other_arguments() {
        let got = ok(
            "BOOT_IMAGE=/vmlinuz ro rke2_bootstrap.cluster-name=prod quiet \
                      rke2_bootstrap.role=server rke2_bootstrap.bootstrap-expect=3\n",
        );
        assert_eq!(
            got.overrides,
            BTreeMap::from([
                ("bootstrap-expect".to_string(), "3".to_string()),
                ("cluster-name".to_string(), "prod".to_string()),
                ("role".to_string(), "server".to_string()),
            ])
        );
        assert_eq!(got.config_url, None);
    }

    #[test]
    fn underscores_and_dashes_are_the_same_key() {
        for line in [
            "rke2_bootstrap.cluster-name=a",
            "rke2_bootstrap.cluster_name=a",
            "rke2-bootstrap.cluster_name=a",
            "rke2-bootstrap.cluster-name=a",
        ] {
            assert_eq!(ok(line).overrides, one("cluster-name", "a"), "{line}");
        }
    }

    #[test]
    fn known_keys_are_exactly_the_agent_config_keys() {
        let mut ours: Vec<&str> = KNOWN_KEYS.to_vec();
        let mut agent: Vec<&str> = crate::config::AGENT_KEYS.iter().map(|k| k.name).collect();
        ours.sort_unstable();
        agent.sort_unstable();
        assert_eq!(ours, agent);
    }

    #[test]
    fn every_known_key_but_maps_is_settable() {
        for key in KNOWN_KEYS {
            let value = match *key {
                "seeds" => "10.0.0.1:7946",
                "installer-sha256" => SHA,
                _ => "x",
            };
            let line = format!("rke2_bootstrap.{key}={value}");
            if *key == "rke2-config" {
                assert!(matches!(err(&line), CmdlineError::NotSettable { .. }));
            } else {
                assert_eq!(ok(&line).overrides, one(key, value));
            }
        }
    }

    #[test]
    fn last_one_wins() {
        let got = ok("rke2_bootstrap.role=auto rke2_bootstrap.role=server");
        assert_eq!(got.overrides, one("role", "server"));
    }

    #[test]
    fn quoted_values_keep_whitespace() {
        let got = ok("quiet rke2_bootstrap.node-name=\"rack 4  node\tb\" ro");
        assert_eq!(got.overrides, one("node-name", "rack 4  node\tb"));
        // The whole argument may be quoted, as the kernel allows.
        let got = ok("\"rke2_bootstrap.node-name=a b\"");
        assert_eq!(got.overrides, one("node-name", "a b"));
        // Quotes around part of a value.
        let got = ok("rke2_bootstrap.rke2-channel=st\"able\"");
        assert_eq!(got.overrides, one("rke2-channel", "stable"));
        // An `=` inside the value is part of it.
        let got = ok("rke2_bootstrap.node-name=a=b");
        assert_eq!(got.overrides, one("node-name", "a=b"));
    }

    #[test]
    fn other_quoted_arguments_are_skipped_whole() {
        let got = ok("dyndbg=\"file foo.c +p\" rke2_bootstrap.role=agent");
        assert_eq!(got.overrides, one("role", "agent"));
        // A quoted foreign argument that merely looks like ours inside is not ours.
        let got = ok("foo=\"rke2_bootstrap.role=server\"");
        assert!(got.is_empty());
    }

    #[test]
    fn seeds_are_a_normalised_comma_list() {
        let got = ok("rke2_bootstrap.seeds=\"10.0.0.1:7946, 10.0.0.2:7946\" \
                      rke2_bootstrap.role=server");
        assert_eq!(got.overrides["seeds"], "10.0.0.1:7946,10.0.0.2:7946");
        assert_eq!(
            got.list("seeds"),
            Some(vec!["10.0.0.1:7946", "10.0.0.2:7946"])
        );
        let got = ok("rke2_bootstrap.seeds=node-a.example:7946,[fd00::1]:7946");
        assert_eq!(
            got.list("seeds"),
            Some(vec!["node-a.example:7946", "[fd00::1]:7946"])
        );
        assert_eq!(got.list("role"), None);
    }

    #[test]
    fn bad_seed_items_are_named() {
        for (line, item) in [
            ("rke2_bootstrap.seeds=a:1,", ""),
            ("rke2_bootstrap.seeds=a:1,,b:2", ""),
            ("rke2_bootstrap.seeds=a", "a"),
            ("rke2_bootstrap.seeds=:7946", ":7946"),
            ("rke2_bootstrap.seeds=a:0", "a:0"),
            ("rke2_bootstrap.seeds=a:65536", "a:65536"),
            ("rke2_bootstrap.seeds=a:+1", "a:+1"),
            ("rke2_bootstrap.seeds=fd00::1:7946", "fd00::1:7946"),
            ("rke2_bootstrap.seeds=[]:7946", "[]:7946"),
            ("rke2_bootstrap.seeds=\"a b:1\"", "a b:1"),
        ] {
            match err(line) {
                CmdlineError::BadListItem { arg, item: got, .. } => {
                    assert_eq!(got, item, "{line}");
                    assert_eq!(arg, line);
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_argument() {
        let e = err("quiet rke2_bootstrap.clustre-name=prod ro");
        assert_eq!(
            e,
            CmdlineError::UnknownKey {
                arg: "rke2_bootstrap.clustre-name=prod".into(),
                key: "clustre-name".into()
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("rke2_bootstrap.clustre-name=prod"), "{msg}");
        assert!(msg.contains("cluster-name"), "{msg}");
        // No key at all.
        assert!(matches!(
            err("rke2_bootstrap.=x"),
            CmdlineError::UnknownKey { key, .. } if key.is_empty()
        ));
        // Keys are case-sensitive, like the config file's.
        assert!(matches!(
            err("rke2_bootstrap.Role=server"),
            CmdlineError::UnknownKey { .. }
        ));
    }

    #[test]
    fn empty_values_are_errors() {
        for line in [
            "rke2_bootstrap.role=",
            "rke2_bootstrap.role",
            "rke2_bootstrap.role=\"\"",
            "rke2_bootstrap.config=",
            "rke2_bootstrap.config_sha256=",
            "rke2_bootstrap.allow_insecure_config_url",
        ] {
            assert_eq!(
                err(line),
                CmdlineError::EmptyValue { arg: line.into() },
                "{line}"
            );
        }
    }

    #[test]
    fn unterminated_quotes_that_swallow_our_arguments_are_errors() {
        let e = err("ro rke2_bootstrap.node-name=\"a b quiet");
        assert_eq!(
            e,
            CmdlineError::UnterminatedQuote {
                arg: "rke2_bootstrap.node-name=\"a b quiet".into()
            }
        );
        assert!(e
            .to_string()
            .contains("rke2_bootstrap.node-name=\"a b quiet"));
        // A foreign argument's open quote swallowing ours is just as fatal.
        assert!(matches!(
            err("dyndbg=\"oops rke2_bootstrap.role=server"),
            CmdlineError::UnterminatedQuote { .. }
        ));
        // One that swallows nothing of ours is not our business.
        let got = ok("rke2_bootstrap.role=server dyndbg=\"oops quiet");
        assert_eq!(got.overrides, one("role", "server"));
    }

    #[test]
    fn config_url_must_be_pinned() {
        let got = ok(&format!(
            "rke2_bootstrap.config=https://boot.example/c/prod.yaml \
             rke2_bootstrap.config_sha256={SHA}"
        ));
        assert_eq!(
            got.config_url,
            Some(("https://boot.example/c/prod.yaml".into(), SHA.into()))
        );
        assert!(got.overrides.is_empty());
        // The order does not matter, and uppercase hex is normalised.
        let got = ok(&format!(
            "rke2_bootstrap.config-sha256={} rke2_bootstrap.config=https://boot.example/c",
            SHA.to_uppercase()
        ));
        assert_eq!(
            got.config_url,
            Some(("https://boot.example/c".into(), SHA.into()))
        );

        let e = err("rke2_bootstrap.config=https://boot.example/c.yaml");
        assert_eq!(
            e,
            CmdlineError::UrlWithoutSha256 {
                arg: "rke2_bootstrap.config=https://boot.example/c.yaml".into()
            }
        );
        assert!(e.to_string().contains("config_sha256"));
        assert!(matches!(
            err(&format!("rke2_bootstrap.config_sha256={SHA}")),
            CmdlineError::Sha256WithoutUrl { .. }
        ));
    }

    #[test]
    fn bad_sha256_is_named() {
        for digest in [
            "abc".to_string(),
            format!("{SHA}0"),
            SHA.replace('a', "g"),
            format!("sha256:{}", &SHA[7..]),
        ] {
            let line = format!("rke2_bootstrap.config_sha256={digest}");
            match err(&format!("rke2_bootstrap.config=https://h/c {line}")) {
                CmdlineError::BadSha256 { arg, .. } => assert_eq!(arg, line),
                other => panic!("{line}: {other:?}"),
            }
        }
        assert!(matches!(
            err("rke2_bootstrap.installer-sha256=xyz"),
            CmdlineError::BadSha256 { .. }
        ));
        let got = ok(&format!(
            "rke2_bootstrap.installer_sha256={}",
            SHA.to_uppercase()
        ));
        assert_eq!(got.overrides, one("installer-sha256", SHA));
    }

    #[test]
    fn plain_http_needs_explicit_permission() {
        let url_arg = "rke2_bootstrap.config=http://10.0.0.5/c.yaml";
        let pin = format!("rke2_bootstrap.config_sha256={SHA}");
        assert_eq!(
            err(&format!("{url_arg} {pin}")),
            CmdlineError::InsecureUrl {
                arg: url_arg.into()
            }
        );
        assert_eq!(
            err(&format!(
                "{url_arg} {pin} rke2_bootstrap.allow_insecure_config_url=0"
            )),
            CmdlineError::InsecureUrl {
                arg: url_arg.into()
            }
        );
        let got = ok(&format!(
            "{url_arg} {pin} rke2_bootstrap.allow_insecure_config_url=1"
        ));
        assert_eq!(
            got.config_url,
            Some(("http://10.0.0.5/c.yaml".into(), SHA.into()))
        );
        assert!(matches!(
            err("rke2_bootstrap.allow_insecure_config_url=yes"),
            CmdlineError::BadFlag { .. }
        ));
        // The permission alone, without a URL, is harmless.
        assert!(ok("rke2_bootstrap.allow-insecure-config-url=1").is_empty());
    }

    #[test]
    fn malformed_urls_are_rejected() {
        let pin = format!("rke2_bootstrap.config_sha256={SHA}");
        for url in [
            "boot.example/c.yaml",
            "ftp://boot.example/c.yaml",
            "tftp://10.0.0.5/c.yaml",
            "file:///etc/c.yaml",
            "https://",
            "https:///c.yaml",
            "https://:443/c.yaml",
            "\"https://boot.example/a b\"",
        ] {
            let line = format!(
                "rke2_bootstrap.config={url} {pin} \
                                rke2_bootstrap.allow_insecure_config_url=1"
            );
            assert!(
                matches!(err(&line), CmdlineError::BadUrl { .. }),
                "{url}: {:?}",
                parse(&line)
            );
        }
    }

    #[test]
    fn documented_pxe_example_parses() {
        // The example of packaging/pxe/README.md, as the kernel would show it.
        let sum = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
        let line = format!(
            "BOOT_IMAGE=/vmlinuz ro quiet ip=dhcp rke2_bootstrap.cluster-name=prod \
             rke2_bootstrap.role=auto \
             rke2_bootstrap.seeds=10.0.0.11:7946,10.0.0.12:7946,10.0.0.13:7946 \
             rke2_bootstrap.node-name=node-52-54-00-12-34-56 \
             rke2_bootstrap.config=https://boot.example.internal/rke2/prod.yaml \
             rke2_bootstrap.config_sha256={sum}\n"
        );
        let got = ok(&line);
        assert_eq!(got.overrides["cluster-name"], "prod");
        assert_eq!(got.overrides["role"], "auto");
        assert_eq!(got.overrides["node-name"], "node-52-54-00-12-34-56");
        assert_eq!(got.list("seeds").map(|s| s.len()), Some(3));
        assert_eq!(
            got.config_url,
            Some((
                "https://boot.example.internal/rke2/prod.yaml".into(),
                sum.into()
            ))
        );
    }

    #[test]
    fn first_error_in_line_order_wins() {
        let e = err("rke2_bootstrap.nope=1 rke2_bootstrap.role=");
        assert!(matches!(e, CmdlineError::UnknownKey { .. }));
    }

    #[test]
    fn from_str_matches_parse() {
        let got: KernelCmdline = "rke2_bootstrap.role=agent".parse().unwrap();
        assert_eq!(got.overrides, one("role", "agent"));
    }

    #[test]
    fn known_keys_are_kebab_case_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for key in KNOWN_KEYS {
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{key}"
            );
            assert!(seen.insert(key), "{key} twice");
        }
        for key in LIST_KEYS.iter().chain(SHA256_KEYS) {
            assert!(KNOWN_KEYS.contains(key), "{key}");
        }
        for (key, _) in NOT_ON_CMDLINE {
            assert!(KNOWN_KEYS.contains(key), "{key}");
        }
        for special in [CONFIG_URL_ARG, CONFIG_SHA256_ARG, ALLOW_INSECURE_ARG] {
            assert!(!KNOWN_KEYS.contains(&special), "{special}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Keys settable with a free-form value.
        fn plain_keys() -> Vec<&'static str> {
            KNOWN_KEYS
                .iter()
                .copied()
                .filter(|k| {
                    !LIST_KEYS.contains(k)
                        && !SHA256_KEYS.contains(k)
                        && !NOT_ON_CMDLINE.iter().any(|(nk, _)| nk == k)
                })
                .collect()
        }

        /// Fragments that make the parser's interesting cases likely in random input.
        fn fragment() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("rke2_bootstrap.".to_string()),
                Just("rke2-bootstrap.".to_string()),
                Just("\"".to_string()),
                Just("=".to_string()),
                Just(",".to_string()),
                Just(":".to_string()),
                Just(" ".to_string()),
                Just("\t\n\x0b".to_string()),
                Just("config".to_string()),
                Just("config_sha256".to_string()),
                Just("allow_insecure_config_url=1".to_string()),
                Just("https://".to_string()),
                Just("http://".to_string()),
                Just("[::1]".to_string()),
                Just("0123456789abcdef".to_string()),
                prop::sample::select(KNOWN_KEYS).prop_map(str::to_string),
                "\\PC{0,6}",
                any::<char>().prop_map(String::from),
            ]
        }

        fn foreign_arg() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9_./:,=-]{1,20}"
                .prop_filter("not ours", |s| !PREFIXES.iter().any(|p| s.starts_with(p)))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_text_never_panics(line in any::<String>()) {
                let _ = parse(&line);
            }

            #[test]
            fn arbitrary_fragments_never_panic(parts in prop::collection::vec(fragment(), 0..24)) {
                let line = parts.concat();
                if let Err(e) = parse(&line) {
                    // Every error renders, and names an argument that is in the line.
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with("kernel argument `"), "{}", msg);
                }
            }

            #[test]
            fn foreign_arguments_are_ignored(args in prop::collection::vec(foreign_arg(), 0..10)) {
                prop_assert!(parse(&args.join(" ")).unwrap().is_empty());
            }

            #[test]
            fn a_value_survives_the_round_trip(
                key in prop::sample::select(plain_keys()),
                value in "[^\"\\x00-\\x20\\x7f]([^\"\\x00-\\x1f\\x7f]{0,30}[^\"\\x00-\\x20\\x7f])?",
                before in prop::collection::vec(foreign_arg(), 0..4),
                after in prop::collection::vec(foreign_arg(), 0..4),
                underscores in any::<bool>(),
            ) {
                let name = if underscores { key.replace('-', "_") } else { key.to_string() };
                let arg = if value.contains(' ') {
                    format!("rke2_bootstrap.{name}=\"{value}\"")
                } else {
                    format!("rke2_bootstrap.{name}={value}")
                };
                let line = [before.join(" "), arg, after.join(" ")].join(" ");
                let got = parse(&line).unwrap();
                prop_assert_eq!(got.overrides.get(key), Some(&value));
                prop_assert_eq!(got.overrides.len(), 1);
            }

            #[test]
            fn unknown_keys_are_always_rejected(
                key in "[a-z][a-z0-9_-]{0,20}",
                value in "[a-z0-9]{1,8}",
            ) {
                let normalised = key.replace('_', "-");
                prop_assume!(!KNOWN_KEYS.contains(&normalised.as_str()));
                prop_assume!(![CONFIG_URL_ARG, CONFIG_SHA256_ARG, ALLOW_INSECURE_ARG]
                    .contains(&normalised.as_str()));
                let arg = format!("rke2_bootstrap.{key}={value}");
                let unknown = matches!(
                    parse(&format!("quiet {arg} ro")),
                    Err(CmdlineError::UnknownKey { arg: a, .. }) if a == arg
                );
                prop_assert!(unknown);
            }
        }
    }
}
