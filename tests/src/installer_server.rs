//! A minimal HTTP/1.1 server on 127.0.0.1 serving the installer script, standing in for
//! get.rke2.io, with fault injection for retry tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::http;

/// How a request picked for failure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Answer `500 Internal Server Error`.
    Status500,
    /// Read the request, then close the connection without answering.
    Close,
    /// Read the request, then never answer (until the server is dropped): for client timeouts.
    Stall,
}

#[derive(Default)]
struct State {
    script: Mutex<Vec<u8>>,
    requests: AtomicUsize,
    served: AtomicUsize,
    failures: Mutex<VecDeque<FailMode>>,
    paths: Mutex<Vec<String>>,
}

/// Serves the script at `/` and `/install.sh` (GET and HEAD), 404 elsewhere. Runs on its own
/// thread and runtime, so it works from sync and async tests alike; stops when dropped.
pub struct InstallerServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl InstallerServer {
    pub fn start(script: Vec<u8>) -> Result<InstallerServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding the installer server on 127.0.0.1")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(State {
            script: Mutex::new(script),
            ..State::default()
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("installer server runtime")?;
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("installer-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("installer server: {e}");
                            return;
                        }
                    };
                    let mut stop = shutdown_rx.clone();
                    loop {
                        tokio::select! {
                            _ = stop.changed() => break,
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    tokio::spawn(handle(stream, thread_state.clone(), shutdown_rx.clone()));
                                }
                            }
                        }
                    }
                });
            })
            .context("spawning the installer server thread")?;
        Ok(InstallerServer {
            addr,
            state,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The installer URL, like `https://get.rke2.io` but plain HTTP: `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received (every request head read, including those failed on purpose).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests answered 200 with the script.
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }

    /// The paths requested, in order.
    pub fn request_paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }

    /// Fails the next `k` requests (whatever their path) with `mode`, after any failures already
    /// queued.
    pub fn fail_next(&self, k: usize, mode: FailMode) {
        let mut failures = self.state.failures.lock().unwrap();
        failures.extend(std::iter::repeat_n(mode, k));
    }

    /// Replaces the script served from now on.
    pub fn set_script(&self, script: Vec<u8>) {
        *self.state.script.lock().unwrap() = script;
    }
}

impl Drop for InstallerServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(mut stream: TcpStream, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let request = match tokio::time::timeout(
        Duration::from_secs(10),
        http::read_request(&mut stream),
    )
    .await
    {
        Ok(Ok(request)) => request,
        _ => return,
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.paths.lock().unwrap().push(request.path.clone());
    let failure = state.failures.lock().unwrap().pop_front();
    let with_body = request.method != "HEAD";
    match failure {
        Some(FailMode::Close) => return,
        Some(FailMode::Stall) => {
            let _ = stop.wait_for(|stopped| *stopped).await;
            return;
        }
        Some(FailMode::Status500) => {
            let _ = http::write_response(
                &mut stream,
                500,
                "text/plain",
                b"injected failure\n",
                with_body,
            )
            .await;
        }
        None => {
            let reply = match (request.method.as_str(), request.path.as_str()) {
                ("GET" | "HEAD", "/" | "/install.sh") => {
                    let script = state.script.lock().unwrap().clone();
                    Some((200, script))
                }
                ("GET" | "HEAD", _) => Some((404, b"404 page not found\n".to_vec())),
                _ => Some((405, b"method not allowed\n".to_vec())),
            };
            if let Some((status, body)) = reply {
                let ok = http::write_response(&mut stream, status, "text/plain", &body, with_body)
                    .await
                    .is_ok();
                if ok && status == 200 {
                    state.served.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}
