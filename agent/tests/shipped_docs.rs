//! What users copy from (README.md, the packaged configs, the cloud-init and PXE examples) agrees
//! with the code: the settings' names, defaults and help as `config::AGENT_KEYS` states them, and
//! the gossip port.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rke2_bootstrap::config::{AgentConfig, KeySpec, Layers, AGENT_KEYS};
use rke2_bootstrap::gossip::DEFAULT_GOSSIP_PORT;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// README.md and every text file under packaging/ that users read or install.
fn shipped_text_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut dirs = vec![repo().join("packaging")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "md" || e == "yaml" || e == "yml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The port numbers of the `host:port` addresses in `text` (`10.0.0.11:7947`, `[fd00::11]:7947`,
/// `server-1.lan:7947`); URLs (`https://...`) have none.
fn ports(text: &str) -> Vec<u16> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b':' || i == 0 {
            continue;
        }
        let before = bytes[i - 1];
        if !(before.is_ascii_alphanumeric() || before == b']') {
            continue;
        }
        let digits: String = text[i + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let after = bytes.get(i + 1 + digits.len()).copied();
        if digits.is_empty() || after.is_some_and(|a| a.is_ascii_alphanumeric() || a == b':') {
            continue;
        }
        if let Ok(port) = digits.parse() {
            found.push(port);
        }
    }
    found
}

/// Every gossip address written in a shipped file: on a line that names `seeds`, `bind-addr` or
/// `advertise-addr` (YAML, commented YAML, flags, kernel command lines, the README table), and
/// in the YAML list items under a `seeds:` line. Returns (file, line number, port).
fn gossip_ports_in(path: &Path) -> Vec<(usize, u16)> {
    const KEYS: [&str; 3] = ["seeds", "bind-addr", "advertise-addr"];
    let text = std::fs::read_to_string(path).unwrap();
    let mut found = Vec::new();
    let mut in_seed_list = false;
    for (n, line) in text.lines().enumerate() {
        let bare = line.trim_start().trim_start_matches('#').trim();
        let key_at = KEYS.iter().filter_map(|k| line.find(k)).min();
        if let Some(at) = key_at {
            found.extend(ports(&line[at..]).into_iter().map(|p| (n + 1, p)));
            in_seed_list = bare.ends_with("seeds:");
        } else if in_seed_list && bare.starts_with("- ") {
            found.extend(ports(bare).into_iter().map(|p| (n + 1, p)));
        } else {
            in_seed_list = false;
        }
    }
    found
}

#[test]
fn port_extraction_finds_the_address_forms_users_write() {
    assert_eq!(
        ports("seeds=10.0.0.11:7947,[fd00::11]:7948 x"),
        [7947, 7948]
    );
    assert_eq!(ports("- server-1.lan:7949"), [7949]);
    assert_eq!(ports("`0.0.0.0:7947` | https://get.rke2.io"), [7947]);
    assert!(ports("time 10:30am, fd00::1").is_empty());
}

/// The gossip port is the code's default everywhere a user copies an address from: 7947, not
/// Serf's 7946, which MetalLB's speaker holds on every node.
#[test]
fn every_shipped_gossip_address_uses_the_default_port() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in shipped_text_files() {
        for (line, port) in gossip_ports_in(&file) {
            checked += 1;
            if port != DEFAULT_GOSSIP_PORT {
                wrong.push(format!("{}:{line}: port {port}", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "gossip addresses not on port {DEFAULT_GOSSIP_PORT}:\n{}",
        wrong.join("\n")
    );
    // The README, both packaged configs, every cloud-init example and the PXE notes name some.
    assert!(checked >= 40, "only {checked} gossip addresses found");

    let bind_help = AGENT_KEYS
        .iter()
        .find(|k| k.name == "bind-addr")
        .unwrap()
        .help;
    assert_eq!(ports(bind_help), [DEFAULT_GOSSIP_PORT], "{bind_help}");
}

/// README's configuration table, as the keys state it.
fn readme_table(keys: &[KeySpec]) -> String {
    let mut table = String::from("| key | default | meaning |\n|---|---|---|\n");
    for key in keys {
        // A value is code; a description (`the hostname`) is prose.
        let default = match key.default_text() {
            None => "none".to_string(),
            Some(text) if text.contains(' ') => text.to_string(),
            Some(text) => format!("`{text}`"),
        };
        table.push_str(&format!(
            "| `{}` | {default} | {} |\n",
            key.name,
            key.summary()
        ));
    }
    table
}

/// README's table of keys is the list in the code, row for row: a key added, renamed or given
/// another default there shows up here. On a mismatch the expected table is printed, to paste.
#[test]
fn readme_configuration_table_is_the_key_list() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let expected = readme_table(AGENT_KEYS);
    assert!(
        readme.contains(&expected),
        "README.md's configuration table differs from config::AGENT_KEYS; expected:\n{expected}"
    );
}

#[test]
fn defaults_are_stated_one_way() {
    for key in AGENT_KEYS {
        if key.help.contains("default") {
            let default = key.default_text();
            assert!(
                default.is_some_and(|d| !d.is_empty() && !d.contains('(')),
                "{}: end the help with `(default: VALUE)`: {:?}",
                key.name,
                key.help
            );
        }
        assert!(
            !key.summary().contains('|'),
            "{}: a `|` breaks the table",
            key.name
        );
    }
}

fn load(flags: &[(&str, &str)]) -> AgentConfig {
    let mut all: BTreeMap<String, String> = flags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.insert("node-name".into(), "n1".into());
    // A host needs an electorate; one seat keeps every other key at its default.
    all.entry("initial-servers".into())
        .or_insert_with(|| "n1".into());
    AgentConfig::load(&Layers {
        file: None,
        fetched_file: None,
        env: BTreeMap::new(),
        kernel: BTreeMap::new(),
        flags: all,
    })
    .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
}

/// Every default stated as a value is the default: giving it explicitly changes nothing. Paths
/// under `<root>` and `<state-dir>` are checked with their own defaults filled in.
#[test]
fn stated_defaults_are_the_defaults() {
    let implicit = load(&[]);
    let mut checked = Vec::new();
    for key in AGENT_KEYS {
        let Some(default) = key.default_text() else {
            continue;
        };
        let value = default
            .replace("<root>/", "/")
            .replace("<state-dir>", "/var/lib/rke2-bootstrap");
        if value.contains(' ') || value.contains('<') {
            continue;
        }
        assert_eq!(
            load(&[(key.name, &value)]),
            implicit,
            "{}: the help says the default is {default}",
            key.name
        );
        checked.push(key.name);
    }
    assert!(checked.len() >= 15, "only {checked:?}");
}

/// The packaged sample config shows every key (set, or as a commented example), so that it is
/// the place to discover them.
#[test]
fn sample_config_shows_every_key() {
    let path = repo().join("packaging/config/config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let shown = |name: &str| {
        text.lines().any(|line| {
            let bare = line.strip_prefix("# ").unwrap_or(line);
            bare.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(':'))
        })
    };
    let missing: Vec<&str> = AGENT_KEYS
        .iter()
        .map(|k| k.name)
        .filter(|name| !shown(name))
        .collect();
    assert!(
        missing.is_empty(),
        "{} does not show {missing:?}",
        path.display()
    );
}
