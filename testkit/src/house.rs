//! House rules read from the sources: no import cycle among a crate's modules, and no product
//! function longer than [`MAX_FUNCTION_LINES`] unless a comment right above it says why it reads
//! better whole. Checked by a test, so a change that breaks one fails with the modules or the
//! function named, not in review.
//!
//! A reading of the text, not of the compiler's resolution: references are `crate::a::b` paths
//! (`use crate::{a, b::c}` included) and `super::x` paths, outside comments and outside the
//! `#[cfg(test)]` module at the end of a file (tests may reach anywhere). A module's own
//! submodules do not count as references (a parent declares its children), nor does a child's
//! reference to its parent's items.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest product function that needs no comment.
pub const MAX_FUNCTION_LINES: usize = 100;

/// What a comment right above a longer function says to be allowed.
pub const READS_BETTER_WHOLE: &str = "reads better whole";

/// A crate's modules, by path (`gossip::cluster`), each with its file.
pub fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file
            .strip_prefix(src)
            .expect("under src")
            .with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        // Binaries (`src/bin/*.rs`) are crates of their own.
        if parts.first().map(String::as_str) == Some("bin") {
            continue;
        }
        out.insert(parts.join("::"), file);
    }
    out
}

/// The product files under `dir`: every `.rs` file but those a parent declares as a test
/// module (`#[cfg(test)] mod sim_tests;`).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let all = all_rust_files(dir);
    let tests = test_module_files(&all);
    all.into_iter().filter(|f| !tests.contains(f)).collect()
}

/// Files of modules declared right below a `#[cfg(test)]`: `x.rs` or `x/mod.rs` next to a
/// `mod.rs`/`lib.rs`/`main.rs`, else in the declaring file's own directory (`a.rs` -> `a/x.rs`).
fn test_module_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            let Some(name) = pair[1]
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            if pair[0] != "#[cfg(test)]" {
                continue;
            }
            let stem = file.file_stem().unwrap_or_default();
            let dir = if ["mod", "lib", "main"].iter().any(|s| stem == *s) {
                file.parent().unwrap_or(Path::new("")).to_path_buf()
            } else {
                file.with_extension("")
            };
            out.insert(dir.join(format!("{name}.rs")));
            out.insert(dir.join(name).join("mod.rs"));
        }
    }
    out
}

fn all_rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Where the file's inline test module (`#[cfg(test)]` then `mod tests {`) begins, if it has one.
fn test_module_start(text: &str) -> usize {
    let mut offset = 0;
    let mut previous: Option<(usize, &str)> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some((start, "#[cfg(test)]")) = previous {
            if trimmed.starts_with("mod ") && trimmed.contains('{') {
                return start;
            }
        }
        previous = Some((offset, trimmed));
        offset += line.len();
    }
    text.len()
}

/// The product code of a file: comment lines dropped, the inline test module cut off.
fn product_code(text: &str) -> String {
    text[..test_module_start(text)]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `code` (of module `me`) refers to.
fn references(me: &str, code: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let mut paths: Vec<Vec<String>> = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent_of(me))] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // `super::super::x`: one level up per `super`.
            let mut base = base.clone();
            while let Some(after) = rest.strip_prefix("super::") {
                base.pop();
                rest = after;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let close = group.find('}').unwrap_or(group.len());
                for item in group[..close].split(',') {
                    paths.push(join(&base, item.trim()));
                }
            } else {
                paths.push(join(&base, rest));
            }
        }
    }
    let mut found = BTreeSet::new();
    for path in paths {
        // The longest prefix that names a module.
        for len in (1..=path.len()).rev() {
            let candidate = path[..len].join("::");
            if known.contains_key(&candidate) {
                let own_child = candidate.starts_with(&format!("{me}::"));
                let own_parent = me.starts_with(&format!("{candidate}::"));
                if candidate != me && !own_child && !own_parent {
                    found.insert(candidate);
                }
                break;
            }
        }
    }
    found
}

/// What `super` names in module `me` (`a/mod.rs` and `a.rs` are both module `a`).
fn parent_of(me: &str) -> Vec<String> {
    let mut parts: Vec<String> = me
        .split("::")
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    parts.pop();
    parts
}

