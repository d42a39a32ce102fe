//! The sidecar driving a real nginx (stream module) on loopback. Test ids 101-109.

mod common;

use std::time::Duration;

use common::*;
use rke2_lb_sidecar::config::{LbKind, NginxLayout};
use rke2_lb_sidecar::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_follows_membership() {
    membership_scenario(LbKind::Nginx, blocks::LB_NGINX.id(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_burst_of_changes_is_coalesced() {
    burst_scenario(LbKind::Nginx, blocks::LB_NGINX.id(1)).await;
}

fn sample_template() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/sample-nginx.conf.j2"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_config_failing_validation_leaves_lb_serving() {
    let template = sample_template().replace(
        "worker_processes 2;",
        "worker_processes 2;\n{% if servers|length > 2 %}bogus_directive on;{% endif %}",
    );
    rejected_config_scenario(LbKind::Nginx, blocks::LB_NGINX.id(2), &template).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_broken_template_leaves_lb_serving_until_fixed() {
    let id = blocks::LB_NGINX.id(3);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _standins = standins(id, 3).await;
    let config = sidecar_config(LbKind::Nginx, id, d);
    let TemplatedLb {
        config,
        template_path,
        two,
        live_before,
        driver,
        lb: _lb,
        ..
    } = start_templated(config, id, d, &sample_template()).await;

    // An operator breaks the template (unclosed tag on line 3), then a server becomes ready.
    std::fs::write(&template_path, "# ok\n# ok\n{{ servers\n").unwrap();
    let three = [two, vec![server("m3", ip(id, 3))]].concat();
    driver.set(three);
    let status = driver
        .wait_status("the render to fail", |s| s.outcome == Outcome::RenderFailed)
        .await;
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains(&format!("template {} line 3", template_path.display())),
        "error names the template and line: {error}"
    );
    assert_eq!(
        std::fs::read_to_string(config.config_file()).unwrap(),
        live_before
    );
    wait_for_routing(id, &["m1", "m2"]).await;

    // Fixed: the next retry picks it up without any membership change.
    std::fs::write(&template_path, sample_template()).unwrap();
    driver.wait_applied(&["m1", "m2", "m3"]).await;
    wait_for_routing(id, &["m1", "m2", "m3"]).await;
    driver.stop().await;
}

/// An operator keeps their own nginx.conf and includes the sidecar's file; validation goes
/// through a wrapper main config, reload through the operator's nginx pid file.
async fn include_scenario(id: u8, layout: NginxLayout) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _standins = standins(id, 2).await;
    let mut config = sidecar_config(LbKind::Nginx, id, d);
    config.nginx.layout = layout;
    let fragment = d.join("rke2-lb.conf");
    config.config_file = Some(fragment.clone());
    let lb = lb_ip(id);
    let include = match layout {
        NginxLayout::StreamInclude => format!("include {};\n", fragment.display()),
        _ => format!(
            "stream {{\n    include {f};\n    server {{ listen {lb}:9345; proxy_pass rke2_supervisor; }}\n    \
             server {{ listen {lb}:6443; proxy_pass rke2_api; }}\n}}\n",
            f = fragment.display()
        ),
    };
    let main = d.join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 2;\n\
             pid {pid};\nerror_log stderr;\nevents {{ worker_connections 512; }}\n{include}",
            pid = d.join("nginx.pid").display()
        ),
    )
    .unwrap();
    let one = vec![initializer("m1", ip(id, 1))];
    write_initial(&config, &one);
    let _lb = start_lb(&config, id, d, &main).await;
    wait_for_routing(id, &["m1"]).await;
    let driver = Driver::start(config, [one, vec![server("m2", ip(id, 2))]].concat());
    driver.wait_applied(&["m1", "m2"]).await;
    wait_for_routing(id, &["m1", "m2"]).await;
    assert!(
        !d.join("rke2-lb.conf.candidate-check").exists(),
        "wrapper cleaned up"
    );
    driver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_stream_include_layout() {
    include_scenario(blocks::LB_NGINX.id(4), NginxLayout::StreamInclude).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_upstreams_include_layout() {
    include_scenario(blocks::LB_NGINX.id(5), NginxLayout::UpstreamsInclude).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_flapping_server_is_held_out() {
    let id = blocks::LB_NGINX.id(6);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _standins = standins(id, 2).await;
    let mut config = sidecar_config(LbKind::Nginx, id, d);
    config.damping.flap_limit = 2;
    config.damping.hold_down = Duration::from_secs(3);
    config.debounce.quiet = Duration::from_millis(50);
    let m1 = initializer("m1", ip(id, 1));
    let m2 = server("m2", ip(id, 2));
    write_initial(&config, std::slice::from_ref(&m1));
    let _lb = start_lb(&config, id, d, &config.config_file()).await;
    let driver = Driver::start(config, vec![m1.clone()]);
    // Each flip waits until the sidecar saw it: a watch channel coalesces what it did not.
    let has_m2 = |s: &rke2_lb_sidecar::Status| s.desired.iter().any(|u| u.name == "m2");
    for _ in 0..3 {
        driver.set(vec![m1.clone(), m2.clone()]);
        driver.wait_status("m2 added", has_m2).await;
        driver.set(vec![m1.clone(), dead(m2.clone())]);
        driver.wait_status("m2 removed", |s| !has_m2(s)).await;
    }
    driver.set(vec![m1.clone(), m2.clone()]);
    let status = driver
        .wait_status("m2 to be suppressed", |s| !s.suppressed.is_empty())
        .await;
    assert_eq!(status.suppressed[0].name, "m2");
    assert!(!has_m2(&status), "held out although ready");
    assert_only(id, &["m1"], 20).await;
    // Stable for the hold-down: released.
    driver.wait_applied(&["m1", "m2"]).await;
    wait_for_routing(id, &["m1", "m2"]).await;
    driver.stop().await;
}

/// `nginx -t` passes a file whose listen address is taken (it binds nothing), but the reload
/// that follows fails: nginx logs `[emerg] bind() ... failed` and keeps its old config. The
/// sidecar must see that the reload did not take (no new worker processes), restore the
/// previous file and report it, and apply the change once the address is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_reload_that_cannot_bind_is_rolled_back_not_counted() {
    let id = blocks::LB_NGINX.id(7);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _standins = standins(id, 3).await;
    // A third server adds a listener on a port another process holds.
    let taken = std::net::SocketAddr::new(lb_ip(id), 19443);
    // nginx explains a failed reload in its error log, where the sidecar looks for the reason.
    let template = sample_template()
        .replace(
            "\nstream {\n",
            &format!(
                "\nstream {{\n{{% if servers|length > 2 %}}    server {{ listen {taken}; \
                 proxy_pass rke2_api; }}\n{{% endif %}}"
            ),
        )
        .replace(
            "error_log stderr;",
            &format!("error_log {};", d.join("error.log").display()),
        );
    let mut config = sidecar_config(LbKind::Nginx, id, d);
    config.command_timeout = Duration::from_secs(2);
    let TemplatedLb {
        config,
        two,
        live_before,
        applied,
        driver,
        lb: _lb,
        ..
    } = start_templated(config, id, d, &template).await;

    let holder = std::net::TcpListener::bind(taken).unwrap();
    driver.set([two, vec![server("m3", ip(id, 3))]].concat());
    let status = driver
        .wait_status("the reload to be rolled back", |s| {
            s.outcome == Outcome::RolledBack
        })
        .await;
    let error = status.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("started no new worker process")
            && error.contains(&format!("bind() to {taken} failed")),
        "the error says the reload did not take, and nginx's reason: {error}"
    );
    assert_eq!(
        std::fs::read_to_string(config.config_file()).unwrap(),
        live_before,
        "the previous file is back"
    );
    assert_eq!(
        status.reload_count, applied.reload_count,
        "a reload that did not take is not counted"
    );
    wait_for_routing(id, &["m1", "m2"]).await;
    assert_only(id, &["m1", "m2"], 20).await;

    // The address is free again: a retry applies the change.
    drop(holder);
    driver.wait_applied(&["m1", "m2", "m3"]).await;
    wait_for_routing(id, &["m1", "m2", "m3"]).await;
    driver.stop().await;
}
