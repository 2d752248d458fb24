//! FleetLock v1: the wire format, syscont's extension of it, and a client.
//!
//! Protocol (as Zincati and airlock speak it): `POST <base>/v1/pre-reboot` takes a slot,
//! `POST <base>/v1/steady-state` frees it, both idempotent, both with the header
//! `fleet-lock-protocol: true` and the body `{"client_params":{"id":…,"group":…}}`. 200 is
//! success; an error is JSON `{"kind":…,"value":…}` with a 4xx or 5xx status.
//!
//! syscont's extension, served by syscont's server (`server.rs`) and ignored by other servers:
//! - `pre-reboot` bodies may carry `"syscont_params":{"host","container","digest"}`: the server
//!   then refuses a digest recorded as failed in the group (409, kind
//!   `failed_lock_digest_blocked`, with the record under `"failure"`) and writes the holder
//!   record with the slot. A full semaphore answers 409 `failed_lock_semaphore_full` with the
//!   holders under `"holders"`.
//! - `GET /v1/syscont/status[?group=G]`: `[GroupStatus…]`.
//! - `POST /v1/syscont/failed` `{"group","failure":FailureRecord}`: records a failed digest.
//! - `POST /v1/syscont/unblock` `{"digest","group"?}`: removes failure records.
//! - `POST /v1/syscont/release` `{"group","id","reason"}`: an operator frees a dead holder.
//!
//! A plain FleetLock server answers the extension with 404; the client reports that as
//! [`FleetLockError::Unsupported`]. The server is in `server.rs`.

use super::records::{FailureRecord, GroupStatus, HolderRecord};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// The header every FleetLock request carries.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";

/// Failures of a FleetLock call that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum FleetLockError {
    /// The server did not answer, or said that its own backend is unavailable.
    #[error("FleetLock server {url} unreachable: {detail}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// Every slot of the group is taken.
    #[error("FleetLock group {group}: {value}")]
    Busy {
        /// The group.
        group: String,
        /// The server's explanation.
        value: String,
        /// The holders, when the server tells them (syscont's server does).
        holders: Vec<String>,
    },
    /// The digest is recorded as failed in the group (syscont's server only).
    #[error("FleetLock group {group}: digest {} is recorded as failed", .record.digest)]
    Blocked {
        /// The group.
        group: String,
        /// The failure record.
        record: Box<FailureRecord>,
    },
    /// The server does not implement syscont's extension (a plain FleetLock server).
    #[error("FleetLock server {url} does not implement syscont's extension (HTTP {status})")]
    Unsupported {
        /// The request URL.
        url: String,
        /// Its answer.
        status: u16,
    },
    /// Any other refusal.
    #[error("FleetLock server {url} refused: HTTP {status}, {kind}: {value}")]
    Rejected {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The error kind.
        kind: String,
        /// Its explanation.
        value: String,
    },
}

/// `client_params` of a request body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientParams {
    /// The client id.
    #[serde(default)]
    pub id: String,
    /// The group.
    #[serde(default)]
    pub group: String,
}

/// syscont's optional addition to a `pre-reboot` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyscontParams {
    /// The client's host name.
    pub host: String,
    /// The container to restart.
    pub container: String,
    /// The digest to roll.
    pub digest: String,
}

/// A FleetLock request body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Body {
    /// The client's identity.
    pub client_params: ClientParams,
    /// syscont's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscont_params: Option<SyscontParams>,
}

/// A FleetLock error body, with syscont's optional details.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct ErrorBody {
    kind: String,
    value: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    holders: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<FailureRecord>,
}

/// The answer to a forced release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForcedRelease {
    /// The id held a slot.
    pub was_holder: bool,
    /// Its holder record, if syscont wrote one.
    pub record: Option<HolderRecord>,
}

/// A FleetLock client for one server.
#[derive(Debug, Clone)]
pub struct FleetLockClient {
    agent: ureq::Agent,
    base_url: String,
}

