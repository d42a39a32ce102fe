//! The agent's configuration: the config file, a config fetched at boot (layered over it) and
//! the environment, through `AgentConfig::load` exactly as the agent loads them. A validated
//! config keeps its promises, and what the agent derives from it (the installer URL and pin,
//! the rke2 config.yaml with the pass-through `rke2-config` settings) is produced or refused
//! without a panic; a rendered config.yaml parses back.
//!
//! Framing: the file text, then optionally 0x00 and the environment (`key=value` lines, the key
//! in config spelling and turned into its `RKE2_BOOTSTRAP_*` variable, or `!NAME=value` for a raw
//! variable name), then optionally 0x00 and the fetched config's text.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rke2_bootstrap::bringup;
use rke2_bootstrap::config::layers::env_var_name;
use rke2_bootstrap::config::{is_valid_name, AgentConfig, Layers};
use rke2_bootstrap::rke2::config_yaml::{self, Rke2Config};
use rke2_bootstrap::rke2::installer;
use rke2_bootstrap::rke2::token::{JoinToken, Secret};
use rke2_bootstrap_fuzz::{scratch_dir, split_once};
use serde_yaml_ng::{Mapping, Value};

fuzz_target!(|data: &[u8]| {
    let (file, rest) = split_once(data, 0);
    let (env_text, fetched) = split_once(rest, 0);
    let dir = scratch_dir();
    let file_path = dir.join("config.yaml");
    std::fs::write(&file_path, file).expect("scratch write");
    let fetched_path = if fetched.is_empty() {
        None
    } else {
        let path = dir.join("fetched.yaml");
        std::fs::write(&path, fetched).expect("scratch write");
        Some(path)
    };
    let mut env = BTreeMap::new();
    for line in String::from_utf8_lossy(env_text).lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let var = match key.strip_prefix('!') {
            Some(raw) => raw.to_string(),
            None => env_var_name("RKE2_BOOTSTRAP_", key),
        };
        env.insert(var, value.to_string());
    }
    let layers = Layers {
        file: Some(file_path),
        fetched_file: fetched_path,
        env,
        // not the host's name: the outcome must not depend on the machine
        flags: BTreeMap::from([("node-name".to_string(), "fuzz-node".to_string())]),
        ..Layers::default()
    };
    let cfg = match AgentConfig::load(&layers) {
        Ok(cfg) => cfg,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    // what validation promises the rest of the agent
    assert!(is_valid_name(&cfg.cluster_name), "{:?}", cfg.cluster_name);
    assert!(is_valid_name(&cfg.node_name), "{:?}", cfg.node_name);
    assert!(cfg.servers % 2 == 1
            && !matches!(cfg.electorate, Some(rke2_bootstrap::election::Electorate::Counted(0))));
    assert!(!cfg.service_manager.is_empty());

    let _ = installer::check_url(&cfg.installer.url, cfg.installer.allow_insecure_http);
    if let Some(pin) = &cfg.installer.sha256 {
        let _ = installer::normalize_sha256(pin);
    }

    // config.yaml as the agent renders it for a server
    let token = JoinToken::from_secret(Secret::new("fuzz-secret-0123".to_string()).unwrap());
    let extra: BTreeMap<String, Value> = cfg
        .rke2_config
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
        .collect();
    let rke2 = Rke2Config {
        token,
        server: Some(config_yaml::server_url("10.0.0.9")),
        tls_san: bringup::tls_sans(&cfg),
        node_name: Some(cfg.node_name.clone()),
        node_ip: Some("10.0.0.5".parse().unwrap()),
        node_taint: Vec::new(),
        extra: extra.clone(),
    };
    if let Ok(rendered) = config_yaml::render(&rke2) {
        assert!(config_yaml::is_managed(&rendered));
        let parsed: Mapping = serde_yaml_ng::from_str(&rendered)
            .unwrap_or_else(|e| panic!("rendered config.yaml does not parse: {e}\n{rendered}"));
        assert_eq!(
            parsed.get("token").and_then(Value::as_str),
            Some("fuzz-secret-0123"),
            "{rendered}"
        );
        for key in extra.keys() {
            assert!(
                parsed.contains_key(key.as_str()),
                "extra {key:?} lost\n{rendered}"
            );
        }
    }
});
