//! Golden files: rendered output compared with a checked-in copy.
//!
//! One rule for every crate: `UPDATE_GOLDEN=1` rewrites the golden copies instead of comparing
//! (then review the diff); any other value, or none, compares.

use std::path::Path;

/// The environment variable that, set to `1`, rewrites golden files instead of comparing.
pub const UPDATE_ENV: &str = "UPDATE_GOLDEN";

/// Whether this run rewrites golden files.
pub fn updating() -> bool {
    std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1")
}

/// Compares `actual` with the file at `path`, or writes it there when [`updating`]. On a
/// difference, panics naming the first differing line, with the whole output to copy from.
#[track_caller]
pub fn check_golden(path: &Path, actual: &str) {
    if updating() {
        std::fs::write(path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with {UPDATE_ENV}=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from its golden copy at line {}:\n  golden: {:?}\n  actual: {:?}\n\
             full output:\n{actual}\n(rerun with {UPDATE_ENV}=1 to accept)",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_output_passes_and_a_difference_names_its_line() {
        if updating() {
            return;
        }
        let dir = tempfile_dir();
        let path = dir.join("golden.txt");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        check_golden(&path, "a\nb\nc\n");
        let err = std::panic::catch_unwind(|| check_golden(&path, "a\nx\nc\n")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("at line 2"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rke2-testkit-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
