//! The traffic decision as published to Redis (and stored in
//! `walshift.controller.decision`): one JSON object, documented field by
//! field in `docs/traffic.md`.

use serde::{Deserialize, Serialize};

/// Shares of reads per side, in percent; they add up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadSplit {
    /// Percent of reads on the old (source) tables.
    pub old: u8,
    /// Percent of reads on the new (shadow) tables.
    pub new: u8,
}

impl ReadSplit {
    /// `new` percent on new, the rest on old.
    pub fn new_percent(new: u8) -> ReadSplit {
        let new = new.min(100);
        ReadSplit { old: 100 - new, new }
    }
}

/// How clients bucket requests (see [`crate::traffic::bucket`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucketing {
    /// The hash's name ([`crate::traffic::bucket::HASH_NAME`]).
    pub hash: String,
    /// The salt.
    pub salt: String,
}

/// One published decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Strictly increasing per migration.
    pub version: i64,
    /// The migration's name.
    pub migration: String,
    /// The read split.
    pub read: ReadSplit,
    /// Where writes go: `old`; `fenced` while the write cutover runs
    /// (hold writes until `fence_deadline`, then write where the next
    /// decision says, or to `old`: the old tables either take the write and
    /// it is replicated, or reject it loudly); `new` after it.
    pub write: String,
    /// While `write` is `fenced`: until when clients should hold writes
    /// (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_deadline: Option<String>,
    /// The controller's state.
    pub state: String,
    /// Why.
    pub reason: String,
    /// When the decision was made (RFC 3339, UTC).
    pub updated_at: String,
    /// How to bucket requests.
    pub bucketing: Bucketing,
}

impl Decision {
    /// The JSON text published.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a published value; `None` when it is not a decision.
    pub fn parse(text: &str) -> Option<Decision> {
        serde_json::from_str(text).ok()
    }
}

/// `t` as RFC 3339 in UTC with microseconds (`2026-12-06T07:30:00.123456Z`),
/// printed as walshift prints every timestamp.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let micros = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |m| -m),
    };
    crate::replication::pgoutput::PgTimestamp::from_unix_micros(micros).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn json_has_the_documented_shape_and_order() {
        let d = Decision {
            version: 7,
            migration: "billing_v2".into(),
            read: ReadSplit::new_percent(10),
            write: "old".into(),
            fence_deadline: None,
            state: "shifting".into(),
            reason: "r".into(),
            updated_at: rfc3339(UNIX_EPOCH + Duration::from_millis(1_796_542_200_123)),
            bucketing: Bucketing { hash: "fnv1a64-fmix64".into(), salt: "billing_v2".into() },
        };
        assert_eq!(
            d.to_json(),
            r#"{"version":7,"migration":"billing_v2","read":{"old":90,"new":10},"write":"old","state":"shifting","reason":"r","updated_at":"2026-12-06T07:30:00.123000Z","bucketing":{"hash":"fnv1a64-fmix64","salt":"billing_v2"}}"#
        );
        assert_eq!(Decision::parse(&d.to_json()), Some(d));
        assert_eq!(Decision::parse("{}"), None);
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
