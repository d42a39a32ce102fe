//! Shared test harness: stand-in RKE2 servers, real nginx/HAProxy processes with drop guards,
//! and a sidecar driver; the member builders, polling and address blocks come from the
//! workspace's test kit. Every test uses the ids of its own block (`blocks`), `127.<id>.0.0/24`.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub use rke2_testkit::blocks;
pub use rke2_testkit::member::{
    agent, dead, initializer, joining, left, observer, server, CA, STRAY_CA,
};
#[allow(unused_imports)]
pub use rke2_testkit::{wait_until, wait_until_async};

use rke2_bootstrap::gossip::schema::Member;
use rke2_lb_sidecar::config::{LbKind, NginxConfig, StreamModule};
use rke2_lb_sidecar::{Sidecar, SidecarConfig, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

mod driver;
mod lb;
mod scenarios;
mod standin;

// Each test binary uses a part of the harness; the rest is neither dead nor an unused import.
#[allow(unused_imports)]
pub use {driver::*, lb::*, scenarios::*, standin::*};

pub const SUPERVISOR: u16 = 9345;

pub const API: u16 = 6443;

/// `127.<id>.0.<host>`: each test owns the ids of its block (`rke2_testkit::blocks`).
pub use rke2_testkit::loopback_ip as ip;

/// The LB's address in test `id`.
pub fn lb_ip(id: u8) -> IpAddr {
    ip(id, 100)
}

pub fn stream_module() -> StreamModule {
    StreamModule::Path(PathBuf::from("/usr/lib/nginx/modules/ngx_stream_module.so"))
}

/// How often the sidecar tests poll.
pub const POLL: Duration = Duration::from_millis(50);
