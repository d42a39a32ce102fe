//! `rke2-demo`: a whole zero-touch cluster on this machine (see the `demo` module of the test
//! harness). A development tool built from the workspace, never packaged: it runs the workspace's
//! own binaries and the harness's fixtures.

use std::process::ExitCode;

use clap::Parser;
use rke2_bootstrap_tests::demo::{self, DemoArgs};

fn main() -> ExitCode {
    rke2_bootstrap::exit::outcome("rke2-demo", demo::run(DemoArgs::parse()))
}
