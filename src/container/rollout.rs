//! Updates across a fleet: at most N hosts of a group restart a container at once.
//!
//! An update that restarts a container takes a slot of the container's group first (see
//! [`crate::fleet`]), and frees it once the container passed its health gate. The order on
//! this host is: stage (pull, render into the other slot, nothing restarts), take a slot,
//! switch and restart, gate, release. A host whose container needs no change never takes a
//! slot.
//!
//! - A failed gate rolls the container back here, records the digest as failed for the
//!   group (no other host rolls it) and keeps the slot, which halts the group until an
//!   operator looks (`syscont fleet release`, `syscont fleet unblock`).
//! - An unreachable coordinator means nothing restarts: taking a slot backs off and
//!   retries within a bound, then fails clearly.
//! - Each step is written to a local journal (`CHECKOUT/.fleet/NAME.json`). A syscont
//!   killed while it holds a slot finds the entry at its next run: it takes the slot again
//!   (the same holder id, so nothing changes in the fleet), finishes the gate, and
//!   releases.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

use crate::container::Host;
use crate::fleet::journal::{self, JournalEntry, Phase};
use crate::fleet::{Coordinator, FailureRecord, FleetConfig, FleetError, HolderInfo, WaitPolicy};
use crate::util::output;

/// A container's part in the fleet: its group, and the slot count of the group when this
/// host creates its semaphore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub group: String,
    pub slots: u64,
}

/// How this host takes part in a fleet (the host file's `[fleet]` table, or options).
#[derive(Debug, Clone)]
pub(crate) struct FleetSettings {
    pub config: FleetConfig,
    /// The holder id; by default derived from /etc/machine-id.
    pub id: Option<String>,
    /// At most this much random delay before a pull.
    pub splay: Duration,
    pub wait: WaitPolicy,
}

/// The fleet, opened for this command: the coordinator, this host's id, and the journal.
pub(crate) struct Rollout {
    coord: Coordinator,
    /// This host's holder id.
    pub id: String,
    wait: WaitPolicy,
    splay: Duration,
    dir: PathBuf,
}

/// What `finish` found to do for an interrupted rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// No entry, or nothing held.
    Nothing,
    /// The container runs the new digest; its gate is to be passed, then the slot freed.
    Gate,
    /// The gate passed; only the release is left.
    Release,
}

impl Rollout {
    pub(crate) fn open(host: &Host, s: &FleetSettings) -> Result<Rollout> {
        let id = match &s.id {
            Some(id) => id.clone(),
            None => crate::fleet::default_id()?,
        };
        crate::fleet::records::validate_id(&id)
            .map_err(|e| anyhow::anyhow!("invalid fleet id {id:?}: {e}"))?;
        Ok(Rollout {
            coord: Coordinator::new(&s.config)?,
            id,
            wait: s.wait,
            splay: s.splay,
            dir: host.deps.root.join(".fleet"),
        })
    }

    /// Waits a random part of the splay, so that a fleet does not pull at one instant.
    pub(crate) fn splay(&self) {
        let d = crate::fleet::splay(self.splay);
        if !d.is_zero() {
            output::status(format!(
                "Waiting {:.1} s (a random part of the fleet's splay) before pulling.",
                d.as_secs_f64()
            ));
            std::thread::sleep(d);
        }
    }

    /// The journal entry of `name`.
    pub(crate) fn entry(&self, name: &str) -> Result<Option<JournalEntry>> {
        journal::read(&self.dir, name)
    }

    fn write(&self, name: &str, m: &Member, digest: &str, phase: Phase) -> Result<()> {
        journal::write(
            &self.dir,
            &JournalEntry {
                container: name.to_string(),
                group: m.group.clone(),
                id: self.id.clone(),
                coordinator: self.coord.kind(),
                digest: digest.to_string(),
                phase,
                since: crate::util::time::now_rfc3339(),
            },
        )
    }

