//! Direct health checks (addresses of the block `blocks::LB_HEALTH`): a server that gossip still calls ready but that
//! stopped answering (its process crashed; gossip at its slow pace takes tens of seconds to call
//! it dead) leaves the LB file; a sidecar with the checks off, fed the same view, keeps it.

mod common;

use common::*;
use rke2_lb_sidecar::config::LbKind;
use rke2_lb_sidecar::ReloadAction;

const ID: u8 = blocks::LB_HEALTH.id(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_leaves_the_lb_while_gossip_still_calls_it_ready() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let configs: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let mut c = sidecar_config(LbKind::Haproxy, ID, dir.path());
            c.validate = Some(vec![]);
            c.reload = Some(ReloadAction::Command(vec!["true".into()]));
            c.health_check.enabled = i == 0;
            c
        })
        .collect();
    let mut standins = standins(ID, 3).await;
    let members = vec![
        initializer("m1", ip(ID, 1)),
        server("m2", ip(ID, 2)),
        server("m3", ip(ID, 3)),
    ];
    let checked = Driver::start(configs[0].clone(), members.clone());
    let unchecked = Driver::start(configs[1].clone(), members);
    checked.wait_applied(&["m1", "m2", "m3"]).await;
    unchecked.wait_applied(&["m1", "m2", "m3"]).await;

    // m3 crashes: its listeners close, its gossip entry stays ready.
    drop(standins.pop());
    let status = checked.wait_applied(&["m1", "m2"]).await;
    assert!(
        status.reason.contains("not answering health checks"),
        "{}",
        status.reason
    );
    assert_eq!(
        unchecked
            .status()
            .servers
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m2", "m3"],
        "without checks only gossip can remove it"
    );

    // It comes back: one answered check lifts the veto.
    standins.push(StandIn::start("m3", ip(ID, 3)).await);
    checked.wait_applied(&["m1", "m2", "m3"]).await;
    checked.stop().await;
    unchecked.stop().await;
}
