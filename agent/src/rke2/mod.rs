//! Everything that touches RKE2 itself: its config file, the join token, the installer, the
//! service manager and readiness probes.

pub mod config_yaml;
pub mod installer;
pub mod probe;
pub mod service;
pub mod token;
