//! Everything that touches RKE2 itself: its config file, the join token, the installer, the
//! service manager, readiness probes, and clearing what blocks a wiped host's rejoin.

pub mod ca_bundle;
pub mod config_yaml;
pub mod installer;
pub mod kube;
pub mod probe;
pub mod rejoin;
pub mod service;
pub mod token;
