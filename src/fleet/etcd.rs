//! A synchronous etcd v3 client over the JSON gateway that etcd 3.4 and later serve at `/v3/...`.
//!
//! Only what the fleet semaphore needs: `POST /v3/kv/range`, `/v3/kv/put`, `/v3/kv/deleterange`
//! and `/v3/kv/txn`. Keys and values travel base64-encoded; 64-bit integers arrive as JSON
//! strings and fields holding their default value are left out, so every reply field is
//! optional here.
//!
//! Invariants:
//! - Every request is bounded in time ([`EtcdConfig::timeout`] for the whole exchange with one
//!   endpoint), and a call tries each endpoint at most once, so a call takes at most
//!   `endpoints × timeout`.
//! - Endpoints are tried in order, starting with the last one that answered; a call moves on
//!   when an endpoint cannot be reached or says it is unavailable (no leader, timed out,
//!   HTTP 502/503/504). Any other refusal is final.
//! - Moving on is safe for every request sent here: reads and deletes are idempotent, and every
//!   change of the semaphore is a compare-and-swap, so a transaction that was applied by an
//!   endpoint that then stopped answering fails its compare on the next one instead of being
//!   applied twice.
//! - [`EtcdError::Unreachable`] means that no endpoint answered; callers treat it as "the
//!   coordinator is down", never as "free".

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The largest reply accepted from etcd.
const MAX_REPLY: u64 = 16 * 1024 * 1024;

/// How to reach an etcd cluster.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.1:2379`; tried in order.
    pub endpoints: Vec<String>,
    /// PEM file with the CA certificates that sign the endpoints' certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for clusters with `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Bound on one exchange with one endpoint (connect, send, answer).
    pub timeout: Duration,
}

/// Failures of an etcd call that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered: the coordinator is down or out of reach.
    #[error("no etcd endpoint answered {what}: {}", .tried.join("; "))]
    Unreachable {
        /// The operation, naming its key.
        what: String,
        /// `endpoint: reason` for every endpoint tried.
        tried: Vec<String>,
    },
    /// A compare-and-swap kept losing to concurrent writers.
    #[error("etcd key {key}: {attempts} compare-and-swap attempts lost to concurrent changes")]
    Conflict {
        /// The contended key.
        key: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// An endpoint answered with an error that another endpoint would answer too.
    #[error("etcd {endpoint} refused {what}: HTTP {status}: {message}")]
    Rejected {
        /// The operation, naming its key.
        what: String,
        /// The endpoint that answered.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// An endpoint answered something that is not an etcd reply.
    #[error("etcd {endpoint} sent an unreadable answer to {what}: {detail}")]
    BadReply {
        /// The operation, naming its key.
        what: String,
        /// The endpoint that answered.
        endpoint: String,
        /// What was wrong.
        detail: String,
    },
    /// The configuration cannot work (bad URL, unreadable certificate).
    #[error("etcd client configuration: {0}")]
    Config(String),
}

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty for a keys-only read).
    pub value: Vec<u8>,
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
    /// Number of changes since creation (1 after creation).
    pub version: i64,
}

/// A condition of a transaction; all are equality tests.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's last change happened at this revision.
    ModRevision(String, i64),
    /// The key has this version (0: it does not exist).
    Version(String, i64),
    /// The key does not exist (`create_revision == 0`).
    Missing(String),
}

/// One operation in a transaction branch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Write a key.
    Put(String, Vec<u8>),
    /// Delete a key.
    Delete(String),
    /// Read a key.
    Get(String),
    /// Read every key under a prefix.
    GetPrefix(String),
}

/// The answer to one [`Op`], in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// A put was done.
    Put,
    /// This many keys were deleted.
    Delete(u64),
    /// The keys read.
    Get(Vec<KeyValue>),
}

/// The outcome of a transaction.
#[derive(Debug, Clone)]
pub struct TxnResult {
    /// Whether every compare held (and so the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction: a put in it has this mod_revision.
    pub revision: i64,
    /// One result per operation of the branch that ran.
    pub results: Vec<OpResult>,
}

/// A transaction: `if compares { success } else { failure }`, applied atomically.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Operations when they hold.
    pub success: Vec<Op>,
    /// Operations when one does not.
    pub failure: Vec<Op>,
}

/// A synchronous client for one etcd cluster. Cheap to clone; safe to share between threads.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    endpoints: Arc<Vec<String>>,
    /// Index of the endpoint that answered last.
    preferred: Arc<AtomicUsize>,
}

fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("not an i64")),
        Value::Null => Ok(0),
        other => Err(serde::de::Error::custom(format!("not an integer: {other}"))),
    }
}

