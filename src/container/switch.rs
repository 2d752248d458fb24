//! Switching a container between its deployment slots (update, rollback), so that an
//! interruption at any moment ends with a complete deployment running.
//!
//! A switch goes: record → guard → stop → host files, units, info → flip the `NAME` link
//! → reload → start → watch → end. The pieces:
//!
//! - **The record** `CHECKOUT/.NAME.switch` (from, to, whether the service ran) is written
//!   before anything the service uses changes, and removed when the switch is over. While
//!   it exists, the switch is unfinished.
//! - **The guard**: before the record, syscont starts a transient systemd service,
//!   `syscont-guard-NAME-PID.service`, that waits for this syscont process to exit and
//!   then runs [`recover`]. It runs under systemd, so a `kill -9` of syscont at any
//!   moment is followed within a second by a recovery that needs no other command.
//! - **Recovery** ([`recover`]), also run by every later command on the container (with
//!   its lock held) and by `syscont apply` at boot: the link is the commit point. Link on
//!   the old slot: the old slot's host files, units and tmpfiles are put back. Link on the
//!   new slot: the new slot's are made complete. Then systemd reloads, and a service that
//!   ran before the switch is started on the slot the link points at (restarted if it
//!   still runs another slot's bundle). If the new version of an update does not start,
//!   recovery switches back to the old one.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::container::deploy::{Deployments, Info, Slot};
use crate::container::gate::{start_and_gate, Gate};
use crate::container::units::{unit_name, JOB_TIMEOUT};
use crate::container::Host;
use crate::host::hostfs;
use crate::host::systemd::Systemd;
use crate::template::exports::ExportsManifest;
use crate::template::{self, RenderValues};
use crate::util::fsutil;
use crate::util::output;
use crate::util::rootfs::RootFs;

/// Which command switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SwitchOp {
    Update,
    Rollback,
    /// A marker of an older syscont (a service stopped for a switch).
    Switch,
}

impl std::fmt::Display for SwitchOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwitchOp::Update => "update",
            SwitchOp::Rollback => "rollback",
            SwitchOp::Switch => "switch",
        })
    }
}

/// What a switch in progress is doing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SwitchRecord {
    pub op: SwitchOp,
    /// The slot the service ran from.
    pub from: Slot,
    /// The slot being switched to.
    pub to: Slot,
    /// Whether the service ran before the switch (it is to run afterwards).
    pub was_active: bool,
}

fn record_path(deps: &Deployments, name: &str) -> PathBuf {
    deps.root.join(format!(".{name}.switch"))
}

/// The marker older syscont versions left for a service stopped for a switch.
fn legacy_marker(deps: &Deployments, name: &str) -> PathBuf {
    deps.root.join(format!(".{name}.stopped-for-switch"))
}

/// The unfinished switch of `name`, if any.
pub(crate) fn pending(deps: &Deployments, name: &str) -> Option<SwitchRecord> {
    if let Ok(b) = std::fs::read(record_path(deps, name)) {
        if let Ok(r) = serde_json::from_slice(&b) {
            return Some(r);
        }
    }
    let slot = deps.active_slot(name)?;
    legacy_marker(deps, name).exists().then_some(SwitchRecord {
        op: SwitchOp::Switch,
        from: slot,
        to: slot,
        was_active: true,
    })
}

/// Starts the guard of this process's switch of `name` (see the module doc). `cli_args`
/// are the global options the guard needs to find the same deployments and store.
fn start_guard(host: &Host, name: &str) -> Result<()> {
    let exe = std::env::current_exe().context("Finding the syscont binary for the guard")?;
    let pid = std::process::id();
    let mut argv = vec![exe.display().to_string()];
    argv.extend(host.cli_args());
    argv.extend([
        "internal".into(),
        "recover".into(),
        "--after-pid".into(),
        pid.to_string(),
        name.into(),
    ]);
    // '@' separates template instances in unit names; escape it as systemd-escape does.
    // One process may switch several containers (apply, update --all): number them.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let unit = format!(
        "syscont-guard-{}-{pid}-{n}.service",
        name.replace('@', "\\x40")
    );
    host.systemd()?
        .start_transient(
            &unit,
            &format!("syscont: completes the switch of {name} if syscont stops in the middle"),
            &argv,
            Duration::from_secs(30),
        )
        .with_context(|| format!("Starting the guard {unit} of the switch"))
}

