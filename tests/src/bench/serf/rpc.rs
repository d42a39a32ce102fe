//! A client for the Serf agent's RPC port (MessagePack over TCP): the handshake and `members`,
//! which is what `serf members` does, without starting a process per question.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::msgpack::{self, Field, Value};

/// One member as a Serf agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerfMember {
    pub name: String,
    pub addr: Option<IpAddr>,
    /// `alive`, `leaving`, `left` or `failed`.
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

impl SerfMember {
    pub fn is_alive(&self) -> bool {
        self.status == "alive"
    }
}

/// A connection to one agent's RPC port, kept open across requests.
pub struct RpcClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    seq: u64,
}

impl RpcClient {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<RpcClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to serf rpc {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut client = RpcClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            seq: 0,
        };
        client.request("handshake", &[("Version", Field::Uint(1))], false)?;
        Ok(client)
    }

    /// The agent's member list.
    pub fn members(&mut self) -> Result<Vec<SerfMember>> {
        let body = self
            .request("members", &[], true)?
            .context("members response without a body")?;
        let list = body
            .get("Members")
            .and_then(Value::as_array)
            .context("members response without Members")?;
        Ok(list.iter().map(member).collect())
    }

    fn request(
        &mut self,
        command: &str,
        body: &[(&str, Field<'_>)],
        has_response_body: bool,
    ) -> Result<Option<Value>> {
        let seq = self.seq;
        self.seq += 1;
        let mut out =
            msgpack::encode_map(&[("Command", Field::Str(command)), ("Seq", Field::Uint(seq))]);
        if !body.is_empty() {
            out.extend(msgpack::encode_map(body));
        }
        self.writer.write_all(&out)?;
        let header = msgpack::decode(&mut self.reader)?;
        let error = header.get("Error").and_then(Value::as_str).unwrap_or("");
        if !error.is_empty() {
            bail!("serf rpc {command}: {error}");
        }
        let got = header.get("Seq").and_then(Value::as_int);
        if got != Some(seq as i128) {
            bail!("serf rpc {command}: response for seq {got:?}, expected {seq}");
        }
        if has_response_body {
            Ok(Some(msgpack::decode(&mut self.reader)?))
        } else {
            Ok(None)
        }
    }
}

fn member(v: &Value) -> SerfMember {
    SerfMember {
        name: v
            .get("Name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        addr: v
            .get("Addr")
            .and_then(Value::as_bytes)
            .and_then(ip_from_bytes),
        status: v
            .get("Status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        tags: v.get("Tags").map(Value::as_string_map).unwrap_or_default(),
    }
}

/// Go's `net.IP`: 4 or 16 bytes (an IPv4 address is usually sent in its 16-byte mapped form).
fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let octets: [u8; 16] = b.try_into().ok()?;
            let v6 = Ipv6Addr::from(octets);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_both_go_forms() {
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 1, 2, 3];
        assert_eq!(ip_from_bytes(&mapped), Some("127.1.2.3".parse().unwrap()));
        assert_eq!(
            ip_from_bytes(&[127, 0, 0, 9]),
            Some("127.0.0.9".parse().unwrap())
        );
        assert_eq!(ip_from_bytes(&[1, 2]), None);
    }
}
