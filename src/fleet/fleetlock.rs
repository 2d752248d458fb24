//! FleetLock v1: a client, and a small server backed by the etcd semaphore.
//!
//! Protocol (as Zincati and airlock speak it): `POST <base>/v1/pre-reboot` takes a slot,
//! `POST <base>/v1/steady-state` frees it, both idempotent, both with the header
//! `fleet-lock-protocol: true` and the body `{"client_params":{"id":…,"group":…}}`. 200 is
//! success; an error is JSON `{"kind":…,"value":…}` with a 4xx or 5xx status.
//!
//! syscont's extension, served by [`Server`] and ignored by other servers:
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
//! [`FleetLockError::Unsupported`].
//!
//! The server is synchronous: a std `TcpListener`, one short-lived thread per connection (at
//! most [`ServerConfig::max_connections`] at once), one request per connection, read by the
//! strict parser of `http.rs` with size limits and a deadline. A hand-written parser was
//! chosen over `tiny_http` because the server needs a handful of fixed routes and small JSON
//! bodies: about 200 lines that are unit-tested here beat a dependency with its own threading
//! model, and keep every limit in view.

use super::etcd::{Client, EtcdError};
use super::http::{self, Request};
use super::records::{
    self, validate_digest, validate_group, validate_id, FailureRecord, GroupStatus, HolderRecord,
};
use super::semaphore::{AcquireOutcome, Semaphore};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// syscont's server also checks the digest and records the holder.
    pub fn pre_reboot(
        &self,
        group: &str,
        id: &str,
        syscont: Option<SyscontParams>,
    ) -> Result<(), FleetLockError> {
        let body = Body {
            client_params: ClientParams {
                id: id.into(),
                group: group.into(),
            },
            syscont_params: syscont,
        };
        let body = serde_json::to_value(body).expect("a body serialises");
        self.post("/v1/pre-reboot", group, body, false).map(drop)
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

/// How the server hands out slots.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Slots of each known group (used when its semaphore is created).
    pub groups: BTreeMap<String, u64>,
    /// Slots of any other group; `None` refuses unknown groups (as airlock does).
    pub default_slots: Option<u64>,
    /// The most connections served at once; more are answered 503 at once.
    pub max_connections: usize,
    /// Bound on reading one request.
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            groups: BTreeMap::new(),
            default_slots: Some(1),
            max_connections: 64,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// An answer: status and JSON body.
type Answer = (u16, Value);

fn error(status: u16, kind: &str, value: impl Into<String>) -> Answer {
    (status, json!({"kind": kind, "value": value.into()}))
}

fn etcd_error(kind: &str, e: &EtcdError) -> Answer {
    match e {
        EtcdError::Unreachable { .. } => error(503, "coordinator_unavailable", e.to_string()),
        _ => error(500, kind, e.to_string()),
    }
}

struct Backend {
    etcd: Client,
    config: ServerConfig,
}

impl Backend {
    fn identity(req: &Request) -> Result<Body, Answer> {
        if req.header(PROTOCOL_HEADER) != Some("true") {
            return Err(error(
                400,
                "invalid_client_identity",
                "missing or wrong 'fleet-lock-protocol' header (must be 'true')",
            ));
        }
        let body: Body = serde_json::from_slice(&req.body).map_err(|e| {
            error(
                400,
                "invalid_client_identity",
                format!("bad request body: {e}"),
            )
        })?;
        let p = &body.client_params;
        validate_group(&p.group)
            .and_then(|()| validate_id(&p.id))
            .map_err(|e| error(400, "invalid_client_identity", e))?;
        if let Some(s) = &body.syscont_params {
            validate_digest(&s.digest).map_err(|e| error(400, "invalid_client_identity", e))?;
        }
        Ok(body)
    }

    fn pre_reboot(&self, req: &Request) -> Result<Answer, Answer> {
        let body = Self::identity(req)?;
        let ClientParams { id, group } = body.client_params;
        let slots = match self
            .config
            .groups
            .get(&group)
            .copied()
            .or(self.config.default_slots)
        {
            Some(s) => s,
            None => {
                return Err(error(
                    400,
                    "unknown_group",
                    format!("unknown group {group:?}"),
                ))
            }
        };
        let holder = body.syscont_params.map(|s| HolderRecord {
            id: id.clone(),
            host: s.host,
            since: records::now_rfc3339(),
            container: s.container,
            digest: s.digest,
        });
        let sem = Semaphore::new(&self.etcd, &group);
        match sem.acquire(&id, slots, holder.as_ref()) {
            Ok(AcquireOutcome::Acquired { already_held }) => {
                Ok((200, json!({"already_held": already_held})))
            }
            Ok(AcquireOutcome::Busy {
                total_slots,
                holders,
            }) => {
                let value = format!(
                    "semaphore full: all {total_slots} slot(s) of group {group} are held (by {})",
                    holders.join(", ")
                );
                Err((
                    409,
                    json!({"kind": "failed_lock_semaphore_full", "value": value, "holders": holders}),
                ))
            }
            Ok(AcquireOutcome::Blocked(rec)) => {
                let value = format!(
                    "digest {} is recorded as failed in group {group} (on {}: {})",
                    rec.digest, rec.host, rec.reason
                );
                Err((
                    409,
                    json!({"kind": "failed_lock_digest_blocked", "value": value, "failure": rec}),
                ))
            }
            Err(e) => Err(etcd_error("failed_lock", &e)),
        }
    }

    fn steady_state(&self, req: &Request) -> Result<Answer, Answer> {
        let p = Self::identity(req)?.client_params;
        Semaphore::new(&self.etcd, &p.group)
            .release(&p.id)
            .map(|r| (200, json!({"was_holder": r.was_holder})))
            .map_err(|e| etcd_error("failed_unlock", &e))
    }

    fn extension_body(req: &Request) -> Result<Value, Answer> {
        if req.header(PROTOCOL_HEADER) != Some("true") {
            return Err(error(
                400,
                "bad_request",
                "missing 'fleet-lock-protocol: true' header",
            ));
        }
        serde_json::from_slice(&req.body)
            .map_err(|e| error(400, "bad_request", format!("bad request body: {e}")))
    }

    fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, Answer> {
        v[name]
            .as_str()
            .ok_or_else(|| error(400, "bad_request", format!("missing string field {name:?}")))
    }

    fn status(&self, req: &Request) -> Result<Answer, Answer> {
        let groups: Vec<String> = match req.query_param("group") {
            Some(g) => {
                validate_group(g).map_err(|e| error(400, "bad_request", e))?;
                vec![g.to_string()]
            }
            None => records::groups(&self.etcd)
                .map_err(|e| etcd_error("failed_request", &e))?
                .into_iter()
                .collect(),
        };
        let mut out = Vec::new();
        for g in groups {
            out.push(
                records::status(&self.etcd, &g).map_err(|e| etcd_error("failed_request", &e))?,
            );
        }
        Ok((200, serde_json::to_value(out).expect("status serialises")))
    }

    fn failed(&self, req: &Request) -> Result<Answer, Answer> {
        let v = Self::extension_body(req)?;
        let group = Self::field(&v, "group")?;
        validate_group(group).map_err(|e| error(400, "bad_request", e))?;
        let rec: FailureRecord = serde_json::from_value(v["failure"].clone())
            .map_err(|e| error(400, "bad_request", format!("bad failure record: {e}")))?;
        validate_digest(&rec.digest).map_err(|e| error(400, "bad_request", e))?;
        let created = records::record_failure(&self.etcd, group, &rec)
            .map_err(|e| etcd_error("failed_request", &e))?;
        Ok((200, json!({"created": created})))
    }

    fn unblock(&self, req: &Request) -> Result<Answer, Answer> {
        let v = Self::extension_body(req)?;
        let digest = Self::field(&v, "digest")?;
        validate_digest(digest).map_err(|e| error(400, "bad_request", e))?;
        let group = v["group"].as_str();
        if let Some(g) = group {
            validate_group(g).map_err(|e| error(400, "bad_request", e))?;
        }
        let groups = records::unblock(&self.etcd, digest, group)
            .map_err(|e| etcd_error("failed_request", &e))?;
        Ok((200, json!({"groups": groups})))
    }

    fn release(&self, req: &Request) -> Result<Answer, Answer> {
        let v = Self::extension_body(req)?;
        let (group, id) = (Self::field(&v, "group")?, Self::field(&v, "id")?);
        validate_group(group)
            .and_then(|()| validate_id(id))
            .map_err(|e| error(400, "bad_request", e))?;
        let reason = v["reason"].as_str().unwrap_or("");
        tracing::warn!("forced release of {id} in group {group}: {reason}");
        let r = Semaphore::new(&self.etcd, group)
            .release(id)
            .map_err(|e| etcd_error("failed_unlock", &e))?;
        let out = ForcedRelease {
            was_holder: r.was_holder,
            record: r.record,
        };
        Ok((200, serde_json::to_value(out).expect("serialises")))
    }

    /// Routes one request.
    fn handle(&self, req: &Request) -> Answer {
        let res = match (req.path.as_str(), req.method.as_str()) {
            ("/v1/pre-reboot", "POST") => self.pre_reboot(req),
            ("/v1/steady-state", "POST") => self.steady_state(req),
            ("/v1/syscont/status", "GET") => self.status(req),
            ("/v1/syscont/failed", "POST") => self.failed(req),
            ("/v1/syscont/unblock", "POST") => self.unblock(req),
            ("/v1/syscont/release", "POST") => self.release(req),
            (
                "/v1/pre-reboot"
                | "/v1/steady-state"
                | "/v1/syscont/failed"
                | "/v1/syscont/unblock"
                | "/v1/syscont/release",
                _,
            )
            | ("/v1/syscont/status", _) => Err(error(
                405,
                "method_not_allowed",
                format!("{} is not allowed on {}", req.method, req.path),
            )),
            _ => Err(error(404, "not_found", format!("no endpoint {}", req.path))),
        };
        res.unwrap_or_else(|e| e)
    }
}

fn serve_connection(backend: &Backend, mut stream: TcpStream) {
    let timeout = backend.config.request_timeout;
    let _ = stream.set_read_timeout(Some(timeout.min(Duration::from_secs(5))));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let (status, body) = match http::read_request(&mut stream, Instant::now() + timeout) {
        Ok(req) => backend.handle(&req),
        Err(http::HttpError::Io(e)) => {
            tracing::debug!("FleetLock connection dropped: {e}");
            return;
        }
        Err(e) => {
            let kind = if e.status() == 400 {
                "bad_request"
            } else {
                "request_refused"
            };
            error(e.status(), kind, e.to_string())
        }
    };
    let _ = stream.write_all(&http::response(status, body.to_string().as_bytes()));
    let _ = stream.flush();
}

/// A FleetLock server bound to an address, backed by the etcd semaphore.
pub struct Server {
    listener: TcpListener,
    backend: Arc<Backend>,
}

/// A server running on its own thread; stopped and joined on drop.
pub struct ServerHandle {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    /// Binds `addr` (e.g. `127.0.0.1:0`) for a server using `etcd`.
    pub fn bind(addr: &str, etcd: Client, config: ServerConfig) -> Result<Server> {
        for g in config.groups.keys() {
            validate_group(g)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("FleetLock group {g:?}"))?;
        }
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("Binding the FleetLock server to {addr}"))?;
        listener
            .set_nonblocking(true)
            .context("Making the FleetLock listener non-blocking")?;
        Ok(Server {
            listener,
            backend: Arc::new(Backend { etcd, config }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("Reading the FleetLock server's address")
    }

    /// Serves until `stop` is set (checked at least every 200 ms).
    pub fn serve(self, stop: &AtomicBool) -> Result<()> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let active = Arc::new(AtomicUsize::new(0));
        let tick = Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        tracing::info!("FleetLock server listening on {}", self.local_addr()?);
        while !stop.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&tick)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).context("Waiting for FleetLock connections"),
            }
            let (mut stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("FleetLock accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let _ = stream.set_nonblocking(false);
            if active.load(Ordering::SeqCst) >= self.backend.config.max_connections {
                let (s, b) = error(503, "server_busy", "too many connections; try again");
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = stream.write_all(&http::response(s, b.to_string().as_bytes()));
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let (backend, count) = (self.backend.clone(), active.clone());
            let spawned = std::thread::Builder::new()
                .name("fleetlock-conn".into())
                .spawn(move || {
                    serve_connection(&backend, stream);
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                tracing::warn!("FleetLock: no thread for {peer}: {e}");
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// Serves on a new thread until the handle is dropped.
    pub fn spawn(self) -> Result<ServerHandle> {
        let addr = self.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fleetlock-server".into())
            .spawn(move || self.serve(&s))
            .context("Starting the FleetLock server thread")?;
        Ok(ServerHandle {
            stop,
            addr,
            thread: Some(thread),
        })
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

    fn request(raw: &[u8]) -> Request {
        let (head, n) = http::parse_head(raw).unwrap().unwrap();
        let mut r = head.request;
        r.body = raw[n..].to_vec();
        r
    }

    #[test]
    fn identity_is_validated_before_etcd_is_asked() {
        let body = br#"{"client_params":{"id":"abc","group":"default"}}"#;
        let mut raw = b"POST /v1/pre-reboot HTTP/1.1\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        let (status, v) = Backend::identity(&request(&raw)).unwrap_err();
        assert_eq!(
            (status, v["kind"].as_str()),
            (400, Some("invalid_client_identity"))
        );
        let ok = |b: &str| {
            let mut raw =
                b"POST /v1/pre-reboot HTTP/1.1\r\nFleet-Lock-Protocol: true\r\n\r\n".to_vec();
            raw.extend_from_slice(b.as_bytes());
            Backend::identity(&request(&raw))
        };
        assert!(ok(std::str::from_utf8(body).unwrap()).is_ok());
        for bad in [
            r#"{"client_params":{"id":"abc","group":"a_b"}}"#,
            r#"{"client_params":{"id":"","group":"default"}}"#,
            r#"{"client_params":{"id":"a/b","group":"default"}}"#,
            r#"{"client_params":{"group":"default"}}"#,
            r#"{"client_params":{"id":"a","group":"g"},"syscont_params":{"host":"h","container":"c","digest":"x"}}"#,
            "not json",
        ] {
            let (status, v) = ok(bad).unwrap_err();
            assert_eq!(
                (status, v["kind"].as_str()),
                (400, Some("invalid_client_identity")),
                "{bad}"
            );
        }
    }
}
