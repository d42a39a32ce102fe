//! [`LbHost`]: the LB host of the manual procedure, real nginx owned by the real sidecar.

use super::*;

/// The LB host of the manual procedure: real nginx with the stream module, whose nginx.conf is
/// owned by the real `rke2-lb-sidecar` (an observing gossip member). Both die with the guard.
pub struct LbHost {
    pub ip: IpAddr,
    /// nginx.conf, as the sidecar writes it.
    pub config_file: PathBuf,
    bootstrap: String,
    dir: tempfile::TempDir,
    sidecar: Option<ChildGuard>,
    nginx: ChildGuard,
}

impl LbHost {
    pub(super) fn start(
        ip: IpAddr,
        cluster_name: &str,
        key_file: &Path,
        seeds: &[String],
        gossip_settings: &[(String, String)],
    ) -> Result<LbHost> {
        let nginx_bin = find_program("nginx").context(
            "nginx is not installed (tests/run.sh installs nginx-light and libnginx-mod-stream)",
        )?;
        ensure_lb_addresses_free(ip)?;
        let dir = tempfile::Builder::new().prefix("rke2-lb-").tempdir()?;
        let d = crate::process::canonical(dir.path());
        let config_file = d.join("nginx.conf");
        let pid_file = d.join("nginx.pid");
        let error_log = d.join("error.log");
        // Routes nothing yet: an empty upstream is invalid, so the sidecar's first render is a
        // reload, as on a real LB host that was set up before the cluster.
        let bootstrap = format!(
            "pid {};\nerror_log {};\nevents {{}}\n",
            pid_file.display(),
            error_log.display()
        );
        rke2_bootstrap::fsutil::write_file_atomic(&config_file, bootstrap.as_bytes(), 0o644)?;
        let out = std::fs::File::create(d.join("nginx.out"))?;
        let mut nginx_cmd = Command::new(&nginx_bin);
        nginx_cmd
            .arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(&config_file)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let nginx = ChildGuard::spawn(&mut nginx_cmd).context("starting nginx")?;
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            pid_file.is_file()
        })
        .context("nginx did not write its pid file")?;

        let log = std::fs::File::create(d.join("sidecar.log"))?;
        let mut cmd = Command::new(workspace_bin("rke2-lb-sidecar"));
        cmd.args(["--cluster-name", cluster_name, "--node-name", "lb"])
            .args(["--bind-addr", &format!("{ip}:{GOSSIP_PORT}")])
            .args(["--seeds", &seeds.join(",")])
            .arg("--gossip-key-file")
            .arg(key_file)
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--lb", "nginx", "--lb-addr", &ip.to_string()])
            .arg("--config-file")
            .arg(&config_file)
            .args([
                "--nginx",
                &format!(
                    "{{prefix: {}, pid-file: {}, error-log: {}, worker-processes: 1, worker-connections: 256}}",
                    d.display(),
                    pid_file.display(),
                    error_log.display()
                ),
            ])
            .args(["--retry", "{initial: 200ms, max: 2s}"])
            .args(
                gossip_settings
                    .iter()
                    .flat_map(|(key, value)| [format!("--{key}"), value.clone()]),
            )
            .env("RKE2_LB_SIDECAR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let sidecar = ChildGuard::spawn(&mut cmd).context("starting the lb sidecar")?;
        Ok(LbHost {
            ip,
            config_file,
            bootstrap,
            dir,
            sidecar: Some(sidecar),
            nginx,
        })
    }

    /// Process ids of the sidecar (while it runs) and of nginx's master process.
    pub fn pids(&self) -> (Option<u32>, u32) {
        (self.sidecar.as_ref().map(ChildGuard::id), self.nginx.id())
    }

    /// The sidecar's status socket (its JSON status document).
    pub fn status_socket(&self) -> PathBuf {
        self.prefix().join("state").join("status.sock")
    }

    /// The nginx.conf currently in place.
    pub fn nginx_conf(&self) -> String {
        std::fs::read_to_string(&self.config_file).unwrap_or_default()
    }

    /// `(supervisor, api)`: the backend addresses of the upstreams on 9345 and 6443, sorted.
    pub fn upstreams(&self) -> (Vec<IpAddr>, Vec<IpAddr>) {
        parse_upstreams(&self.nginx_conf())
    }

    /// The nginx.conf the LB host started with, before the sidecar's first render.
    pub fn bootstrap_conf(&self) -> &str {
        &self.bootstrap
    }

    /// nginx's prefix directory (where nginx.conf and its logs live).
    pub fn prefix(&self) -> &Path {
        self.config_file
            .parent()
            .expect("nginx.conf has a directory")
    }

    /// The servers the LB routes to, when both upstreams agree (else the difference is shown).
    pub fn upstream_addrs(&self) -> Vec<IpAddr> {
        let (supervisor, api) = self.upstreams();
        assert_eq!(
            supervisor,
            api,
            "the 9345 and 6443 upstreams differ:\n{}",
            self.nginx_conf()
        );
        supervisor
    }

    /// Whether the nginx started by this guard still runs.
    pub fn nginx_running(&mut self) -> bool {
        matches!(self.nginx.try_wait(), Ok(None))
    }

    /// The last lines of the sidecar's and nginx's logs.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for file in ["sidecar.log", "nginx.out", "error.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {file}\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Fails, naming the address, when something already holds one of the LB host's ports. An nginx
