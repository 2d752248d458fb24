//! syscont's own records beside airlock's semaphore: who holds a slot, which digests failed.
//!
//! Key layout (airlock reads only its own key and ignores these):
//!
//! ```text
//! com.coreos.airlock/groups/<group>/v1/semaphore        airlock's semaphore (semaphore.rs)
//! syscont.io/fleet/groups/<group>/holders/<id>          HolderRecord, while <id> holds a slot
//! syscont.io/fleet/groups/<group>/failed/<digest>       FailureRecord, until `unblock`
//! ```
//!
//! Invariants:
//! - Group names match `^[a-zA-Z0-9.-]+$` (the FleetLock rule), and ids and digests hold no
//!   `/`, so every name is exactly one path element of a key.
//! - A holder record is written and deleted in the same transaction as the semaphore change
//!   that takes or frees the slot; a record without a holder (left by an operator's hand edit)
//!   is ignored and removed on the next release of that id.
//! - A failure record is created once (the first failure of a digest in a group is kept) and
//!   removed only by an explicit unblock.

use super::etcd::{Client, Compare, EtcdError, Op, Txn};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;

/// The prefix of airlock's keys.
pub const AIRLOCK_PREFIX: &str = "com.coreos.airlock/groups/";
/// The prefix of syscont's records.
pub const SYSCONT_PREFIX: &str = "syscont.io/fleet/groups/";
/// The group FleetLock clients use when none is configured.
pub const DEFAULT_GROUP: &str = "default";

/// airlock's semaphore key of `group`.
pub fn semaphore_key(group: &str) -> String {
    format!("{AIRLOCK_PREFIX}{group}/v1/semaphore")
}

/// The key of the record of holder `id` in `group`.
pub fn holder_key(group: &str, id: &str) -> String {
    format!("{SYSCONT_PREFIX}{group}/holders/{id}")
}

/// The key of the failure record of `digest` in `group`.
pub fn failed_key(group: &str, digest: &str) -> String {
    format!("{SYSCONT_PREFIX}{group}/failed/{digest}")
}

fn failed_prefix(group: &str) -> String {
    format!("{SYSCONT_PREFIX}{group}/failed/")
}

/// Checks a group name against the FleetLock rule `^[a-zA-Z0-9.-]+$`.
pub fn validate_group(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("a group name must not be empty".into());
    }
    if group.len() > 128 {
        return Err("a group name must not be longer than 128 characters".into());
    }
    if let Some(c) = group
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "{c:?} is not allowed in a group name (only letters, digits, '.' and '-')"
        ));
    }
    Ok(())
}

/// Checks a holder id: 1 to 253 printable ASCII characters, none of `/ \ " < > &` or space.
///
/// The id is a path element of a record key, and the excluded characters are the ones Go's
/// JSON encoder would escape, so that a semaphore written here has the bytes airlock writes.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an id must not be empty".into());
    }
    if id.len() > 253 {
        return Err("an id must not be longer than 253 characters".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | '\\' | '"' | '<' | '>' | '&'))
    {
        return Err(format!("{c:?} is not allowed in an id"));
    }
    Ok(())
}

/// Checks an image digest: `algorithm:hex`, as in `sha256:0123...`.
pub fn validate_digest(digest: &str) -> Result<(), String> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("digest {digest:?} is not of the form algorithm:hex"))?;
    let algo_ok = !algo.is_empty()
        && algo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
    let hex_ok = hex.len() >= 32 && hex.len() <= 128 && hex.chars().all(|c| c.is_ascii_hexdigit());
    if !algo_ok || !hex_ok {
        return Err(format!(
            "digest {digest:?} is not of the form algorithm:hex"
        ));
    }
    Ok(())
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// The value of airlock's semaphore key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaphoreValue {
    /// How many holders the group allows at once.
    pub total_slots: u64,
    /// The ids holding a slot, sorted.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub holders: Vec<String>,
}

impl SemaphoreValue {
    /// An empty semaphore with `slots` slots.
    pub fn new(slots: u64) -> SemaphoreValue {
        SemaphoreValue {
            total_slots: slots,
            holders: Vec::new(),
        }
    }

