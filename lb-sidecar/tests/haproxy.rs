//! The sidecar driving a real HAProxy on loopback. Test ids 121-129.

mod common;

use common::*;
use rke2_lb_sidecar::config::LbKind;
use rke2_lb_sidecar::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_membership() {
    membership_scenario(LbKind::Haproxy, blocks::LB_HAPROXY.id(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_burst_of_changes_is_coalesced() {
    burst_scenario(LbKind::Haproxy, blocks::LB_HAPROXY.id(1)).await;
}

fn sample_template() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/sample-haproxy.cfg.j2"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_config_failing_validation_leaves_lb_serving() {
    let template = sample_template().replace(
        "    mode tcp",
        "    mode tcp\n{% if servers|length > 2 %}    bogus_keyword on\n{% endif %}",
    );
    rejected_config_scenario(LbKind::Haproxy, blocks::LB_HAPROXY.id(2), &template).await;
}

/// The validator accepts a file the LB then cannot start (a bind on an address a stand-in server
/// already holds): the reload fails, the previous file is restored and reloaded, the LB keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_failed_reload_rolls_back() {
    let id = blocks::LB_HAPROXY.id(3);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _standins = standins(id, 3).await;
    let config = sidecar_config(LbKind::Haproxy, id, d);
    let template = sample_template().replace(
        "{% for name, listen",
        "{% if servers|length > 2 %}\nfrontend unbindable\n    bind {{ servers[0].supervisor }}\n    \
         default_backend rke2_supervisor\n{% endif %}\n{% for name, listen",
    );
    let TemplatedLb {
        config,
        two,
        live_before,
        driver,
        lb: _lb,
        ..
    } = start_templated(config, id, d, &template).await;

    driver.set([two, vec![server("m3", ip(id, 3))]].concat());
    let status = driver
        .wait_status("the reload to fail and roll back", |s| {
            s.outcome == Outcome::RolledBack
        })
        .await;
    let error = status.last_error.clone().unwrap_or_default();
    assert!(error.contains("cannot bind"), "{error}");
    assert_eq!(
        std::fs::read_to_string(config.config_file()).unwrap(),
        live_before,
        "the last good file is live again"
    );
    wait_for_routing(id, &["m1", "m2"]).await;
    assert_only(id, &["m1", "m2"], 20).await;
    driver.stop().await;
}
