//! Gossip: chitchat over a sealed (authenticated, encrypted) UDP transport.
//!
//! No module outside this one touches chitchat or raw gossip keys.

pub mod keyring;
pub mod schema;
pub mod transport;
