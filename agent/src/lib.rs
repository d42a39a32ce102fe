//! rke2-bootstrap: every host discovers its peers over sealed gossip, the peers elect exactly one
//! first server, and each host writes its own RKE2 config, installs RKE2 and starts the right
//! service.
//!
//! Data flows one way: gossip state -> typed membership view ([`gossip::schema`]) -> election and
//! bring-up decisions ([`election`], [`bringup`]) -> files and commands ([`rke2`], [`fsutil`]).

pub mod boot_config;
pub mod bringup;
pub mod child;
pub mod cmdline;
pub mod config;
pub mod daemon;
pub mod decommission;
pub mod election;
pub mod exit;
pub mod fsutil;
pub mod gossip;
pub mod host_state;
pub mod key_reload;
pub mod node_addr;
pub mod process;
pub mod release;
pub mod rke2;
pub mod secret;
pub mod shape;
pub mod since;
pub mod status_socket;
