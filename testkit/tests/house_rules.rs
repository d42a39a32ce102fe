//! The house rules (see `rke2_testkit::house`) for every crate of the workspace: no import cycle
//! among a crate's modules; no product function over the limit without a comment saying why.

use std::path::{Path, PathBuf};

use rke2_testkit::house::{long_functions, module_cycles, MAX_FUNCTION_LINES, READS_BETTER_WHOLE};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The source trees of the workspace's crates.
fn crate_sources() -> Vec<PathBuf> {
    ["agent/src", "lb-sidecar/src", "tests/src", "testkit/src"]
        .iter()
        .map(|dir| workspace().join(dir))
        .inspect(|src| assert!(src.is_dir(), "{} is missing", src.display()))
        .collect()
}

#[test]
fn no_crate_has_an_import_cycle() {
    let cycles: Vec<(PathBuf, Vec<String>)> = crate_sources()
        .into_iter()
        .flat_map(|src| {
            module_cycles(&src)
                .into_iter()
                .map(move |cycle| (src.clone(), cycle))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "modules that import each other (directly or around a loop); make the data flow one \
         way: {cycles:#?}"
    );
}

#[test]
fn product_functions_stay_short_or_say_why() {
    // The benchmark and the RKE2 stand-in are tools, not product; the daemons' crates are.
    let long: Vec<_> = ["agent/src", "lb-sidecar/src"]
        .iter()
        .flat_map(|dir| long_functions(&workspace().join(dir)))
        .collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines: split them, or say in a comment right above \
         why one {READS_BETTER_WHOLE}: {long:#?}"
    );
}
