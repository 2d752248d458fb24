//! `containers update`, `containers rollback` and `containers update --all`.
//!
//! An update builds the other slot from scratch (never a union over a stale tree) with the
//! old values plus the new ones, then switches to it (see [`crate::container::switch`]):
//! a running service is stopped, the host files, units and tmpfiles of the new slot take
//! the place of the old ones, the `NAME` link flips, and the service is started again and
//! watched for the probation time. If it does not stay up, the old slot comes back. A
//! rollback switches to the other slot as it is.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::container::deploy;
use crate::container::gate::{start_and_gate, Gate};
use crate::container::render::Target;
use crate::container::rollout::{Member, Pending, Rollout};
use crate::container::slots::build_slot;
use crate::container::switch::{self, switch_to, SwitchOp, SwitchRecord};
use crate::container::units::{unit_name, JOB_TIMEOUT};
use crate::container::values::Values;
use crate::container::{Host, Slot};
use crate::error::UserError;
use crate::host::runtime;
use crate::image::skopeo::FetchOptions;
use crate::util::cmdutil::CommandExt;
use crate::util::failpoint;
use crate::util::output::{self, outln};

/// What to update.
#[derive(Debug, Clone)]
pub(crate) struct UpdateRequest {
    /// New values; they persist for later updates.
    pub values: Values,
    /// Switch to this image instead of the installed one's name.
    pub rebase: Option<String>,
    /// Pull the image again first.
    pub pull: bool,
    /// Keep the new version even if it does not stay up.
    pub no_rollback: bool,
    /// What the restarted service must pass.
    pub gate: Gate,
    pub fetch: FetchOptions,
    /// The container's fleet group, when its restart is coordinated.
    pub member: Option<Member>,
    /// The values given are all the values (`apply`): earlier ones are dropped.
    pub replace_values: bool,
    /// A new runtime (`apply`); `None` keeps the installed one.
    pub runtime: Option<PathBuf>,
    /// Rebuild the other slot from the store even when nothing changed (after a repair,
    /// to replace files that were changed on the host).
    pub force: bool,
}

/// The outcome of one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpdateOutcome {
    /// Nothing changed: `Latest version already installed.`
    UpToDate,
    Updated,
}

/// The last lines of a unit's journal, for an error.
fn journal_tail(host: &Host, unit: &str) -> String {
    Command::new("journalctl")
        .args(host.scope.journalctl_args())
        .args(["-u", unit, "-n", "15", "--no-pager", "-o", "cat"])
        .output_string()
        .unwrap_or_default()
}

/// Switches `name` back to `back` after `failed` did not pass its gate, and starts it.
fn fall_back(host: &Host, name: &str, failed: Slot, back: Slot) -> Result<()> {
    let deps = &host.deps;
    let sd = host.systemd()?;
    let _ = sd.stop(&unit_name(name), JOB_TIMEOUT);
    let _ = host.units.tmpfiles("--remove", name);
    let mut to = deps.read_info(name, back)?;
    let from = deps.read_info(name, failed)?;
    switch_to(host, name, back, &from, &mut to).context("Rolling back after the failed update")?;
    sd.reload()?;
    start_and_gate(host, name, &Gate::probation(Duration::ZERO))
        .context("Starting the previous version after the failed update")
}

/// The fleet part of an update: the rollout and the container's group.
type Fleet<'a> = Option<(&'a Rollout, &'a Member)>;

/// Finishes a rollout of `name` that a killed syscont left holding a slot: the gate (when
/// the container runs the new digest), then the release. Returns whether there was one.
pub(crate) fn finish_pending(
    host: &Host,
    name: &str,
    gate: &Gate,
    fleet: Fleet<'_>,
) -> Result<bool> {
    let Some((rollout, member)) = fleet else {
        return Ok(false);
    };
    let deps = &host.deps;
    let Some(slot) = deps.active_slot(name) else {
        return Ok(false);
    };
    let info = deps.read_info(name, slot)?;
    let digest = format!("sha256:{}", info.revision);
    match rollout.pending(name, &info.revision)? {
        Pending::Nothing => Ok(false),
        Pending::Release => {
            output::status(format!("Finishing the interrupted fleet update of {name}."));
            rollout.passed(name, member, &digest)?;
            Ok(true)
        }
        Pending::Gate => {
            output::status(format!(
                "Finishing the interrupted fleet update of {name}: its gate, then the release."
            ));
            rollout.take(name, member, &digest)?;
            if let Err(e) = start_and_gate(host, name, gate) {
                let journal = journal_tail(host, &unit_name(name));
                let back = slot.other();
                let rolled = if deps.read_info(name, back).is_ok() {
                    fall_back(host, name, slot, back)
                        .map(|_| "it was rolled back")
                        .unwrap_or("rolling it back failed too")
                } else {
                    "there is no previous version to roll back to"
                };
                let halted = rollout.failed(name, member, &digest, &format!("{e:#}"));
                return Err(e.context(format!(
                    "the update of {name} failed its gate and {rolled}; {halted}\nLast journal lines:\n{journal}"
                )));
            }
            rollout.passed(name, member, &digest)?;
            Ok(true)
        }
    }
}

