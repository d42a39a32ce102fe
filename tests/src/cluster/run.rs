//! [`TestCluster`]: the hosts of one test, started, stopped, crashed and restarted.

use super::*;

/// A set of agent processes forming (or failing to form) one cluster.
pub struct TestCluster {
    pub spec: ClusterSpec,
    pub hosts: Vec<TestHost>,
    pub installer: InstallerServer,
    pub key_file: PathBuf,
    /// The LB host, once started.
    pub lb: Option<LbHost>,
    _keys: Option<tempfile::TempDir>,
}

impl TestCluster {
    /// Prepares every host (nothing started yet).
    pub fn new(spec: ClusterSpec) -> Result<TestCluster> {
        let (keys, key_file) = match &spec.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (None, dir.join("gossip.key"))
            }
            None => {
                let keys = tempfile::tempdir()?;
                let key_file = keys.path().join("gossip.key");
                (Some(keys), key_file)
            }
        };
        let key = Command::new(workspace_bin("rke2-bootstrap"))
            .arg("keygen")
            .output()?;
        anyhow::ensure!(key.status.success(), "keygen failed");
        rke2_bootstrap::fsutil::write_file_atomic(&key_file, &key.stdout, 0o600)?;
        let installer = InstallerServer::start(crate::install_script())?;
        let hosts = spec
            .hosts
            .iter()
            .enumerate()
            .map(|(i, (name, role))| TestHost::new(&spec, name, role, 11 + i as u8))
            .collect::<Result<Vec<_>>>()?;
        Ok(TestCluster {
            spec,
            hosts,
            installer,
            key_file,
            lb: None,
            _keys: keys,
        })
    }

    /// Adds a host that was not in the spec (a late joiner), on the next free address; it is
    /// not started.
    pub fn add_host(&mut self, name: &str, role: &'static str) -> Result<()> {
        anyhow::ensure!(
            self.hosts.iter().all(|h| h.name != name),
            "host {name} exists"
        );
        let host = TestHost::new(&self.spec, name, role, 11 + self.hosts.len() as u8)?;
        self.hosts.push(host);
        Ok(())
    }

    pub fn host_mut(&mut self, name: &str) -> &mut TestHost {
        let i = self.index(name);
        &mut self.hosts[i]
    }

    /// Starts the LB host: nginx (stream module) on its bootstrap config and the real
    /// `rke2-lb-sidecar`, which rewrites nginx.conf from gossip and reloads it.
    pub fn start_lb(&mut self) -> Result<()> {
        anyhow::ensure!(self.spec.lb, "the spec has no LB (ClusterSpec::with_lb)");
        let nginx = find_program("nginx").context(
            "nginx is not installed (tests/run.sh installs nginx-light and libnginx-mod-stream)",
        )?;
        self.start_lb_with(self.lb_setup(LbKind::Nginx, Some(nginx)))
    }

    /// How [`TestCluster::start_lb`] sets up the LB host: this cluster's name, key and gossip
    /// settings, every host a seed, files in a temp dir. Change what a caller needs, then
    /// [`TestCluster::start_lb_with`].
    pub fn lb_setup(&self, kind: LbKind, program: Option<PathBuf>) -> LbSetup {
        LbSetup {
            kind,
            program,
            dir: None,
            cluster_name: self.cluster_name(),
            key_file: self.key_file.clone(),
            seeds: self
                .hosts
                .iter()
                .map(|h| format!("{}:{GOSSIP_PORT}", h.ip))
                .collect(),
            gossip_settings: self.spec.gossip_settings.clone(),
        }
    }

    /// Starts the LB host (on the spec's LB address) as `setup` says.
    pub fn start_lb_with(&mut self, setup: LbSetup) -> Result<()> {
        self.lb = Some(LbHost::start(self.spec.lb_address(), setup)?);
        Ok(())
    }

    /// The LB host (panics when it was not started).
    pub fn lb(&self) -> &LbHost {
        self.lb.as_ref().expect("the LB host was not started")
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub(super) fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub(super) fn cluster_name(&self) -> String {
        self.spec
            .cluster_name
            .clone()
            .unwrap_or_else(|| format!("test-{}", self.spec.test_id))
    }

    /// The agent command line of a host. With a config file ([`TestHost::config_file`]), only
    /// what differs between simulated hosts on one machine is a flag: the node name (real hosts
    /// have their own hostname), the root, the installer (the harness serves it) and the service
    /// manager (the stand-in's); everything else comes from the file.
    pub fn agent_command(&self, host: &TestHost) -> Command {
        self.host_command(host, &["agent"])
    }

    /// `rke2-bootstrap <subcommand>` with the flags `host`'s agent runs with (an operator's
    /// command on that host sees the same configuration).
    pub fn host_command(&self, host: &TestHost, subcommand: &[&str]) -> Command {
        if let Some(config) = &host.config_file {
            let flags = [
                ("node-name", host.name.clone()),
                ("root", host.root.path().display().to_string()),
                ("installer-url", self.installer.url()),
                ("allow-insecure-installer-url", "true".to_string()),
                (
                    "service-manager",
                    host.root.service_manager_command(&standin_bin()).join(" "),
                ),
            ];
            let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
            cmd.args(subcommand).arg("--config").arg(config);
            for (key, value) in flags.iter().map(|(k, v)| (k.to_string(), v.clone())) {
                cmd.arg(format!("--{key}")).arg(value);
            }
            for (key, value) in &host.extra {
                cmd.arg(format!("--{key}")).arg(value);
            }
            cmd.env("RKE2_BOOTSTRAP_LOG", "info,rke2_bootstrap=debug");
            cmd.envs(host.env.iter().map(|(k, v)| (k, v)));
            return cmd;
        }
        let seeds = self.spec.seeds.clone().unwrap_or_else(|| {
            self.hosts
                .iter()
                .map(|h| format!("{}:{GOSSIP_PORT}", h.ip))
                .collect()
        });
        let mut flags: Vec<(String, String)> = [
            ("cluster-name", self.cluster_name()),
            ("node-name", host.name.clone()),
            ("role", host.role.to_string()),
            ("bind-addr", format!("{}:{GOSSIP_PORT}", host.ip)),
            ("seeds", seeds.join(",")),
            ("gossip-key-file", self.key_file.display().to_string()),
            ("root", host.root.path().display().to_string()),
            ("initial-servers", self.initial_servers().join(",")),
            ("servers", self.spec.servers.to_string()),
            ("installer-url", self.installer.url()),
            // What the sweep waited before the grace became a setting: short, so tests that
            // replace a dead server do not wait the production 15 minutes.
            ("departed-server-grace-period", "30s".to_string()),
            ("allow-insecure-installer-url", "true".to_string()),
            (
                "service-manager",
                host.root.service_manager_command(&standin_bin()).join(" "),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(lb) = self.spec.registration_address {
            flags.push(("registration-address".into(), lb.to_string()));
        }
        // A host's own settings replace the defaults above (a flag may be given only once).
        for (key, value) in self.spec.gossip_settings.iter().chain(&host.extra) {
            match flags.iter_mut().find(|(k, _)| k == key) {
                Some(flag) => flag.1 = value.clone(),
                None => flags.push((key.clone(), value.clone())),
            }
        }
        let mut cmd = Command::new(workspace_bin("rke2-bootstrap"));
        cmd.args(subcommand);
        for (key, value) in &flags {
            cmd.arg(format!("--{key}")).arg(value);
        }
        cmd.env("RKE2_BOOTSTRAP_LOG", "info,rke2_bootstrap=debug");
        cmd.envs(host.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts (or restarts) one host's agent.
    pub fn start(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        // A previous run that exited on its own: its guard must not be dropped, which would kill
        // whatever runs with this root (this host's RKE2, and the new agent).
        if let Some(mut old) = self.hosts[i].child.take() {
            anyhow::ensure!(old.try_wait()?.is_some(), "{name} is already running");
            std::mem::forget(old);
        }
        let mut cmd = self.agent_command(&self.hosts[i]);
        let host = &mut self.hosts[i];
        host.restarts += 1;
        let log_path = host.log_path();
        std::fs::create_dir_all(log_path.parent().expect("log dir"))?;
        let log = std::fs::File::create(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child =
            ChildGuard::spawn(&mut cmd).with_context(|| format!("starting agent {name}"))?;
        host.child = Some(child.with_root(host.root.path()));
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for name in names {
            self.start(&name)?;
        }
        Ok(())
    }

    /// `kill -9` of the agent only (its RKE2 stand-in keeps running, as rke2 would).
    pub fn kill_agent(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        if let Some(mut child) = self.hosts[i].child.take() {
            child.kill_process()?;
            std::mem::forget(child);
        }
        Ok(())
    }

    /// The agent crashes (`kill -9`) and its service manager cleans up what the agent had
    /// running, such as an installer (systemd kills the rest of the unit's cgroup before the
    /// restart). RKE2, in its own unit, keeps running.
    pub fn crash_agent(&mut self, name: &str) -> Result<()> {
        self.kill_agent(name)?;
        kill_programs_run_from(self.hosts[self.index(name)].root.path());
        Ok(())
    }

    /// A power cut: the agent and everything it started die at once.
    pub fn power_off(&mut self, name: &str) -> Result<()> {
        self.crash_agent(name)?;
        self.hosts[self.index(name)].root.kill_standins();
        Ok(())
    }

    /// `rke2-bootstrap election release --claim <claim> --confirm` on a host, as its operator
    /// runs it (the host's agent stopped first).
    pub fn election_release(&self, name: &str, claim: &str) -> Result<String> {
        let host = self.host(name);
        let out = Command::new(workspace_bin("rke2-bootstrap"))
            .args(["election", "release", "--claim", claim, "--confirm"])
            .args(["--kernel-cmdline", "/nonexistent", "--node-name", name])
            .arg("--root")
            .arg(host.root.path())
            .env_remove("RKE2_BOOTSTRAP_CONFIG")
            .output()
            .context("running election release")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "election release on {name} failed ({}): {}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    /// `systemctl stop rke2-bootstrap`: SIGTERM, the agent leaves gossip gracefully, and RKE2, in
    /// its own unit, keeps running (the host root stops it when the test ends).
    pub fn stop_agent(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        if let Some(mut child) = self.hosts[i].child.take() {
            child.terminate(Duration::from_secs(10))?;
            std::mem::forget(child);
        }
        Ok(())
    }

    /// SIGTERM: the agent leaves gossip gracefully, and the host's RKE2 is stopped with it.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        if let Some(mut child) = self.hosts[i].child.take() {
            child.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Gives each of `names` the agent setting `key` (the LB host's sidecar does not get it,
    /// unlike [`ClusterSpec::with_gossip_setting`]).
    pub fn set_on_hosts(&mut self, names: &[&str], key: &str, value: &str) {
        for name in names {
            self.host_mut(name)
                .extra
                .push((key.to_string(), value.to_string()));
        }
    }
}