    /// Parses a stored value (airlock's or ours).
    pub fn from_json(value: &[u8]) -> Result<SemaphoreValue, String> {
        serde_json::from_slice(value).map_err(|e| format!("not a semaphore value: {e}"))
    }

    /// The stored form: compact JSON, holders sorted and unique.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = self.clone();
        v.holders.sort();
        v.holders.dedup();
        serde_json::to_vec(&v).expect("a semaphore serialises")
    }

    /// Whether `id` holds a slot.
    pub fn holds(&self, id: &str) -> bool {
        self.holders.iter().any(|h| h == id)
    }

    /// Adds `id` if a slot is free; false when full.
    pub fn add(&mut self, id: &str) -> bool {
        if self.holds(id) {
            return true;
        }
        if self.holders.len() as u64 >= self.total_slots {
            return false;
        }
        self.holders.push(id.to_string());
        self.holders.sort();
        true
    }

    /// Removes `id`; false when it held no slot.
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.holders.len();
        self.holders.retain(|h| h != id);
        self.holders.len() != before
    }
}

/// Who holds a slot, for status and for an operator deciding whether a holder is dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// The holder id, as in airlock's `holders`.
    pub id: String,
    /// The holder's host name.
    pub host: String,
    /// When the slot was taken (RFC 3339, UTC).
    pub since: String,
    /// The container being restarted.
    pub container: String,
    /// The digest being rolled out.
    pub digest: String,
}

/// A digest whose health gate failed: no host of the group may roll it until unblocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The failed image digest.
    pub digest: String,
    /// The id of the host where it failed.
    pub id: String,
    /// That host's name.
    pub host: String,
    /// The container it was rolled to.
    pub container: String,
    /// When it failed (RFC 3339, UTC).
    pub since: String,
    /// What the health gate said.
    pub reason: String,
}

/// One holder in a group's status; the details are known when a syscont host took the slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderStatus {
    /// The holder id.
    pub id: String,
    /// Host name, container, digest and time, from syscont's holder record.
    pub record: Option<HolderRecord>,
}

/// The state of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// The semaphore's slot count; `None` when no semaphore exists yet.
    pub total_slots: Option<u64>,
    /// The holders, sorted by id.
    pub holders: Vec<HolderStatus>,
    /// The digests recorded as failed, sorted by digest.
    pub failed: Vec<FailureRecord>,
}

fn parse_record<T: for<'de> Deserialize<'de>>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("ignoring the unreadable record {key}: {e}");
            None
        }
    }
}

/// Records that `record.digest` failed in `group`. Keeps an earlier record of the same digest;
/// returns whether this call created it.
pub fn record_failure(
    etcd: &Client,
    group: &str,
    record: &FailureRecord,
) -> Result<bool, EtcdError> {
    let key = failed_key(group, &record.digest);
    let value = serde_json::to_vec(record).expect("a record serialises");
    let txn = Txn {
        compare: vec![Compare::Missing(key.clone())],
        success: vec![Op::Put(key.clone(), value)],
        failure: vec![],
    };
    Ok(etcd
        .txn(&txn, &format!("recording the failure {key}"))?
        .succeeded)
}

/// The failure record of `digest` in `group`, if any.
pub fn failure_for(
    etcd: &Client,
    group: &str,
    digest: &str,
) -> Result<Option<FailureRecord>, EtcdError> {
    let key = failed_key(group, digest);
    Ok(etcd
        .get(&key)?
        .and_then(|kv| parse_record(&kv.key, &kv.value)))
}

/// Every failure record of `group`, sorted by digest.
pub fn failed_digests(etcd: &Client, group: &str) -> Result<Vec<FailureRecord>, EtcdError> {
    Ok(etcd
        .get_prefix(&failed_prefix(group), false)?
        .into_iter()
        .filter_map(|kv| parse_record(&kv.key, &kv.value))
        .collect())
}

