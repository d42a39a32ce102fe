//! Layered configuration: flag > environment > file > default, for any key table.
//!
//! Every layer is turned into one YAML mapping keyed by the config key, so precedence is a plain
//! map merge and the typed structs only have to be deserialized once. The environment is passed in
//! as a map (never read here) so that precedence is unit-testable.
//!
//! Errors name the culprit: the key and the file, the environment variable, or the flag.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

/// One configuration key: its kebab-case name (as in the file and the flag) and a help line that
/// ends with `(default: ...)` when the key has a default.
///
/// This is the one home of a key's name, default and help: the flag, the environment variable and
/// the kernel command-line key are derived from it, and tests check the README table and the
/// packaged sample config against it. The default stays inside the help text so that `--help`
/// shows it and a key remains one line to add.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub name: &'static str,
    pub help: &'static str,
}

impl KeySpec {
    const DEFAULT_OPEN: &'static str = " (default: ";

    /// The default as the help line states it, e.g. `15m` or `the hostname`.
    pub fn default_text(&self) -> Option<&'static str> {
        let (_, default) = self.help.rsplit_once(Self::DEFAULT_OPEN)?;
        default.strip_suffix(')')
    }

    /// The help line without its default.
    pub fn summary(&self) -> &'static str {
        match self.help.rsplit_once(Self::DEFAULT_OPEN) {
            Some((summary, default)) if default.ends_with(')') => summary,
            _ => self.help,
        }
    }
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
    Flag(String),
    KernelCmdline(String),
    /// Not set anywhere: the default is what is wrong.
    Unset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "flag --{flag}"),
            Source::KernelCmdline(arg) => write!(f, "kernel command line argument {arg}"),
            Source::Unset => f.write_str("the defaults (not set anywhere)"),
        }
    }
}

/// A configuration error that an operator can act on from one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("config file {path} is not valid YAML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("config file {path} must be a mapping of key: value")]
    NotAMapping { path: PathBuf },
    #[error("unknown key `{key}` in {origin}")]
    UnknownKey { key: String, origin: Source },
    #[error("invalid value for `{key}` from {origin}: {reason}")]
    InvalidValue {
        key: String,
        origin: Source,
        reason: String,
    },
    #[error("missing required key `{key}` (set it in the config file, as --{key}, or as {env})")]
    Missing { key: String, env: String },
}

/// The raw inputs of every layer. Flags and environment values are strings; typed fields accept
/// strings through [`super::lenient`].
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub file: Option<PathBuf>,
    /// A config fetched at boot (PXE: `rke2_bootstrap.config=<url>`), layered over `file`: one
    /// image carries a generic file, the boot entry points at the host group's config.
    pub fetched_file: Option<PathBuf>,
    /// The process environment (or a test's map); only variables with the prefix are looked at.
    pub env: BTreeMap<String, String>,
    /// Overrides from the kernel command line (PXE), between the file and the environment.
    pub kernel: BTreeMap<String, String>,
    /// Flags given on the command line, by key.
    pub flags: BTreeMap<String, String>,
}

/// The merged mapping with the source of every key, ready to be deserialized.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    values: Mapping,
    sources: BTreeMap<String, Source>,
}

impl Merged {
    /// Deserializes the merged mapping. When that fails, each key is tried alone to find the
    /// culprit, so the error names the key and where it came from instead of a bare type error.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        match serde_yaml_ng::from_value::<T>(Value::Mapping(self.values.clone())) {
            Ok(value) => Ok(value),
            Err(whole) => {
                for (key, value) in &self.values {
                    let mut single = Mapping::new();
                    single.insert(key.clone(), value.clone());
                    if let Err(err) = serde_yaml_ng::from_value::<T>(Value::Mapping(single)) {
                        let key = key.as_str().unwrap_or_default().to_string();
                        let source = self
                            .sources
                            .get(&key)
                            .cloned()
                            .unwrap_or(Source::Flag(key.clone()));
                        return Err(ConfigError::InvalidValue {
                            key,
                            origin: source,
                            reason: err.to_string(),
                        });
                    }
                }
                Err(ConfigError::InvalidValue {
                    key: "(config)".into(),
                    origin: self
                        .sources
                        .values()
                        .next()
                        .cloned()
                        .unwrap_or(Source::Flag("config".into())),
                    reason: whole.to_string(),
                })
            }
        }
    }

    /// Moves the given keys (and their sources) into a new mapping: for binaries whose config
    /// file holds several typed sections side by side.
    pub fn split_off(&mut self, keys: &[&str]) -> Merged {
        let mut taken = Merged::default();
        for key in keys {
            if let Some(value) = self.values.remove(*key) {
                taken.values.insert(Value::String(key.to_string()), value);
            }
            if let Some(source) = self.sources.remove(*key) {
                taken.sources.insert(key.to_string(), source);
            }
        }
        taken
    }

    /// Re-reads values that came as text (flags, environment, kernel command line) as YAML, so
    /// `--port 9345` is a number and `--validate '[nginx, -t]'` a list. For typed structs without
    /// lenient fields; text that is not valid YAML stays text.
    pub fn parse_text_values(&mut self) {
        for (key, source) in &self.sources {
            if matches!(source, Source::File(_)) {
                continue;
            }
            if let Some(Value::String(text)) = self.values.get(key.as_str()).cloned() {
                if let Ok(value) = serde_yaml_ng::from_str::<Value>(&text) {
                    self.values.insert(Value::String(key.clone()), value);
                }
            }
        }
    }

    /// Where `key` was set, if anywhere.
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources.get(key)
    }
}