fn join(base: &[String], path: &str) -> Vec<String> {
    let mut out = base.to_vec();
    for segment in path.split("::") {
        let ident: String = segment
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        out.push(ident);
        if !segment.chars().all(|c| c.is_alphanumeric() || c == '_') {
            break;
        }
    }
    out
}

/// Every import cycle among the modules under `src`, each as its modules, sorted.
pub fn module_cycles(src: &Path) -> Vec<Vec<String>> {
    let known = modules(src);
    let graph: BTreeMap<String, BTreeSet<String>> = known
        .iter()
        .map(|(module, file)| {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let refs = references(module, &product_code(&text), &known);
            (module.clone(), refs)
        })
        .collect();
    strongly_connected(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect()
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                component.sort();
                self.out.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out
}

/// Product functions under `src` longer than [`MAX_FUNCTION_LINES`] without a
/// [`READS_BETTER_WHOLE`] comment right above them: `(file, function, lines)`.
pub fn long_functions(src: &Path) -> Vec<(PathBuf, String, usize)> {
    let mut out = Vec::new();
    for file in rust_files(src) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<&str> = text[..test_module_start(&text)].lines().collect();
        for (name, start, len) in functions(&lines) {
            let excused = lines[..start]
                .iter()
                .rev()
                .take_while(|l| {
                    let t = l.trim_start();
                    t.starts_with("//") || t.starts_with("#[")
                })
                .any(|l| l.contains(READS_BETTER_WHOLE));
            if len > MAX_FUNCTION_LINES && !excused {
                out.push((file.clone(), name, len));
            }
        }
    }
    out
}

/// `(name, first line, length in lines)` of every function with a body: from its `fn` line to
/// the closing brace at the same indentation.
fn functions(lines: &[&str]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(name) = fn_name(trimmed) else {
            i += 1;
            continue;
        };
        // The line that opens the body (a declaration ending in `;` has none).
        let mut open = i;
        while open < lines.len()
            && !lines[open].trim_end().ends_with('{')
            && !lines[open].trim_end().ends_with(';')
        {
            open += 1;
        }
        if open >= lines.len() || lines[open].trim_end().ends_with(';') {
            i = open + 1;
            continue;
        }
        let close = (open + 1..lines.len())
            .find(|&k| {
                let l = lines[k];
                l.len() - l.trim_start().len() == indent && l.trim_start().starts_with('}')
            })
            .unwrap_or(lines.len() - 1);
        out.push((name, i, close - i + 1));
        i = close + 1;
    }
    out
}

fn fn_name(line: &str) -> Option<String> {
    const QUALIFIERS: [&str; 6] = [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ];
    let mut rest = line;
    while let Some(after) = QUALIFIERS.iter().find_map(|q| rest.strip_prefix(q)) {
        rest = after;
    }
    let rest = rest.strip_prefix("fn ")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn a_cycle_through_a_grouped_use_and_super_is_found_and_tests_and_comments_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
                ("a.rs", "use crate::{b::inner::Thing, c};\n"),
                ("b/mod.rs", "pub mod inner;\n"),
                ("b/inner.rs", "pub struct Thing;\nuse super::super::a::X;\n"),
                (
                    "c.rs",
                    "// see crate::a\n#[cfg(test)]\nmod tests { use crate::a; }\n",
                ),
            ],
        );
        assert_eq!(
            module_cycles(dir.path()),
            vec![vec!["a".to_string(), "b::inner".to_string()]]
        );
        std::fs::write(dir.path().join("b/inner.rs"), "pub struct Thing;\n").unwrap();
        assert!(module_cycles(dir.path()).is_empty());
    }

    #[test]
    fn long_functions_are_named_unless_a_comment_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let body = "    let x = 1;\n".repeat(MAX_FUNCTION_LINES);
        let text = format!(
            "pub fn long() {{\n{body}}}\n\n// This state machine reads better whole.\nfn excused() {{\n{body}}}\n\nfn short() {{\n}}\n"
        );
        let tests_only = format!("fn also_long() {{\n{body}}}\n");
        write(
            dir.path(),
            &[
                ("lib.rs", &format!("#[cfg(test)]\nmod sim_tests;\n{text}")),
                ("sim_tests.rs", &tests_only),
            ],
        );
        let found = long_functions(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, "long");
        assert_eq!(found[0].2, MAX_FUNCTION_LINES + 2);
    }
}
