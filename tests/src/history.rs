//! [`FileHistory`]: every distinct content a set of files had, as seen by polling them in a
//! background thread while a test runs, and the checks the fault tests make on it: config.yaml
//! and tokens never seen half-written, the LB's nginx.conf never empty or invalid.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rke2_bootstrap::rke2::config_yaml::is_managed;

/// One content a file had (`None`: absent), from the first read that saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub first_seen_ms: u64,
    pub content: Option<Vec<u8>>,
}

impl Version {
    pub fn text(&self) -> Option<String> {
        self.content
            .as_ref()
            .map(|c| String::from_utf8_lossy(c).into_owned())
    }
}

/// The polling thread; [`FileHistory::stop`] returns what it saw.
pub struct FileHistory {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Recorded>>,
}

/// The versions of each file, in the order they were seen, and how many rounds of reads were made.
#[derive(Debug, Default)]
pub struct Recorded {
    pub files: Vec<(PathBuf, Vec<Version>)>,
    pub rounds: u64,
}

impl Recorded {
    /// The versions of `path` (panics if it was not watched).
    pub fn versions(&self, path: &Path) -> &[Version] {
        &self
            .files
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{} was not watched", path.display()))
            .1
    }

    /// Present versions of `path`.
    pub fn contents(&self, path: &Path) -> Vec<String> {
        self.versions(path)
            .iter()
            .filter_map(Version::text)
            .collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl FileHistory {
    /// Reads every file in `paths` every `period` until stopped.
    pub fn start(paths: Vec<PathBuf>, period: Duration) -> FileHistory {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut recorded = Recorded {
                files: paths.into_iter().map(|p| (p, Vec::new())).collect(),
                rounds: 0,
            };
            loop {
                // one last round after the stop request, so the final state is always recorded
                let last = flag.load(Ordering::Relaxed);
                for (path, versions) in &mut recorded.files {
                    let content = std::fs::read(&*path).ok();
                    if versions.last().map(|v| &v.content) != Some(&content) {
                        versions.push(Version {
                            first_seen_ms: unix_ms(),
                            content,
                        });
                    }
                }
                recorded.rounds += 1;
                if last {
                    return recorded;
                }
                std::thread::sleep(period);
            }
        });
        FileHistory {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops polling and returns the history.
    pub fn stop(mut self) -> Recorded {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the file history thread panicked")
    }
}

impl Drop for FileHistory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A config.yaml written by the agent, whole: once it exists it has exactly one content (the
/// agent writes it once per host, atomically), which starts with the managed marker, parses, and
/// carries a token. Returns the number of present versions (0 or 1).
pub fn check_config_yaml_history(versions: &[Version]) -> Result<usize> {
    let present: Vec<String> = versions.iter().filter_map(Version::text).collect();
    ensure!(
        present.len() <= 1,
        "config.yaml changed while watched: {present:#?}"
    );
    ensure!(
        versions
            .iter()
            .skip_while(|v| v.content.is_none())
            .all(|v| v.content.is_some()),
        "config.yaml disappeared after it was written"
    );
    for text in &present {
        ensure!(is_managed(text), "not the managed file: {text:?}");
        let yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).with_context(|| format!("unparsable: {text:?}"))?;
        let token = yaml["token"].as_str().unwrap_or_default();
        ensure!(!token.is_empty(), "no token: {text:?}");
    }
    Ok(present.len())
}

/// A token file (RKE2's or the agent's), whole: at most one content, one non-empty line.
pub fn check_token_history(versions: &[Version]) -> Result<()> {
    let present: Vec<String> = versions.iter().filter_map(Version::text).collect();
    ensure!(
        present.len() <= 1,
        "the token changed: {} versions",
        present.len()
    );
    for text in &present {
        let line = text.trim_end_matches('\n');
        ensure!(
            !line.is_empty() && !line.contains('\n'),
            "a partial token file ({} bytes)",
            text.len()
        );
    }
    Ok(())
}

/// The LB's nginx.conf over time: the bootstrap file until the sidecar's first render, then only
/// renders that route to a non-empty subset of `servers` on both ports and that the real
/// `nginx -t` accepts. Returns the upstream lists in the order they were seen.
pub fn check_lb_history(
    versions: &[Version],
    bootstrap: &str,
    servers: &[std::net::IpAddr],
    nginx_prefix: &Path,
) -> Result<Vec<Vec<std::net::IpAddr>>> {
    let mut lists = Vec::new();
    let mut rendered = false;
    for (n, v) in versions.iter().enumerate() {
        let Some(text) = v.text() else {
            bail!("nginx.conf missing at version {n}");
        };
        if !rendered && text == bootstrap {
            continue;
        }
        rendered = true;
        let (supervisor, api) = crate::cluster::parse_upstreams(&text);
        ensure!(
            supervisor == api,
            "the 9345 and 6443 upstreams differ at version {n}:\n{text}"
        );
        ensure!(
            !supervisor.is_empty(),
            "an empty upstream list at version {n}:\n{text}"
        );
        ensure!(
            supervisor.iter().all(|ip| servers.contains(ip)),
            "routes to a non-server at version {n}: {supervisor:?}"
        );
        nginx_check(&text, nginx_prefix).with_context(|| format!("version {n}:\n{text}"))?;
        lists.push(supervisor);
    }
    Ok(lists)
}

/// `nginx -t` on `text`, as a copy in `prefix`.
fn nginx_check(text: &str, prefix: &Path) -> Result<()> {
    let copy = prefix.join(format!("check-{}.conf", std::process::id()));
    std::fs::write(&copy, text)?;
    let out = Command::new("/usr/sbin/nginx")
        .args(["-t", "-q", "-e", "stderr", "-p"])
        .arg(prefix)
        .arg("-c")
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .context("running nginx -t")?;
    let _ = std::fs::remove_file(&copy);
    ensure!(
        out.status.success(),
        "nginx -t refused it: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

    fn version(ms: u64, text: &str) -> Version {
        Version {
            first_seen_ms: ms,
            content: Some(text.as_bytes().to_vec()),
        }
    }

    /// An nginx.conf shaped like the sidecar's, routing to `servers` (raw `server` lines).
    fn conf(dir: &Path, servers: &[&str], extra: &str) -> String {
        let mut out = format!(
            "load_module {STREAM_MODULE};\nerror_log {0}/error.log;\npid {0}/nginx.pid;\nevents {{}}\nstream {{\n",
            dir.display()
        );
        for (name, port, listen) in [("supervisor", 9345, 19345), ("api", 6443, 16443)] {
            out.push_str(&format!("  upstream {name} {{\n"));
            for s in servers {
                out.push_str(&format!("    server {s}:{port};\n"));
            }
            out.push_str(&format!(
                "  }}\n  server {{ listen 127.79.0.9:{listen}; proxy_pass {name}; }}\n"
            ));
        }
        out.push_str(extra);
        out.push_str("}\n");
        out
    }

    #[test]
    fn lb_history_check_refuses_empty_foreign_and_invalid_renders() {
        if !Path::new("/usr/sbin/nginx").is_file() || !Path::new(STREAM_MODULE).is_file() {
            eprintln!("\n!!!!! SKIPPED: nginx with the stream module is not installed !!!!!\n");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let servers: Vec<IpAddr> = vec!["127.79.0.11".parse().unwrap()];
        let bootstrap = "events {}\n";
        let good = conf(d, &["127.79.0.11"], "");
        let ok = check_lb_history(
            &[version(1, bootstrap), version(2, &good)],
            bootstrap,
            &servers,
            d,
        )
        .unwrap();
        assert_eq!(ok, vec![servers.clone()]);

        let bad = [
            (conf(d, &[], ""), "empty upstream"),
            (conf(d, &["127.79.0.12"], ""), "non-server"),
            (
                conf(d, &["127.79.0.11"], "  bogus_directive on;\n"),
                "nginx -t",
            ),
            (bootstrap.to_string(), "empty upstream"),
        ];
        for (text, want) in bad {
            let err = check_lb_history(
                &[version(1, bootstrap), version(2, &good), version(3, &text)],
                bootstrap,
                &servers,
                d,
            )
            .unwrap_err();
            assert!(format!("{err:#}").contains(want), "{want}: {err:#}");
        }
        // a missing file is never fine
        let gone = Version {
            first_seen_ms: 3,
            content: None,
        };
        assert!(check_lb_history(&[version(1, bootstrap), gone], bootstrap, &servers, d).is_err());
    }

    #[test]
    fn half_written_files_are_caught() {
        let whole = "# managed by rke2-bootstrap: edits are overwritten\ntoken: K10abc::server:s\n";
        let half = &whole[..whole.len() / 2];
        let absent = Version {
            first_seen_ms: 0,
            content: None,
        };
        assert_eq!(
            check_config_yaml_history(&[absent.clone(), version(1, whole)]).unwrap(),
            1
        );
        assert!(
            check_config_yaml_history(&[absent.clone(), version(1, half), version(2, whole)])
                .is_err()
        );
        assert!(check_config_yaml_history(&[version(1, whole), absent.clone()]).is_err());
        check_token_history(&[absent.clone(), version(1, "K10abc::server:s\n")]).unwrap();
        assert!(check_token_history(&[version(1, ""), version(2, "K10abc::server:s\n")]).is_err());
    }
}
