//! Fleet coordination: at most N hosts of a group restart a container at once.
//!
//! Before restarting a container on a new image, a host takes a *slot* of its group's
//! semaphore; it frees the slot once the container passed its health gate. A digest whose
//! gate failed is recorded for the group, and no host of the group rolls it until an operator
//! unblocks it. Two coordinators serve the same model:
//!
//! - [`Coordinator::Etcd`]: the host talks to etcd itself (`etcd.rs`), using airlock's
//!   semaphore key `com.coreos.airlock/groups/<group>/v1/semaphore` (`semaphore.rs`) and
//!   syscont's records under `syscont.io/fleet/groups/<group>/` (`records.rs`). syscont hosts,
//!   airlock and the Zincati hosts behind it share the semaphore of a group.
//! - [`Coordinator::FleetLock`]: the host speaks FleetLock to a server (`fleetlock.rs`), such as
//!   airlock or syscont's own [`fleetlock::Server`], for hosts that hold no etcd credentials.
//!   Failure records need syscont's server; with a plain FleetLock server they fail with
//!   [`FleetError::Unsupported`], and the slot that stays held halts the group instead.
//!
//! Invariants:
//! - An unreachable coordinator is never read as "free": [`FleetError::Unreachable`] means that
//!   nothing may restart.
//! - Every wait is bounded: requests by their timeout, [`Coordinator::acquire_wait`] by its
//!   deadline and its limit on how long the coordinator may stay unreachable.
//! - There is no lease and no TTL (as with airlock): a holder that dies keeps its slot until it
//!   comes back (the local journal, `journal.rs`, tells it what it held) or an operator frees
//!   it with [`Coordinator::release_forced`].

pub mod etcd;
pub mod fleetlock;
pub mod http;
pub mod identity;
pub mod journal;
pub mod records;
pub mod semaphore;
pub mod server;

pub use fleetlock::ForcedRelease;
pub use identity::{app_specific_id, default_id, hostname, splay, SYSCONT_APP_ID};
pub use records::{FailureRecord, GroupStatus, HolderRecord, HolderStatus, DEFAULT_GROUP};

use anyhow::{Context, Result};
use etcd::EtcdError;
use fleetlock::{FleetLockClient, FleetLockError, SyscontParams};
use semaphore::{AcquireOutcome, Semaphore};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the coordinator is: etcd endpoints, or a FleetLock base URL (exactly one of them).
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// CA certificates (PEM) for https etcd endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    pub key_file: Option<PathBuf>,
    /// FleetLock server base URL.
    pub base_url: Option<String>,
    /// Bound on one request to one endpoint.
    pub timeout: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            endpoints: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            base_url: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Failures that callers branch on (find them with `downcast_ref` on the error chain).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The coordinator did not answer: nothing may restart.
    #[error(
        "the fleet coordinator ({coordinator}) is unreachable, so nothing may restart: {detail}"
    )]
    Unreachable {
        /// Which coordinator.
        coordinator: String,
        /// What was tried.
        detail: String,
    },
    /// The digest is recorded as failed in the group.
    #[error(
        "digest {} is recorded as failed in group {group} (on {} for {} at {}: {}); \
         it will not be rolled out until `syscont fleet unblock {}`",
        .record.digest, .record.host, .record.container, .record.since, .record.reason,
        .record.digest
    )]
    DigestFailed {
        /// The group.
        group: String,
        /// The record.
        record: FailureRecord,
    },
    /// No slot came free before the deadline.
    #[error(
        "no slot of group {group} came free within {}s; held by: {}",
        .waited.as_secs(),
        .holders.join(", ")
    )]
    WaitTimedOut {
        /// The group.
        group: String,
        /// The holders seen last.
        holders: Vec<String>,
        /// How long it waited.
        waited: Duration,
    },
    /// The FleetLock server does not implement syscont's extension.
    #[error(
        "{what} needs syscont's FleetLock server, and {base_url} is a plain FleetLock server; \
         {consequence}"
    )]
    Unsupported {
        /// The operation.
        what: String,
        /// The server.
        base_url: String,
        /// What this means for the fleet.
        consequence: String,
    },
    /// A group, id or digest that the protocol does not allow.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which name.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// What the holder of a slot is doing, for status and failure records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// The host name.
    pub host: String,
    /// The container being restarted.
    pub container: String,
    /// The digest being rolled out.
    pub digest: String,
}

