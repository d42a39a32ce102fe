//! `rke2-lb-sidecar`. Wiring (config loader, gossip `Cluster::watch()`, signals) comes later;
//! everything it will run lives in the library: `rke2_lb_sidecar::run(config, view_rx, shutdown)`.

fn main() {}
