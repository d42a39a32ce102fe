//! `/etc/rancher/rke2/config.yaml`: a typed model, a pure renderer, and a writer that never
//! clobbers a file an operator wrote.
//!
//! The manual procedure writes the same handful of keys on every host: `token` and `tls-san` on the
//! first server, plus `server: https://<lb>:9345` on every other server and on agents, and
//! `node-taint: [CriticalAddonsOnly=true:NoExecute]` for dedicated control planes. [`Rke2Config`]
//! models exactly those; anything else RKE2 understands goes through [`Rke2Config::extra`].
//!
//! The file we write starts with [`MANAGED_MARKER`]. That line is how a later run (or a reboot)
//! tells our file, which it may rewrite, from one an operator wrote, which it must not silently
//! replace. Operators who want additional settings should use RKE2's drop-in directory
//! `/etc/rancher/rke2/config.yaml.d/*.yaml`, which RKE2 merges after config.yaml.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_yaml_ng::{Mapping, Value};

use super::token::JoinToken;
use crate::fsutil::{self, SECRET_FILE_MODE};

/// First line of every config.yaml we write.
pub const MANAGED_MARKER: &str = "# managed by rke2-bootstrap: edits are overwritten";
/// Where RKE2 reads its configuration (joined under the agent's root).
pub const CONFIG_PATH: &str = "/etc/rancher/rke2/config.yaml";
/// RKE2's supervisor (registration) port.
pub const SUPERVISOR_PORT: u16 = 9345;
/// The taint that keeps user workloads off a dedicated control plane (as in the manual procedure).
pub const DEDICATED_CONTROL_PLANE_TAINT: &str = "CriticalAddonsOnly=true:NoExecute";
/// The agent setting that chooses what happens to an operator-written config.yaml.
pub const EXISTING_CONFIG_POLICY_KEY: &str = "existing-config-policy";

/// RKE2 keys this crate owns. `extra` may not set them: two sources for one key would make the
/// rendered file depend on which one wins. `token-file` is here because it conflicts with `token`.
pub const MANAGED_KEYS: &[&str] = &[
    "token",
    "token-file",
    "server",
    "tls-san",
    "node-name",
    "node-ip",
    "node-taint",
];

/// The settings this host writes to config.yaml.
#[derive(Clone, PartialEq)]
pub struct Rke2Config {
    /// `token`: the short secret on the first server; preferably the full `K10...` token on
    /// joiners so RKE2 itself checks the cluster CA before sending the secret.
    pub token: JoinToken,
    /// `server`: `https://<registration-address>:9345`; `None` only on the first server.
    pub server: Option<String>,
    /// `tls-san`: extra names/IPs in the server certificate (the LB's FQDN and IP).
    pub tls_san: Vec<String>,
    /// `node-name`.
    pub node_name: Option<String>,
    /// `node-ip`.
    pub node_ip: Option<IpAddr>,
    /// `node-taint`.
    pub node_taint: Vec<String>,
    /// Any other RKE2 key, passed through verbatim (rendered after the managed keys, sorted).
    pub extra: BTreeMap<String, Value>,
}

