//! Day-2 operations through the Kubernetes API, as the cluster admin: listing nodes and deleting
//! the Node of a server that is gone for good.
//!
//! Why deleting the Node is the right way to remove a dead server on RKE2: RKE2 embeds k3s, whose
//! controllers react to a Node's deletion. The `managed-etcd-controller` removes the etcd member
//! of a node that carries the etcd role label (`node-role.kubernetes.io/etcd`), and the node
//! controller deletes the node's `<node>.node-password.rke2` secret in `kube-system`. One API
//! call therefore removes everything that would block the server's return or a replacement of
//! the same name, by RKE2's own code, under the API's authorization, and leaves no Node of a dead
//! server behind for workloads to be scheduled on. Removing the etcd member by hand (as the
//! rejoin sweep does) leaves the Node and its password in place.
//!
//! The removal of the member happens in a finalizer: the API may answer the deletion while the
//! member is still there (the Node lingers, being deleted, until the controller succeeds). A
//! caller that needs the member gone still checks etcd's member list afterwards.
//!
//! Credentials: RKE2 writes an admin client certificate on every server,
//! [`ADMIN_CLIENT_CERT`] and [`ADMIN_CLIENT_KEY`] (`CN=system:admin`, `O=system:masters`), and
//! the CA that signs the API's serving certificate, [`API_SERVER_CA`]. The kubelet's certificate
//! (`O=system:nodes`) is not enough: the node authorizer lets a kubelet change its own Node only.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tracing::{debug, info};

/// The admin client certificate RKE2 writes on every server.
pub const ADMIN_CLIENT_CERT: &str = "/var/lib/rancher/rke2/server/tls/client-admin.crt";
/// The key of [`ADMIN_CLIENT_CERT`].
pub const ADMIN_CLIENT_KEY: &str = "/var/lib/rancher/rke2/server/tls/client-admin.key";
/// The CA that signs the API's serving certificate.
pub const API_SERVER_CA: &str = "/var/lib/rancher/rke2/server/tls/server-ca.crt";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Of an error answer, at most this much is quoted (a `Status` message fits).
const MAX_QUOTED: usize = 300;

/// What a node deletion found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeDeletion {
    /// The Node existed and is deleted (or being deleted, see the module docs).
    Deleted,
    /// There was no Node of that name.
    Absent,
}

/// A client of the Kubernetes API as the cluster admin.
#[derive(Debug, Clone)]
pub struct KubeAdmin {
    http: reqwest::Client,
    base: String,
}

impl KubeAdmin {
    /// A client for the API at `api`, with the admin credentials RKE2 wrote under `root`; errors
    /// name the file that is missing or unusable.
    pub fn new(api: SocketAddr, root: &Path) -> Result<Self> {
        let http = super::probe::mutual_tls_client(
            root,
            super::probe::MutualTls {
                what: "the kubernetes api",
                ca: API_SERVER_CA,
                cert: ADMIN_CLIENT_CERT,
                key: ADMIN_CLIENT_KEY,
            },
            CALL_TIMEOUT,
        )?;
        Ok(KubeAdmin {
            http,
            base: format!("https://{api}"),
        })
    }

    /// The names of all nodes.
    pub async fn nodes(&self) -> Result<Vec<String>> {
        let (status, body) = self.call(reqwest::Method::GET, "/api/v1/nodes").await?;
        if status != 200 {
            return Err(refusal("listing nodes", status, &body));
        }
        node_names(&body)
    }

