//! The files syscont publishes for systemd: the unit `NAME.service`, its drop-in, and the
//! tmpfiles snippet, in the scope's directories (`/etc/systemd/system`, `/etc/tmpfiles.d`,
//! or the user's). A slot keeps its own copies; publishing copies them into place
//! atomically, and `republish_if_stale` puts the active slot's back after an interruption.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::container::deploy::{Deployments, Slot};
use crate::util::cmdutil::CommandExt;
use crate::util::fsutil;
use crate::util::output;
use crate::util::scope::Scope;

/// The first line of every unit syscont writes: how it recognises its own files.
pub(crate) const UNIT_MARKER: &str = "# Managed by syscont; changes are overwritten by updates.";
/// How long a start or stop job may take.
pub(crate) const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The unit of container `name`.
pub(crate) fn unit_name(name: &str) -> String {
    format!("{name}.service")
}

/// The slot's copy of the unit.
fn slot_unit(dir: &Path, name: &str) -> PathBuf {
    dir.join(unit_name(name))
}

/// The slot's copy of the drop-in.
pub(crate) fn slot_dropin(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.dropin.conf"))
}

/// The slot's copy of the tmpfiles snippet.
pub(crate) fn slot_tmpfiles(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("tmpfiles-{name}.conf"))
}

/// Where a scope's units and tmpfiles snippets go, and how `systemd-tmpfiles` runs there.
#[derive(Debug, Clone)]
pub(crate) struct Units {
    units_dir: PathBuf,
    tmpfiles_dir: PathBuf,
    user: bool,
}

impl Units {
    pub(crate) fn new(scope: Scope) -> Units {
        Units {
            units_dir: scope.units_dir(),
            tmpfiles_dir: scope.tmpfiles_dir(),
            user: scope.is_user(),
        }
    }

    /// The unit file: `/etc/systemd/system/NAME.service`, or in the user's unit directory.
    pub(crate) fn unit_path(&self, name: &str) -> PathBuf {
        self.units_dir.join(unit_name(name))
    }

    /// The unit's drop-in directory.
    pub(crate) fn dropin_dir(&self, name: &str) -> PathBuf {
        self.units_dir.join(format!("{name}.service.d"))
    }

    /// syscont's drop-in in it.
    pub(crate) fn dropin_path(&self, name: &str) -> PathBuf {
        self.dropin_dir(name).join("50-syscont.conf")
    }

    /// The tmpfiles snippet: `/etc/tmpfiles.d/NAME.conf`, or in the user's directory.
    pub(crate) fn tmpfiles_path(&self, name: &str) -> PathBuf {
        self.tmpfiles_dir.join(format!("{name}.conf"))
    }

    /// Each slot copy with the place it is published to.
    fn pairs(&self, deps: &Deployments, name: &str, slot: Slot) -> [(PathBuf, PathBuf); 3] {
        let dir = deps.slot_dir(name, slot);
        [
            (slot_unit(&dir, name), self.unit_path(name)),
            (slot_dropin(&dir, name), self.dropin_path(name)),
            (slot_tmpfiles(&dir, name), self.tmpfiles_path(name)),
        ]
    }

    /// Writes a unit (and its drop-in) and the tmpfiles snippet from a slot to `/etc`; a
    /// file the slot does not have is removed.
    pub(crate) fn publish(&self, deps: &Deployments, name: &str, slot: Slot) -> Result<()> {
        for (src, dst) in self.pairs(deps, name, slot) {
            match std::fs::read(&src) {
                Ok(data) => {
                    if let Some(p) = dst.parent() {
                        std::fs::create_dir_all(p)?;
                    }
                    fsutil::atomic_write(&dst, &data, 0o644)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let _ = std::fs::remove_file(&dst);
                }
                Err(e) => return Err(e).with_context(|| format!("Reading {}", src.display())),
            }
        }
        Ok(())
    }

