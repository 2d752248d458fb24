//! syscont's FleetLock v1 server, backed by the etcd semaphore, for hosts that should hold no
//! etcd credentials.
//!
//! It serves the protocol's `POST /v1/pre-reboot` and `POST /v1/steady-state` and syscont's
//! extension (see `fleetlock.rs` for both), at the root of the address it is bound to, over
//! plain HTTP: put a TLS proxy in front of it where the network is not trusted. Like airlock it
//! authenticates nobody; the `fleet-lock-protocol: true` header only guards against requests
//! that were not meant for it.
//!
//! Invariants:
//! - The identity is validated (header, group `^[a-zA-Z0-9.-]+$`, id, digest) before etcd is
//!   asked anything.
//! - Errors are the protocol's `{"kind","value"}` JSON, with a small fixed set of kinds:
//!   `invalid_client_identity`, `unknown_group`, `bad_request` (400), `not_found` (404),
//!   `method_not_allowed` (405), `failed_lock_semaphore_full`, `failed_lock_digest_blocked`
//!   (409), `request_refused` (413, 431, 501), `failed_lock`, `failed_unlock`, `failed_request`
//!   (500), `coordinator_unavailable` (etcd unreachable) and `server_busy` (503).
//! - It is synchronous: a std `TcpListener` polled with a 200 ms tick (so a stop request is
//!   seen quickly), one short-lived thread per connection, at most
//!   [`ServerConfig::max_connections`] at once, one request per connection, read by the strict
//!   parser of `http.rs` with size limits and a deadline. A hand-written parser was chosen over
//!   `tiny_http`: the server has six fixed routes and small JSON bodies, and some 200 lines
//!   that are unit-tested here beat a dependency with its own threading model, with every
//!   limit in view.

use super::etcd::{Client, EtcdError};
use super::fleetlock::{Body, ClientParams, ForcedRelease, PROTOCOL_HEADER};
use super::http::{self, Request};
use super::records::{
    self, validate_digest, validate_group, validate_id, FailureRecord, HolderRecord,
};
use super::semaphore::{AcquireOutcome, Semaphore};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Every path the server answers.
const ROUTES: [&str; 6] = [
    "/v1/pre-reboot",
    "/v1/steady-state",
    "/v1/syscont/status",
    "/v1/syscont/failed",
    "/v1/syscont/unblock",
    "/v1/syscont/release",
];

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
            since: crate::util::time::now_rfc3339(),
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
            (path, _) if ROUTES.contains(&path) => Err(error(
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