impl HolderInfo {
    /// This host restarting `container` on `digest`.
    pub fn local(container: &str, digest: &str) -> HolderInfo {
        HolderInfo {
            host: hostname(),
            container: container.into(),
            digest: digest.into(),
        }
    }
}

/// A slot is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// It was held before the call (a resumed rollout).
    pub already_held: bool,
}

/// The answer to [`Coordinator::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The slot is held.
    Acquired(Acquired),
    /// Every slot is taken.
    Busy {
        /// Who holds them, when the coordinator says.
        holders: Vec<String>,
        /// The group's slot count, when the coordinator says.
        total_slots: Option<u64>,
    },
}

/// How [`Coordinator::acquire_wait`] polls.
#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    /// First pause between two tries.
    pub initial_backoff: Duration,
    /// Longest pause (each pause doubles up to this, plus up to 25% jitter).
    pub max_backoff: Duration,
    /// Give up when no slot came free after this long.
    pub deadline: Duration,
    /// Give up when the coordinator stayed unreachable this long.
    pub unreachable_limit: Duration,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            deadline: Duration::from_secs(3600),
            unreachable_limit: Duration::from_secs(300),
        }
    }
}

/// The coordination service of a fleet.
#[derive(Debug, Clone)]
pub enum Coordinator {
    /// etcd, spoken to directly.
    Etcd {
        /// The client.
        client: etcd::Client,
    },
    /// A FleetLock server.
    FleetLock {
        /// The server's base URL.
        base_url: String,
        /// The client.
        client: FleetLockClient,
    },
}

fn invalid(what: &'static str, r: Result<(), String>) -> Result<()> {
    r.map_err(|reason| FleetError::Invalid { what, reason }.into())
}

impl Coordinator {
    /// The coordinator `config` describes.
    pub fn new(config: &FleetConfig) -> Result<Coordinator> {
        match (&config.base_url, config.endpoints.is_empty()) {
            (Some(url), true) => {
                let client = FleetLockClient::new(url, config.timeout)?;
                Ok(Coordinator::FleetLock {
                    base_url: client.base_url().to_string(),
                    client,
                })
            }
            (None, false) => {
                let client = etcd::Client::new(&etcd::EtcdConfig {
                    endpoints: config.endpoints.clone(),
                    ca_file: config.ca_file.clone(),
                    cert_file: config.cert_file.clone(),
                    key_file: config.key_file.clone(),
                    timeout: config.timeout,
                })
                .context("Setting up the etcd client")?;
                Ok(Coordinator::Etcd { client })
            }
            (Some(_), false) => {
                anyhow::bail!("configure either etcd endpoints or a FleetLock base URL, not both")
            }
            (None, true) => anyhow::bail!(
                "no fleet coordinator configured (etcd endpoints or a FleetLock base URL)"
            ),
        }
    }

    /// The kind, as recorded in the journal.
    pub fn kind(&self) -> journal::CoordinatorKind {
        match self {
            Coordinator::Etcd { .. } => journal::CoordinatorKind::Etcd,
            Coordinator::FleetLock { .. } => journal::CoordinatorKind::FleetLock,
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Coordinator::Etcd { client } => format!("etcd {}", client.endpoints().join(",")),
            Coordinator::FleetLock { base_url, .. } => format!("FleetLock {base_url}"),
        }
    }

    fn etcd_err(&self, e: EtcdError, what: String) -> anyhow::Error {
        match e {
            EtcdError::Unreachable { .. } => FleetError::Unreachable {
                coordinator: self.describe(),
                detail: e.to_string(),
            }
            .into(),
            e => anyhow::Error::new(e).context(what),
        }
    }