#[derive(Deserialize, Default)]
struct WireHeader {
    #[serde(default, deserialize_with = "de_i64")]
    revision: i64,
}

#[derive(Deserialize)]
struct WireKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "de_i64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    version: i64,
}

#[derive(Deserialize, Default)]
struct WireRange {
    #[serde(default)]
    kvs: Vec<WireKv>,
}

#[derive(Deserialize, Default)]
struct WireDelete {
    #[serde(default, deserialize_with = "de_i64")]
    deleted: i64,
}

#[derive(Deserialize)]
struct WireOpResponse {
    response_range: Option<WireRange>,
    response_put: Option<Value>,
    response_delete_range: Option<WireDelete>,
}

#[derive(Deserialize)]
struct WireTxn {
    #[serde(default)]
    header: WireHeader,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<WireOpResponse>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    code: i64,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The end of the range holding every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix was empty): the range runs to the end of the store.
    vec![0]
}

fn kv_from_wire(w: WireKv) -> Result<KeyValue, String> {
    let key = B64
        .decode(w.key.as_bytes())
        .map_err(|e| format!("key is not base64: {e}"))?;
    let key = String::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    let value = B64
        .decode(w.value.as_bytes())
        .map_err(|e| format!("value of {key} is not base64: {e}"))?;
    Ok(KeyValue {
        key,
        value,
        create_revision: w.create_revision,
        mod_revision: w.mod_revision,
        version: w.version,
    })
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::ModRevision(k, rev) => json!({
            "target": "MOD", "result": "EQUAL", "key": b64(k.as_bytes()),
            "mod_revision": rev.to_string()
        }),
        Compare::Version(k, v) => json!({
            "target": "VERSION", "result": "EQUAL", "key": b64(k.as_bytes()),
            "version": v.to_string()
        }),
        Compare::Missing(k) => json!({
            "target": "CREATE", "result": "EQUAL", "key": b64(k.as_bytes()), "create_revision": "0"
        }),
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put(k, v) => json!({"request_put": {"key": b64(k.as_bytes()), "value": b64(v)}}),
        Op::Delete(k) => json!({"request_delete_range": {"key": b64(k.as_bytes())}}),
        Op::Get(k) => json!({"request_range": {"key": b64(k.as_bytes())}}),
        Op::GetPrefix(p) => json!({"request_range": {
            "key": b64(p.as_bytes()), "range_end": b64(&prefix_end(p.as_bytes()))
        }}),
    }
}

/// What a failed exchange with one endpoint means for the call.
enum Attempt {
    /// Try the next endpoint.
    Next(String),
    /// Stop: this answer is final.
    Final(EtcdError),
}

/// Reads a PEM file: its certificates, or an error naming `what` and the file.
fn read_pem_certs(
    path: &PathBuf,
    what: &str,
) -> Result<Vec<ureq::tls::Certificate<'static>>, EtcdError> {
    let pem = std::fs::read(path)
        .map_err(|e| EtcdError::Config(format!("reading the {what} {}: {e}", path.display())))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(EtcdError::Config(format!(
            "the {what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_tls(config: &EtcdConfig) -> Result<ureq::tls::TlsConfig, EtcdError> {
    use ureq::tls::{ClientCert, PrivateKey, RootCerts, TlsConfig};
    let mut b = TlsConfig::builder();
    if let Some(ca) = &config.ca_file {
        b = b.root_certs(RootCerts::new_with_certs(&read_pem_certs(ca, "CA file")?));
    }
    match (&config.cert_file, &config.key_file) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            let chain = read_pem_certs(cert, "client certificate")?;
            let pem = std::fs::read(key).map_err(|e| {
                EtcdError::Config(format!("reading the client key {}: {e}", key.display()))
            })?;
            let key = PrivateKey::from_pem(&pem)
                .map_err(|e| EtcdError::Config(format!("the client key {}: {e}", key.display())))?;
            b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        _ => {
            return Err(EtcdError::Config(
                "a client certificate needs its key, and a key its certificate".into(),
            ))
        }
    }
    Ok(b.build())
}

/// Normalises an endpoint URL: `http(s)://host:port`, no trailing slash.
pub(crate) fn normalize_endpoint(url: &str) -> Result<String, EtcdError> {
    let u = url.trim().trim_end_matches('/');
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| {
            EtcdError::Config(format!(
                "endpoint {url:?} must start with http:// or https://"
            ))
        })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(EtcdError::Config(format!(
            "endpoint {url:?} must be a scheme, a host and a port, without a path"
        )));
    }
    Ok(u.to_string())
}

