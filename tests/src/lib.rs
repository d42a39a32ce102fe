//! Test harness shared by the end-to-end tests and the benchmark, and the RKE2 stand-in's logic.
//!
//! - [`InstallerServer`]: serves the installer script over HTTP on 127.0.0.1, with fault injection.
//! - [`HostRoot`]: one temp dir per simulated host, with readers for what the agent and the
//!   stand-ins leave there.
//! - [`ChildGuard`]: no process started by a test outlives it.
//! - [`wait_until`] / [`wait_until_async`]: polling with a useful timeout message.
//! - [`loopback_ip`]: per-test loopback addresses.
//! - [`standin`]: the stand-in for `rke2 server` / `rke2 agent` (the `rke2-standin` binary).

pub mod http;
pub mod standin;