/// The guard itself (`syscont internal recover --after-pid PID NAME`, run by systemd):
/// tells systemd it is ready, waits for the syscont process `pid` to exit however it
/// exits, then recovers `name` under its lock. Nothing is left to do when that process
/// ended its switch itself.
pub(crate) fn guard(host: &Host, name: &str, pid: u32) -> Result<()> {
    let deps = &host.deps;
    use rustix::event::{PollFd, PollFlags};
    let watched = rustix::process::Pid::from_raw(pid as i32)
        .map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()));
    crate::host::systemd::notify(&["READY=1"]);
    if let Some(Ok(fd)) = watched {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let second = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        loop {
            match rustix::event::poll(&mut fds, Some(&second)) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e).context("Waiting for the syscont process"),
                Ok(0) if pending(deps, name).is_some() => continue,
                // The process exited, or it ended its switch itself.
                Ok(_) => break,
            }
        }
    }
    let _lock = deps.lock(name)?;
    if pending(deps, name).is_some() {
        recover(host, name)?;
    }
    Ok(())
}

/// Begins a switch: the guard, then the record. Nothing the service uses has changed yet.
pub(crate) fn begin(host: &Host, name: &str, rec: &SwitchRecord) -> Result<()> {
    start_guard(host, name)?;
    let mut buf = serde_json::to_vec_pretty(rec)?;
    buf.push(b'\n');
    fsutil::atomic_write(&record_path(&host.deps, name), &buf, 0o644)
}

/// Begins a switch and stops the service when it runs; its tmpfiles entries go with it.
/// `stopped` is the failpoint hit once the service is down.
pub(crate) fn begin_stopped(
    host: &Host,
    name: &str,
    rec: &SwitchRecord,
    stopped: &str,
) -> Result<()> {
    begin(host, name, rec)?;
    if rec.was_active {
        host.systemd()?.stop(&unit_name(name), JOB_TIMEOUT)?;
    }
    crate::util::failpoint::hit(stopped);
    let _ = host.units.tmpfiles("--remove", name);
    Ok(())
}

/// Ends a switch: the service runs from the slot the link points at, or was not to run.
pub(crate) fn end(deps: &Deployments, name: &str) {
    let _ = std::fs::remove_file(record_path(deps, name));
    let _ = std::fs::remove_file(legacy_marker(deps, name));
}

/// Stops the service before its deployment is switched, when it runs; returns whether it
/// is to run again afterwards.
pub(crate) fn is_running(sd: &Systemd, name: &str, has_service: bool) -> bool {
    has_service
        && sd
            .unit_state(&unit_name(name))
            .map(|s| s.active_state.is_up())
            .unwrap_or(false)
}

/// The deployment slot whose bundle the container runs, as the runtime reports it.
fn running_slot(deps: &Deployments, name: &str, info: &Info) -> Option<Slot> {
    let st = crate::host::runtime::state(Path::new(&info.runtime), name)?;
    if st.status != "running" {
        return None;
    }
    Slot::BOTH
        .into_iter()
        .find(|s| st.bundle == deps.slot_dir(name, *s))
}

/// What recovery does with a container, from its switch record and its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// No switch was under way: only units that differ from the active slot's are put
    /// back.
    UnitsOnly,
    /// The link still points at the old slot: its host files and units come back.
    Revert,
    /// The link points at the new slot (or there was nothing to flip): its files are
    /// made complete.
    Complete,
}

