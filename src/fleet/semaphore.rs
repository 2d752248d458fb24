//! An airlock-compatible counting semaphore on etcd, one per group.
//!
//! The key is `com.coreos.airlock/groups/<group>/v1/semaphore` and its value the compact JSON
//! `{"total_slots":N,"holders":["id",...]}`, the bytes airlock writes, so syscont hosts,
//! airlock and Zincati hosts behind airlock share one semaphore per group.
//!
//! Invariants:
//! - Every change is one etcd transaction guarded by the key's `mod_revision` as read (a
//!   compare-and-swap): two writers never both win against the same value, so the number of
//!   holders never exceeds `total_slots` through this module.
//! - The key is created only when missing (`create_revision == 0`) with the caller's slot count;
//!   an existing key keeps its slot count, as with airlock.
//! - Holders are written sorted and without duplicates.
//! - Taking a slot writes syscont's holder record and checks that the digest is not recorded as
//!   failed in the same transaction; freeing it deletes the record in the same transaction.
//! - A lost compare-and-swap is retried a bounded number of times with a short random pause.

use super::etcd::{Client, Compare, EtcdError, Op, Txn};
use super::records::{
    failed_key, holder_key, semaphore_key, FailureRecord, HolderRecord, SemaphoreValue,
};
use std::time::Duration;

/// How many times a lost compare-and-swap is retried.
const MAX_ATTEMPTS: u32 = 40;

/// The answer to [`Semaphore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The id holds a slot now.
    Acquired {
        /// It held the slot before this call.
        already_held: bool,
    },
    /// Every slot is taken.
    Busy {
        /// The group's slot count.
        total_slots: u64,
        /// Who holds them.
        holders: Vec<String>,
    },
    /// The digest is recorded as failed in the group: nothing was taken.
    Blocked(FailureRecord),
}

/// The answer to [`Semaphore::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The id held a slot before this call.
    pub was_holder: bool,
    /// syscont's record of the holder, if there was one.
    pub record: Option<HolderRecord>,
}

/// The semaphore of one group.
#[derive(Debug, Clone, Copy)]
pub struct Semaphore<'a> {
    etcd: &'a Client,
    group: &'a str,
}

fn pause(attempt: u32) {
    let ms = 5 + fastrand::u64(0..(10 * u64::from(attempt.min(10)) + 10));
    std::thread::sleep(Duration::from_millis(ms));
}

fn parse_holder(key: &str, value: &[u8]) -> Option<HolderRecord> {
    serde_json::from_slice(value)
        .map_err(|e| tracing::warn!("ignoring the unreadable record {key}: {e}"))
        .ok()
}