    fn fleetlock_err(&self, e: FleetLockError, what: String, consequence: &str) -> anyhow::Error {
        match e {
            FleetLockError::Unreachable { .. } => FleetError::Unreachable {
                coordinator: self.describe(),
                detail: e.to_string(),
            }
            .into(),
            FleetLockError::Blocked { group, record } => FleetError::DigestFailed {
                group,
                record: *record,
            }
            .into(),
            FleetLockError::Unsupported { .. } => FleetError::Unsupported {
                what,
                base_url: self.describe(),
                consequence: consequence.into(),
            }
            .into(),
            e => anyhow::Error::new(e).context(what),
        }
    }

    /// Takes a slot of `group` for `id`, creating the group's semaphore with `slots` slots if
    /// it has none (an existing semaphore keeps its count; a FleetLock server uses its own).
    ///
    /// Idempotent. Refuses a digest recorded as failed in the group with
    /// [`FleetError::DigestFailed`] (with a FleetLock server, only syscont's checks).
    pub fn acquire(
        &self,
        group: &str,
        id: &str,
        slots: u64,
        holder: &HolderInfo,
    ) -> Result<Acquire> {
        invalid("group", records::validate_group(group))?;
        invalid("id", records::validate_id(id))?;
        invalid("digest", records::validate_digest(&holder.digest))?;
        if slots == 0 {
            return Err(FleetError::Invalid {
                what: "slot count",
                reason: "a group needs at least one slot".into(),
            }
            .into());
        }
        let what = format!(
            "taking a slot of group {group} for {id} on {}",
            self.describe()
        );
        match self {
            Coordinator::Etcd { client } => {
                let record = HolderRecord {
                    id: id.into(),
                    host: holder.host.clone(),
                    since: crate::util::time::now_rfc3339(),
                    container: holder.container.clone(),
                    digest: holder.digest.clone(),
                };
                match Semaphore::new(client, group).acquire(id, slots, Some(&record)) {
                    Ok(AcquireOutcome::Acquired { already_held }) => {
                        Ok(Acquire::Acquired(Acquired { already_held }))
                    }
                    Ok(AcquireOutcome::Busy {
                        total_slots,
                        holders,
                    }) => Ok(Acquire::Busy {
                        holders,
                        total_slots: Some(total_slots),
                    }),
                    Ok(AcquireOutcome::Blocked(record)) => Err(FleetError::DigestFailed {
                        group: group.into(),
                        record,
                    }
                    .into()),
                    Err(e) => Err(self.etcd_err(e, what)),
                }
            }
            Coordinator::FleetLock { client, .. } => {
                let params = SyscontParams {
                    host: holder.host.clone(),
                    container: holder.container.clone(),
                    digest: holder.digest.clone(),
                };
                match client.pre_reboot(group, id, Some(params)) {
                    // A plain FleetLock server does not say whether the slot was held before.
                    Ok(held) => Ok(Acquire::Acquired(Acquired {
                        already_held: held.unwrap_or(false),
                    })),
                    Err(FleetLockError::Busy { holders, .. }) => Ok(Acquire::Busy {
                        holders,
                        total_slots: None,
                    }),
                    Err(e) => Err(self.fleetlock_err(e, what, "")),
                }
            }
        }
    }

    /// Polls [`Coordinator::acquire`] with growing pauses until a slot is held, the deadline
    /// passes ([`FleetError::WaitTimedOut`], naming the holders) or the coordinator stayed
    /// unreachable longer than the policy allows ([`FleetError::Unreachable`]).
    pub fn acquire_wait(
        &self,
        group: &str,
        id: &str,
        slots: u64,
        holder: &HolderInfo,
        policy: &WaitPolicy,
    ) -> Result<Acquired> {
        let start = Instant::now();
        let mut backoff = policy.initial_backoff.max(Duration::from_millis(10));
        let mut unreachable_since: Option<Instant> = None;
        let mut holders = Vec::new();
        // The deadline bounds the loop; the count bounds it even if the clock misbehaves.
        for _ in 0..100_000 {
            match self.acquire(group, id, slots, holder) {
                Ok(Acquire::Acquired(a)) => return Ok(a),
                Ok(Acquire::Busy { holders: h, .. }) => {
                    if holders != h {
                        tracing::info!("group {group} is full (held by {}); waiting", h.join(", "));
                    }
                    holders = h;
                    unreachable_since = None;
                }
                Err(e) => {
                    let Some(FleetError::Unreachable { .. }) = e.downcast_ref::<FleetError>()
                    else {
                        return Err(e);
                    };
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= policy.unreachable_limit {
                        return Err(e.context(format!(
                            "Gave up after the coordinator stayed unreachable for {}s",
                            since.elapsed().as_secs()
                        )));
                    }
                    tracing::warn!("{e:#}; retrying");
                }
            }
            let elapsed = start.elapsed();
            if elapsed >= policy.deadline {
                return Err(FleetError::WaitTimedOut {
                    group: group.into(),
                    holders,
                    waited: elapsed,
                }
                .into());
            }
            let jitter = backoff.mul_f64(fastrand::f64() * 0.25);
            std::thread::sleep((backoff + jitter).min(policy.deadline - elapsed));
            backoff = (backoff * 2).min(policy.max_backoff.max(policy.initial_backoff));
        }
        Err(FleetError::WaitTimedOut {
            group: group.into(),
            holders,
            waited: start.elapsed(),
        }
        .into())
    }

