//! `rke2-demo --json`, as a user runs it: a whole cluster behind real nginx on this
//! machine, one JSON summary on stdout; the same on a machine without nginx or HAProxy; and a
//! demo that fails or is interrupted, which must leave nothing running.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rke2_bootstrap_tests::{kill_standins_under, pid_alive, wait_until, workspace_bin, ChildGuard};
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
    let mut cmd = Command::new(workspace_bin("rke2-demo"));
    cmd.args(["--json", "--ip-prefix", "127.50.0", "--lb", "nginx"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let (summary, progress) = run_demo_json(&mut cmd, &tmp.path().join("demo.stderr"));
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

/// Live processes (other than this test) whose command line names a path under `dir`: every
/// process a demo in `dir` starts does (agents, stand-ins, the sidecar, nginx).
fn processes_naming(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pid_alive(pid))
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            line.contains(&dir).then_some((pid, line))
        })
        .collect()
}

/// README's first command on a machine without nginx or HAProxy: both hidden from the demo (a
/// PATH without them; the demo looks nowhere else). The cluster still forms, the LB config is
/// rendered with the ready servers and follows the stop, and the demo says once what it could
/// not run and how to get it.
#[test]
fn demo_forms_a_cluster_without_nginx_or_haproxy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let _leftovers = DemoLeftovers {
        dir: dir.clone(),
        nodes: 5,
    };
    let path =
        rke2_bootstrap_tests::path_without(&["nginx", "haproxy"], &tmp.path().join("bin")).unwrap();
    let stderr = std::fs::File::create(tmp.path().join("demo.stderr")).unwrap();
    let mut cmd = Command::new(workspace_bin("rke2-demo"));
    cmd.args(["--json", "--ip-prefix", "127.170.0"])
        .arg("--dir")
        .arg(&dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let (summary, progress) = run_demo_json(&mut cmd, &tmp.path().join("demo.stderr"));

    let nodes = summary["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    assert!(nodes.iter().all(|n| n["phase"] == "ready"), "{summary:#}");
    let servers = addresses(nodes, "server");
    assert_eq!(servers.len(), 3, "{summary:#}");

    // Not live, said once with the way to get it, and nothing of nginx's ran.
    assert_eq!(summary["lb"]["kind"], "nginx");
    assert_eq!(summary["lb"]["live"], false, "{summary:#}");
    let reason = summary["lb"]["not_live_reason"].as_str().unwrap();
    assert!(reason.contains("not installed"), "{reason}");
    assert_eq!(
        progress.matches("nginx cannot run here").count(),
        1,
        "{progress}"
    );
    assert!(progress.contains("apt-get install nginx-light libnginx-mod-stream"));
    assert!(!dir.join("lb/nginx.pid").exists());

    // The config it would serve lists the ready servers, then drops the stopped one.
    let config = std::fs::read_to_string(dir.join("lb/nginx.conf")).unwrap();
    assert!(config.contains("stream {"), "{config}");
    assert_eq!(strings(&summary["lb"]["servers"]), servers);
    let stopped = summary["stopped_server"].as_str().unwrap();
    let stopped_ip = nodes.iter().find(|n| n["name"] == stopped).unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let expected: Vec<String> = servers.into_iter().filter(|s| *s != stopped_ip).collect();
    assert_eq!(strings(&summary["lb_servers_after_kill"]), expected);

    // Hosts registered with the first server, not with an LB that serves nothing.
    let first = nodes
        .iter()
        .find(|n| n["name"] == summary["initializer"])
        .unwrap();
    let joiner = nodes.iter().find(|n| n["name"] != first["name"]).unwrap();
    let text = std::fs::read_to_string(joiner["config_path"].as_str().unwrap()).unwrap();
    let server_line = format!(
        "server: https://{}:9345",
        first["address"].as_str().unwrap()
    );
    assert!(text.lines().any(|l| l == server_line), "{text}");
    assert_eq!(processes_naming(&dir), Vec::new());
}

/// A demo that fails keeps its temp directory, names it, prints the last lines of the hosts that
/// failed, and leaves nothing running. A timeout shorter than any formation is the failure.
#[test]
fn a_failed_demo_keeps_its_directory_and_shows_the_failed_hosts_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(workspace_bin("rke2-demo"))
        .args(["--lb", "none", "--ip-prefix", "127.171.0"])
        .args(["--timeout", "300ms"])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(last.contains("did not form within 300ms"), "{stderr}");
    let dir = last
        .split_once("kept under ")
        .and_then(|(_, rest)| rest.split(':').next())
        .unwrap_or_else(|| panic!("no directory named: {stderr}"));
    let dir = Path::new(dir);
    assert!(dir.starts_with(tmp.path()), "{stderr}");
    let _leftovers = DemoLeftovers {
        dir: dir.to_path_buf(),
        nodes: 5,
    };
    let log = dir.join("node-1/agent.log");
    assert!(log.is_file(), "{} is gone", log.display());
    assert!(
        stderr.contains(&format!("last lines of node-1 ({})", log.display())),
        "{stderr}"
    );
    assert_eq!(processes_naming(dir), Vec::new());
}

/// SIGTERM (or Ctrl-C's SIGINT) while the demo runs stops everything it started, its RKE2
/// stand-ins included (they run in their own sessions, so no signal reaches them by itself).
/// The signal goes to the demo alone, as `kill` sends it: its hosts do not see it.
#[test]
fn an_interrupted_demo_leaves_nothing_running() {
    for (test_id, signal) in [
        (172, nix::sys::signal::Signal::SIGTERM),
        (173, nix::sys::signal::Signal::SIGINT),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo");
        let _leftovers = DemoLeftovers {
            dir: dir.clone(),
            nodes: 5,
        };
        let mut cmd = Command::new(workspace_bin("rke2-demo"));
        cmd.args(["--lb", "none", "--ip-prefix", &format!("127.{test_id}.0")])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut demo = ChildGuard::spawn(&mut cmd).unwrap();
        // Interrupt once an RKE2 stand-in runs (not just an agent or a service manager call,
        // which name the host's root too).
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            processes_naming(&dir)
                .iter()
                .any(|(_, line)| line.contains("rke2-standin --root"))
                .then_some(())
        })
        .expect("no stand-in started");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(demo.id() as i32), signal).unwrap();
        let status = demo
            .wait_timeout(Duration::from_secs(60))
            .unwrap()
            .expect("the demo did not stop");
        let mut stderr = String::new();
        let _ = demo
            .child_mut()
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr);
        assert!(!status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {signal}")),
            "{stderr}"
        );
        assert_eq!(processes_naming(&dir), Vec::new(), "{signal}");
    }
}