    /// Deletes the Node `name`; RKE2 then removes its etcd member (if it is an etcd node) and its
    /// node password.
    pub async fn delete_node(&self, name: &str) -> Result<NodeDeletion> {
        check_node_name(name)?;
        let (status, body) = self
            .call(reqwest::Method::DELETE, &format!("/api/v1/nodes/{name}"))
            .await?;
        let outcome = deletion(status)
            .ok_or_else(|| refusal(&format!("deleting node {name}"), status, &body))?;
        match outcome {
            NodeDeletion::Deleted => info!(node = name, "deleted the node object"),
            NodeDeletion::Absent => debug!(node = name, "no node object to delete"),
        }
        Ok(outcome)
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> Result<(u16, Vec<u8>)> {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("accept", "application/json")
            .send()
            .await
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer to {method} {}{path}", self.base))?;
        Ok((status, body.to_vec()))
    }
}

/// The outcome of a DELETE by its status; `None` for a refusal or a failure.
fn deletion(status: u16) -> Option<NodeDeletion> {
    match status {
        // 202: accepted, the finalizer still runs; the same to the caller.
        200 | 202 => Some(NodeDeletion::Deleted),
        404 => Some(NodeDeletion::Absent),
        _ => None,
    }
}

/// An error for a refused or failed call, saying what the status means here.
fn refusal(what: &str, status: u16, body: &[u8]) -> anyhow::Error {
    let meaning = match status {
        401 => "unauthorized: the api did not accept the client-admin certificate",
        403 => "forbidden: the client-admin certificate is not an admin",
        503 => "the api is unavailable (etcd without quorum, or the server is starting)",
        _ => "unexpected answer",
    };
    anyhow::anyhow!("{what}: {meaning} ({status}: {})", status_message(body))
}

/// The `message` of a Kubernetes `Status`, else the start of the body.
fn status_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    message.chars().take(MAX_QUOTED).collect()
}

/// `metadata.name` of each item of a `NodeList`.
fn node_names(body: &[u8]) -> Result<Vec<String>> {
    let list: Value = serde_json::from_slice(body).context("the node list is not json")?;
    let items = list["items"]
        .as_array()
        .context("the node list has no items")?;
    Ok(items
        .iter()
        .filter_map(|item| item["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

/// Node names are DNS-1123 subdomains; anything else is refused before it becomes a URL path.
fn check_node_name(name: &str) -> Result<()> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = name.len() <= 253
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid {
        bail!("{name:?} is not a kubernetes node name (lowercase letters, digits, '-' and '.')");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_statuses() {
        assert_eq!(deletion(200), Some(NodeDeletion::Deleted));
        assert_eq!(deletion(404), Some(NodeDeletion::Absent));
        for status in [401, 403, 409, 500, 503] {
            assert_eq!(deletion(status), None, "{status}");
        }
        let forbidden = refusal(
            "deleting node server-1",
            403,
            br#"{"kind":"Status","message":"nodes \"server-1\" is forbidden","code":403}"#,
        )
        .to_string();
        assert!(
            forbidden.contains("forbidden: the client-admin certificate is not an admin"),
            "{forbidden}"
        );
        assert!(
            forbidden.contains(r#"nodes "server-1" is forbidden"#),
            "{forbidden}"
        );
        assert!(refusal("x", 401, b"").to_string().contains("unauthorized"));
        assert!(refusal("x", 503, b"readyz check failed\n")
            .to_string()
            .contains("unavailable"));
        let long = vec![b'a'; 5000];
        assert!(refusal("x", 500, &long).to_string().len() < 500);
    }

    #[test]
    fn node_lists_give_names() {
        let body = br#"{"kind":"NodeList","items":[{"metadata":{"name":"server-1"}},{"metadata":{"name":"agent-1","labels":{}}}]}"#;
        assert_eq!(node_names(body).unwrap(), ["server-1", "agent-1"]);
        assert!(node_names(b"{}").is_err());
        assert!(node_names(b"not json").is_err());
    }

    #[test]
    fn node_names_are_checked() {
        for good in ["server-1", "a", "node-127-129-0-1", "n.example.com"] {
            check_node_name(good).unwrap();
        }
        for bad in ["", "Server-1", "a/b", "../x", "-a", "a-", "a b", "a?b"] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_credentials_are_named() {
        let root = tempfile::tempdir().unwrap();
        let api: SocketAddr = "127.0.0.1:6443".parse().unwrap();
        let e = format!("{:#}", KubeAdmin::new(api, root.path()).unwrap_err());
        assert!(e.contains("server-ca.crt"), "{e}");
        let tls = crate::fsutil::under_root(root.path(), "/var/lib/rancher/rke2/server/tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("server-ca.crt"), b"").unwrap();
        let e = format!("{:#}", KubeAdmin::new(api, root.path()).unwrap_err());
        assert!(e.contains("client-admin.crt"), "{e}");
    }
}
