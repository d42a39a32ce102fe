//! `rke2-standin --root <root> --kind server|agent`: plays `rke2 server` / `rke2 agent` in the
//! end-to-end tests. See the `standin` module of the test harness for what it does.
//!
//! `--root /` is refused (the stand-in would write the machine's own `/etc/rancher` and
//! `/var/lib/rancher`) unless `--in-container` is given and systemd says this is a container
//! (`/run/systemd/container`): the systemd end-to-end test installs the stand-in as `rke2` inside
//! throw-away systemd-nspawn containers, where `/` is the container's.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rke2_bootstrap_tests::standin::{self, Kind, Settings};

fn parse_args() -> Result<(PathBuf, Kind)> {
    let mut root = None;
    let mut kind = None;
    let mut in_container = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--root" => root = Some(PathBuf::from(value()?)),
            "--kind" => kind = Some(value()?.parse::<Kind>()?),
            "--in-container" => in_container = true,
            "-h" | "--help" => {
                println!("usage: rke2-standin --root <root> --kind server|agent [--in-container]");
                std::process::exit(0);
            }
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let usage = "usage: rke2-standin --root <root> --kind server|agent";
    let root = root.with_context(|| format!("--root is required; {usage}"))?;
    let kind = kind.with_context(|| format!("--kind is required; {usage}"))?;
    if root == std::path::Path::new("/") {
        let container = std::path::Path::new("/run/systemd/container");
        if !in_container {
            bail!("refusing to run with root /: the stand-in only runs under a temporary root");
        }
        if !container.exists() {
            bail!(
                "refusing to run with root / and --in-container: {} does not exist, so this is \
                 not a container",
                container.display()
            );
        }
    }
    Ok((root, kind))
}

fn main() -> ExitCode {
    let (root, kind) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("rke2-standin: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = (|| -> Result<()> {
        let settings = Settings::from_env()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(standin::run(&root, kind, settings))
    })();
    match result {
        Ok(()) => {
            standin::log(kind, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            standin::log(kind, format!("fatal: {}", format!("{e:#}").to_lowercase()));
            ExitCode::FAILURE
        }
    }
}
