//! Golden files for every renderer, with the manual procedure's addresses. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p rke2-lb-sidecar --test golden` and review the diff (the test
//! kit's rule, as for the agent's config.yaml goldens).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rke2_lb_sidecar::config::{HaproxyConfig, NginxConfig, NginxLayout};
use rke2_lb_sidecar::render::{render_haproxy, render_nginx, render_template, Listen};
use rke2_lb_sidecar::Upstream;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The three control-plane hosts and the LB of the manual procedure.
fn seed_servers() -> Vec<Upstream> {
    ["ha-m1", "ha-m2", "ha-m3"]
        .iter()
        .zip(85u8..)
        .map(|(name, last)| Upstream {
            name: name.to_string(),
            addr: IpAddr::from([192, 168, 205, last]),
        })
        .collect()
}

fn seed_listen() -> Listen {
    Listen {
        lb_addr: "192.168.205.84".parse().unwrap(),
        supervisor_port: 9345,
        api_port: 6443,
    }
}

const MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn check_golden(file: &str, actual: &str) {
    rke2_testkit::check_golden(&golden_dir().join(file), actual);
}

#[test]
fn nginx_whole_file() {
    let out = render_nginx(
        &seed_servers(),
        &seed_listen(),
        &NginxConfig::default(),
        Some(Path::new(MODULE)),
    )
    .unwrap();
    check_golden("nginx-whole.conf", &out);
}

#[test]
fn nginx_stream_include() {
    let config = NginxConfig {
        layout: NginxLayout::StreamInclude,
        ..NginxConfig::default()
    };
    let out = render_nginx(
        &seed_servers(),
        &seed_listen(),
        &config,
        Some(Path::new(MODULE)),
    )
    .unwrap();
    check_golden("nginx-stream-include.conf", &out);
}

#[test]
fn nginx_upstreams_include() {
    let config = NginxConfig {
        layout: NginxLayout::UpstreamsInclude,
        ..NginxConfig::default()
    };
    let out = render_nginx(&seed_servers(), &seed_listen(), &config, None).unwrap();
    check_golden("nginx-upstreams-include.conf", &out);
}

#[test]
fn haproxy() {
    let out = render_haproxy(&seed_servers(), &seed_listen(), &HaproxyConfig::default()).unwrap();
    check_golden("haproxy.conf", &out);
}

#[test]
fn sample_templates() {
    for (template, golden, pid) in [
        (
            "sample-nginx.conf.j2",
            "sample-nginx-template.conf",
            "/run/nginx.pid",
        ),
        (
            "sample-haproxy.cfg.j2",
            "sample-haproxy-template.conf",
            "/run/haproxy/haproxy.pid",
        ),
    ] {
        let source = std::fs::read_to_string(golden_dir().join(template)).unwrap();
        let out = render_template(
            &seed_servers(),
            &seed_listen(),
            Path::new(pid),
            template,
            &source,
        )
        .unwrap();
        check_golden(golden, &out);
    }
}

#[test]
fn rendering_is_deterministic() {
    let a = render_haproxy(&seed_servers(), &seed_listen(), &HaproxyConfig::default()).unwrap();
    let b = render_haproxy(&seed_servers(), &seed_listen(), &HaproxyConfig::default()).unwrap();
    assert_eq!(a, b);
}