impl FleetLockClient {
    /// A client for `base_url` (`http(s)://host[:port][/path]`; endpoints are appended to it).
    pub fn new(base_url: &str, timeout: Duration) -> Result<FleetLockClient> {
        let base = base_url.trim().trim_end_matches('/');
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "FleetLock base URL {base_url:?} must start with http:// or https://"
        );
        anyhow::ensure!(!timeout.is_zero(), "the FleetLock timeout must not be 0");
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(3))))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("syscont/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(FleetLockClient {
            agent,
            base_url: base.to_string(),
        })
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn exchange(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, String, String), FleetLockError> {
        let url = format!("{}{path}", self.base_url);
        let sent = match body {
            Some(b) => self
                .agent
                .post(&url)
                .header(PROTOCOL_HEADER, "true")
                .header("content-type", "application/json")
                .send(b.to_string()),
            None => self.agent.get(&url).call(),
        };
        let unreachable = |detail: String| FleetLockError::Unreachable {
            url: url.clone(),
            detail,
        };
        let mut resp = sent.map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        Ok((status, text, url))
    }

    /// Maps a non-200 answer to an error.
    fn refusal(
        group: &str,
        status: u16,
        text: &str,
        url: String,
        extension: bool,
    ) -> FleetLockError {
        let e: ErrorBody = serde_json::from_str(text).unwrap_or_else(|_| ErrorBody {
            kind: format!("generic_http_{status}"),
            value: text.trim().chars().take(200).collect(),
            ..ErrorBody::default()
        });
        // airlock answers a full semaphore with 500 `failed_lock`, "all N semaphore slots
        // currently locked"; the protocol's example kind is `failed_lock_semaphore_full`.
        let full = e.kind == "failed_lock_semaphore_full"
            || (e.kind == "failed_lock" && e.value.contains("slots currently locked"));
        if full {
            return FleetLockError::Busy {
                group: group.into(),
                value: e.value,
                holders: e.holders,
            };
        }
        if let Some(record) = e.failure.filter(|_| e.kind == "failed_lock_digest_blocked") {
            return FleetLockError::Blocked {
                group: group.into(),
                record: Box::new(record),
            };
        }
        if extension && matches!(status, 404 | 405) {
            return FleetLockError::Unsupported { url, status };
        }
        if matches!(status, 502..=504) {
            return FleetLockError::Unreachable {
                url,
                detail: format!("HTTP {status}, {}: {}", e.kind, e.value),
            };
        }
        FleetLockError::Rejected {
            url,
            status,
            kind: e.kind,
            value: e.value,
        }
    }

    fn post(
        &self,
        path: &str,
        group: &str,
        body: Value,
        extension: bool,
    ) -> Result<String, FleetLockError> {
        let (status, text, url) = self.exchange(path, Some(body))?;
        if status == 200 {
            Ok(text)
        } else {
            Err(Self::refusal(group, status, &text, url, extension))
        }
    }

    /// `POST /v1/pre-reboot`: takes a slot of `group` for `id` (idempotent). With `syscont`,
    /// syscont's server also checks the digest and records the holder. Returns whether the
    /// slot was held before, when the server says so (syscont's server does).
    pub fn pre_reboot(
        &self,
        group: &str,
        id: &str,
        syscont: Option<SyscontParams>,
    ) -> Result<Option<bool>, FleetLockError> {
        let body = Body {
            client_params: ClientParams {
                id: id.into(),
                group: group.into(),
            },
            syscont_params: syscont,
        };
        let body = serde_json::to_value(body).expect("a body serialises");
        let text = self.post("/v1/pre-reboot", group, body, false)?;
        // Other servers answer with an empty or a non-JSON body: that is success too.
        Ok(serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["already_held"].as_bool()))
    }

    /// `POST /v1/steady-state`: frees the slot of `id` in `group` (idempotent).
    pub fn steady_state(&self, group: &str, id: &str) -> Result<(), FleetLockError> {
        let body = json!({"client_params": {"id": id, "group": group}});
        self.post("/v1/steady-state", group, body, false).map(drop)
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        text: &str,
    ) -> Result<T, FleetLockError> {
        serde_json::from_str(text).map_err(|e| FleetLockError::Rejected {
            url: format!("{}{path}", self.base_url),
            status: 200,
            kind: "unreadable_answer".into(),
            value: e.to_string(),
        })
    }

    /// `GET /v1/syscont/status`: the state of `group`, or of every group.
    pub fn status(&self, group: Option<&str>) -> Result<Vec<GroupStatus>, FleetLockError> {
        let path = match group {
            Some(g) => format!("/v1/syscont/status?group={g}"),
            None => "/v1/syscont/status".to_string(),
        };
        let (status, text, url) = self.exchange(&path, None)?;
        if status != 200 {
            return Err(Self::refusal(group.unwrap_or(""), status, &text, url, true));
        }
        self.decode(&path, &text)
    }

    /// `POST /v1/syscont/failed`: records a failed digest; true when it was not recorded yet.
    pub fn record_failure(
        &self,
        group: &str,
        record: &FailureRecord,
    ) -> Result<bool, FleetLockError> {
        let path = "/v1/syscont/failed";
        let text = self.post(
            path,
            group,
            json!({"group": group, "failure": record}),
            true,
        )?;
        let v: Value = self.decode(path, &text)?;
        Ok(v["created"].as_bool().unwrap_or(false))
    }

    /// `POST /v1/syscont/unblock`: removes the failure records of `digest`; returns the groups.
    pub fn unblock(
        &self,
        digest: &str,
        group: Option<&str>,
    ) -> Result<Vec<String>, FleetLockError> {
        let path = "/v1/syscont/unblock";
        let text = self.post(
            path,
            group.unwrap_or(""),
            json!({"digest": digest, "group": group}),
            true,
        )?;
        #[derive(Deserialize)]
        struct Groups {
            groups: Vec<String>,
        }
        Ok(self.decode::<Groups>(path, &text)?.groups)
    }

    /// `POST /v1/syscont/release`: an operator frees the slot of a dead holder.
    pub fn release_forced(
        &self,
        group: &str,
        id: &str,
        reason: &str,
    ) -> Result<ForcedRelease, FleetLockError> {
        let path = "/v1/syscont/release";
        let text = self.post(
            path,
            group,
            json!({"group": group, "id": id, "reason": reason}),
            true,
        )?;
        self.decode(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_body_is_the_protocols() {
        let b = Body {
            client_params: ClientParams {
                id: "c988d250".into(),
                group: "default".into(),
            },
            syscont_params: None,
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"client_params":{"id":"c988d250","group":"default"}}"#
        );
    }

    #[test]
    fn refusals_are_classified() {
        let u = || "http://x/v1/pre-reboot".to_string();
        let airlock_full = r#"{"kind":"failed_lock","value":"all 1 semaphore slots currently locked"}
"#;
        assert!(matches!(
            FleetLockClient::refusal("g", 500, airlock_full, u(), false),
            FleetLockError::Busy { .. }
        ));
        let ours = r#"{"kind":"failed_lock_semaphore_full","value":"full","holders":["a"]}"#;
        match FleetLockClient::refusal("g", 409, ours, u(), false) {
            FleetLockError::Busy { holders, .. } => assert_eq!(holders, vec!["a"]),
            other => panic!("{other}"),
        }
        assert!(matches!(
            FleetLockClient::refusal("g", 404, "404 page not found", u(), true),
            FleetLockError::Unsupported { status: 404, .. }
        ));
        assert!(matches!(
            FleetLockClient::refusal(
                "g",
                503,
                r#"{"kind":"coordinator_unavailable","value":"x"}"#,
                u(),
                false
            ),
            FleetLockError::Unreachable { .. }
        ));
        match FleetLockClient::refusal(
            "g",
            400,
            r#"{"kind":"invalid_client_identity","value":"v"}"#,
            u(),
            false,
        ) {
            FleetLockError::Rejected {
                kind, status: 400, ..
            } => assert_eq!(kind, "invalid_client_identity"),
            other => panic!("{other}"),
        }
        match FleetLockClient::refusal("g", 418, "teapot", u(), false) {
            FleetLockError::Rejected { kind, .. } => assert_eq!(kind, "generic_http_418"),
            other => panic!("{other}"),
        }
    }
}