/// Environment variable for a key: `RKE2_BOOTSTRAP_` + upper snake case.
pub fn env_var_name(prefix: &str, key: &str) -> String {
    format!("{prefix}{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// Merges the layers, checking every key against `keys`.
///
/// `ignored_env` lists prefixed variables that are not config keys (e.g. the config file path).
pub fn merge(
    layers: &Layers,
    keys: &[KeySpec],
    env_prefix: &str,
    ignored_env: &[&str],
) -> Result<Merged, ConfigError> {
    let known = |k: &str| keys.iter().any(|spec| spec.name == k);
    let mut merged = Merged::default();
    let put = |merged: &mut Merged, key: String, value: Value, origin: Source| {
        merged.values.insert(Value::String(key.clone()), value);
        merged.sources.insert(key, origin);
    };

    for path in layers.file.iter().chain(&layers.fetched_file) {
        for (key, value) in read_file(path)? {
            let key = match key {
                Value::String(key) => key,
                other => {
                    return Err(ConfigError::UnknownKey {
                        key: format!("{other:?}"),
                        origin: Source::File(path.clone()),
                    })
                }
            };
            if !known(&key) {
                return Err(ConfigError::UnknownKey {
                    key,
                    origin: Source::File(path.clone()),
                });
            }
            put(&mut merged, key, value, Source::File(path.clone()));
        }
    }

    for (key, value) in &layers.kernel {
        let key = key.replace('_', "-");
        if !known(&key) {
            return Err(ConfigError::UnknownKey {
                key: key.clone(),
                origin: Source::KernelCmdline(format!("rke2_bootstrap.{key}")),
            });
        }
        let source = Source::KernelCmdline(format!("rke2_bootstrap.{key}"));
        put(&mut merged, key, Value::String(value.clone()), source);
    }

    for (var, value) in &layers.env {
        let Some(rest) = var.strip_prefix(env_prefix) else {
            continue;
        };
        if ignored_env.contains(&var.as_str()) {
            continue;
        }
        let key = rest.to_ascii_lowercase().replace('_', "-");
        if !known(&key) {
            return Err(ConfigError::UnknownKey {
                key,
                origin: Source::Env(var.clone()),
            });
        }
        put(
            &mut merged,
            key,
            Value::String(value.clone()),
            Source::Env(var.clone()),
        );
    }

    for (key, value) in &layers.flags {
        if !known(key) {
            return Err(ConfigError::UnknownKey {
                key: key.clone(),
                origin: Source::Flag(key.clone()),
            });
        }
        put(
            &mut merged,
            key.clone(),
            Value::String(value.clone()),
            Source::Flag(key.clone()),
        );
    }
    Ok(merged)
}

fn read_file(path: &Path) -> Result<Mapping, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Unreadable {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    let value: Value = serde_yaml_ng::from_str(&text).map_err(|err| ConfigError::Syntax {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    match value {
        Value::Mapping(mapping) => Ok(mapping),
        Value::Null => Ok(Mapping::new()),
        _ => Err(ConfigError::NotAMapping {
            path: path.to_path_buf(),
        }),
    }
}

/// The prefixed variables of the real process environment, for `main` to pass in.
pub fn process_env(prefix: &str) -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect()
}

/// Builds clap arguments, one `--<key> VALUE` per key, so every config key is also a flag
/// without a second list to keep in sync.
pub fn clap_args(keys: &'static [KeySpec]) -> Vec<clap::Arg> {
    keys.iter()
        .map(|spec| {
            clap::Arg::new(spec.name)
                .long(spec.name)
                .value_name("VALUE")
                .help(spec.help)
                .help_heading(
                    "Configuration (each also a config file key and an environment variable)",
                )
        })
        .collect()
}

/// Reads back the flags built by [`clap_args`].
pub fn flags_from_matches(
    keys: &[KeySpec],
    matches: &clap::ArgMatches,
) -> BTreeMap<String, String> {
    keys.iter()
        .filter_map(|spec| {
            matches
                .get_one::<String>(spec.name)
                .map(|value| (spec.name.to_string(), value.clone()))
        })
        .collect()
}
