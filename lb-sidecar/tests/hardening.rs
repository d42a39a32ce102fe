//! Fault and hostile-input tests of the sidecar (addresses of the block `blocks::LB_HARDENING`):
//!
//! - the sidecar dies mid-change, after swapping in a new file and before nginx reloaded: on
//!   restart it reloads although the file on disk is already current (the `.reload-pending`
//!   marker), and a negative control shows that without the marker the change would be lost;
//! - any name and any address either renders a config the real nginx and HAProxy accept, or is
//!   refused with a one-line error.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use rke2_lb_sidecar::config::{HaproxyConfig, LbKind, NginxConfig};
use rke2_lb_sidecar::render::{render_haproxy, render_nginx, Listen, RenderError};
use rke2_lb_sidecar::{Outcome, ReloadAction, Upstream};

const ID: u8 = blocks::LB_HARDENING.id(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_restarted_mid_change_reloads_the_swapped_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _standins = standins(ID, 2).await;
    let mut config = sidecar_config(LbKind::Nginx, ID, d);
    // The reload hangs while `block` exists: the sidecar is "killed" during it.
    let block = d.join("block");
    let reloads = d.join("reloads");
    config.reload = Some(ReloadAction::Command(vec![
        "sh".into(),
        "-c".into(),
        format!(
            "while [ -e {} ]; do sleep 0.05; done; echo x >> {}; kill -HUP \"$(cat {{pid_file}})\"",
            block.display(),
            reloads.display()
        ),
    ]));
    config.command_timeout = Duration::from_secs(60);
    let m1 = initializer("m1", ip(ID, 1));
    let m2 = server("m2", ip(ID, 2));
    let old_file = write_initial(&config, std::slice::from_ref(&m1));
    let _lb = start_lb(&config, ID, d, &config.config_file()).await;
    wait_for_routing(ID, &["m1"]).await;

    // m2 becomes ready; the sidecar swaps the file in, then dies inside the reload.
    std::fs::write(&block, "").unwrap();
    let pending = d.join("nginx.conf.reload-pending");
    let first = Driver::start(config.clone(), vec![m1.clone(), m2.clone()]);
    let live = config.config_file();
    wait_until_async(Duration::from_secs(15), POLL, || {
        let swapped = std::fs::read_to_string(&live).is_ok_and(|t| t != old_file);
        std::future::ready(swapped && pending.exists())
    })
    .await
    .expect("the swap, with the reload in flight");
    drop(first);
    let new_file = std::fs::read_to_string(&live).unwrap();
    assert!(new_file.contains(&SocketAddr::new(ip(ID, 2), SUPERVISOR).to_string()));
    // nginx never reloaded: it still routes to m1 alone.
    assert_only(ID, &["m1"], 20).await;
    std::fs::remove_file(&block).unwrap();

    // Negative control: a restart that does not know a reload is owed sees an identical file
    // and does nothing; the change would be lost.
    std::fs::rename(&pending, d.join("marker-aside")).unwrap();
    let control = Driver::start(config.clone(), vec![m1.clone(), m2.clone()]);
    control
        .wait_status("the control restart to settle", |s| {
            s.outcome != Outcome::Starting
        })
        .await;
    assert_eq!(control.status().outcome, Outcome::Unchanged);
    assert_only(ID, &["m1"], 20).await;
    control.stop().await;
    std::fs::rename(d.join("marker-aside"), &pending).unwrap();

    // The real restart: the marker makes it reload the file that is already in place.
    let second = Driver::start(config.clone(), vec![m1, m2]);
    let status = second.wait_applied(&["m1", "m2"]).await;
    assert_eq!(status.outcome, Outcome::Applied, "{status:#?}");
    assert_eq!(status.reload_count, 1);
    wait_for_routing(ID, &["m1", "m2"]).await;
    assert!(!pending.exists(), "the marker is cleared after the reload");
    assert_eq!(
        std::fs::read_to_string(&live).unwrap(),
        new_file,
        "same file, not rewritten"
    );
    let calls = std::fs::read_to_string(&reloads).unwrap_or_default();
    assert_eq!(calls.lines().count(), 1, "exactly one reload went through");
    second.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Hostile names and addresses against the real validators.

fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9][a-z0-9._-]{0,30}",
        1 => "[a-zA-Z0-9._-]{200,260}",
        1 => prop::sample::select(vec![
            "a;b", "a}b", "a{b", "a\nserver 10.0.0.1:1", "a#b", "-a", ".a", "a b", "", "é",
            "a\u{0}", "backup", "server", "a:b", "a/b", "${x}", "{{ x }}",
        ]).prop_map(String::from),
        1 => ".{1,20}",
    ]
}

fn any_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        prop::sample::select(vec![
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "ff02::1",
        ])
        .prop_map(|s| s.parse().unwrap()),
    ]
}

fn check(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

proptest! {
    // Each accepted case runs nginx -t and haproxy -c.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_upstream_is_refused_or_accepted_by_the_real_lbs(
        entries in prop::collection::vec((hostile_name(), any_addr()), 1..5),
    ) {
        let upstreams: Vec<Upstream> = entries
            .into_iter()
            .map(|(name, addr)| Upstream { name, addr })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let listen = Listen {
            lb_addr: ip(blocks::LB_HARDENING.id(1), 100),
            supervisor_port: 9345,
            api_port: 6443,
        };
        let nginx = NginxConfig {
            pid_file: d.join("nginx.pid"),
            error_log: d.join("error.log").display().to_string(),
            ..NginxConfig::default()
        };
        let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
        let haproxy = HaproxyConfig { run_dir: d.to_path_buf(), ..HaproxyConfig::default() };
        let rendered = (
            render_nginx(&upstreams, &listen, &nginx, Some(module)),
            render_haproxy(&upstreams, &listen, &haproxy),
        );
        match rendered {
            (Ok(n), Ok(h)) => {
                let conf = d.join("nginx.conf");
                std::fs::write(&conf, n).unwrap();
                let nginx_ok = check(Command::new("/usr/sbin/nginx").args(["-t", "-q", "-e", "stderr", "-p"]).arg(d).arg("-c").arg(&conf));
                prop_assert!(nginx_ok.is_ok(), "nginx -t refused {:?}: {:?}", upstreams, nginx_ok);
                let cfg = d.join("haproxy.cfg");
                std::fs::write(&cfg, h).unwrap();
                let haproxy_ok = check(Command::new("/usr/sbin/haproxy").arg("-c").arg("-f").arg(&cfg));
                prop_assert!(haproxy_ok.is_ok(), "haproxy -c refused {:?}: {:?}", upstreams, haproxy_ok);
            }
            (Err(a), Err(b)) => {
                let (a, b) = (a.to_string(), b.to_string());
                prop_assert_eq!(&a, &b, "both renderers refuse for the same reason");
                prop_assert!(!a.contains('\n'), "one-line error: {:?}", a);
                let refused_for_a_reason = matches!(
                    render_haproxy(&upstreams, &listen, &haproxy),
                    Err(RenderError::InvalidName { .. } | RenderError::InvalidAddr { .. } | RenderError::Duplicate { .. })
                );
                prop_assert!(refused_for_a_reason, "{}", a);
            }
            (n, h) => prop_assert!(false, "renderers disagree: nginx {:?}, haproxy {:?}", n.err(), h.err()),
        }
    }
}
