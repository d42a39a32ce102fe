//! Waiting on a [`TestCluster`]: for phases, for one etcd cluster, for the LB's upstreams, for
//! an agent to exit. Each polls with the test kit's `wait_until`.

use super::*;

impl TestCluster {
    /// Waits until the LB's nginx.conf routes exactly to the addresses of `names` (on both ports).
    #[track_caller]
    pub fn wait_for_lb_servers(&self, names: &[&str], timeout: Duration) -> Result<()> {
        let mut want: Vec<IpAddr> = names.iter().map(|n| self.host(n).ip).collect();
        want.sort();
        let lb = self.lb();
        wait_until(timeout, Duration::from_millis(50), || {
            let got = lb.upstream_addrs();
            if got == want {
                Ok(())
            } else {
                Err(format!("lb routes to {got:?}, want {want:?}"))
            }
        })
        .with_context(|| format!("{}\n--- lb\n{}", self.logs_tail(), lb.log_tail()))
    }

    /// Waits for a host's agent to exit on its own (a fatal error), returning its exit status.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> Result<ExitStatus> {
        let i = self.index(name);
        let child = self.hosts[i]
            .child
            .as_mut()
            .with_context(|| format!("{name} is not running"))?;
        match child.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => anyhow::bail!(
                "{name} still running after {timeout:?}:\n{}",
                self.hosts[i].log()
            ),
        }
    }

    /// Waits until every named host reports `phase`.
    #[track_caller]
    pub fn wait_for_phase(&self, names: &[&str], phase: Phase, timeout: Duration) -> Result<()> {
        wait_until(timeout, Duration::from_millis(100), || {
            // One status fetch per host and poll: the same report decides and explains.
            let pending: Vec<(&str, Option<StatusReport>)> = names
                .iter()
                .map(|n| (*n, self.host(n).status()))
                .filter(|(_, s)| s.as_ref().map(|s| s.phase) != Some(phase))
                .collect();
            if pending.is_empty() {
                return Ok(Ok(()));
            }
            // An agent that has exited will never get there: settle now with that reason (the
            // outer `Ok`), rather than sit out the timeout (a config error exits in milliseconds).
            let exited: Vec<&str> = pending
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| self.host(n).agent_exited())
                .collect();
            if !exited.is_empty() {
                return Ok(Err(anyhow::anyhow!(
                    "waiting for {phase:?}: the agent of {} exited",
                    exited.join(", ")
                )));
            }
            Err(pending
                .into_iter()
                .map(|(n, s)| {
                    format!(
                        "{n}: {:?} ({})",
                        s.as_ref().map(|s| s.phase),
                        s.map(|s| s.reason).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "))
        })
        .and_then(|settled| settled)
        // Joiners register through the LB: when they never get there, the LB is often why.
        .with_context(|| match &self.lb {
            Some(lb) => format!("{}\n--- lb\n{}", self.logs_tail(), lb.log_tail()),
            None => self.logs_tail(),
        })
    }

    /// "One cluster", as etcd sees it: every one of `servers` belongs to the same etcd cluster,
    /// whose members are exactly those servers (by node name), none of them a learner. Waits up
    /// to `timeout` for it (a promotion or a removal may be in flight), then fails with what etcd
    /// said.
    pub fn wait_for_one_etcd_cluster(&self, servers: &[&str], timeout: Duration) -> Result<()> {
        let mut want: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_until(
            timeout,
            Duration::from_millis(200),
            || -> Result<(), String> {
                let views = self.etcd_views(servers).map_err(|e| format!("{e:#}"))?;
                let ids: Vec<u64> = views.iter().map(|(_, l)| l.cluster_id).collect();
                if ids.windows(2).any(|w| w[0] != w[1]) {
                    return Err(format!("several etcd clusters: {ids:?}"));
                }
                for (name, list) in &views {
                    let mut names: Vec<String> = list
                        .members
                        .iter()
                        .map(|m| etcd::member_node_name(&m.name).to_string())
                        .collect();
                    names.sort();
                    if names != want {
                        return Err(format!("etcd on {name} lists {names:?}, expected {want:?}"));
                    }
                    if let Some(learner) = list.members.iter().find(|m| m.is_learner) {
                        return Err(format!("a learner is left behind: {learner:?}"));
                    }
                }
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs_tail()))
    }

    /// Waits until `servers` are exactly the members of one etcd cluster, voters all, every one
    /// of them ready, and (with an LB) the LB routes to exactly them: the cluster's shape after
    /// a day-2 change. All within `timeout`.
    pub fn wait_servers(&self, servers: &[&str], timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        self.wait_for_one_etcd_cluster(servers, timeout)?;
        self.wait_for_phase(servers, Phase::Ready, left())?;
        if self.lb.is_some() {
            self.wait_for_lb_servers(servers, left())?;
        }
        Ok(())
    }

    /// Waits until every one of `hosts` is ready, `servers` of them servers and the rest workers,
    /// the servers one etcd cluster behind the LB. Returns the servers and the workers; panics
    /// with the logs otherwise.
    #[track_caller]
    pub fn wait_formed<'a>(
        &self,
        hosts: &[&'a str],
        servers: usize,
        timeout: Duration,
    ) -> (Vec<&'a str>, Vec<&'a str>) {
        self.wait_for_phase(hosts, Phase::Ready, timeout).unwrap();
        let (formed, workers) = (
            self.hosts_with_role(hosts, Role::Server),
            self.hosts_with_role(hosts, Role::Agent),
        );
        assert_eq!(
            (formed.len(), workers.len()),
            (servers, hosts.len() - servers),
            "servers {formed:?}, workers {workers:?}"
        );
        self.wait_servers(&formed, Duration::from_secs(30)).unwrap();
        (formed, workers)
    }

    /// Starts every host with an installer slowed by `seconds` and returns the first-server
    /// candidate once it is installing (the installer records its run before it sleeps, so the
    /// first host with a record is the candidate). Panics with the logs after `timeout`.
    pub fn start_with_a_slow_installer(&mut self, seconds: u32, timeout: Duration) -> String {
        for host in &mut self.hosts {
            host.env
                .push(("STANDIN_INSTALL_SLEEP".into(), seconds.to_string()));
        }
        self.start_all().unwrap();
        wait_until(timeout, Duration::from_millis(20), || {
            self.hosts
                .iter()
                .find(|h| !h.root.install_env_records().is_empty())
                .map(|h| h.name.clone())
        })
        .unwrap_or_else(|e| panic!("{e:#}{}", self.logs_tail()))
    }
}
