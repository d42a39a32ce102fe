//! The sidecar under test: its config for a test, and a [`Driver`] feeding it membership views.

use super::*;

/// A sidecar config for test `id` with everything under `dir`.
pub fn sidecar_config(kind: LbKind, id: u8, dir: &Path) -> SidecarConfig {
    let mut config = SidecarConfig {
        lb: kind,
        lb_addr: lb_ip(id),
        status_file: Some(dir.join("status.json")),
        ..SidecarConfig::default()
    };
    config.retry.initial = Duration::from_millis(300);
    config.retry.max = Duration::from_secs(1);
    match kind {
        LbKind::Nginx => {
            config.config_file = Some(dir.join("nginx.conf"));
            config.nginx = NginxConfig {
                stream_module: stream_module(),
                prefix: Some(dir.to_path_buf()),
                pid_file: dir.join("nginx.pid"),
                error_log: dir.join("error.log").display().to_string(),
                worker_processes: Some(2),
                worker_connections: 512,
                ..NginxConfig::default()
            };
        }
        LbKind::Haproxy => {
            config.config_file = Some(dir.join("haproxy.cfg"));
            config.haproxy.run_dir = dir.to_path_buf();
            config.haproxy.check_inter = Duration::from_millis(500);
        }
    }
    config
}

/// A running sidecar fed through a watch channel.
pub struct Driver {
    pub view: watch::Sender<Arc<Vec<Member>>>,
    pub status: watch::Receiver<Status>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Driver {
    pub fn start(config: SidecarConfig, members: Vec<Member>) -> Driver {
        // `RUST_LOG=rke2_lb_sidecar=debug` shows the sidecar's decisions in a failing test.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let (view, view_rx) = watch::channel(Arc::new(members));
        let sidecar = Sidecar::new(config).expect("sidecar config");
        let status = sidecar.status();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sidecar.run(view_rx, async move {
            let _ = rx.await;
        }));
        Driver {
            view,
            status,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn set(&self, members: Vec<Member>) {
        self.view.send_replace(Arc::new(members));
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `pred`; returns it.
    pub async fn wait_status(&self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        let mut rx = self.status.clone();
        let result = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if pred(&s) {
                        return s.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    panic!("sidecar stopped while waiting for {what}");
                }
            }
        })
        .await;
        match result {
            Ok(s) => s,
            Err(_) => panic!("timed out waiting for {what}; status: {:#?}", self.status()),
        }
    }

    /// Waits until the live file routes to exactly `names`.
    pub async fn wait_applied(&self, names: &[&str]) -> Status {
        let mut want: Vec<&str> = names.to_vec();
        want.sort();
        self.wait_status(&format!("servers {want:?} applied"), |s| {
            let got: Vec<&str> = s.servers.iter().map(|u| u.name.as_str()).collect();
            got == want
                && matches!(
                    s.outcome,
                    rke2_lb_sidecar::Outcome::Applied | rke2_lb_sidecar::Outcome::Unchanged
                )
        })
        .await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("sidecar task").expect("sidecar run");
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