    /// Frees the slot of `id` in `group` (idempotent: an id that holds none is a no-op).
    pub fn release(&self, group: &str, id: &str) -> Result<()> {
        invalid("group", records::validate_group(group))?;
        invalid("id", records::validate_id(id))?;
        let what = format!(
            "freeing the slot of {id} in group {group} on {}",
            self.describe()
        );
        match self {
            Coordinator::Etcd { client } => Semaphore::new(client, group)
                .release(id)
                .map(drop)
                .map_err(|e| self.etcd_err(e, what)),
            Coordinator::FleetLock { client, .. } => client
                .steady_state(group, id)
                .map_err(|e| self.fleetlock_err(e, what, "")),
        }
    }

    /// An operator frees the slot of `id` (a dead holder) in `group`, giving a reason for the
    /// log. Tells whether it held one and what it was doing. With a plain FleetLock server this
    /// falls back to `steady-state` on the holder's behalf, which tells nothing.
    pub fn release_forced(&self, group: &str, id: &str, reason: &str) -> Result<ForcedRelease> {
        invalid("group", records::validate_group(group))?;
        invalid("id", records::validate_id(id))?;
        tracing::warn!("forced release of {id} in group {group}: {reason}");
        let what = format!(
            "forcing the release of {id} in group {group} on {}",
            self.describe()
        );
        match self {
            Coordinator::Etcd { client } => Semaphore::new(client, group)
                .release(id)
                .map(|r| ForcedRelease {
                    was_holder: r.was_holder,
                    record: r.record,
                })
                .map_err(|e| self.etcd_err(e, what)),
            Coordinator::FleetLock { client, .. } => match client.release_forced(group, id, reason)
            {
                Err(FleetLockError::Unsupported { .. }) => {
                    client
                        .steady_state(group, id)
                        .map_err(|e| self.fleetlock_err(e, what, ""))?;
                    Ok(ForcedRelease {
                        was_holder: false,
                        record: None,
                    })
                }
                r => r.map_err(|e| self.fleetlock_err(e, what, "")),
            },
        }
    }

    /// The state of `group`, or of every group the coordinator knows.
    pub fn status(&self, group: Option<&str>) -> Result<Vec<GroupStatus>> {
        if let Some(g) = group {
            invalid("group", records::validate_group(g))?;
        }
        let what = format!("reading the fleet status from {}", self.describe());
        match self {
            Coordinator::Etcd { client } => {
                let groups = match group {
                    Some(g) => vec![g.to_string()],
                    None => records::groups(client)
                        .map_err(|e| self.etcd_err(e, what.clone()))?
                        .into_iter()
                        .collect(),
                };
                groups
                    .iter()
                    .map(|g| records::status(client, g).map_err(|e| self.etcd_err(e, what.clone())))
                    .collect()
            }
            Coordinator::FleetLock { client, .. } => client.status(group).map_err(|e| {
                self.fleetlock_err(
                    e,
                    what,
                    "its holders can be read only on the server's own etcd",
                )
            }),
        }
    }