/// Every group that has a semaphore or a syscont record.
pub fn groups(etcd: &Client) -> Result<BTreeSet<String>, EtcdError> {
    let mut out = BTreeSet::new();
    for prefix in [AIRLOCK_PREFIX, SYSCONT_PREFIX] {
        for kv in etcd.get_prefix(prefix, true)? {
            if let Some(g) = kv.key[prefix.len()..].split('/').next() {
                if validate_group(g).is_ok() {
                    out.insert(g.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Removes the failure record of `digest` from `group`, or from every group when `None`.
/// Returns the groups it was removed from.
pub fn unblock(etcd: &Client, digest: &str, group: Option<&str>) -> Result<Vec<String>, EtcdError> {
    let candidates: Vec<String> = match group {
        Some(g) => vec![g.to_string()],
        None => groups(etcd)?.into_iter().collect(),
    };
    let mut out = Vec::new();
    for g in candidates {
        if etcd.delete(&failed_key(&g, digest))? > 0 {
            tracing::info!("digest {digest} unblocked in group {g}");
            out.push(g);
        }
    }
    Ok(out)
}

/// The status of `group`: semaphore, holders with their records, failed digests.
pub fn status(etcd: &Client, group: &str) -> Result<GroupStatus, EtcdError> {
    let sem_key = semaphore_key(group);
    let txn = Txn {
        compare: vec![],
        success: vec![
            Op::Get(sem_key.clone()),
            Op::GetPrefix(format!("{SYSCONT_PREFIX}{group}/")),
        ],
        failure: vec![],
    };
    let r = etcd.txn(&txn, &format!("reading the status of group {group}"))?;
    let sem = r.kv(0).and_then(|kv| {
        SemaphoreValue::from_json(&kv.value)
            .map_err(|e| tracing::warn!("{sem_key}: {e}"))
            .ok()
    });
    let mut records = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    let holders_prefix = format!("{SYSCONT_PREFIX}{group}/holders/");
    let failed_prefix = failed_prefix(group);
    for kv in r.kvs(1) {
        if let Some(id) = kv.key.strip_prefix(&holders_prefix) {
            if let Some(rec) = parse_record::<HolderRecord>(&kv.key, &kv.value) {
                records.insert(id.to_string(), rec);
            }
        } else if kv.key.starts_with(&failed_prefix) {
            failed.extend(parse_record::<FailureRecord>(&kv.key, &kv.value));
        }
    }
    let (total_slots, holders) = match sem {
        Some(s) => {
            let mut ids = s.holders;
            ids.sort();
            ids.dedup();
            let holders = ids
                .into_iter()
                .map(|id| HolderStatus {
                    record: records.remove(&id),
                    id,
                })
                .collect();
            (Some(s.total_slots), holders)
        }
        None => (None, Vec::new()),
    };
    Ok(GroupStatus {
        group: group.to_string(),
        total_slots,
        holders,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        assert_eq!(
            semaphore_key("etcd"),
            "com.coreos.airlock/groups/etcd/v1/semaphore"
        );
        assert_eq!(
            holder_key("etcd", "abc"),
            "syscont.io/fleet/groups/etcd/holders/abc"
        );
        assert_eq!(
            failed_key("etcd", "sha256:00"),
            "syscont.io/fleet/groups/etcd/failed/sha256:00"
        );
    }

    #[test]
    fn group_names_follow_fleetlock() {
        for ok in ["default", "etcd-3", "a.b", "A0"] {
            validate_group(ok).unwrap();
        }
        for bad in ["", "a/b", "a b", "a_b", "ü", "a\n"] {
            assert!(validate_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_one_key_element_and_plain_json() {
        for ok in [
            "c988d2509fdf4cdcbed39037c56406fb",
            "node-1.example.com",
            "a:b@c",
        ] {
            validate_id(ok).unwrap();
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "a<b",
            "a&b",
            "a\"b",
            "é",
            &"x".repeat(254),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests() {
        validate_digest(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        for bad in ["sha256", "sha256:xyz", ":abc", "sha256:ab/cd", "SHA256:00"] {
            assert!(validate_digest(bad).is_err(), "{bad:?}");
        }
    }
}
