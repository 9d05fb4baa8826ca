//! The JSON of `POST /faults` and `GET /faults`: a runtime fault rule as the admin API reads
//! and shows it. The rule itself, its bounds and its matching are the library's
//! (`tlsvisor_actors::FaultRule`); this file only maps between it and JSON.
//!
//! ```json
//! {"match": {"sni": "db.example", "peer": "10.0.0.0/8", "listener": "127.0.0.1:8443",
//!            "probability": 0.5, "at_most": 3},
//!  "action": {"type": "latency", "delay": "200ms", "direction": "to_client"},
//!  "expires_in": "5m"}
//! ```

use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::{json, Value};
use tlsvisor_actors::{FaultAction, FaultDirection, FaultMatch, FaultRule, InstalledFault};

use crate::cli::parse_duration;

/// The largest `POST /faults` body read (a rule is a few hundred bytes).
pub(crate) const MAX_RULE_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleJson {
    #[serde(default, rename = "match")]
    matching: MatchJson,
    action: ActionJson,
    /// Required: a rule that is forgotten must go by itself.
    expires_in: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchJson {
    sni: Option<String>,
    peer: Option<String>,
    listener: Option<SocketAddr>,
    probability: Option<f64>,
    at_most: Option<u64>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ActionJson {
    DelayHandshake {
        delay: String,
    },
    StallHandshake,
    ResetHandshake,
    Latency {
        delay: String,
        #[serde(default)]
        direction: DirectionJson,
    },
    Bandwidth {
        bytes_per_second: u64,
        #[serde(default)]
        direction: DirectionJson,
    },
    Truncate {
        after_bytes: u64,
    },
    ResetAfter {
        after_bytes: u64,
    },
    CloseNotify {
        after_bytes: u64,
    },
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DirectionJson {
    ToClient,
    ToUpstream,
    #[default]
    Both,
}

/// The rule a `POST /faults` body describes, or why it does not describe one (the library's
/// bounds are checked when it is installed).
pub(crate) fn parse(body: &[u8]) -> Result<FaultRule, String> {
    let json: RuleJson = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let duration =
        |name: &str, text: &str| parse_duration(text).map_err(|e| format!("{name}: {e}"));
    let direction = |d: DirectionJson| match d {
        DirectionJson::ToClient => FaultDirection::ToClient,
        DirectionJson::ToUpstream => FaultDirection::ToUpstream,
        DirectionJson::Both => FaultDirection::Both,
    };
    let action = match json.action {
        ActionJson::DelayHandshake { delay } => {
            FaultAction::DelayHandshake(duration("delay", &delay)?)
        }
        ActionJson::StallHandshake => FaultAction::StallHandshake,
        ActionJson::ResetHandshake => FaultAction::ResetHandshake,
        ActionJson::Latency {
            delay,
            direction: d,
        } => FaultAction::Latency {
            delay: duration("delay", &delay)?,
            direction: direction(d),
        },
        ActionJson::Bandwidth {
            bytes_per_second,
            direction: d,
        } => FaultAction::Bandwidth {
            bytes_per_second,
            direction: direction(d),
        },
        ActionJson::Truncate { after_bytes } => FaultAction::Truncate { after_bytes },
        ActionJson::ResetAfter { after_bytes } => FaultAction::ResetAfter { after_bytes },
        ActionJson::CloseNotify { after_bytes } => FaultAction::CloseNotifyEarly { after_bytes },
    };
    let m = json.matching;
    let peer = m
        .peer
        .map(|p| p.parse().map_err(|e| format!("peer: {e}")))
        .transpose()?;
    let mut matching = FaultMatch::default();
    matching.sni = m.sni;
    matching.peer = peer;
    matching.listener = m.listener;
    matching.probability = m.probability.unwrap_or(1.0);
    matching.at_most = m.at_most;
    Ok(FaultRule {
        matching,
        action,
        lifetime: duration("expires_in", &json.expires_in)?,
    })
}

/// One installed rule as `GET /faults` shows it: the shape `POST /faults` takes, with its id,
/// how often it fired, and the milliseconds it has left.
pub(crate) fn show(installed: &InstalledFault) -> Value {
    let rule = &installed.rule;
    let m = &rule.matching;
    let mut action = match rule.action {
        FaultAction::DelayHandshake(delay) => json!({ "delay_ms": millis(delay) }),
        FaultAction::Latency { delay, direction } => {
            json!({ "delay_ms": millis(delay), "direction": direction.as_str() })
        }
        FaultAction::Bandwidth {
            bytes_per_second,
            direction,
        } => json!({ "bytes_per_second": bytes_per_second, "direction": direction.as_str() }),
        FaultAction::Truncate { after_bytes }
        | FaultAction::ResetAfter { after_bytes }
        | FaultAction::CloseNotifyEarly { after_bytes } => json!({ "after_bytes": after_bytes }),
        _ => json!({}),
    };
    action["type"] = rule.action.name().into();
    json!({
        "id": installed.id.0,
        "match": {
            "sni": m.sni,
            "peer": m.peer.map(|p| p.to_string()),
            "listener": m.listener.map(|l| l.to_string()),
            "probability": m.probability,
            "at_most": m.at_most,
        },
        "action": action,
        "fired": installed.fired,
        "expires_in_ms": millis(installed.expires_in),
    })
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rule_reads_from_json() {
        let rule = parse(
            br#"{"match": {"sni": "a.example", "peer": "127.0.0.2/32", "at_most": 2},
                 "action": {"type": "latency", "delay": "200ms", "direction": "to_client"},
                 "expires_in": "1m"}"#,
        )
        .unwrap();
        assert_eq!(rule.lifetime, Duration::from_secs(60));
        assert_eq!(rule.matching.at_most, Some(2));
        assert_eq!(
            rule.action,
            FaultAction::Latency {
                delay: Duration::from_millis(200),
                direction: FaultDirection::ToClient
            }
        );
        let reset = parse(br#"{"action": {"type": "reset_handshake"}, "expires_in": "5s"}"#);
        assert_eq!(reset.unwrap().action, FaultAction::ResetHandshake);
    }

    #[test]
    fn bad_rules_say_why() {
        assert!(parse(br#"{"action": {"type": "reset_handshake"}}"#)
            .unwrap_err()
            .contains("expires_in"));
        assert!(parse(br#"{"action": {"type": "explode"}, "expires_in": "5s"}"#).is_err());
        assert!(parse(
            br#"{"match": {"peer": "nonsense"}, "action": {"type": "stall_handshake"}, "expires_in": "5s"}"#
        )
        .unwrap_err()
        .contains("peer"));
        assert!(parse(
            br#"{"mtach": {}, "action": {"type": "stall_handshake"}, "expires_in": "5s"}"#
        )
        .is_err());
    }
}