impl Rke2Config {
    /// The first server: initializes the cluster, so no `server:`.
    pub fn first_server(token: JoinToken, tls_san: Vec<String>) -> Self {
        Self {
            token,
            server: None,
            tls_san,
            node_name: None,
            node_ip: None,
            node_taint: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    /// Any further server: joins through the registration address.
    pub fn joining_server(
        token: JoinToken,
        registration_address: &str,
        tls_san: Vec<String>,
    ) -> Self {
        Self {
            server: Some(server_url(registration_address)),
            ..Self::first_server(token, tls_san)
        }
    }

    /// An agent (worker): joins through the registration address; no `tls-san` (agents serve no
    /// API).
    pub fn agent(token: JoinToken, registration_address: &str) -> Self {
        Self::joining_server(token, registration_address, Vec::new())
    }

    /// Makes a server a dedicated control plane by adding [`DEDICATED_CONTROL_PLANE_TAINT`]
    /// (once).
    pub fn dedicated_control_plane(mut self) -> Self {
        if !self
            .node_taint
            .iter()
            .any(|t| t == DEDICATED_CONTROL_PLANE_TAINT)
        {
            self.node_taint
                .push(DEDICATED_CONTROL_PLANE_TAINT.to_string());
        }
        self
    }
}

/// Shows everything except secrets: the token redacts itself and `extra` shows only its keys,
/// because pass-through values may be secrets too (`etcd-s3-secret-key`, `agent-token`).
impl fmt::Debug for Rke2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rke2Config")
            .field("token", &self.token)
            .field("server", &self.server)
            .field("tls_san", &self.tls_san)
            .field("node_name", &self.node_name)
            .field("node_ip", &self.node_ip)
            .field("node_taint", &self.node_taint)
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `https://<address>:9345`, bracketing IPv6 literals.
pub fn server_url(registration_address: &str) -> String {
    let host = registration_address.trim();
    match host.parse::<Ipv6Addr>() {
        Ok(ip) => format!("https://[{ip}]:{SUPERVISOR_PORT}"),
        Err(_) => format!("https://{host}:{SUPERVISOR_PORT}"),
    }
}

/// Renders config.yaml. Pure and deterministic: [`MANAGED_MARKER`], then `token`, `server`,
/// `tls-san`, `node-name`, `node-ip`, `node-taint` (each only when set), then `extra` sorted by
/// key. Values are emitted by the YAML serializer, so a token such as `12345` or one containing `:`
/// or `#` stays a string.
pub fn render(config: &Rke2Config) -> Result<String> {
    validate(config)?;
    let mut map = Mapping::new();
    let mut put = |key: &str, value: Value| {
        map.insert(Value::String(key.to_string()), value);
    };
    put("token", Value::String(config.token.expose()));
    if let Some(server) = &config.server {
        put("server", Value::String(server.clone()));
    }
    if !config.tls_san.is_empty() {
        put("tls-san", string_seq(&config.tls_san));
    }
    if let Some(name) = &config.node_name {
        put("node-name", Value::String(name.clone()));
    }
    if let Some(ip) = config.node_ip {
        put("node-ip", Value::String(ip.to_string()));
    }
    if !config.node_taint.is_empty() {
        put("node-taint", string_seq(&config.node_taint));
    }
    for (key, value) in &config.extra {
        put(key, value.clone());
    }
    let body = serde_yaml_ng::to_string(&map).context("serializing config.yaml")?;
    Ok(format!("{MANAGED_MARKER}\n{body}"))
}

fn string_seq(items: &[String]) -> Value {
    Value::Sequence(items.iter().cloned().map(Value::String).collect())
}

fn validate(config: &Rke2Config) -> Result<()> {
    if let Some(server) = &config.server {
        if !server.starts_with("https://") {
            bail!("config.yaml `server` must be an https:// URL, got {server:?}");
        }
    }
    for (key, items) in [
        ("tls-san", &config.tls_san),
        ("node-taint", &config.node_taint),
    ] {
        if items.iter().any(|s| s.trim().is_empty()) {
            bail!("config.yaml `{key}` has an empty entry");
        }
    }
    if let Some(name) = &config.node_name {
        if name.trim().is_empty() {
            bail!("config.yaml `node-name` is empty");
        }
    }
    for key in config.extra.keys() {
        if key.trim().is_empty() {
            bail!("config.yaml extra settings contain an empty key");
        }
        if MANAGED_KEYS.contains(&key.as_str()) {
            bail!(
                "config.yaml key `{key}` is managed by rke2-bootstrap and cannot be set through \
                 the extra (pass-through) RKE2 settings; remove it from there"
            );
        }
    }
    Ok(())
}

/// What to do with a config.yaml that lacks [`MANAGED_MARKER`] (an operator wrote it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExistingConfigPolicy {
    /// Stop with an error; the operator decides. The safe default.
    #[default]
    Refuse,
    /// Rename it to `config.yaml.bak.<unix-seconds>`, log loudly, then write ours.
    Backup,
}

impl std::str::FromStr for ExistingConfigPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refuse" => Ok(ExistingConfigPolicy::Refuse),
            "backup" => Ok(ExistingConfigPolicy::Backup),
            other => Err(format!(
                "unknown policy {other:?}, expected refuse or backup"
            )),
        }
    }
}

/// What [`write_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// No file was there, or it was ours with different content; it now holds the new content.
    Written,
    /// The file already held exactly this content; not touched (beyond fixing its mode).
    Unchanged,
    /// An operator-written file was moved to the given path, then ours written.
    BackedUp(PathBuf),
}

