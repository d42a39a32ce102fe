//! `rke2-bootstrap demo --json`, as a user runs it: a whole cluster behind real nginx on this
//! machine, one JSON summary on stdout.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rke2_bootstrap_tests::{kill_standins_under, workspace_bin, ChildGuard};
use serde_json::Value;

/// Whatever the demo leaves behind if it is killed instead of finishing: its hosts' RKE2
/// stand-ins (in their own sessions) and its nginx (a daemon).
struct DemoLeftovers {
    dir: PathBuf,
    nodes: u32,
}

impl Drop for DemoLeftovers {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            kill_standins_under(&self.dir.join(format!("node-{i}")));
        }
        if let Some(pid) = std::fs::read_to_string(self.dir.join("lb/nginx.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            if rke2_bootstrap_tests::pid_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn addresses(nodes: &[Value], role: &str) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| n["role"] == role)
        .map(|n| n["address"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    ips
}

fn strings(value: &Value) -> Vec<String> {
    let mut v: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn demo_json_forms_a_cluster_behind_nginx_and_follows_a_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let _leftovers = DemoLeftovers {
        dir: dir.clone(),
        nodes: 5,
    };
    let stderr = std::fs::File::create(tmp.path().join("demo.stderr")).unwrap();
    let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
    cmd.args(["demo", "--json", "--ip-prefix", "127.50.0", "--lb", "nginx"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut demo = ChildGuard::spawn(&mut cmd).unwrap();
    let mut stdout = demo.child_mut().stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status = demo.wait_timeout(Duration::from_secs(150)).unwrap();
    let progress = std::fs::read_to_string(tmp.path().join("demo.stderr")).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the demo did not finish:\n{progress}"));
    assert!(status.success(), "{status:?}\n{progress}");
    let out = reader.join().unwrap();
    let summary: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}\n{progress}"));
    eprintln!("{summary:#}");

    // Five hosts, three servers and two agents, all ready; one first server among the servers.
    let nodes = summary["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    assert!(nodes.iter().all(|n| n["phase"] == "ready"), "{summary:#}");
    let servers = addresses(nodes, "server");
    assert_eq!(servers.len(), 3, "{summary:#}");
    assert_eq!(addresses(nodes, "agent").len(), 2, "{summary:#}");
    // One cluster, as each server's etcd reports it: one cluster ID, three members.
    let etcd: Vec<&serde_json::Value> = nodes
        .iter()
        .filter(|n| n["role"] == "server")
        .map(|n| &n["etcd"])
        .collect();
    assert_eq!(etcd.len(), 3, "{summary:#}");
    for e in &etcd {
        assert_eq!(e["cluster_id"], etcd[0]["cluster_id"], "{summary:#}");
        assert!(e["cluster_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty() && id != "0"));
        assert_eq!(e["members"], 3, "{summary:#}");
    }
    let initializer = summary["initializer"].as_str().unwrap();
    let first = nodes
        .iter()
        .find(|n| n["name"] == initializer)
        .unwrap_or_else(|| panic!("initializer {initializer:?} is not a node"));
    assert_eq!(first["role"], "server");
    let without_server_key = nodes
        .iter()
        .filter(|n| {
            let path = Path::new(n["config_path"].as_str().unwrap());
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.lines().any(|l| l.starts_with("server:"))
        })
        .count();
    assert_eq!(
        without_server_key, 1,
        "exactly one config.yaml without server:"
    );
    assert!(
        !progress.contains("more than one first server"),
        "{progress}"
    );

    // The LB (real nginx) listed exactly the ready servers, then dropped the stopped one.
    assert_eq!(summary["lb"]["kind"], "nginx");
    assert_eq!(summary["lb"]["live"], true, "nginx did not run");
    assert_eq!(strings(&summary["lb"]["servers"]), servers);
    let stopped = summary["stopped_server"].as_str().unwrap();
    let stopped_node = nodes
        .iter()
        .find(|n| n["name"] == stopped)
        .unwrap_or_else(|| panic!("stopped server {stopped:?} is not a node"));
    assert_eq!(stopped_node["role"], "server");
    assert_ne!(stopped, initializer);
    let stopped_ip = stopped_node["address"].as_str().unwrap().to_string();
    let after = strings(&summary["lb_servers_after_kill"]);
    let expected: Vec<String> = servers
        .iter()
        .filter(|s| **s != stopped_ip)
        .cloned()
        .collect();
    assert_eq!(after, expected);
    assert!(summary["timings_ms"]["lb_updated_after_kill"].is_u64());
}
