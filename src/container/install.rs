//! `install` and `uninstall`.
//!
//! An install builds slot 0 completely, checks the host files for conflicts, records
//! them, writes them, publishes and enables the unit, and links `NAME -> NAME.0` last: a
//! container is installed completely or not at all, and a failure undoes every step. An
//! install of a name that is installed as asked says Atomic's `already present`; one that
//! asks for something else is refused, never passed as done.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::container::deploy::{self, Info};
use crate::container::render::Target;
use crate::container::slots::{build_slot, clean_leftovers, remove_tree};
use crate::container::units::{unit_name, JOB_TIMEOUT};
use crate::container::values::Values;
use crate::container::{run, switch, Host, Slot};
use crate::error::UserError;
use crate::host::hostfs;
use crate::host::runtime;
use crate::host::systemd::ActiveState;
use crate::image::skopeo::FetchOptions;
use crate::store::ImageRecord;
use crate::util::failpoint;
use crate::util::output::{self, outln};

/// What to install.
#[derive(Debug, Clone)]
pub(crate) struct InstallRequest {
    pub image: String,
    /// The container's name; by default the image's (see
    /// [`crate::image::reference::default_container_name`]).
    pub name: Option<String>,
    pub values: Values,
    /// `--rootfs`: run from this root filesystem instead of a checkout.
    pub rootfs: Option<PathBuf>,
    pub runtime: Option<PathBuf>,
    /// Start the service and wait for the result.
    pub start: bool,
    pub fetch: FetchOptions,
}

/// The container name an install request gives.
pub(crate) fn name_of(r: &InstallRequest, img_name: &str) -> String {
    match &r.name {
        Some(n) => n.clone(),
        None => crate::image::reference::default_container_name(img_name),
    }
}

/// `syscont install`.
pub(crate) fn install(host: &Host, r: &InstallRequest) -> Result<()> {
    // What can be checked without the image is checked before anything is written.
    if let Some(n) = &r.name {
        deploy::validate_name(n)?;
    }
    let img = host.image(&r.image, &r.fetch, false)?;
    let name = name_of(r, &img.name);
    deploy::validate_name(&name)?;
    let deps = &host.deps;
    deps.check_free(&name)?;
    // A refused install leaves no deployments directory it made.
    let made_root = !deps.root.exists();
    std::fs::create_dir_all(&deps.root)
        .with_context(|| format!("Creating {}", deps.root.display()))?;
    let res = install_named(host, r, &img, &name);
    if res.is_err() && made_root {
        let _ = std::fs::remove_dir(&deps.root);
    }
    res
}

/// How an installed container differs from a request to install it, in words; empty when
/// it is installed as asked.
fn differences(r: &InstallRequest, img: &ImageRecord, info: &Info) -> Vec<String> {
    let mut what = Vec::new();
    if img.id() != info.revision {
        what.push(format!(
            "it runs {} ({}), not {} ({})",
            info.image,
            &info.revision[..info.revision.len().min(12)],
            img.name,
            &img.id()[..12]
        ));
    }
    let other_values = r.values.differing_from(&info.set_values());
    if !other_values.is_empty() {
        what.push(format!("with other values for {}", other_values.join(", ")));
    }
    let other_runtime = r.runtime.as_ref().is_some_and(|rt| {
        runtime::resolve(rt).ok().as_deref() != Some(std::path::Path::new(&info.runtime))
    });
    if other_runtime {
        what.push(format!("with the runtime {}", info.runtime));
    }
    what
}

/// Atomic's answer to an install of an installed name: `already present`, when it is
/// installed as asked (and `--start` still means it runs afterwards, also after an install
/// that was interrupted between its last file and the start).
fn already_present(host: &Host, r: &InstallRequest, img: &ImageRecord, name: &str) -> Result<()> {
    let deps = &host.deps;
    let info = deps.read_info(name, deps.active_slot(name).expect("installed"))?;
    let what = differences(r, img, &info);
    if !what.is_empty() {
        return Err(UserError::Invalid(format!(
            "{name} already present, but {}; to change it use `syscont containers update \
             --rebase IMAGE --set KEY=VALUE {name}`, or choose another --name",
            what.join(" and ")
        ))
        .into());
    }
    outln!("{name} already present");
    if r.start && info.has_container_service {
        let sd = host.systemd()?;
        if sd.unit_state(&unit_name(name))?.active_state != ActiveState::Active {
            sd.start(&unit_name(name), JOB_TIMEOUT)?;
            output::status(format!("Started {}.", unit_name(name)));
        }
    }
    Ok(())
}