    /// Removes the published unit, drop-in and tmpfiles snippet of `name`.
    pub(crate) fn unpublish(&self, name: &str) {
        let _ = std::fs::remove_file(self.unit_path(name));
        let _ = std::fs::remove_dir_all(self.dropin_dir(name));
        let _ = std::fs::remove_file(self.tmpfiles_path(name));
    }

    /// Runs `systemd-tmpfiles OP` (`--create`, `--remove`) on a container's snippet, if any.
    pub(crate) fn tmpfiles(&self, op: &str, name: &str) -> Result<()> {
        self.tmpfiles_file(op, &self.tmpfiles_path(name))
    }

    /// Runs `systemd-tmpfiles OP FILE`, if the file exists (`--user` for a user).
    pub(crate) fn tmpfiles_file(&self, op: &str, p: &Path) -> Result<()> {
        if !p.exists() {
            return Ok(());
        }
        let mut cmd = Command::new("systemd-tmpfiles");
        if self.user {
            cmd.arg("--user");
        }
        cmd.arg(op)
            .arg(p)
            .run_checked()
            .with_context(|| format!("Applying {}", p.display()))
    }

    /// Whether the unit file of `name` was written by syscont.
    pub(crate) fn unit_is_ours(&self, name: &str) -> bool {
        std::fs::read_to_string(self.unit_path(name))
            .map(|s| s.starts_with(UNIT_MARKER))
            .unwrap_or(false)
    }

    /// Fails if the unit file of `name` exists and was not written by syscont.
    pub(crate) fn check_unit_is_ours(&self, name: &str) -> Result<()> {
        let p = self.unit_path(name);
        if p.exists() && !self.unit_is_ours(name) {
            bail!(
                "{} exists and was not written by syscont; choose another --name",
                p.display()
            );
        }
        Ok(())
    }

    /// Whether the published unit, drop-in or tmpfiles snippet differ from `slot`'s copies.
    pub(crate) fn stale(&self, deps: &Deployments, name: &str, slot: Slot) -> bool {
        self.pairs(deps, name, slot)
            .iter()
            .any(|(src, dst)| std::fs::read(src).ok() != std::fs::read(dst).ok())
    }

    /// Puts the unit, drop-in and tmpfiles of the active slot back in place when they
    /// differ (an update or rollback that was killed after publishing the other slot's
    /// units but before flipping the link). Returns whether anything changed.
    pub(crate) fn republish_if_stale(
        &self,
        deps: &Deployments,
        name: &str,
        slot: Slot,
    ) -> Result<bool> {
        let stale = self.stale(deps, name, slot);
        if stale {
            output::status(format!(
                "Restoring the units of {name} from {} (an earlier run was interrupted).",
                deps.slot_dir(name, slot).display()
            ));
            self.publish(deps, name, slot)?;
        }
        Ok(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_copies_a_slot_and_notices_stale_files() {
        let d = tempfile::tempdir().unwrap();
        let units = Units {
            units_dir: d.path().join("units"),
            tmpfiles_dir: d.path().join("tmpfiles.d"),
            user: false,
        };
        let deps = Deployments::new(&d.path().join("deployments"), Scope::System);
        let dir = deps.slot_dir("web", Slot::Zero);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            slot_unit(&dir, "web"),
            format!("{UNIT_MARKER}\n[Service]\n"),
        )
        .unwrap();
        std::fs::write(slot_tmpfiles(&dir, "web"), "d /run/web 0700 - - -\n").unwrap();
        units.publish(&deps, "web", Slot::Zero).unwrap();
        assert!(units.unit_is_ours("web"));
        assert!(!units.dropin_path("web").exists());
        assert!(!units.stale(&deps, "web", Slot::Zero));
        std::fs::write(units.unit_path("web"), "[Service]\n").unwrap();
        assert!(units.stale(&deps, "web", Slot::Zero));
        assert!(units.check_unit_is_ours("web").is_err());
        assert!(units.republish_if_stale(&deps, "web", Slot::Zero).unwrap());
        assert!(units.unit_is_ours("web"));
        units.unpublish("web");
        assert!(!units.unit_path("web").exists() && !units.tmpfiles_path("web").exists());
    }
}
