//! The files syscont publishes for systemd: the unit `NAME.service`, its drop-in, and the
//! tmpfiles snippet, in the scope's directories (`/etc/systemd/system`, `/etc/tmpfiles.d`,
//! or the user's). A slot keeps its own copies; publishing copies them into place
//! atomically, and `republish_if_stale` puts the active slot's back after an interruption.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::container::deploy::Deployments;
use crate::util::cmdutil::CommandExt;
use crate::util::fsutil;
use crate::util::output;

/// The first line of every unit syscont writes: how it recognises its own files.
pub(crate) const UNIT_MARKER: &str = "# Managed by syscont; changes are overwritten by updates.";
/// How long a start or stop job may take.
pub(crate) const JOB_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn unit_name(name: &str) -> String {
    format!("{name}.service")
}

/// The unit file: `/etc/systemd/system/NAME.service`, or in the user's unit directory.
pub(crate) fn unit_path(name: &str) -> PathBuf {
    crate::util::scope::units_dir().join(unit_name(name))
}

/// The unit's drop-in directory.
pub(crate) fn dropin_dir(name: &str) -> PathBuf {
    crate::util::scope::units_dir().join(format!("{name}.service.d"))
}

/// The tmpfiles snippet: `/etc/tmpfiles.d/NAME.conf`, or in the user's directory.
pub(crate) fn tmpfiles_path(name: &str) -> PathBuf {
    crate::util::scope::tmpfiles_dir().join(format!("{name}.conf"))
}

/// Writes a unit (and its drop-in) and the tmpfiles snippet from a slot to `/etc`.
pub(crate) fn publish_units(deps: &Deployments, name: &str, slot: u8) -> Result<()> {
    let dir = deps.slot_dir(name, slot);
    let copy = |src: PathBuf, dst: PathBuf| -> Result<()> {
        match std::fs::read(&src) {
            Ok(data) => {
                if let Some(p) = dst.parent() {
                    std::fs::create_dir_all(p)?;
                }
                fsutil::atomic_write(&dst, &data, 0o644)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&dst);
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("Reading {}", src.display())),
        }
    };
    copy(dir.join(unit_name(name)), unit_path(name))?;
    copy(
        dir.join(format!("{name}.dropin.conf")),
        dropin_dir(name).join("50-syscont.conf"),
    )?;
    copy(
        dir.join(format!("tmpfiles-{name}.conf")),
        tmpfiles_path(name),
    )?;
    Ok(())
}

/// Runs `systemd-tmpfiles OP` (`--create`, `--remove`) on a container's snippet, if any.
pub(crate) fn tmpfiles(op: &str, name: &str) -> Result<()> {
    tmpfiles_file(op, &tmpfiles_path(name))
}

/// Runs `systemd-tmpfiles OP FILE`, if the file exists (`--user` for a user).
pub(crate) fn tmpfiles_file(op: &str, p: &std::path::Path) -> Result<()> {
    if !p.exists() {
        return Ok(());
    }
    let mut cmd = Command::new("systemd-tmpfiles");
    if crate::util::scope::is_user() {
        cmd.arg("--user");
    }
    cmd.arg(op)
        .arg(p)
        .run_checked()
        .with_context(|| format!("Applying {}", p.display()))
}

/// Fails if `/etc/systemd/system/NAME.service` exists and was not written by syscont.
pub(crate) fn check_unit_is_ours(name: &str) -> Result<()> {
    let p = unit_path(name);
    if let Ok(s) = std::fs::read_to_string(&p) {
        if !s.starts_with(UNIT_MARKER) {
            bail!(
                "{} exists and was not written by syscont; choose another --name",
                p.display()
            );
        }
    }
    Ok(())
}

/// Whether the published unit, drop-in or tmpfiles snippet differ from `slot`'s copies.
pub(crate) fn units_stale(deps: &Deployments, name: &str, slot: u8) -> bool {
    let dir = deps.slot_dir(name, slot);
    let pairs = [
        (dir.join(unit_name(name)), unit_path(name)),
        (
            dir.join(format!("{name}.dropin.conf")),
            dropin_dir(name).join("50-syscont.conf"),
        ),
        (
            dir.join(format!("tmpfiles-{name}.conf")),
            tmpfiles_path(name),
        ),
    ];
    pairs
        .iter()
        .any(|(src, dst)| std::fs::read(src).ok() != std::fs::read(dst).ok())
}

/// Puts the unit, drop-in and tmpfiles of the active slot back in place when they differ
/// (an update or rollback that was killed after publishing the other slot's units but
/// before flipping the link). Returns whether anything changed.
pub(crate) fn republish_if_stale(deps: &Deployments, name: &str, slot: u8) -> Result<bool> {
    let dir = deps.slot_dir(name, slot);
    let stale = units_stale(deps, name, slot);
    if stale {
        output::status(format!(
            "Restoring the units of {name} from {} (an earlier run was interrupted).",
            dir.display()
        ));
        publish_units(deps, name, slot)?;
    }
    Ok(stale)
}
