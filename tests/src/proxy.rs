//! [`TcpProxy`]: a tiny TCP forwarder on a loopback address, for tests that need "a load balancer
//! in front of the servers" without a real one, including one with no upstream yet.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

struct Shared {
    upstream: Mutex<Option<SocketAddr>>,
    stop: AtomicBool,
    connections: AtomicUsize,
}

/// Forwards every connection on `listen` to the current upstream; with no upstream, or one that
/// refuses, the client's connection is accepted and closed at once (as an LB with no healthy
/// upstream does). Stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    pub fn start(listen: SocketAddr, upstream: Option<SocketAddr>) -> Result<TcpProxy> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("binding the proxy on {listen}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{addr}"))
            .spawn(move || accept_loop(listener, thread_shared))?;
        Ok(TcpProxy {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go from now on (`None`: nowhere).
    pub fn set_upstream(&self, upstream: Option<SocketAddr>) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let upstream = *shared.upstream.lock().unwrap();
                let shared = shared.clone();
                std::thread::spawn(move || forward(client, upstream, shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn forward(client: TcpStream, upstream: Option<SocketAddr>, shared: Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Some(target) = upstream else { return };
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
        return;
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn({
        let shared = shared.clone();
        move || pipe(client, server, &shared)
    });
    pipe(server2, client2, &shared);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