/// Writes `rendered` (the output of [`render`]) to `<root>/etc/rancher/rke2/config.yaml`:
/// directory created, file replaced atomically with mode 0600 (it holds the token).
///
/// A file without our marker line is never silently replaced: [`ExistingConfigPolicy::Refuse`]
/// fails naming the path and the setting to change; [`ExistingConfigPolicy::Backup`] renames it
/// first. Identical content is not rewritten, so RKE2 sees no spurious change on restart.
pub fn write_config(
    root: &Path,
    rendered: &str,
    policy: ExistingConfigPolicy,
) -> Result<WriteOutcome> {
    if !is_managed(rendered) {
        bail!("refusing to write a config.yaml that does not start with the managed marker line");
    }
    let path = fsutil::under_root(root, CONFIG_PATH);
    let dir = path
        .parent()
        .context("config.yaml path has no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;

    let mut backup = None;
    match fs::read(&path) {
        Ok(existing) if existing == rendered.as_bytes() => {
            ensure_secret_mode(&path)?;
            tracing::debug!(path = %path.display(), "config.yaml unchanged; not rewriting");
            return Ok(WriteOutcome::Unchanged);
        }
        Ok(existing) if is_managed(&String::from_utf8_lossy(&existing)) => {}
        Ok(_) => match policy {
            ExistingConfigPolicy::Refuse => bail!(
                "{} was not written by rke2-bootstrap (its first line is not {MANAGED_MARKER:?}); \
                 refusing to overwrite it. Move your settings to \
                 /etc/rancher/rke2/config.yaml.d/*.yaml and remove the file, or set \
                 `{EXISTING_CONFIG_POLICY_KEY}: backup` to have it renamed aside",
                path.display()
            ),
            ExistingConfigPolicy::Backup => {
                let target = backup_path(&path)?;
                fs::rename(&path, &target).with_context(|| {
                    format!("renaming {} to {}", path.display(), target.display())
                })?;
                fsutil::sync_dir(dir)?;
                tracing::warn!(
                    path = %path.display(),
                    backup = %target.display(),
                    policy = "backup",
                    "operator-written config.yaml moved aside; rke2-bootstrap now owns config.yaml"
                );
                backup = Some(target);
            }
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("reading existing {}", path.display()));
        }
    }

    fsutil::write_file_atomic(&path, rendered.as_bytes(), SECRET_FILE_MODE)?;
    tracing::info!(path = %path.display(), "wrote config.yaml");
    Ok(match backup {
        Some(target) => WriteOutcome::BackedUp(target),
        None => WriteOutcome::Written,
    })
}

/// Whether a config.yaml's first line is our marker.
pub fn is_managed(contents: &str) -> bool {
    contents
        .lines()
        .next()
        .is_some_and(|line| line.trim_end() == MANAGED_MARKER)
}