impl<'a> Semaphore<'a> {
    /// The semaphore of `group` (a valid group name) on `etcd`.
    pub fn new(etcd: &'a Client, group: &'a str) -> Semaphore<'a> {
        Semaphore { etcd, group }
    }

    /// The semaphore key.
    pub fn key(&self) -> String {
        semaphore_key(self.group)
    }

    fn bad_value(&self, e: String) -> EtcdError {
        EtcdError::BadReply {
            what: format!("reading {}", self.key()),
            endpoint: "(stored value)".into(),
            detail: e,
        }
    }

    /// The current value and its mod_revision; `None` when the key does not exist.
    pub fn read(&self) -> Result<Option<(SemaphoreValue, i64)>, EtcdError> {
        match self.etcd.get(&self.key())? {
            None => Ok(None),
            Some(kv) => {
                let v = SemaphoreValue::from_json(&kv.value).map_err(|e| self.bad_value(e))?;
                Ok(Some((v, kv.mod_revision)))
            }
        }
    }

    /// Takes a slot for `id`, creating the semaphore with `slots` slots if it is missing.
    ///
    /// Idempotent: an id that holds a slot gets `Acquired { already_held: true }` (and keeps
    /// its first holder record). With `holder`, the digest is first checked against the
    /// group's failure records (`Blocked` when recorded), and the holder record is written with
    /// the slot.
    pub fn acquire(
        &self,
        id: &str,
        slots: u64,
        holder: Option<&HolderRecord>,
    ) -> Result<AcquireOutcome, EtcdError> {
        let key = self.key();
        let hkey = holder_key(self.group, id);
        let fkey = holder.map(|h| failed_key(self.group, &h.digest));
        let initial = SemaphoreValue::new(slots).to_json();
        for attempt in 1..=MAX_ATTEMPTS {
            // Read (or create) the semaphore, the holder record and the failure record at once.
            let mut reads = vec![Op::Get(hkey.clone())];
            reads.extend(fkey.iter().map(|k| Op::Get(k.clone())));
            let mut success = vec![Op::Put(key.clone(), initial.clone())];
            success.extend(reads.iter().cloned());
            let mut failure = vec![Op::Get(key.clone())];
            failure.extend(reads);
            let load = Txn {
                compare: vec![Compare::Missing(key.clone())],
                success,
                failure,
            };
            let r = self.etcd.txn(&load, &format!("reading {key}"))?;
            let (mut sem, rev) = if r.succeeded {
                tracing::info!(
                    "created the semaphore of group {} with {slots} slot(s)",
                    self.group
                );
                (SemaphoreValue::new(slots), r.revision)
            } else {
                let kv = r.kv(0).ok_or_else(|| self.bad_value("vanished".into()))?;
                let v = SemaphoreValue::from_json(&kv.value).map_err(|e| self.bad_value(e))?;
                (v, kv.mod_revision)
            };
            let record_exists = r.kv(1).is_some();
            if let Some(f) = r.kv(2) {
                if let Ok(rec) = serde_json::from_slice::<FailureRecord>(&f.value) {
                    return Ok(AcquireOutcome::Blocked(rec));
                }
                tracing::warn!(
                    "{}: unreadable failure record; treating it as failed",
                    f.key
                );
                let h = holder.expect("a failure key is read only with a holder");
                return Ok(AcquireOutcome::Blocked(FailureRecord {
                    digest: h.digest.clone(),
                    id: String::new(),
                    host: String::new(),
                    container: String::new(),
                    since: String::new(),
                    reason: "(unreadable failure record)".into(),
                }));
            }
            let already_held = sem.holds(id);
            if !already_held && !sem.add(id) {
                return Ok(AcquireOutcome::Busy {
                    total_slots: sem.total_slots,
                    holders: sem.holders,
                });
            }
            let mut compare = vec![Compare::ModRevision(key.clone(), rev)];
            compare.extend(fkey.iter().map(|k| Compare::Missing(k.clone())));
            let mut success = Vec::new();
            if !already_held {
                success.push(Op::Put(key.clone(), sem.to_json()));
            }
            if let Some(h) = holder {
                if !already_held || !record_exists {
                    let rec = serde_json::to_vec(h).expect("a record serialises");
                    success.push(Op::Put(hkey.clone(), rec));
                }
            }
            if success.is_empty() {
                return Ok(AcquireOutcome::Acquired { already_held });
            }
            let swap = Txn {
                compare,
                success,
                failure: vec![],
            };
            if self
                .etcd
                .txn(&swap, &format!("taking a slot of {key} for {id}"))?
                .succeeded
            {
                if !already_held {
                    tracing::info!("{id} took a slot of group {}", self.group);
                }
                return Ok(AcquireOutcome::Acquired { already_held });
            }
            tracing::debug!("{key}: lost a compare-and-swap (attempt {attempt}); retrying");
            pause(attempt);
        }
        Err(EtcdError::Conflict {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Frees the slot of `id` and deletes its holder record. Idempotent: releasing an id that
    /// holds nothing (or a group without a semaphore) changes nothing but stale records.
    pub fn release(&self, id: &str) -> Result<Released, EtcdError> {
        let key = self.key();
        let hkey = holder_key(self.group, id);
        for attempt in 1..=MAX_ATTEMPTS {
            let load = Txn {
                compare: vec![],
                success: vec![Op::Get(key.clone()), Op::Get(hkey.clone())],
                failure: vec![],
            };
            let r = self.etcd.txn(&load, &format!("reading {key}"))?;
            let record = r.kv(1).and_then(|kv| parse_holder(&kv.key, &kv.value));
            let current = match r.kv(0) {
                None => None,
                Some(kv) => Some((
                    SemaphoreValue::from_json(&kv.value).map_err(|e| self.bad_value(e))?,
                    kv.mod_revision,
                )),
            };
            let Some((mut sem, rev)) = current.filter(|(s, _)| s.holds(id)) else {
                if r.kv(1).is_some() {
                    self.etcd.delete(&hkey)?;
                }
                return Ok(Released {
                    was_holder: false,
                    record,
                });
            };
            sem.remove(id);
            let swap = Txn {
                compare: vec![Compare::ModRevision(key.clone(), rev)],
                success: vec![
                    Op::Put(key.clone(), sem.to_json()),
                    Op::Delete(hkey.clone()),
                ],
                failure: vec![],
            };
            if self
                .etcd
                .txn(&swap, &format!("freeing the slot of {id} in {key}"))?
                .succeeded
            {
                tracing::info!("{id} released its slot of group {}", self.group);
                return Ok(Released {
                    was_holder: true,
                    record,
                });
            }
            tracing::debug!("{key}: lost a compare-and-swap (attempt {attempt}); retrying");
            pause(attempt);
        }
        Err(EtcdError::Conflict {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_match_airlock() {
        // airlock's NewSemaphore(2) marshals to exactly this, and so must an empty one here.
        assert_eq!(
            SemaphoreValue::new(2).to_json(),
            br#"{"total_slots":2,"holders":[]}"#.to_vec()
        );
        let mut s = SemaphoreValue::new(3);
        assert!(s.add("c988d2509fdf4cdcbed39037c56406fb"));
        assert!(s.add("a0"));
        assert_eq!(
            String::from_utf8(s.to_json()).unwrap(),
            r#"{"total_slots":3,"holders":["a0","c988d2509fdf4cdcbed39037c56406fb"]}"#
        );
    }

    #[test]
    fn reads_airlock_values_in_every_shape() {
        let v = SemaphoreValue::from_json(br#"{"total_slots":1,"holders":null}"#).unwrap();
        assert_eq!(v, SemaphoreValue::new(1));
        let v = SemaphoreValue::from_json(br#"{"total_slots":1}"#).unwrap();
        assert!(v.holders.is_empty());
        let v = SemaphoreValue::from_json(
            br#"{ "total_slots": 2, "holders": ["b", "a"], "extra": true }"#,
        )
        .unwrap();
        assert!(v.holds("a") && v.holds("b"));
        // Hand-edited values are normalised when written back.
        assert_eq!(
            v.to_json(),
            br#"{"total_slots":2,"holders":["a","b"]}"#.to_vec()
        );
        assert!(SemaphoreValue::from_json(b"{}").is_err());
        assert!(SemaphoreValue::from_json(br#"{"total_slots":-1}"#).is_err());
    }

    #[test]
    fn add_and_remove_respect_slots() {
        let mut s = SemaphoreValue::new(1);
        assert!(s.add("x"));
        assert!(s.add("x"), "recursive");
        assert!(!s.add("y"), "full");
        assert_eq!(s.holders, vec!["x"]);
        assert!(s.remove("x"));
        assert!(!s.remove("x"));
        let mut zero = SemaphoreValue::new(0);
        assert!(!zero.add("x"));
        // Slots lowered below the number of holders: a holder still holds, nobody joins.
        let mut over = SemaphoreValue {
            total_slots: 1,
            holders: vec!["a".into(), "b".into()],
        };
        assert!(over.add("a"));
        assert!(!over.add("c"));
    }
}
