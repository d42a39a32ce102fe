//! `rke2-lb-sidecar`: wired to the gossip facade and the layered config loader once those land;
//! everything it runs lives in the library (`rke2_lb_sidecar::run`).

fn main() {
    eprintln!("rke2-lb-sidecar: not wired yet; the library entry point is rke2_lb_sidecar::run");
    std::process::exit(2);
}