fn ensure_secret_mode(path: &Path) -> Result<()> {
    let mode = fs::metadata(path)
        .with_context(|| format!("reading metadata of {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode != SECRET_FILE_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(SECRET_FILE_MODE))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
        tracing::warn!(path = %path.display(), was = format_args!("{mode:o}"), "tightened config.yaml mode to 600");
    }
    Ok(())
}

/// `config.yaml.bak.<unix-seconds>`, with a `.N` suffix if that name is taken.
fn backup_path(path: &Path) -> Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs();
    let base = format!("{}.bak.{secs}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.symlink_metadata().is_ok() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rke2::token::{JoinToken, Secret};

    const LB_FQDN: &str = "rke2.demo.rancher.cn";
    const LB_IP: &str = "192.168.205.84";

    fn seed_token() -> JoinToken {
        JoinToken::from_secret(Secret::new("my-shared-secret").unwrap())
    }

    fn seed_sans() -> Vec<String> {
        vec![LB_FQDN.to_string(), LB_IP.to_string()]
    }

    /// Compares with `tests/golden/<name>` (the test kit's rule: `UPDATE_GOLDEN=1` rewrites it).
    fn check_golden(name: &str, rendered: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        rke2_testkit::check_golden(&path, rendered);
    }

    /// The seed procedure's YAML parsed, compared key by key with ours (marker ignored: it is a
    /// comment).
    fn assert_same_fields(rendered: &str, seed_yaml: &str) {
        let ours: Mapping = serde_yaml_ng::from_str(rendered).unwrap();
        let seed: Mapping = serde_yaml_ng::from_str(seed_yaml).unwrap();
        assert_eq!(ours, seed);
    }

    #[test]
    fn first_server_matches_seed() {
        let out = render(&Rke2Config::first_server(seed_token(), seed_sans())).unwrap();
        check_golden("first_server.yaml", &out);
        assert_same_fields(
            &out,
            "token: my-shared-secret\ntls-san:\n  - rke2.demo.rancher.cn\n  - 192.168.205.84\n",
        );
    }

    #[test]
    fn joining_server_matches_seed() {
        let out = render(&Rke2Config::joining_server(
            seed_token(),
            LB_FQDN,
            seed_sans(),
        ))
        .unwrap();
        check_golden("joining_server.yaml", &out);
        assert_same_fields(
            &out,
            "server: https://rke2.demo.rancher.cn:9345\ntoken: my-shared-secret\ntls-san:\n  - \
             rke2.demo.rancher.cn\n  - 192.168.205.84\n",
        );
    }

    #[test]
    fn agent_matches_seed() {
        let out = render(&Rke2Config::agent(seed_token(), LB_FQDN)).unwrap();
        check_golden("agent.yaml", &out);
        assert_same_fields(
            &out,
            "server: https://rke2.demo.rancher.cn:9345\ntoken: my-shared-secret\n",
        );
    }

    #[test]
    fn dedicated_control_plane_matches_seed() {
        let config = Rke2Config::first_server(seed_token(), seed_sans())
            .dedicated_control_plane()
            .dedicated_control_plane();
        let out = render(&config).unwrap();
        check_golden("dedicated_control_plane.yaml", &out);
        assert_same_fields(
            &out,
            "token: my-shared-secret\ntls-san:\n  - rke2.demo.rancher.cn\n  - 192.168.205.84\n\
             node-taint:\n  - \"CriticalAddonsOnly=true:NoExecute\"\n",
        );
    }

    #[test]
    fn marker_first_token_second_and_extra_sorted_last() {
        let mut config = Rke2Config::joining_server(seed_token(), LB_FQDN, seed_sans());
        config.node_name = Some("ha-m2".into());
        config.node_ip = Some("192.168.205.86".parse().unwrap());
        config
            .extra
            .insert("write-kubeconfig-mode".into(), "0644".into());
        config.extra.insert("cni".into(), "canal".into());
        let out = render(&config).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines[0], MANAGED_MARKER);
        assert!(lines[1].starts_with("token:"));
        let keys: Vec<_> = lines
            .iter()
            .filter(|l| !l.starts_with(['#', ' ', '-']))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "token",
                "server",
                "tls-san",
                "node-name",
                "node-ip",
                "cni",
                "write-kubeconfig-mode"
            ]
        );
        assert_eq!(render(&config).unwrap(), out, "deterministic");
    }

    #[test]
    fn values_that_look_like_other_types_stay_strings() {
        let mut config = Rke2Config::first_server(
            JoinToken::from_secret(Secret::new("12345").unwrap()),
            vec!["true".into()],
        );
        config.node_ip = Some("fd00::1".parse().unwrap());
        let out = render(&config).unwrap();
        let parsed: Mapping = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(parsed["token"], Value::String("12345".into()));
        assert_eq!(parsed["tls-san"][0], Value::String("true".into()));
        assert_eq!(parsed["node-ip"], Value::String("fd00::1".into()));
    }

    #[test]
    fn extra_cannot_override_managed_keys() {
        for key in MANAGED_KEYS {
            let mut config = Rke2Config::first_server(seed_token(), seed_sans());
            config.extra.insert(key.to_string(), "x".into());
            let err = render(&config).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }

    #[test]
    fn invalid_values_are_rejected() {
        let mut config = Rke2Config::first_server(seed_token(), vec![" ".into()]);
        assert!(render(&config).is_err());
        config.tls_san.clear();
        config.server = Some("http://lb:9345".into());
        assert!(render(&config).is_err());
    }

    #[test]
    fn server_url_brackets_ipv6() {
        assert_eq!(server_url("10.0.0.1"), "https://10.0.0.1:9345");
        assert_eq!(server_url("fd00::1"), "https://[fd00::1]:9345");
        assert_eq!(server_url(LB_FQDN), "https://rke2.demo.rancher.cn:9345");
    }

    #[test]
    fn debug_hides_secrets() {
        let mut config = Rke2Config::first_server(seed_token(), seed_sans());
        config
            .extra
            .insert("etcd-s3-secret-key".into(), "very-secret-s3".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("my-shared-secret"), "{shown}");
        assert!(!shown.contains("very-secret-s3"), "{shown}");
        assert!(shown.contains("etcd-s3-secret-key"), "{shown}");
    }

    #[test]
    fn unmarked_rendered_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_config(dir.path(), "token: x\n", ExistingConfigPolicy::Backup);
        assert!(err.is_err());
    }

    #[test]
    fn policy_parses_from_kebab_case() {
        let p: ExistingConfigPolicy = serde_yaml_ng::from_str("backup").unwrap();
        assert_eq!(p, ExistingConfigPolicy::Backup);
        assert_eq!(
            ExistingConfigPolicy::default(),
            ExistingConfigPolicy::Refuse
        );
    }
}