/// The install of `img` as `name`, once both are known.
fn install_named(host: &Host, r: &InstallRequest, img: &ImageRecord, name: &str) -> Result<()> {
    let deps = &host.deps;
    let _lock = host.lock(name)?;
    if deps.is_installed(name) {
        return already_present(host, r, img, name);
    }
    let runtime = runtime::resolve(&r.runtime.clone().unwrap_or_else(runtime::default_runtime))?;
    runtime::check(&runtime)?;
    host.units.check_unit_is_ours(name)?;
    clean_leftovers(host, name)?;

    let store = host.store()?;
    let config = store.config(img)?;
    if config
        .pointer("/config/Labels/atomic.run")
        .and_then(|v| v.as_str())
        == Some("once")
    {
        return run::run_once(host, img, name, &r.values, &runtime, &[]);
    }

    let target = Target {
        name,
        img,
        image_arg: &r.image,
        runtime,
        values: r.values.clone(),
        uuid: None,
        remote: r.rootfs.as_ref().map(|p| p.display().to_string()),
    };
    // Atomic's line, on standard output where its users' scripts read it.
    if !output::quiet() {
        outln!(
            "Extracting to {}",
            deps.slot_dir(name, Slot::Zero).display()
        );
    }
    if host.scope.is_user() && target.remote.is_none() {
        // A rootless checkout belongs to the caller: other owners cannot be kept.
        let _lock = store.lock()?;
        let (some, n) = crate::store::checkout::non_root_owned(store, img, 3)?;
        if n > 0 {
            output::status(format!(
                "Note: {n} file(s) of {} belong to other users than root (e.g. {}); a rootless \
                 checkout cannot keep their owners, so inside the container they belong to root.",
                img.name,
                some.join(", ")
            ));
        }
    }
    let rendered = build_slot(host, store, &target, Slot::Zero)?;
    failpoint::hit("install.slot-built");
    let conflicts = hostfs::conflicts(&host.root, &rendered.plan, &BTreeMap::new())?;
    if !conflicts.is_empty() {
        let _ = remove_tree(&deps.slot_dir(name, Slot::Zero));
        bail!(
            "cannot install {name}: these host files exist with other content: {}",
            conflicts.join(", ")
        );
    }
    // From here on the host changes; undo everything on failure. The `NAME` link is the
    // commit point: it appears last, once the unit is registered and enabled, so a
    // container is either installed completely or not at all, and the next run cleans up
    // after one that was killed half-way.
    let sd = host.systemd()?;
    let unit = unit_name(name);
    let has_service = rendered.service.is_some();
    let res = (|| -> Result<()> {
        // Record the host files before writing them, so a crash cannot orphan them.
        let mut info = rendered.info.clone();
        info.installed_files_checksum = hostfs::planned_checksums(&rendered.plan);
        deps.write_info(name, Slot::Zero, &info)?;
        failpoint::hit("install.info-written");
        let installed = hostfs::apply(&host.root, &rendered.plan)?;
        failpoint::hit("install.hostfs-applied");
        info.installed_files_checksum = installed.checksums.clone();
        info.syscont.created_dirs = installed.created_dirs.clone();
        deps.write_info(name, Slot::Zero, &info)?;
        for f in installed.checksums.keys() {
            output::status(format!("Created file {f}"));
        }
        host.units.publish(deps, name, Slot::Zero)?;
        failpoint::hit("install.units-published");
        sd.reload()?;
        host.units.tmpfiles("--create", name)?;
        if has_service {
            sd.enable(&[&unit])?;
        }
        failpoint::hit("install.enabled");
        deps.activate(name, Slot::Zero)?;
        failpoint::hit("install.linked");
        Ok(())
    })();
    if let Err(e) = res {
        if has_service {
            let _ = sd.disable(&[&unit]);
        }
        let _ = host.units.tmpfiles("--remove", name);
        host.units.unpublish(name);
        let _ = std::fs::remove_file(deps.link(name));
        let _ = clean_leftovers(host, name);
        let _ = sd.reload();
        return Err(e);
    }
    if has_service && r.start {
        sd.start(&unit, JOB_TIMEOUT)?;
    }
    output::status(format!(
        "Installed {name} from {} ({}).",
        img.name, img.digest
    ));
    Ok(())
}

/// `syscont uninstall`: stops and disables the unit, removes it, the tmpfiles snippet,
/// the host files nobody changed, and both slots.
pub(crate) fn uninstall(host: &Host, name: &str) -> Result<()> {
    deploy::validate_name(name)?;
    let deps = &host.deps;
    let _lock = host.lock(name)?;
    let slot = deps.active_slot(name);
    let has_leftovers = Slot::BOTH.iter().any(|s| deps.slot_dir(name, *s).exists())
        || deps.link(name).symlink_metadata().is_ok();
    let unit_ours = host.units.unit_is_ours(name);
    if slot.is_none() && !has_leftovers && !unit_ours {
        return Err(UserError::NotInstalled(name.to_string()).into());
    }
    let info = slot.and_then(|s| deps.read_info(name, s).ok());
    let sd = host.systemd()?;
    let unit = unit_name(name);
    if unit_ours || info.as_ref().is_some_and(|i| i.has_container_service) {
        sd.stop(&unit, JOB_TIMEOUT)?;
        failpoint::hit("uninstall.stopped");
        let _ = sd.disable(&[&unit]);
    }
    let _ = std::fs::remove_file(host.units.unit_path(name));
    let _ = std::fs::remove_dir_all(host.units.dropin_dir(name));
    sd.reload()?;
    let _ = sd.reset_failed(&unit);
    let _ = host.units.tmpfiles("--remove", name);
    let _ = std::fs::remove_file(host.units.tmpfiles_path(name));
    failpoint::hit("uninstall.units-removed");
    if let Some(info) = &info {
        for kept in hostfs::remove(
            &host.root,
            &info.installed_files_checksum,
            &info.syscont.created_dirs,
            &BTreeMap::new(),
        ) {
            output::status(format!(
                "Will not delete {kept} as it was manually modified."
            ));
        }
    }
    failpoint::hit("uninstall.hostfs-removed");
    let _ = std::fs::remove_file(deps.link(name));
    failpoint::hit("uninstall.unlinked");
    switch::end(deps, name);
    for s in Slot::BOTH {
        remove_tree(&deps.slot_dir(name, s))?;
    }
    clean_leftovers(host, name)?;
    output::status(format!("Uninstalled {name}."));
    Ok(())
}
