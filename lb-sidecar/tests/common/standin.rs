//! Stand-in RKE2 servers (each answers with its name), and what a client reaches through the LB.

use super::*;

/// A stand-in RKE2 server: answers every connection on 9345 and 6443 with its name.
pub struct StandIn {
    pub name: String,
    pub addr: IpAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl StandIn {
    pub async fn start(name: &str, addr: IpAddr) -> StandIn {
        let mut tasks = Vec::new();
        for port in [SUPERVISOR, API] {
            let listener = TcpListener::bind(SocketAddr::new(addr, port))
                .await
                .unwrap_or_else(|e| panic!("binding {addr}:{port}: {e}"));
            let reply = format!("{name}\n");
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((mut conn, _)) = listener.accept().await else {
                        continue;
                    };
                    let reply = reply.clone();
                    tokio::spawn(async move {
                        let _ = conn.write_all(reply.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    });
                }
            }));
        }
        StandIn {
            name: name.to_string(),
            addr,
            tasks,
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Stand-in servers `m1` to `m<n>` of test `id`, at `ip(id, 1)` to `ip(id, n)`.
pub async fn standins(id: u8, n: u8) -> Vec<StandIn> {
    let mut started = Vec::new();
    for i in 1..=n {
        started.push(StandIn::start(&format!("m{i}"), ip(id, i)).await);
    }
    started
}

/// Connects to `addr` and returns the name the backend answered with, if any.
pub async fn reach(addr: SocketAddr) -> Option<String> {
    let attempt = async {
        let mut conn = TcpStream::connect(addr).await.ok()?;
        let mut buf = String::new();
        conn.read_to_string(&mut buf).await.ok()?;
        let name = buf.trim().to_string();
        (!name.is_empty()).then_some(name)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Names seen over `n` sequential connections to `addr` (a failed connection is `"<none>"`).
pub async fn sample(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(reach(addr).await.unwrap_or_else(|| "<none>".into()));
    }
    seen
}

/// Waits until connections through the LB on both ports reach exactly `expected` (every one of
/// them, and nothing else over 20 consecutive connections per port).
pub async fn wait_for_routing(id: u8, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    let what = format!("the lb in test {id} to route to exactly {want:?}");
    wait_until_async(Duration::from_secs(15), POLL, || {
        let want = want.clone();
        async move {
            for port in [SUPERVISOR, API] {
                let mut seen = sample(SocketAddr::new(lb_ip(id), port), 20).await;
                seen.sort();
                seen.dedup();
                if seen != want {
                    return None;
                }
            }
            Some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("waiting for {what}: {e:#}"))
}

/// Asserts over `n` connections per port that only `allowed` names answer.
pub async fn assert_only(id: u8, allowed: &[&str], n: usize) {
    for port in [SUPERVISOR, API] {
        for name in sample(SocketAddr::new(lb_ip(id), port), n).await {
            assert!(
                allowed.contains(&name.as_str()),
                "port {port} reached {name:?}, allowed only {allowed:?}"
            );
        }
    }
}
