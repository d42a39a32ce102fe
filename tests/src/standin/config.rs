//! The parts of `/etc/rancher/rke2/config.yaml` the stand-in reads, and the token forms.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_yaml_ng::{Mapping, Value};

/// What the stand-in takes from config.yaml: `token`, `server`, `node-name`, `node-ip`, `tls-san`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandinConfig {
    pub token: Option<String>,
    pub node_name: Option<String>,
    pub server: Option<String>,
    pub node_ip: Option<IpAddr>,
    pub tls_san: Vec<String>,
}

impl StandinConfig {
    /// Reads `config.yaml`, then merges the drop-ins `config.yaml.d/*.yaml` in name order, as RKE2
    /// does: a later file replaces a key, and `key+` appends to a list.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut merged = Mapping::new();
        merge(&mut merged, &text).with_context(|| format!("parsing {}", path.display()))?;
        let drop_in_dir = path.with_file_name(format!(
            "{}.d",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        if let Ok(entries) = std::fs::read_dir(&drop_in_dir) {
            let mut files: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            files.sort();
            for file in files {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                merge(&mut merged, &text).with_context(|| format!("parsing {}", file.display()))?;
            }
        }
        Self::from_mapping(&merged)
    }

    /// Parses one config.yaml text (no drop-ins).
    pub fn parse(text: &str) -> Result<Self> {
        let mut map = Mapping::new();
        merge(&mut map, text)?;
        Self::from_mapping(&map)
    }

    fn from_mapping(map: &Mapping) -> Result<Self> {
        let get = |key: &str| map.get(Value::String(key.to_string()));
        let token = get("token")
            .map(scalar)
            .transpose()?
            .filter(|t| !t.is_empty());
        let server = get("server")
            .map(scalar)
            .transpose()?
            .filter(|s| !s.is_empty());
        // node-ip may be a list or comma-separated (dual stack); the first one is the address.
        let node_ip = get("node-ip")
            .map(list)
            .transpose()?
            .and_then(|ips| ips.into_iter().next())
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .with_context(|| format!("node-ip {ip:?} is not an ip address"))
            })
            .transpose()?;
        let tls_san = get("tls-san").map(list).transpose()?.unwrap_or_default();
        let node_name = get("node-name")
            .map(scalar)
            .transpose()?
            .filter(|s| !s.is_empty());
        Ok(StandinConfig {
            token,
            node_name,
            server,
            node_ip,
            tls_san,
        })
    }
}

/// Merges one YAML mapping into `into`: keys replace, `key+` appends to the list under `key`.
fn merge(into: &mut Mapping, text: &str) -> Result<()> {
    let map = match serde_yaml_ng::from_str::<Value>(text)? {
        Value::Mapping(map) => map,
        Value::Null => return Ok(()),
        _ => bail!("not a mapping"),
    };
    for (key, value) in map {
        match key.as_str().and_then(|k| k.strip_suffix('+')) {
            Some(base) => {
                let base = Value::String(base.to_string());
                let mut items = into.get(&base).map(list).transpose()?.unwrap_or_default();
                items.extend(list(&value)?);
                into.insert(
                    base,
                    Value::Sequence(items.into_iter().map(Value::String).collect()),
                );
            }
            None => {
                into.insert(key, value);
            }
        }
    }
    Ok(())
}

fn scalar(value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => bail!("expected a string, found {other:?}"),
    }
}

/// A string, a comma-separated string, or a list of strings.
fn list(value: &Value) -> Result<Vec<String>> {
    let items = match value {
        Value::Sequence(seq) => seq.iter().map(scalar).collect::<Result<Vec<_>>>()?,
        other => vec![scalar(other)?],
    };
    Ok(items
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// A cluster token: a bare secret, or the full `K10<ca sha256>::<user>:<secret>` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The CA hash of a full token.
    pub ca_hash: Option<String>,
    pub secret: String,
}

impl Token {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if let Some(full) = text.strip_prefix("K10") {
            if let Some((hash, credentials)) = full.split_once("::") {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!("malformed token: the ca hash after K10 must be 64 hex digits");
                }
                let secret = match credentials.split_once(':') {
                    Some((_user, secret)) => secret,
                    None => credentials,
                };
                if secret.is_empty() {
                    bail!("malformed token: empty secret");
                }
                return Ok(Token {
                    ca_hash: Some(hash.to_ascii_lowercase()),
                    secret: secret.to_string(),
                });
            }
        }
        if text.is_empty() {
            bail!("empty token");
        }
        Ok(Token {
            ca_hash: None,
            secret: text.to_string(),
        })
    }

    /// The full server token for a CA hash and secret.
    pub fn full(ca_hash: &str, secret: &str) -> String {
        format!("K10{ca_hash}::server:{secret}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_keys_it_needs() {
        let cfg = StandinConfig::parse(
            "token: abc\nserver: https://127.3.0.1:9345\nnode-ip: 127.3.0.2\ntls-san:\n  - lb.test\n  - 127.3.0.100\nwrite-kubeconfig-mode: \"0644\"\n",
        )
        .unwrap();
        assert_eq!(cfg.token.as_deref(), Some("abc"));
        assert_eq!(cfg.server.as_deref(), Some("https://127.3.0.1:9345"));
        assert_eq!(cfg.node_ip, Some("127.3.0.2".parse().unwrap()));
        assert_eq!(cfg.tls_san, vec!["lb.test", "127.3.0.100"]);

        let cfg =
            StandinConfig::parse("node-ip: 127.3.0.2,fd00::2\ntls-san: a.test,b.test\n").unwrap();
        assert_eq!(cfg.node_ip, Some("127.3.0.2".parse().unwrap()));
        assert_eq!(cfg.tls_san, vec!["a.test", "b.test"]);
        assert_eq!(StandinConfig::parse("").unwrap(), StandinConfig::default());
        assert!(StandinConfig::parse("node-ip: nope\n").is_err());
    }

    #[test]
    fn merges_drop_ins_like_rke2() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.yaml");
        std::fs::write(&main, "token: a\nnode-ip: 127.3.0.2\ntls-san: [x.test]\n").unwrap();
        std::fs::create_dir(dir.path().join("config.yaml.d")).unwrap();
        std::fs::write(
            dir.path().join("config.yaml.d/10-more.yaml"),
            "tls-san+: [y.test]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config.yaml.d/20-ip.yaml"),
            "node-ip: 127.3.0.9\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("config.yaml.d/ignored.txt"), "token: b\n").unwrap();
        let cfg = StandinConfig::load(&main).unwrap();
        assert_eq!(cfg.token.as_deref(), Some("a"));
        assert_eq!(cfg.node_ip, Some("127.3.0.9".parse().unwrap()));
        assert_eq!(cfg.tls_san, vec!["x.test", "y.test"]);
    }

    #[test]
    fn parses_token_forms() {
        let hash = "ab".repeat(32);
        let full = Token::full(&hash, "s3cret");
        assert_eq!(full, format!("K10{hash}::server:s3cret"));
        assert_eq!(
            Token::parse(&full).unwrap(),
            Token {
                ca_hash: Some(hash.clone()),
                secret: "s3cret".into()
            }
        );
        assert_eq!(
            Token::parse(&format!("K10{hash}::node:p")).unwrap().secret,
            "p"
        );
        assert_eq!(
            Token::parse("short-secret").unwrap(),
            Token {
                ca_hash: None,
                secret: "short-secret".into()
            }
        );
        assert!(Token::parse("K10abc::server:x").is_err());
        assert!(Token::parse(&format!("K10{hash}::server:")).is_err());
        assert!(Token::parse("  ").is_err());
    }
}
