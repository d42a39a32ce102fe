//! The kernel command line (`/proc/cmdline`, PXE): any line parses or is refused with an error
//! naming the argument; what it accepts is a known key with a value, a pinned config URL, and
//! passes through the config layer (`AgentConfig::load`) to a validated config or a clean error.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rke2_bootstrap::cmdline;
use rke2_bootstrap::config::{is_valid_name, AgentConfig, Layers};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let parsed = match cmdline::parse(&line) {
        Ok(parsed) => parsed,
        Err(err) => {
            let msg = err.to_string();
            assert!(msg.starts_with("kernel argument `"), "{msg}");
            return;
        }
    };
    for (key, value) in &parsed.overrides {
        assert!(cmdline::KNOWN_KEYS.contains(&key.as_str()), "{key}");
        assert!(!value.is_empty(), "{key}");
    }
    if let Some((url, sha)) = &parsed.config_url {
        assert!(url.contains("://"), "{url}");
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{sha}"
        );
    }
    let result = AgentConfig::load(&Layers {
        kernel: parsed.overrides.clone(),
        flags: BTreeMap::from([("node-name".to_string(), "fuzz-node".to_string())]),
        ..Layers::default()
    });
    match result {
        Ok(cfg) => {
            assert!(is_valid_name(&cfg.cluster_name));
            assert!(cfg.servers % 2 == 1
            && !matches!(cfg.electorate, Some(rke2_bootstrap::election::Electorate::Counted(0))));
        }
        Err(err) => {
            // a key the command line accepts is never unknown to the config
            let msg = err.to_string();
            assert!(!msg.starts_with("unknown key"), "{msg}");
        }
    }
});