impl Client {
    /// A client for the endpoints of `config`. Reads the certificate files now.
    pub fn new(config: &EtcdConfig) -> Result<Client, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoint given".into()));
        }
        if config.timeout.is_zero() {
            return Err(EtcdError::Config(
                "the request timeout must not be 0".into(),
            ));
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.timeout.min(Duration::from_secs(3))))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("syscont/", env!("CARGO_PKG_VERSION")))
            .tls_config(load_tls(config)?)
            .build()
            .into();
        Ok(Client {
            agent,
            endpoints: Arc::new(endpoints),
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The endpoints, in configured order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn attempt(
        &self,
        endpoint: &str,
        path: &str,
        body: &str,
        what: &str,
    ) -> Result<Value, Attempt> {
        let url = format!("{endpoint}{path}");
        let mut resp = match self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body)
        {
            Ok(r) => r,
            Err(e) => return Err(Attempt::Next(format!("{endpoint}: {e}"))),
        };
        let status = resp.status().as_u16();
        let text = match resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_string()
        {
            Ok(t) => t,
            Err(e) => {
                return Err(Attempt::Next(format!(
                    "{endpoint}: reading the answer: {e}"
                )))
            }
        };
        if status == 200 {
            return serde_json::from_str(&text).map_err(|e| {
                Attempt::Final(EtcdError::BadReply {
                    what: what.into(),
                    endpoint: endpoint.into(),
                    detail: format!("{e}"),
                })
            });
        }
        let err: Option<WireError> = serde_json::from_str(&text).ok();
        let message = match &err {
            Some(e) if !e.message.is_empty() => e.message.clone(),
            Some(e) if !e.error.is_empty() => e.error.clone(),
            _ => text.chars().take(200).collect(),
        };
        // gRPC codes 4 (deadline exceeded) and 14 (unavailable): this member cannot serve now,
        // another one may.
        let code = err.map(|e| e.code).unwrap_or(0);
        if matches!(status, 502..=504) || code == 4 || code == 14 {
            return Err(Attempt::Next(format!(
                "{endpoint}: HTTP {status}: {message}"
            )));
        }
        Err(Attempt::Final(EtcdError::Rejected {
            what: what.into(),
            endpoint: endpoint.into(),
            status,
            message,
        }))
    }

    /// Sends one request, moving on through the endpoints; returns the endpoint and the reply.
    fn call(&self, path: &str, body: &Value, what: &str) -> Result<(String, Value), EtcdError> {
        let body = body.to_string();
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut tried = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            match self.attempt(endpoint, path, &body, what) {
                Ok(v) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok((endpoint.clone(), v));
                }
                Err(Attempt::Next(reason)) => {
                    tracing::debug!("etcd {what}: {reason}; trying the next endpoint");
                    tried.push(reason);
                }
                Err(Attempt::Final(e)) => return Err(e),
            }
        }
        Err(EtcdError::Unreachable {
            what: what.into(),
            tried,
        })
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        endpoint: &str,
        what: &str,
        v: Value,
    ) -> Result<T, EtcdError> {
        serde_json::from_value(v).map_err(|e| EtcdError::BadReply {
            what: what.into(),
            endpoint: endpoint.into(),
            detail: e.to_string(),
        })
    }

    fn kvs(endpoint: &str, what: &str, kvs: Vec<WireKv>) -> Result<Vec<KeyValue>, EtcdError> {
        kvs.into_iter()
            .map(kv_from_wire)
            .collect::<Result<_, _>>()
            .map_err(|detail| EtcdError::BadReply {
                what: what.into(),
                endpoint: endpoint.into(),
                detail,
            })
    }

    /// Reads one key; `None` when it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let what = format!("reading {key}");
        let (ep, v) = self.call("/v3/kv/range", &json!({"key": b64(key.as_bytes())}), &what)?;
        let r: WireRange = Self::decode(&ep, &what, v)?;
        Ok(Self::kvs(&ep, &what, r.kvs)?.into_iter().next())
    }

    /// Reads every key under `prefix`, in key order. `keys_only` leaves the values empty.
    pub fn get_prefix(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>, EtcdError> {
        let what = format!("reading the keys under {prefix}");
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "keys_only": keys_only,
        });
        let (ep, v) = self.call("/v3/kv/range", &body, &what)?;
        let r: WireRange = Self::decode(&ep, &what, v)?;
        Self::kvs(&ep, &what, r.kvs)
    }

    /// Writes one key unconditionally; returns the revision of the write.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<i64, EtcdError> {
        let what = format!("writing {key}");
        let body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        let (ep, v) = self.call("/v3/kv/put", &body, &what)?;
        #[derive(Deserialize)]
        struct Put {
            #[serde(default)]
            header: WireHeader,
        }
        let p: Put = Self::decode(&ep, &what, v)?;
        Ok(p.header.revision)
    }

    /// Deletes one key; returns how many keys were deleted (0 or 1).
    pub fn delete(&self, key: &str) -> Result<u64, EtcdError> {
        let what = format!("deleting {key}");
        let (ep, v) = self.call(
            "/v3/kv/deleterange",
            &json!({"key": b64(key.as_bytes())}),
            &what,
        )?;
        let d: WireDelete = Self::decode(&ep, &what, v)?;
        Ok(d.deleted.max(0) as u64)
    }

    /// Runs a transaction. `what` names it (and its key) in errors.
    pub fn txn(&self, txn: &Txn, what: &str) -> Result<TxnResult, EtcdError> {
        let body = json!({
            "compare": txn.compare.iter().map(compare_json).collect::<Vec<_>>(),
            "success": txn.success.iter().map(op_json).collect::<Vec<_>>(),
            "failure": txn.failure.iter().map(op_json).collect::<Vec<_>>(),
        });
        let (ep, v) = self.call("/v3/kv/txn", &body, what)?;
        let t: WireTxn = Self::decode(&ep, what, v)?;
        let branch = if t.succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        if t.responses.len() != branch.len() {
            return Err(EtcdError::BadReply {
                what: what.into(),
                endpoint: ep,
                detail: format!(
                    "{} answers to {} operations",
                    t.responses.len(),
                    branch.len()
                ),
            });
        }
        let mut results = Vec::with_capacity(branch.len());
        for r in t.responses {
            results.push(if let Some(range) = r.response_range {
                OpResult::Get(Self::kvs(&ep, what, range.kvs)?)
            } else if let Some(d) = r.response_delete_range {
                OpResult::Delete(d.deleted.max(0) as u64)
            } else if r.response_put.is_some() {
                OpResult::Put
            } else {
                return Err(EtcdError::BadReply {
                    what: what.into(),
                    endpoint: ep,
                    detail: "an answer of an unknown kind".into(),
                });
            });
        }
        Ok(TxnResult {
            succeeded: t.succeeded,
            revision: t.header.revision,
            results,
        })
    }
}

