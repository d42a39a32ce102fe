//! The crate's modules form the one-way chain that lib.rs's module doc writes out: each module
//! refers (`crate::<module>`) only to modules before it. Read from the sources, so a new import
//! against the flow fails here, with the offending line, before it turns into a cycle.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The chain as lib.rs's doc writes it: the doc line made only of module names joined by `->`.
fn documented_chain(lib: &str) -> Vec<String> {
    let chains: Vec<Vec<String>> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|text| {
            text.split("->")
                .map(|word| word.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|words| {
            words.len() > 2
                && words.iter().all(|w| {
                    !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
        })
        .collect();
    assert_eq!(
        chains.len(),
        1,
        "lib.rs's module doc must have exactly one line `a -> b -> ...` of module names, found {chains:?}"
    );
    chains.into_iter().next().unwrap()
}

fn declared_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
        .chain(
            lib.lines()
                .filter_map(|line| line.trim().strip_prefix("mod ")),
        )
        .map(|rest| rest.trim_end_matches(';').trim().to_string())
        .collect()
}

/// The leading identifier of `text`.
fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first path segment after every `crate::` in a line of code: `crate::a::X` gives `a`,
/// `crate::{a::X, b}` gives `a` and `b`.
fn crate_references(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut segment_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => segment_start = true,
                    c if c.is_whitespace() => {}
                    _ if segment_start => {
                        found.push(ident(&group[i..]).to_string());
                        segment_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest).to_string());
        }
    }
    found
}

#[test]
fn modules_only_use_modules_before_them_in_the_documented_chain() {
    let lib = read(&src_dir().join("lib.rs"));
    let chain = documented_chain(&lib);
    let declared = declared_modules(&lib);
    let in_chain: BTreeSet<String> = chain.iter().cloned().collect();
    assert_eq!(in_chain.len(), chain.len(), "a module twice in {chain:?}");
    assert_eq!(
        in_chain, declared,
        "the documented chain and lib.rs's `mod` lines name different modules"
    );

    let mut violations = Vec::new();
    for (position, module) in chain.iter().enumerate() {
        let path = src_dir().join(format!("{module}.rs"));
        for (number, line) in read(&path).lines().enumerate() {
            // Doc links are not dependencies.
            if line.trim_start().starts_with("//") {
                continue;
            }
            for target in crate_references(line) {
                let allowed = chain[..position].contains(&target);
                if !allowed {
                    let why = if target == *module {
                        "its own module, say `self::` or nothing".to_string()
                    } else if chain.contains(&target) {
                        "a module later in the chain".to_string()
                    } else {
                        "not a module: name the module that defines it".to_string()
                    };
                    violations.push(format!(
                        "src/{module}.rs:{}: `crate::{target}` is {why}: {}",
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the chain {}:\n{}",
        chain.join(" -> "),
        violations.join("\n")
    );
}

#[test]
fn references_are_found_in_every_spelling() {
    assert_eq!(crate_references("use crate::view::Upstream;"), ["view"]);
    assert_eq!(
        crate_references("use crate::{config::{A, B}, damper::C, health};"),
        ["config", "damper", "health"]
    );
    assert_eq!(
        crate_references("    pub x: crate::health::HealthCheckConfig, y: crate::apply::Z"),
        ["health", "apply"]
    );
    assert!(crate_references("use rke2_bootstrap::fsutil;").is_empty());
    let lib = "//! a\n//! x -> y -> z\n//! data -> flows one way\npub mod x;\n";
    assert_eq!(documented_chain(lib), ["x", "y", "z"]);
}