/// `syscont containers update NAME`: in a fleet (`fleet`), the restart waits for a slot of
/// the container's group (see [`crate::container::rollout`]).
pub(crate) fn update(
    host: &Host,
    name: &str,
    r: &UpdateRequest,
    fleet: Option<&Rollout>,
) -> Result<UpdateOutcome> {
    deploy::validate_name(name)?;
    let fleet: Fleet<'_> = fleet.zip(r.member.as_ref());
    let deps = &host.deps;
    let store = host.store()?;
    let _lock = host.lock(name)?;
    let cur = deps
        .active_slot(name)
        .ok_or_else(|| UserError::NotInstalled(name.to_string()))?;
    let old = deps.read_info(name, cur)?;
    let next = cur.other();
    let image_arg = r.rebase.clone().unwrap_or_else(|| old.image.clone());
    if let (Some((rollout, _)), true) = (fleet, r.pull) {
        rollout.splay();
    }
    let img = host.image(&image_arg, &r.fetch, r.pull)?;
    let old_values = Values::of(&old);
    let values = r.values.clone().over(&old_values, r.replace_values);
    let runtime = match &r.runtime {
        Some(rt) => {
            let rt = runtime::resolve(rt)?;
            runtime::check(&rt)?;
            rt
        }
        None => PathBuf::from(&old.runtime),
    };
    let changed = values != old_values || runtime != Path::new(&old.runtime);
    if img.id() == old.revision && !changed && !r.force {
        if finish_pending(host, name, &r.gate, fleet)? {
            return Ok(UpdateOutcome::Updated);
        }
        outln!("Latest version already installed.");
        return Ok(UpdateOutcome::UpToDate);
    }
    if let Some((rollout, member)) = fleet {
        rollout.check_digest(member, &img.digest)?;
    }
    let target = Target {
        name,
        img: &img,
        image_arg: &image_arg,
        runtime,
        values,
        uuid: old.values.get("UUID").cloned(),
        remote: old.remote.clone(),
    };
    if !output::quiet() {
        outln!("Extracting to {}", deps.slot_dir(name, next).display());
    }
    let rendered = build_slot(host, store, &target, next)?;
    failpoint::hit("update.slot-built");
    let mut new_info = rendered.info.clone();

    let sd = host.systemd()?;
    let unit = unit_name(name);
    let was_active = switch::is_running(sd, name, old.has_container_service);
    // Only a restart needs a slot: a stopped container switches without one.
    let fleet = if was_active { fleet } else { None };
    if let Some((rollout, member)) = fleet {
        rollout.staged(name, member, &img.digest)?;
        rollout.take(name, member, &img.digest)?;
        failpoint::hit("fleet.slot-taken");
    }
    let rec = SwitchRecord {
        op: SwitchOp::Update,
        from: cur,
        to: next,
        was_active,
    };
    switch::begin_stopped(host, name, &rec, "update.stopped")?;
    let mut old_info = old.clone();
    if let Err(e) = switch_to(host, name, next, &old, &mut new_info) {
        // Nothing was committed: put the old slot's files back and restart it.
        let _ = switch_to(host, name, cur, &new_info, &mut old_info);
        let _ = sd.reload();
        if was_active {
            let _ = start_and_gate(host, name, &Gate::probation(Duration::ZERO));
        }
        switch::end(deps, name);
        if let Some((rollout, member)) = fleet {
            // The old version runs as before: nothing to hold the group for.
            let _ = rollout.passed(name, member, &img.digest);
        }
        return Err(e);
    }
    failpoint::hit("update.switched");
    sd.reload()?;
    if !was_active {
        host.units.tmpfiles("--create", name)?;
        switch::end(deps, name);
        output::status(format!("Updated {name} to {} ({}).", img.name, img.digest));
        return Ok(UpdateOutcome::Updated);
    }
    let watched = start_and_gate(host, name, &r.gate);
    if watched.is_ok() || r.no_rollback {
        switch::end(deps, name);
    }
    // A failed gate keeps the fleet slot and records the digest: the group halts.
    let halt_group = |e: &anyhow::Error| {
        fleet
            .map(|(rollout, member)| {
                format!(
                    "; {}",
                    rollout.failed(name, member, &img.digest, &format!("{e:#}"))
                )
            })
            .unwrap_or_default()
    };
    match watched {
        Ok(()) => {
            if let Some((rollout, member)) = fleet {
                rollout.passed(name, member, &img.digest)?;
            }
            output::status(format!(
                "Updated {name} to {} ({}); it is running.",
                img.name, img.digest
            ));
            Ok(UpdateOutcome::Updated)
        }
        Err(e) if r.no_rollback => {
            let halted = halt_group(&e);
            Err(e.context(format!(
                "{name} was updated but does not run; --no-rollback keeps the new version{halted}\n{}",
                journal_tail(host, &unit)
            )))
        }
        Err(e) => {
            let journal = journal_tail(host, &unit);
            eprintln!("Could not restart {name}.  Attempt automatic rollback");
            let back = fall_back(host, name, next, cur);
            if back.is_ok() {
                switch::end(deps, name);
            }
            let halted = halt_group(&e);
            back?;
            Err(e.context(format!(
                "the update of {name} failed and was rolled back; the previous version runs again{halted}.\nLast journal lines:\n{journal}"
            )))
        }
    }
}

