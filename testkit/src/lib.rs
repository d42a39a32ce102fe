//! The test kit: what the tests of every crate of the workspace share, each written once.
//!
//! - [`wait`]: polling until a condition holds ([`wait_until`], [`wait_until_async`]), with a
//!   timeout message naming the caller's line and the last failure.
//! - [`golden`]: comparing rendered output with a checked-in file ([`check_golden`]), and the one
//!   rule to rewrite them (`UPDATE_GOLDEN=1`).
//! - [`member`]: gossip members as the tests need them (a ready server, a joining one, an
//!   observer...), all built on `Member::new`.
//! - [`wire`]: an encoder of chitchat 0.11's datagram format, able to say what chitchat's own types
//!   cannot (split or malformed deltas, versions that contradict each other).
//! - [`blocks`]: the loopback address blocks (`127.<id>.x.x`) of every test and of the benchmark,
//!   in one table that refuses to compile when two blocks overlap.
//! - [`house`]: house rules read from the sources (no import cycle among a crate's modules, no
//!   product function over 100 lines without a comment saying why), checked for every crate by
//!   `tests/house_rules.rs`.
//!
//! Why a crate of its own: the tests of the agent, of the sidecar and the end-to-end harness all
//! need these, and a crate is the only place all three can share without the product crate
//! carrying test code. It is a dev-dependency of `rke2-bootstrap` and `rke2-lb-sidecar` and a
//! dependency of `rke2-bootstrap-tests` (the harness and the benchmark); it depends on
//! `rke2-bootstrap` for the member builder. Inside the agent's own unit tests (`agent/src`) that
//! would be a second copy of the agent's types, so those use only the parts that name no product
//! type ([`golden`], [`wait`]).

pub mod blocks;
pub mod golden;
pub mod house;
pub mod member;
pub mod wait;
pub mod wire;

pub use blocks::{loopback_ip, Block};
pub use golden::check_golden;
pub use wait::{wait_until, wait_until_async, Ready};
