//! `bench`: our agents and LB sidecar against Serf agents with an LB event handler, on loopback.
//! `bench --quick` for CI, `bench --json FILE` for machines, `bench --help` for the rest; the
//! method is in docs/benchmarks.md.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
