//! The sidecar's status record: what the LB routes to, what happened last and why. Serialized to
//! JSON for a status view (a file, or a `watch` channel in-process).

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::LbKind;
use crate::upstream::Upstream;
use crate::view::Alarm;

/// The result of the last apply attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Nothing attempted yet.
    #[default]
    Starting,
    /// No ready server of the cluster is known yet; nothing written.
    WaitingForServers,
    /// The rendered file equals the live one.
    Unchanged,
    /// A new file is live and the LB reloaded.
    Applied,
    /// The routable set became empty; the last good file stays.
    RefusedEmpty,
    /// The template (or built-in renderer) failed; the last good file stays.
    RenderFailed,
    /// The validator refused the candidate; the last good file stays.
    Rejected,
    /// The reload failed and the previous file was restored.
    RolledBack,
    /// The reload and the rollback failed: needs an operator.
    RollbackFailed,
    /// A file or process operation failed before the live file was touched.
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    pub lb: LbKind,
    pub config_file: PathBuf,
    /// The CA hash of the cluster the LB serves.
    pub identity: Option<String>,
    /// What the LB should route to (after damping).
    pub desired: Vec<Upstream>,
    /// What the live file routes to, as far as this sidecar applied it.
    pub servers: Vec<Upstream>,
    /// Held out for flapping.
    pub suppressed: Vec<Upstream>,
    /// Ready servers of a foreign cluster.
    pub alarms: Vec<Alarm>,
    /// RFC 3339, UTC.
    pub last_render_at: Option<String>,
    pub last_applied_at: Option<String>,
    pub outcome: Outcome,
    pub reason: String,
    /// Successful reloads with a new (or pending) file since start.
    pub reload_count: u64,
    /// Failed attempts (render, validation, reload) since start.
    pub failure_count: u64,
    pub last_error: Option<String>,
}

pub(crate) fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_to_kebab_case_json() {
        let s = Status {
            outcome: Outcome::RefusedEmpty,
            reload_count: 2,
            last_render_at: Some(timestamp(SystemTime::UNIX_EPOCH)),
            ..Status::default()
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["outcome"], "refused-empty");
        assert_eq!(json["reload-count"], 2);
        assert_eq!(json["last-render-at"], "1970-01-01T00:00:00Z");
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }
}