impl TxnResult {
    /// The keys read by the operation at `index` of the branch that ran.
    pub fn kvs(&self, index: usize) -> &[KeyValue] {
        match self.results.get(index) {
            Some(OpResult::Get(kvs)) => kvs,
            _ => &[],
        }
    }

    /// The single key read by the operation at `index`, if it exists.
    pub fn kv(&self, index: usize) -> Option<&KeyValue> {
        self.kvs(index).first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/b/"), b"a/b0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn replies_with_left_out_defaults_decode() {
        // A failed transaction: etcd leaves `succeeded` out; integers come as strings.
        let v: WireTxn = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","revision":"2","raft_term":"2"},
                "responses":[{"response_range":{"header":{"revision":"2"},
                  "kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1",
                          "value":"eyJ0b3RhbF9zbG90cyI6MSwiaG9sZGVycyI6W119"}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!v.succeeded);
        assert_eq!(v.header.revision, 2);
        let range = v
            .responses
            .into_iter()
            .next()
            .unwrap()
            .response_range
            .unwrap();
        let kv = kv_from_wire(range.kvs.into_iter().next().unwrap()).unwrap();
        assert_eq!(kv.key, "foo");
        assert_eq!(kv.value, br#"{"total_slots":1,"holders":[]}"#.to_vec());
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
        // An empty range has no `kvs` at all.
        let empty: WireRange = serde_json::from_str(r#"{"header":{"revision":"7"}}"#).unwrap();
        assert!(empty.kvs.is_empty());
    }

    #[test]
    fn compares_name_their_target() {
        let c = compare_json(&Compare::Missing("k".into()));
        assert_eq!(c["target"], "CREATE");
        assert_eq!(c["create_revision"], "0");
        assert_eq!(c["key"], "aw==");
        let c = compare_json(&Compare::ModRevision("k".into(), 42));
        assert_eq!(c["target"], "MOD");
        assert_eq!(c["mod_revision"], "42");
    }

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:2379/").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert!(normalize_endpoint("127.0.0.1:2379").is_err());
        assert!(normalize_endpoint("http://h:1/v3").is_err());
        let cfg = EtcdConfig {
            endpoints: vec!["https://h:2379".into()],
            ca_file: None,
            cert_file: Some("/nonexistent/cert.pem".into()),
            key_file: None,
            timeout: Duration::from_secs(1),
        };
        let e = Client::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("needs its key"), "{e}");
    }
}