fn recovery(rec: Option<&SwitchRecord>, linked: Slot) -> Recovery {
    match rec {
        None => Recovery::UnitsOnly,
        Some(r) if linked != r.to && r.from != r.to => Recovery::Revert,
        Some(_) => Recovery::Complete,
    }
}

/// Whether a new version that does not start goes back to the old one: only an update's,
/// and only once the link points at it.
fn falls_back(rec: &SwitchRecord, linked: Slot) -> bool {
    rec.op == SwitchOp::Update && linked == rec.to
}

/// Finishes or reverts an interrupted switch of `name` (the caller holds its lock), and
/// puts back units that differ from the active slot's. Returns whether it did anything.
pub(crate) fn recover(host: &Host, name: &str) -> Result<bool> {
    let deps = &host.deps;
    let Some(slot) = deps.active_slot(name) else {
        end(deps, name);
        return Ok(false);
    };
    let rec = pending(deps, name);
    let Some(rec) = rec else {
        let stale = host.units.republish_if_stale(deps, name, slot)?;
        if stale {
            host.systemd()?.reload()?;
        }
        return Ok(stale);
    };
    output::status(format!(
        "Completing the interrupted {} of {name}: it goes on from {}.",
        rec.op,
        deps.slot_dir(name, slot).display()
    ));
    let sd = host.systemd()?;
    let mut info = deps.read_info(name, slot)?;
    match recovery(Some(&rec), slot) {
        Recovery::Revert => {
            let other = deps.read_info(name, rec.to).unwrap_or_default();
            switch_to(host, name, slot, &other, &mut info)
                .with_context(|| format!("Restoring the files of {name}"))?;
        }
        Recovery::Complete | Recovery::UnitsOnly => {
            host.units.republish_if_stale(deps, name, slot)?;
        }
    }
    sd.reload()?;
    host.units.tmpfiles("--create", name)?;
    if rec.was_active && info.has_container_service {
        if let Err(e) = run_slot(host, name, &info, slot) {
            if !falls_back(&rec, slot) {
                return Err(e);
            }
            output::status(format!(
                "The new version of {name} does not start ({e:#}); going back to {}.",
                deps.slot_dir(name, rec.from).display()
            ));
            let _ = sd.stop(&unit_name(name), JOB_TIMEOUT);
            let _ = host.units.tmpfiles("--remove", name);
            let mut back = deps.read_info(name, rec.from)?;
            switch_to(host, name, rec.from, &info, &mut back)?;
            sd.reload()?;
            run_slot(host, name, &back, rec.from)?;
        }
    }
    end(deps, name);
    Ok(true)
}

/// Makes the service run from `slot`: started when it is not running, restarted when it
/// still runs the other slot's bundle.
fn run_slot(host: &Host, name: &str, info: &Info, slot: Slot) -> Result<()> {
    let sd = host.systemd()?;
    let unit = unit_name(name);
    if sd.unit_state(&unit)?.active_state.is_up() {
        match running_slot(&host.deps, name, info) {
            Some(s) if s != slot => sd.stop(&unit, JOB_TIMEOUT)?,
            _ => return Ok(()),
        }
    }
    start_and_gate(host, name, &Gate::probation(Duration::ZERO))
}

