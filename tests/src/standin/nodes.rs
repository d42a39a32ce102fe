//! Node objects and the part of the Kubernetes API that day-2 operations use:
//! `GET /api/v1/nodes[/<name>]` and `DELETE /api/v1/nodes/<name>`.
//!
//! Every node that registers (servers and agents), and every server once its API is ready, has a
//! Node object in etcd at `/registry/minions/<name>`, where kube-apiserver keeps them; servers
//! carry the etcd and control-plane role labels, as RKE2 labels its servers.
//!
//! Authorization follows kube-apiserver with RBAC: no credentials is 401; any authenticated
//! caller may read nodes; only `system:masters` (RKE2's `client-admin` certificate) may delete
//! one. A kubelet certificate (`O=system:nodes`) may not delete other nodes.
//!
//! A DELETE does, before answering, what k3s's controllers do once a Node is deleted: the
//! `managed-etcd-controller` removes the etcd member of an etcd-labelled node (its finalizer
//! keeps the Node until that succeeds, so on failure the Node stays and the caller may retry),
//! and the node controller deletes the node's `<node>.node-password.rke2` secret.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::pki::CertUser;
use super::{etcd, log, Kind, Reply, JSON};

/// RKE2's label on nodes that run an etcd member; k3s removes the member of such a node when its
/// Node is deleted.
pub const ETCD_ROLE_LABEL: &str = "node-role.kubernetes.io/etcd";
pub const CONTROL_PLANE_ROLE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The group RBAC binds to `cluster-admin`.
pub const ADMIN_GROUP: &str = "system:masters";
const NODES_PATH: &str = "/api/v1/nodes";
const KEY_PREFIX: &str = "/registry/minions/";

/// Where kube-apiserver keeps a Node in etcd.
pub fn node_key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

/// The Node object of a node, with the labels RKE2 gives servers.
pub fn node_object(name: &str, server: bool) -> Value {
    let mut labels = json!({ "kubernetes.io/hostname": name });
    if server {
        labels[ETCD_ROLE_LABEL] = json!("true");
        labels[CONTROL_PLANE_ROLE_LABEL] = json!("true");
    }
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": { "name": name, "labels": labels },
    })
}

/// Creates or replaces the Node of `name` (a registration of the same node updates it).
pub fn put_node(client: &etcd::Client, name: &str, server: bool) -> Result<()> {
    client
        .put(
            &node_key(name),
            node_object(name, server).to_string().as_bytes(),
        )
        .with_context(|| format!("storing the node object of {name}"))
}

/// Who calls the API, as kube-apiserver's authenticators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// `Authorization: Bearer <cluster token secret>`: accepted for health checks and reads, and
    /// grants nothing else.
    ClusterToken,
    /// A client certificate issued by the cluster CA.
    Cert(CertUser),
}

impl Caller {
    pub fn authenticated(&self) -> bool {
        !matches!(self, Caller::Anonymous)
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Cert(user) if user.in_group(ADMIN_GROUP))
    }

    fn user_name(&self) -> &str {
        match self {
            Caller::Anonymous => "system:anonymous",
            Caller::ClusterToken => "node-token",
            Caller::Cert(user) => &user.name,
        }
    }
}

/// An authorized request under `/api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodesRequest {
    List,
    Get(String),
    Delete(String),
}

