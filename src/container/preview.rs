//! What an install or an update would write, rendered without changing anything (for
//! `--dry-run` and `apply --dry-run`): the image is checked out into a scratch directory
//! that is removed afterwards, and the runtime is checked as the real run checks it.

use anyhow::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::container::render::{render_slot, Target};
use crate::container::slots::{place_rootfs, Scratch};
use crate::container::values::Values;
use crate::container::{Host, Slot};
use crate::host::runtime;
use crate::store::Store;

/// What an install or an update would write.
#[derive(Debug)]
pub(crate) struct Preview {
    /// The slot it would go to.
    pub slot_dir: PathBuf,
    pub config: String,
    pub service: Option<String>,
    pub dropin: Option<String>,
    pub tmpfiles: Option<String>,
    /// Host files it would write: path → what (content, a symlink, a directory).
    pub host_files: BTreeMap<String, String>,
    /// Host files of the current deployment it would remove.
    pub removed_host_files: Vec<String>,
}

/// The inputs of a preview (the same as an install's, or an update's with all values).
#[derive(Debug, Clone)]
pub(crate) struct PreviewInputs {
    pub name: String,
    pub image: String,
    pub values: Values,
    pub runtime: Option<PathBuf>,
}

/// The files a container has now, for diffs against a preview.
#[derive(Debug, Default)]
pub(crate) struct Current {
    pub unit: Option<String>,
    pub dropin: Option<String>,
    pub config: Option<String>,
    pub tmpfiles: Option<String>,
}

/// Renders what installing (or, for an installed name, updating) would write. The image
/// must be in the store.
pub(crate) fn preview(host: &Host, store: &Store, p: &PreviewInputs) -> Result<Preview> {
    let deps = &host.deps;
    let img = store.resolve_one(&p.image)?;
    let (slot, old) = match deps.active_slot(&p.name) {
        Some(cur) => (cur.other(), Some(deps.read_info(&p.name, cur)?)),
        None => (Slot::Zero, None),
    };
    let runtime = match (&p.runtime, &old) {
        (Some(r), _) => runtime::resolve(r)?,
        (None, Some(o)) => PathBuf::from(&o.runtime),
        (None, None) => runtime::resolve(&runtime::default_runtime())?,
    };
    runtime::check(&runtime)?;
    let target = Target {
        name: &p.name,
        img: &img,
        image_arg: &p.image,
        runtime,
        values: p.values.clone(),
        uuid: old.as_ref().and_then(|o| o.values.get("UUID").cloned()),
        remote: old.as_ref().and_then(|o| o.remote.clone()),
    };
    let scratch = Scratch::new(deps.root.join(format!(
        ".{}.preview-{}",
        p.name,
        std::process::id()
    )))?;
    let final_dir = deps.slot_dir(&p.name, slot);
    place_rootfs(store, &target, &scratch.0)?;
    let r = render_slot(host, store, &target, &scratch.0, &final_dir)?;
    let host_files = r
        .plan
        .entries
        .iter()
        .map(|(k, v)| (k.clone(), v.describe()))
        .collect::<BTreeMap<_, _>>();
    let removed_host_files = old
        .as_ref()
        .map(|o| {
            o.installed_files_checksum
                .keys()
                .filter(|k| !host_files.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Ok(Preview {
        slot_dir: final_dir,
        config: r.config,
        service: r.service,
        dropin: r.dropin,
        tmpfiles: r.tmpfiles,
        host_files,
        removed_host_files,
    })
}

/// The unit, drop-in, config and tmpfiles a container has now.
pub(crate) fn current(host: &Host, name: &str) -> Current {
    let deps = &host.deps;
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    Current {
        unit: read(host.units.unit_path(name)),
        dropin: read(host.units.dropin_path(name)),
        config: deps
            .active_slot(name)
            .and_then(|s| read(deps.slot_dir(name, s).join("config.json"))),
        tmpfiles: read(host.units.tmpfiles_path(name)),
    }
}
