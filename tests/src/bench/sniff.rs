//! Bytes on the wire, counted on the loopback interface: a packet socket sees every IPv4 packet
//! once; the ones sent from a cluster's addresses are added up (IP length: IP and UDP/TCP headers
//! plus payload, as a real network would carry them minus the link header). Needs CAP_NET_RAW.
//!
//! Our agent counts datagrams, not bytes, and the kernel's UDP counters are per machine and per
//! datagram too, so bandwidth is measured here, the same way for both implementations.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// What was counted.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Traffic {
    pub udp_bytes: u64,
    pub udp_packets: u64,
    pub tcp_bytes: u64,
    pub tcp_packets: u64,
    /// Packets the kernel could not queue to the counter (the figures are then a lower bound).
    pub dropped: u64,
}

impl Traffic {
    pub fn bytes(&self) -> u64 {
        self.udp_bytes + self.tcp_bytes
    }

    /// One line for a report's notes: what was counted over `window`.
    pub fn summary(&self, window: std::time::Duration) -> String {
        format!(
            "{:.0} s window, udp {} B in {} packets, tcp {} B in {} packets{}",
            window.as_secs_f64(),
            self.udp_bytes,
            self.udp_packets,
            self.tcp_bytes,
            self.tcp_packets,
            if self.dropped > 0 {
                format!(", {} packets missed by the counter", self.dropped)
            } else {
                String::new()
            },
        )
    }
}

/// Counts, on a thread, the traffic sent from a set of addresses until [`ByteCounter::finish`].
pub struct ByteCounter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Traffic>>>,
}

impl ByteCounter {
    pub fn start(sources: HashSet<Ipv4Addr>) -> Result<ByteCounter> {
        let socket = PacketSocket::open_loopback()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || socket.count(&sources, &flag));
        Ok(ByteCounter {
            stop,
            thread: Some(thread),
        })
    }

    pub fn finish(mut self) -> Result<Traffic> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => bail!("the byte counter thread panicked"),
        }
    }
}

impl Drop for ByteCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct PacketSocket {
    fd: std::os::fd::OwnedFd,
}

impl PacketSocket {
    fn open_loopback() -> Result<PacketSocket> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                (ETH_P_IP.to_be()) as i32,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error())
                .context("opening a packet socket (needs CAP_NET_RAW)");
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket { fd };
        let lo = std::ffi::CString::new("lo").expect("no NUL");
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(lo.as_ptr()) };
        if ifindex == 0 {
            bail!("no loopback interface");
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_IP.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                socket.raw(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("binding to loopback");
        }
        socket.set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20)?;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: a valid timeval of the given length.
        let rc = unsafe {
            libc::setsockopt(
                socket.raw(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("setting a receive timeout");
        }
        // Start from zero: statistics are reset when read.
        socket.dropped()?;
        Ok(socket)
    }

    fn raw(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    fn set_option(&self, level: i32, name: i32, value: i32) -> Result<()> {
        // SAFETY: a valid int of the given length.
        let rc = unsafe {
            libc::setsockopt(
                self.raw(),
                level,
                name,
                &value as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("setting a socket option");
        }
        Ok(())
    }

    /// Packets dropped since the last call.
    fn dropped(&self) -> Result<u64> {
        // SAFETY: tpacket_stats is plain data.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as u32;
        // SAFETY: a valid buffer and length for PACKET_STATISTICS.
        let rc = unsafe {
            libc::getsockopt(
                self.raw(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut stats as *mut libc::tpacket_stats as *mut libc::c_void,
                &mut len,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("reading packet statistics");
        }
        Ok(stats.tp_drops as u64)
    }

    fn count(&self, sources: &HashSet<Ipv4Addr>, stop: &AtomicBool) -> Result<Traffic> {
        let mut traffic = Traffic::default();
        // Only the IP header is needed: its length field says how long the packet was.
        let mut buf = [0u8; 64];
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        while !stop.load(Ordering::Relaxed) {
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid buffers and lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.raw(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(err).context("reading from the packet socket"),
                }
            }
            // A packet the host sent is seen again on the way in: count it once.
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if let Some((src, proto, len)) = ipv4_header(&buf[..n as usize]) {
                if !sources.contains(&src) {
                    continue;
                }
                match proto {
                    IPPROTO_UDP => {
                        traffic.udp_bytes += len as u64;
                        traffic.udp_packets += 1;
                    }
                    IPPROTO_TCP => {
                        traffic.tcp_bytes += len as u64;
                        traffic.tcp_packets += 1;
                    }
                    _ => {}
                }
            }
        }
        traffic.dropped = self.dropped()?;
        Ok(traffic)
    }
}

/// Source address, protocol and total length of an IPv4 packet.
fn ipv4_header(packet: &[u8]) -> Option<(Ipv4Addr, u8, u16)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let len = u16::from_be_bytes([packet[2], packet[3]]);
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some((src, packet[9], len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_ipv4_header() {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&128u16.to_be_bytes());
        p[9] = IPPROTO_UDP;
        p[12..16].copy_from_slice(&[127, 9, 0, 1]);
        assert_eq!(
            ipv4_header(&p),
            Some((Ipv4Addr::new(127, 9, 0, 1), IPPROTO_UDP, 128))
        );
        p[0] = 0x60;
        assert_eq!(ipv4_header(&p), None);
    }
}