/// or sidecar left over from an earlier run on the same loopback block would otherwise keep the
/// LB ports, and every reload of the new nginx would fail for as long as the run lasts (a soak
/// once reported hours of empty upstream files and spurious changes for that reason alone).
pub(super) fn ensure_lb_addresses_free(ip: IpAddr) -> Result<()> {
    let bind_error = |addr: SocketAddr, err: std::io::Error| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{addr} is already bound: a process of an earlier run on this loopback block \
                 (an nginx or a sidecar) is still up; stop it or use another block"
            )
        } else {
            anyhow::Error::new(err).context(format!("binding {addr}"))
        }
    };
    for port in LB_PORTS {
        let addr = SocketAddr::new(ip, port);
        std::net::TcpListener::bind(addr).map_err(|err| bind_error(addr, err))?;
    }
    let gossip = SocketAddr::new(ip, GOSSIP_PORT);
    std::net::UdpSocket::bind(gossip).map_err(|err| bind_error(gossip, err))?;
    Ok(())
}

/// `(supervisor, api)`: the backend addresses of the upstreams on 9345 and 6443 of an nginx.conf,
/// sorted.
pub fn parse_upstreams(conf: &str) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let by_port = |port: &str| {
        let mut addrs: Vec<IpAddr> = conf
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix("server "))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(|addr| addr.trim_end_matches(';').strip_suffix(port))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        addrs.sort();
        addrs
    };
    (by_port(":9345"), by_port(":6443"))
}

impl Drop for LbHost {
    fn drop(&mut self) {
        // The sidecar first, so it never signals an nginx that is gone.
        drop(self.sidecar.take());
        self.nginx.kill_group();
    }
}

pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lb_port_held_by_an_earlier_run_is_named() {
        let ip = lb_ip(crate::blocks::HARNESS_LB_PORTS.id(0));
        ensure_lb_addresses_free(ip).expect("nothing holds the block yet");
        let api = SocketAddr::new(ip, 6443);
        let leftover = std::net::TcpListener::bind(api).unwrap();
        let err = ensure_lb_addresses_free(ip).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{ip}:6443 is already bound")),
            "unexpected message: {err}"
        );
        drop(leftover);
        let gossip = std::net::UdpSocket::bind(SocketAddr::new(ip, GOSSIP_PORT)).unwrap();
        let err = ensure_lb_addresses_free(ip).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{ip}:7947 is already bound")),
            "{err}"
        );
        drop(gossip);
        ensure_lb_addresses_free(ip).expect("freed again");
    }
}
