//! rke2-lb-sidecar: keeps an nginx or HAProxy upstream list equal to the set of ready RKE2
//! control-plane servers seen over gossip, so nobody edits the LB by hand when a server comes or
//! goes.
//!
//! Data flows one way, and only the last step does I/O:
//! membership view -> routable set ([`view`]) -> flap damping ([`damper`]) -> coalescing
//! ([`debounce`]) -> config text ([`render`]) -> validate, swap, reload ([`apply`]). Between the
//! view and the damper, [`health`] vetoes servers that stopped answering direct checks.
//!
//! The modules depend on one another the same way. Each one uses only modules to its left in
//! this chain, never one to its right (`tests/module_chain.rs` reads this line and checks it):
//!
//! upstream -> view -> health -> damper -> debounce -> config -> render -> apply -> status -> sidecar
//!
//! - [`upstream`]: one backend server, and the name and address rules every server must pass.
//! - [`view`], [`health`], [`damper`], [`debounce`]: the pure steps from gossip membership to
//!   the set the LB should list, each with its own settings type.
//! - [`config`]: every setting, checked once at startup (a reload signal is parsed there).
//! - [`render`]: a pure function from the upstream list to everything the apply step writes.
//! - [`apply`]: the only module that touches the LB's files and processes.
//! - [`status`]: the record of what the LB routes to and what happened last.
//! - [`sidecar`]: the run loop that wires the steps together.

pub mod apply;
pub mod config;
pub mod damper;
pub mod debounce;
pub mod health;
pub mod render;
pub mod sidecar;
pub mod status;
pub mod upstream;
pub mod view;

pub use config::{LbKind, NginxLayout, ReloadAction, SidecarConfig};
pub use sidecar::{render_config, run, Sidecar};
pub use status::{Outcome, Status};
pub use upstream::Upstream;
