//! Deserializers that accept a value either natively (from the YAML file) or as a string (from a
//! flag, an environment variable or the kernel command line), so one typed struct serves every
//! layer. Used with `#[serde(default, deserialize_with = "...")]` on `Option` fields.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum NativeOrText<T> {
    Native(T),
    Text(String),
}

/// A scalar given natively (`3`, `true`) or as text (`"3"`, `"true"`).
pub fn scalar<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    match Option::<NativeOrText<T>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(NativeOrText::Native(value)) => Ok(Some(value)),
        Some(NativeOrText::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A list given as a YAML sequence or as comma-separated text.
pub fn list<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    list_split_by(deserializer, |text| {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

/// A command line given as a YAML list or as whitespace-separated words.
pub fn list_or_words<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    list_split_by(deserializer, |text| {
        text.split_whitespace().map(String::from).collect()
    })
}

fn list_split_by<'de, D>(
    deserializer: D,
    split: fn(&str) -> Vec<String>,
) -> Result<Option<Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(
        match Option::<NativeOrText<Vec<String>>>::deserialize(deserializer)? {
            None => None,
            Some(NativeOrText::Native(items)) => Some(items),
            Some(NativeOrText::Text(text)) => Some(split(&text)),
        },
    )
}

/// A duration in humantime form (`500ms`, `2s`, `1m`).
pub fn duration<'de, D>(deserializer: D) -> Result<Option<Duration>, D::Error>
where
    D: Deserializer<'de>,
{
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) => humantime::parse_duration(text.trim())
            .map(Some)
            .map_err(|err| serde::de::Error::custom(format!("{err} (examples: 500ms, 2s, 1m)"))),
    }
}

/// A mapping given natively or as YAML/JSON text (`{"cni": "cilium"}`).
pub fn mapping<'de, D>(deserializer: D) -> Result<Option<serde_yaml_ng::Mapping>, D::Error>
where
    D: Deserializer<'de>,
{
    match Option::<NativeOrText<serde_yaml_ng::Mapping>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(NativeOrText::Native(map)) => Ok(Some(map)),
        Some(NativeOrText::Text(text)) => serde_yaml_ng::from_str(&text)
            .map(Some)
            .map_err(|err| serde::de::Error::custom(format!("expected a mapping: {err}"))),
    }
}