    /// Records that `record.digest` failed its health gate in `group`. Keeps an earlier record
    /// of the same digest; returns whether this call created it.
    pub fn record_failure(&self, group: &str, record: &FailureRecord) -> Result<bool> {
        invalid("group", records::validate_group(group))?;
        invalid("digest", records::validate_digest(&record.digest))?;
        let what = format!(
            "recording digest {} as failed in group {group}",
            record.digest
        );
        match self {
            Coordinator::Etcd { client } => {
                records::record_failure(client, group, record).map_err(|e| self.etcd_err(e, what))
            }
            Coordinator::FleetLock { client, .. } => {
                let consequence = format!(
                    "the slot held by {} stays held, which halts group {group} until an operator \
                     releases it",
                    record.id
                );
                client
                    .record_failure(group, record)
                    .map_err(|e| self.fleetlock_err(e, what, &consequence))
            }
        }
    }

    /// The digests recorded as failed in `group`.
    pub fn failed_digests(&self, group: &str) -> Result<Vec<FailureRecord>> {
        invalid("group", records::validate_group(group))?;
        match self {
            Coordinator::Etcd { client } => records::failed_digests(client, group).map_err(|e| {
                self.etcd_err(e, format!("listing the failed digests of group {group}"))
            }),
            Coordinator::FleetLock { .. } => Ok(self
                .status(Some(group))?
                .into_iter()
                .flat_map(|s| s.failed)
                .collect()),
        }
    }

    /// The failure record of `digest` in `group`, if it is recorded as failed.
    pub fn failure_for(&self, group: &str, digest: &str) -> Result<Option<FailureRecord>> {
        invalid("digest", records::validate_digest(digest))?;
        match self {
            Coordinator::Etcd { client } => {
                invalid("group", records::validate_group(group))?;
                records::failure_for(client, group, digest).map_err(|e| {
                    self.etcd_err(e, format!("reading the failure of {digest} in {group}"))
                })
            }
            Coordinator::FleetLock { .. } => Ok(self
                .failed_digests(group)?
                .into_iter()
                .find(|r| r.digest == digest)),
        }
    }

    /// Removes the failure record of `digest` from `group`, or from every group; returns the
    /// groups where it was recorded.
    pub fn unblock(&self, digest: &str, group: Option<&str>) -> Result<Vec<String>> {
        invalid("digest", records::validate_digest(digest))?;
        if let Some(g) = group {
            invalid("group", records::validate_group(g))?;
        }
        let what = format!("unblocking digest {digest}");
        match self {
            Coordinator::Etcd { client } => {
                records::unblock(client, digest, group).map_err(|e| self.etcd_err(e, what))
            }
            Coordinator::FleetLock { client, .. } => client.unblock(digest, group).map_err(|e| {
                self.fleetlock_err(e, what, "a plain FleetLock server records no failures")
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_needs_exactly_one_coordinator() {
        let none = FleetConfig::default();
        assert!(Coordinator::new(&none).is_err());
        let both = FleetConfig {
            endpoints: vec!["http://127.0.0.1:1".into()],
            base_url: Some("http://127.0.0.1:2".into()),
            ..FleetConfig::default()
        };
        assert!(Coordinator::new(&both).is_err());
        let fl = FleetConfig {
            base_url: Some("http://127.0.0.1:2/".into()),
            ..FleetConfig::default()
        };
        let c = Coordinator::new(&fl).unwrap();
        assert_eq!(c.kind(), journal::CoordinatorKind::FleetLock);
        assert_eq!(c.describe(), "FleetLock http://127.0.0.1:2");
    }

    #[test]
    fn bad_names_are_refused_before_any_request() {
        let c = Coordinator::new(&FleetConfig {
            endpoints: vec!["http://127.0.0.1:1".into()],
            ..FleetConfig::default()
        })
        .unwrap();
        let h = HolderInfo::local("etcd", &format!("sha256:{}", "a".repeat(64)));
        for (g, id, slots) in [("a_b", "x", 1), ("g", "a/b", 1), ("g", "x", 0)] {
            let e = c.acquire(g, id, slots, &h).unwrap_err();
            assert!(
                matches!(e.downcast_ref(), Some(FleetError::Invalid { .. })),
                "{e:#}"
            );
        }
    }
}