/// `syscont containers rollback NAME`.
pub(crate) fn rollback(host: &Host, name: &str) -> Result<()> {
    deploy::validate_name(name)?;
    let deps = &host.deps;
    let _lock = host.lock(name)?;
    let cur = deps
        .active_slot(name)
        .ok_or_else(|| UserError::NotInstalled(name.to_string()))?;
    let other = cur.other();
    let dir = deps.slot_dir(name, other);
    if !dir.join("info").is_file() {
        bail!(
            "Cannot find a previous deployment to rollback located at {}",
            dir.display()
        );
    }
    outln!("Attempting to roll back system container: {name}");
    let from = deps.read_info(name, cur)?;
    let mut to = deps.read_info(name, other)?;
    if to.has_container_service && !dir.join(unit_name(name)).is_file() {
        bail!(
            "Cannot find systemd service file for previous version. The previous checkout at {} may be corrupted.",
            dir.display()
        );
    }
    outln!(
        "Rolling back container {name} to the checkout at {}",
        dir.display()
    );
    let sd = host.systemd()?;
    let unit = unit_name(name);
    let was_active = switch::is_running(sd, name, from.has_container_service);
    let rec = SwitchRecord {
        op: SwitchOp::Rollback,
        from: cur,
        to: other,
        was_active,
    };
    switch::begin_stopped(host, name, &rec, "rollback.stopped")?;
    switch_to(host, name, other, &from, &mut to)?;
    failpoint::hit("rollback.switched");
    sd.reload()?;
    host.units.tmpfiles("--create", name)?;
    if was_active && to.has_container_service {
        sd.start(&unit, JOB_TIMEOUT)?;
        output::status(format!("Rolled back {name}; it is running again."));
    } else {
        output::status(format!("Rolled back {name}."));
    }
    switch::end(deps, name);
    Ok(())
}

/// One row of `update --all`'s summary.
#[derive(Debug, Clone)]
pub(crate) struct UpdateRow {
    pub name: String,
    /// Image IDs before and after.
    pub before: String,
    pub after: String,
    /// The outcome, or the error.
    pub outcome: std::result::Result<UpdateOutcome, String>,
}

/// `syscont containers update --all`: every container, each with automatic rollback;
/// one failure does not stop the others.
pub(crate) fn update_all(
    host: &Host,
    r: &UpdateRequest,
    fleet: Option<&Rollout>,
    per_container: &dyn Fn(&str) -> (Option<Member>, Gate),
) -> Result<Vec<UpdateRow>> {
    let deps = &host.deps;
    let revision = |name: &str| {
        deps.active_slot(name)
            .and_then(|s| deps.read_info(name, s).ok())
            .map(|i| i.revision)
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    for name in deps.names()? {
        let before = revision(&name);
        let (member, gate) = per_container(&name);
        let r = UpdateRequest {
            member,
            gate,
            ..r.clone()
        };
        let outcome = update(host, &name, &r, fleet).map_err(|e| {
            eprintln!("{name}: {e:#}");
            format!("{e:#}")
        });
        rows.push(UpdateRow {
            before,
            after: revision(&name),
            name,
            outcome,
        });
    }
    Ok(rows)
}