/// Makes `slot` the active deployment: host files, units, tmpfiles, symlink. The service
/// must be stopped by the caller. `from` is the info of the slot being left.
pub(crate) fn switch_to(
    host: &Host,
    name: &str,
    slot: Slot,
    from: &Info,
    to: &mut Info,
) -> Result<()> {
    let deps = &host.deps;
    let root = &host.root;
    let dir = deps.slot_dir(name, slot);
    // Host files of the target, rendered with the target's own values (Atomic's bug 11).
    let image = RootFs::open(&dir.join("rootfs"))?;
    let engine = ExportsManifest::read(&image)?.engine()?;
    let rv = RenderValues {
        values: to.values.clone(),
        json: to.syscont.set_json.clone(),
        given: to.set_values().keys().cloned().collect(),
    };
    let render_host = |text: &str, dest: &str| template::render(engine, text, dest, &rv, false);
    let mut plan = hostfs::plan(
        &image,
        &to.rename_installed_files,
        &to.installed_files_template,
        &render_host,
    )?;
    // As Atomic: a host file the operator changed stays as it is; the new version is not
    // installed and the file is no longer tracked. Unlike Atomic, say so.
    // Ours is what either deployment installed (a rollback's target recorded its own files).
    let mut ours = to.installed_files_checksum.clone();
    ours.extend(from.installed_files_checksum.clone());
    let modified = hostfs::modified_by_hand(root, &plan, &ours);
    for path in &modified {
        output::status(format!(
            "Will not overwrite {path} as it was manually modified; the new version is not installed and the file is no longer tracked."
        ));
        plan.entries.remove(path);
    }
    let conflicts = hostfs::conflicts(root, &plan, &from.installed_files_checksum)?;
    if !conflicts.is_empty() {
        bail!(
            "host files changed by hand block the switch of {name}: {}",
            conflicts.join(", ")
        );
    }
    let kept = hostfs::remove(
        root,
        &from.installed_files_checksum,
        &[],
        &plan
            .entries
            .keys()
            .filter_map(|k| {
                from.installed_files_checksum
                    .get(k)
                    .map(|c| (k.clone(), c.clone()))
            })
            .collect(),
    );
    for k in kept.iter().filter(|k| !modified.contains(k)) {
        output::status(format!("Will not delete {k} as it was manually modified."));
    }
    crate::util::failpoint::hit("switch.hostfs-removed");
    // Record what is about to be written, so an interruption cannot orphan a host file.
    let mut planned = to.installed_files_checksum.clone();
    planned.extend(hostfs::planned_checksums(&plan));
    to.installed_files_checksum = planned;
    deps.write_info(name, slot, to)?;
    let installed = hostfs::apply(root, &plan)?;
    crate::util::failpoint::hit("switch.hostfs-applied");
    to.installed_files_checksum = installed.checksums;
    let mut dirs = from.syscont.created_dirs.clone();
    dirs.extend(installed.created_dirs);
    dirs.sort();
    dirs.dedup();
    to.syscont.created_dirs = dirs;
    deps.write_info(name, slot, to)?;
    host.units.publish(deps, name, slot)?;
    crate::util::failpoint::hit("switch.units-published");
    deps.activate(name, slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: SwitchOp, from: Slot, to: Slot) -> SwitchRecord {
        SwitchRecord {
            op,
            from,
            to,
            was_active: true,
        }
    }

    #[test]
    fn the_link_decides_how_a_switch_recovers() {
        use Slot::{One, Zero};
        assert_eq!(recovery(None, Zero), Recovery::UnitsOnly);
        // Killed before the flip: the old slot comes back.
        let r = rec(SwitchOp::Update, Zero, One);
        assert_eq!(recovery(Some(&r), Zero), Recovery::Revert);
        assert!(!falls_back(&r, Zero), "the old version does not fall back");
        // Killed after the flip: the new slot is completed, and falls back if it fails.
        assert_eq!(recovery(Some(&r), One), Recovery::Complete);
        assert!(falls_back(&r, One));
        // A rollback that flipped is completed, and never switches again by itself.
        let r = rec(SwitchOp::Rollback, One, Zero);
        assert_eq!(recovery(Some(&r), Zero), Recovery::Complete);
        assert!(!falls_back(&r, Zero));
        // An older syscont's marker names no other slot.
        let r = rec(SwitchOp::Switch, One, One);
        assert_eq!(recovery(Some(&r), One), Recovery::Complete);
    }

    #[test]
    fn records_keep_their_json_form() {
        let r = rec(SwitchOp::Update, Slot::Zero, Slot::One);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"op":"update","from":0,"to":1,"was_active":true}"#);
        assert_eq!(serde_json::from_str::<SwitchRecord>(&json).unwrap(), r);
    }
}