/// The decision for a request, without I/O: `None` when `path` is not under `/api/v1/nodes`,
/// else what to do or the answer to give now (401, 403, 404, 405).
pub fn route(method: &str, path: &str, caller: &Caller) -> Option<Result<NodesRequest, Reply>> {
    let rest = path.strip_prefix(NODES_PATH)?;
    let name = match rest {
        "" | "/" => None,
        rest => Some(rest.strip_prefix('/')?),
    };
    if !caller.authenticated() {
        return Some(Err(unauthorized()));
    }
    if let Some(name) = name.filter(|n| !valid_name(n)) {
        return Some(Err(not_found(name)));
    }
    let name = name.map(str::to_string);
    Some(match (method, name) {
        ("GET" | "HEAD", None) => Ok(NodesRequest::List),
        ("GET" | "HEAD", Some(name)) => Ok(NodesRequest::Get(name)),
        ("DELETE", Some(name)) if caller.is_admin() => Ok(NodesRequest::Delete(name)),
        ("DELETE", Some(name)) => Err(status(
            403,
            "Forbidden",
            &format!(
                "nodes \"{name}\" is forbidden: User \"{}\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope",
                caller.user_name()
            ),
        )),
        _ => Err(status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    })
}

/// A DNS-1123 subdomain, as Kubernetes requires of node names (so a name never reaches past its
/// own etcd key).
fn valid_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// The etcd members that stand for `node`: RKE2 names them `<node>-<suffix>`, and the whole node
/// name must match (`server-1` is not `server-10`). A learner that never started has no name and
/// stands for nobody.
pub fn members_of(node: &str, members: &[etcd::Member]) -> Vec<u64> {
    members
        .iter()
        .filter(|m| !m.name.is_empty() && etcd::member_node_name(&m.name) == node)
        .map(|m| m.id)
        .collect()
}

/// Carries out an authorized request against etcd (blocking). etcd failures answer 503, as an
/// apiserver that cannot reach its datastore does.
pub fn serve(client: &etcd::Client, request: NodesRequest) -> Reply {
    let outcome = match request {
        NodesRequest::List => list(client),
        NodesRequest::Get(name) => get(client, &name),
        NodesRequest::Delete(name) => delete(client, &name),
    };
    outcome.unwrap_or_else(|e| status(503, "ServiceUnavailable", &format!("{e:#}").to_lowercase()))
}

fn list(client: &etcd::Client) -> Result<Reply> {
    let items: Vec<Value> = client
        .get_prefix(KEY_PREFIX)?
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
        .collect();
    let list = json!({
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    });
    Ok((200, JSON, list.to_string().into_bytes()))
}

fn get(client: &etcd::Client, name: &str) -> Result<Reply> {
    Ok(match client.get(&node_key(name))? {
        Some(object) => (200, JSON, object),
        None => not_found(name),
    })
}

fn delete(client: &etcd::Client, name: &str) -> Result<Reply> {
    // Checked first so that a cluster without quorum answers at once, not after a write times out.
    if !client.healthy() {
        anyhow::bail!("etcd has no quorum: cannot delete node {name}");
    }
    let Some(object) = client.get(&node_key(name))? else {
        return Ok(not_found(name));
    };
    let node: Value = serde_json::from_slice(&object).unwrap_or(Value::Null);
    let etcd_node = node["metadata"]["labels"].get(ETCD_ROLE_LABEL).is_some();
    let mut removed = Vec::new();
    if etcd_node {
        let list = client.member_list()?;
        for id in members_of(name, &list.members) {
            client
                .remove(id)
                .with_context(|| format!("removing etcd member {id} of {name}"))?;
            removed.push(id);
        }
    }
    client.delete(&etcd::node_password_key(name))?;
    client.delete(&node_key(name))?;
    log(
        Kind::Server,
        format!("deleted node {name} (etcd members removed: {removed:?}; node password removed)"),
    );
    Ok((200, JSON, object))
}

/// A `Status` object as kube-apiserver answers errors.
fn status(code: u16, reason: &str, message: &str) -> Reply {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    (code, JSON, body.to_string().into_bytes())
}

pub fn unauthorized() -> Reply {
    status(401, "Unauthorized", "Unauthorized")
}

fn not_found(name: &str) -> Reply {
    status(404, "NotFound", &format!("nodes \"{name}\" not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str, group: &str) -> Caller {
        Caller::Cert(CertUser {
            name: name.into(),
            groups: vec![group.into()],
        })
    }

    fn decide(method: &str, path: &str, caller: &Caller) -> Result<NodesRequest, u16> {
        route(method, path, caller)
            .expect("a nodes path")
            .map_err(|(code, _, _)| code)
    }

    #[test]
    fn deleting_a_node_takes_an_admin() {
        let admin = cert("system:admin", ADMIN_GROUP);
        let kubelet = cert("system:node:server-2", "system:nodes");
        let path = "/api/v1/nodes/server-1";
        assert_eq!(decide("DELETE", path, &Caller::Anonymous), Err(401));
        assert_eq!(decide("DELETE", path, &kubelet), Err(403));
        assert_eq!(decide("DELETE", path, &Caller::ClusterToken), Err(403));
        assert_eq!(
            decide("DELETE", path, &admin),
            Ok(NodesRequest::Delete("server-1".into()))
        );
        // Reading takes any authenticated identity.
        assert_eq!(
            decide("GET", "/api/v1/nodes", &kubelet),
            Ok(NodesRequest::List)
        );
        assert_eq!(
            decide("GET", "/api/v1/nodes/", &Caller::ClusterToken),
            Ok(NodesRequest::List)
        );
        assert_eq!(decide("GET", "/api/v1/nodes", &Caller::Anonymous), Err(401));
        assert_eq!(
            decide("GET", path, &kubelet),
            Ok(NodesRequest::Get("server-1".into()))
        );
        // No collection delete, no writes.
        assert_eq!(decide("DELETE", "/api/v1/nodes", &admin), Err(405));
        assert_eq!(decide("PUT", path, &admin), Err(405));
        // Names that are no node names are not found, whoever asks.
        for bad in ["a/b", "Server-1", "-a", "a-", "../x"] {
            let path = format!("/api/v1/nodes/{bad}");
            assert_eq!(decide("DELETE", &path, &admin), Err(404), "{bad}");
        }
        let forbidden = route("DELETE", path, &kubelet).unwrap().unwrap_err();
        assert!(String::from_utf8_lossy(&forbidden.2).contains("system:node:server-2"));
        // Not a nodes path at all.
        assert!(route("GET", "/api/v1/nodesx", &admin).is_none());
        assert!(route("GET", "/readyz", &admin).is_none());
    }

    #[test]
    fn members_match_whole_node_names() {
        let member = |id, name: &str| etcd::Member {
            id,
            name: name.into(),
            peer_urls: vec![],
            client_urls: vec![],
            is_learner: false,
        };
        let members = [
            member(1, "server-1-0a1b2c3d"),
            member(2, "server-10-abcd0123"),
            member(3, "server-2-00000000"),
            member(4, ""),
        ];
        assert_eq!(members_of("server-1", &members), vec![1]);
        assert_eq!(members_of("server-10", &members), vec![2]);
        assert!(members_of("server", &members).is_empty());
        assert!(members_of("", &members).is_empty());
    }

    #[test]
    fn servers_carry_the_etcd_role() {
        let server = node_object("server-1", true);
        assert_eq!(server["kind"], "Node");
        assert_eq!(server["metadata"]["name"], "server-1");
        assert_eq!(server["metadata"]["labels"][ETCD_ROLE_LABEL], "true");
        assert_eq!(
            server["metadata"]["labels"][CONTROL_PLANE_ROLE_LABEL],
            "true"
        );
        let agent = node_object("agent-1", false);
        assert!(agent["metadata"]["labels"].get(ETCD_ROLE_LABEL).is_none());
        assert_eq!(node_key("agent-1"), "/registry/minions/agent-1");
    }
}