/// Runs a `demo --json` command (stdout piped, stderr to `progress`) to its end, within 150 s,
/// and returns the summary it printed with its progress lines; fails with those lines.
fn run_demo_json(cmd: &mut Command, progress: &std::path::Path) -> (Value, String) {
    let mut demo = ChildGuard::spawn(cmd).unwrap();
    let mut stdout = demo.child_mut().stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status = demo.wait_timeout(Duration::from_secs(150)).unwrap();
    let progress = std::fs::read_to_string(progress).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the demo did not finish:\n{progress}"));
    assert!(status.success(), "{status:?}\n{progress}");
    let out = reader.join().unwrap();
    let summary = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}\n{progress}"));
    (summary, progress)
}

/// README's first command on a machine without etcd (its script installs it; here it is hidden
/// from the demo by a PATH without it): the stand-in servers could only time out, so the demo
/// stops at once, before it starts anything, naming the package to install.
#[test]
fn a_demo_without_etcd_fails_at_once_naming_the_package() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let path = rke2_bootstrap_tests::path_without(&["etcd"], &tmp.path().join("bin")).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(workspace_bin("rke2-demo"))
        .args(["--lb", "none", "--ip-prefix", "127.51.0"])
        .arg("--dir")
        .arg(&dir)
        .env("PATH", path)
        .env_remove("STANDIN_ETCD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(stderr.contains("etcd is not installed"), "{stderr}");
    assert!(stderr.contains("etcd-server"), "{stderr}");
    assert!(!dir.join("node-1").exists(), "a host was set up");
    assert_eq!(processes_naming(&dir), Vec::new());
}

/// The demo's stand-ins belong to the test harness: neither product binary carries the
/// installer or the service-manager stand-in (a fixture compiled in would appear whole).
#[test]
fn the_product_binaries_carry_no_fixture() {
    for bin in ["rke2-bootstrap", "rke2-lb-sidecar"] {
        // Lossy text of the binary, for std's substring search; the fixtures are UTF-8 text.
        let binary =
            String::from_utf8_lossy(&std::fs::read(workspace_bin(bin)).unwrap()).into_owned();
        for fixture in ["install.sh", "fake-systemctl"] {
            let text =
                std::fs::read_to_string(rke2_bootstrap_tests::fixture_path(fixture)).unwrap();
            assert!(
                !binary.contains(&text),
                "{bin} carries tests/fixtures/{fixture}"
            );
        }
    }
}

/// README's command 1 is the demo script, and every flag README's demo paragraph names is one the
/// demo takes.
#[test]
fn readme_runs_the_demo_as_it_is() {
    use clap::CommandFactory;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    assert!(
        readme.lines().any(|l| l == "bash tests/demo.sh"),
        "README's command 1 is not `bash tests/demo.sh`"
    );
    assert!(repo.join("tests/demo.sh").is_file());
    let flags: Vec<String> = rke2_bootstrap_tests::demo::DemoArgs::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect();
    let paragraph = readme
        .split("\n\n")
        .find(|p| p.starts_with("The demo is `target/debug/rke2-demo`"))
        .expect("README's paragraph on the demo");
    let named: Vec<&str> = paragraph
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--"))
        .collect();
    assert!(named.len() >= 5, "{named:?}");
    // clap's own, and the flag of the `members` command the paragraph shows.
    let others = ["--help", "--status-socket"];
    for flag in named {
        assert!(
            flags.iter().any(|f| f == flag) || others.contains(&flag),
            "README names {flag}, which the demo does not take ({flags:?})"
        );
    }
}