    /// Refuses a digest recorded as failed in the group (before anything is staged). An
    /// unreachable coordinator is no answer: taking the slot checks again, and waits.
    pub(crate) fn check_digest(&self, m: &Member, digest: &str) -> Result<()> {
        match self.coord.failure_for(&m.group, digest) {
            Ok(Some(record)) => Err(FleetError::DigestFailed {
                group: m.group.clone(),
                record,
            }
            .into()),
            Ok(None) => Ok(()),
            Err(e) if is_unreachable(&e) => {
                output::warn(format!("{e:#}; the update is staged and waits for it"));
                Ok(())
            }
            Err(e) if is_unsupported(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Notes that `name` is staged for `digest` (nothing is held yet).
    pub(crate) fn staged(&self, name: &str, m: &Member, digest: &str) -> Result<()> {
        // An entry that holds a slot keeps its phase until the slot's fate is decided.
        match self.entry(name)? {
            Some(e) if e.phase != Phase::Staged => Ok(()),
            _ => self.write(name, m, digest, Phase::Staged),
        }
    }

    /// Takes a slot of the group for the restart of `name` on `digest`, waiting (with
    /// backoff, within the wait policy's bounds) while the group is full.
    pub(crate) fn take(&self, name: &str, m: &Member, digest: &str) -> Result<()> {
        output::status(format!(
            "Taking a slot of fleet group {} ({}) to restart {name}.",
            m.group,
            self.coord.describe()
        ));
        let holder = HolderInfo::local(name, digest);
        let got = self
            .coord
            .acquire_wait(&m.group, &self.id, m.slots, &holder, &self.wait);
        match got {
            Ok(a) => {
                self.write(name, m, digest, Phase::Holding)?;
                output::status(format!(
                    "Holding a slot of group {} as {}{}.",
                    m.group,
                    self.id,
                    if a.already_held {
                        " (held already)"
                    } else {
                        ""
                    }
                ));
                Ok(())
            }
            Err(e) => {
                // Nothing is held: a staged entry has nothing to resume.
                if matches!(self.entry(name)?, Some(e) if e.phase == Phase::Staged) {
                    journal::remove(&self.dir, name)?;
                }
                Err(e.context(format!("{name} was not restarted")))
            }
        }
    }

    /// The gate passed: frees the slot (unless another container of this host still uses
    /// it) and forgets the entry.
    pub(crate) fn passed(&self, name: &str, m: &Member, digest: &str) -> Result<()> {
        self.write(name, m, digest, Phase::GatePassed)?;
        if !journal::slot_shared(&self.dir, &m.group, &self.id, name)? {
            self.coord
                .release(&m.group, &self.id)
                .with_context(|| format!("Freeing the slot of group {}", m.group))?;
            output::status(format!("Freed the slot of group {}.", m.group));
        }
        journal::remove(&self.dir, name)
    }

    /// The gate failed: the digest is recorded as failed for the group, and the slot stays
    /// held, which halts the group. Returns the words for the error.
    pub(crate) fn failed(&self, name: &str, m: &Member, digest: &str, reason: &str) -> String {
        let record = FailureRecord {
            digest: digest.to_string(),
            id: self.id.clone(),
            host: crate::fleet::hostname(),
            container: name.to_string(),
            since: crate::util::time::now_rfc3339(),
            reason: reason.chars().take(500).collect(),
        };
        let recorded = match self.coord.record_failure(&m.group, &record) {
            Ok(_) => format!("{digest} is recorded as failed in group {}", m.group),
            Err(e) => format!("recording the failed digest failed too ({e:#})"),
        };
        let _ = self.write(name, m, digest, Phase::Failed);
        format!(
            "{recorded}; this host keeps its slot, which halts the group until an operator \
             looks: `syscont fleet status {g}`, then `syscont fleet release {id} --group {g} \
             --reason ...` (and `syscont fleet unblock {digest}` for a fixed image under the \
             same digest)",
            g = m.group,
            id = self.id
        )
    }

    /// What is left of an interrupted rollout of `name`, which runs the image `revision`
    /// now (an image ID, the manifest digest without `sha256:`).
    pub(crate) fn pending(&self, name: &str, revision: &str) -> Result<Pending> {
        let Some(e) = self.entry(name)? else {
            return Ok(Pending::Nothing);
        };
        let runs_it = e.digest.strip_prefix("sha256:") == Some(revision);
        Ok(match e.phase {
            Phase::GatePassed => Pending::Release,
            Phase::Holding if runs_it => Pending::Gate,
            _ => Pending::Nothing,
        })
    }
}

/// Whether `e` says the coordinator could not be reached.
pub(crate) fn is_unreachable(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<FleetError>(),
        Some(FleetError::Unreachable { .. })
    )
}

fn is_unsupported(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<FleetError>(),
        Some(FleetError::Unsupported { .. })
    )
}
