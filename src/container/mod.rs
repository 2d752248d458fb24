//! System containers: install, update, rollback, uninstall, list, run and stop.
//!
//! Every change is prepared off to the side (a new slot directory under a temporary name,
//! rendered files, a host-file plan with its conflicts checked) before anything visible
//! changes. The `NAME -> NAME.N` symlink flip is the commit point; systemd is told over
//! D-Bus only after the files it reads are in place.

pub(crate) mod apply;
pub(crate) mod deploy;
pub(crate) mod doctor;
pub(crate) mod image_info;
pub(crate) mod mount;
pub(crate) mod switch;
pub(crate) mod units;
pub(crate) mod verify;

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::container::deploy::{Deployments, Info};
use crate::container::switch::{restart_and_watch, switch_to, SwitchRecord};
use crate::container::units::{
    check_unit_is_ours, dropin_dir, publish_units, tmpfiles, tmpfiles_path, unit_name, unit_path,
    JOB_TIMEOUT, UNIT_MARKER,
};
use crate::error::{ContainerExit, RunFailed, UserError};
use crate::host::hostfs;
use crate::host::runtime;
use crate::host::systemd::Systemd;
use crate::store::{ImageRecord, Store, StoreConfig};
use crate::template::exec::{self, ExecMode};
use crate::template::exports::{read_export, ExportsManifest};
use crate::template::{self, Engine, RenderValues, ValueInputs};
use crate::util::cmdutil::CommandExt;
use crate::util::fsutil;
use crate::util::output::{self, trunc};
use crate::util::output::{out, outln};
use crate::util::rootfs::RootFs;

/// Options of `syscont install`.
#[derive(Debug, Clone, Default)]
pub(crate) struct InstallOpts {
    pub image: String,
    pub name: Option<String>,
    pub set: Vec<String>,
    pub set_json: Vec<String>,
    pub rootfs: Option<PathBuf>,
    pub runtime: Option<PathBuf>,
    pub start: bool,
    pub fetch: Option<crate::image::skopeo::FetchOptions>,
}

/// Parses `KEY=VALUE` arguments (split at the first `=`; later duplicates win).
pub(crate) fn parse_set(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| {
            UserError::Invalid(format!("Invalid value '{a}'.  Expected form NAME=VALUE"))
        })?;
        if k.is_empty()
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || k.chars().next().is_some_and(|c| c.is_ascii_digit())
        {
            return Err(
                UserError::Invalid(format!("invalid variable name {k:?} in --set {a:?}")).into(),
            );
        }
        out.insert(k.to_string(), v.to_string());
    }
    template::check_settable(out.keys())?;
    Ok(out)
}

/// Parses `KEY=JSON` arguments.
pub(crate) fn parse_set_json(args: &[String]) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("Invalid value '{a}'.  Expected form NAME=JSON"))?;
        let j = serde_json::from_str(v).with_context(|| format!("--set-json {k}: invalid JSON"))?;
        out.insert(k.to_string(), j);
    }
    Ok(out)
}

/// Everything rendered for one deployment slot, before anything is written.
struct Rendered {
    config: String,
    service: Option<String>,
    dropin: Option<String>,
    tmpfiles: Option<String>,
    plan: hostfs::Plan,
    info: Info,
}

/// Inputs that stay the same between the slots of one container.
struct Target<'a> {
    name: &'a str,
    img: &'a ImageRecord,
    image_arg: &'a str,
    runtime: PathBuf,
    set: BTreeMap<String, String>,
    set_json: BTreeMap<String, serde_json::Value>,
    uuid: Option<String>,
    remote: Option<String>,
}

/// The exec mode a service template asks for (pidfile mode without a template).
fn exec_mode(service_tmpl: Option<&str>) -> ExecMode {
    match service_tmpl {
        Some(s) if !exec::template_wants_pidfile(&crate::template::dollar::variables(s)) => {
            ExecMode::Classic
        }
        _ => ExecMode::Pidfile,
    }
}

/// Every template value of a deployment of `t` in `final_dir`.
fn slot_values(
    t: &Target<'_>,
    manifest: &ExportsManifest,
    mode: ExecMode,
    final_dir: &Path,
) -> RenderValues {
    let run_dir = t
        .set
        .get("RUN_DIRECTORY")
        .cloned()
        .unwrap_or_else(|| crate::util::scope::template_dirs().0);
    let pidfile = t
        .set
        .get("PIDFILE")
        .cloned()
        .unwrap_or_else(|| format!("{run_dir}/container-{}.pid", t.name));
    // Rootless runc cannot use systemd's cgroup driver here (a user manager on a hybrid
    // cgroup layout); it leaves the cgroup to the user's unit.
    let exec = exec::exec_lines(
        &t.runtime,
        t.name,
        mode,
        &pidfile,
        !crate::util::scope::is_user(),
    );
    let self_path = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "syscont".into());
    let values = template::compute_values(&ValueInputs {
        name: t.name,
        destdir: final_dir,
        image_name: &t.img.name,
        image_id: t.img.id(),
        runtime: &t.runtime,
        exec: &exec,
        set: &t.set,
        defaults: &manifest.defaults(),
        uuid: t.uuid.as_deref(),
        self_path: &self_path,
    });
    RenderValues {
        values,
        json: t.set_json.clone(),
        given: t.set.keys().cloned().collect(),
    }
}

/// The unit and its drop-in, rendered from the image's `service.template` (or syscont's
/// default unit).
fn render_unit(
    engine: Engine,
    service_tmpl: Option<&str>,
    mode: ExecMode,
    rv: &RenderValues,
) -> Result<(String, Option<String>)> {
    let body = match service_tmpl {
        Some(tmpl) => template::render(engine, tmpl, "exports/service.template", rv, true)?,
        None => template::default_service(rv)?,
    };
    // Pidfile mode detaches: without an explicit Type= systemd would lose track of the
    // container, so a drop-in makes the unit Type=forking with the PID file.
    let has_type = body.lines().any(|l| l.trim_start().starts_with("Type="));
    let dropin = (mode == ExecMode::Pidfile && !has_type).then(|| {
        format!(
            "{UNIT_MARKER}\n[Service]\nType=forking\nPIDFile={}\n",
            rv.values["PIDFILE"]
        )
    });
    Ok((format!("{UNIT_MARKER}\n{body}"), dropin))
}

/// The unit a container would get from an image in the store, rendered as an install or
/// update would render it, without a checkout (for ordering `apply`'s steps). `None` for
/// an image with `noContainerService`.
pub(crate) fn unit_from_store(
    store: &Store,
    img: &ImageRecord,
    name: &str,
    set: &BTreeMap<String, String>,
    set_json: &BTreeMap<String, serde_json::Value>,
    runtime: &Path,
) -> Result<Option<String>> {
    let read = |f: &str| -> Result<Option<String>> {
        store
            .read_image_file(img, &format!("/exports/{f}"))?
            .map(|b| String::from_utf8(b).map_err(|_| anyhow!("/exports/{f} is not UTF-8")))
            .transpose()
    };
    let manifest: ExportsManifest = match read("manifest.json")? {
        Some(m) => serde_json::from_str(&m)
            .with_context(|| format!("Invalid manifest.json file in image: {}", img.name))?,
        None => ExportsManifest::default(),
    };
    if manifest.no_container_service {
        return Ok(None);
    }
    let service_tmpl = read("service.template")?;
    let mode = exec_mode(service_tmpl.as_deref());
    let t = Target {
        name,
        img,
        image_arg: &img.name,
        runtime: runtime.to_path_buf(),
        set: set.clone(),
        set_json: set_json.clone(),
        uuid: None,
        remote: None,
    };
    let deps = Deployments::new(&store.checkout_path);
    let rv = slot_values(&t, &manifest, mode, &deps.slot_dir(name, 0));
    let (unit, _) = render_unit(manifest.engine()?, service_tmpl.as_deref(), mode, &rv)?;
    Ok(Some(unit))
}

/// Warns about each `--set` value that no template of the image uses: it changes nothing
/// (a misspelled key, most likely), so say so and list the image's variables.
fn warn_unused(t: &Target<'_>, used: &BTreeSet<String>, manifest: &ExportsManifest) {
    let unused: Vec<&String> = t
        .set
        .keys()
        .chain(t.set_json.keys())
        .filter(|k| !used.contains(*k))
        .collect();
    if unused.is_empty() {
        return;
    }
    let mut known: BTreeSet<&str> = used.iter().map(String::as_str).collect();
    known.extend(manifest.default_values.keys().map(String::as_str));
    known.retain(|k| !template::ALWAYS_COMPUTED.contains(k));
    for k in unused {
        output::warn(format!(
            "{k} is not used by any template of {}, so it changes nothing; its variables are: {}",
            t.img.name,
            known.iter().copied().collect::<Vec<_>>().join(", ")
        ));
    }
}

/// Renders config, unit, tmpfiles and the host-file plan for a slot whose rootfs exists.
fn render_slot(
    store: &Store,
    t: &Target<'_>,
    slot_dir: &Path,
    final_dir: &Path,
) -> Result<Rendered> {
    let rootfs = slot_dir.join("rootfs");
    let image = RootFs::open(&rootfs)?;
    let manifest = ExportsManifest::read(&image)?;
    let engine = manifest.engine()?;
    let service_tmpl = read_export(&image, "service.template")?;
    let tmpfiles_tmpl = read_export(&image, "tmpfiles.template")?;
    let mode = exec_mode(service_tmpl.as_deref());
    let rv = slot_values(t, &manifest, mode, final_dir);
    let values = rv.values.clone();
    // Every variable some template of the image uses, to tell a --set that does nothing.
    let used = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let note_used = |text: &str| {
        used.borrow_mut()
            .extend(template::used_variables(engine, text, &rv));
    };
    for t in [&service_tmpl, &tmpfiles_tmpl].into_iter().flatten() {
        note_used(t);
    }
    if service_tmpl.is_none() {
        used.borrow_mut().extend(template::used_variables(
            Engine::Tera,
            template::DEFAULT_SERVICE,
            &rv,
        ));
    }
    for to in manifest.rename_files.values() {
        note_used(to);
    }

    // config.json: verbatim, rendered, or syscont's default.
    let (config, config_source) = if let Some(c) = read_export(&image, "config.json")? {
        (c, "exports/config.json")
    } else if let Some(tmpl) = read_export(&image, "config.json.template")? {
        note_used(&tmpl);
        let r = template::render(engine, &tmpl, "exports/config.json.template", &rv, false)?;
        (r, "exports/config.json.template")
    } else {
        let process = template::ImageProcess::from_config(&store.config(t.img)?);
        used.borrow_mut().extend(template::used_variables(
            Engine::Tera,
            template::DEFAULT_CONFIG,
            &rv,
        ));
        (
            template::default_config(&process, &rv)?,
            "syscont's default config.json",
        )
    };
    let config = if t.remote.is_some() {
        // A remote rootfs is referenced by its absolute path.
        let mut v: serde_json::Value =
            serde_json::from_str(&config).context("The rendered config.json is not valid JSON")?;
        v["root"]["path"] = serde_json::Value::String(
            std::fs::canonicalize(&rootfs)
                .unwrap_or(rootfs.clone())
                .display()
                .to_string(),
        );
        serde_json::to_string_pretty(&v)?
    } else {
        config
    };
    let config = if crate::util::scope::is_user() {
        template::make_rootless(&config)?
    } else {
        config
    };
    let want_root = t.remote.as_ref().map(|_| {
        std::fs::canonicalize(&rootfs)
            .unwrap_or(rootfs.clone())
            .display()
            .to_string()
    });
    let config =
        crate::template::runtime_config::check(&config, config_source, want_root.as_deref())?;

    let (service, dropin) = if manifest.no_container_service {
        (None, None)
    } else {
        let (unit, dropin) = render_unit(engine, service_tmpl.as_deref(), mode, &rv)?;
        (Some(unit), dropin)
    };
    let tmpfiles = match &tmpfiles_tmpl {
        Some(tmpl) => Some(template::render(
            engine,
            tmpl,
            "exports/tmpfiles.template",
            &rv,
            true,
        )?),
        None => {
            let missing = template::missing_bind_sources(&config);
            (!missing.is_empty()).then(|| {
                missing
                    .iter()
                    .map(|m| {
                        format!(
                            "d    {m}   0700 {} {} - -\n",
                            values["HOST_UID"], values["HOST_GID"]
                        )
                    })
                    .collect::<String>()
            })
        }
    }
    .filter(|s| !s.trim().is_empty());

    // Host files: renames and templates rendered with this slot's own values.
    let mut renames = BTreeMap::new();
    for (from, to) in &manifest.rename_files {
        let to = crate::template::dollar::substitute(to, "manifest.json", &values)?;
        renames.insert(from.clone(), to);
    }
    let render_host = |text: &str, dest: &str| -> Result<String> {
        note_used(text);
        template::render(engine, text, dest, &rv, false)
    };
    let plan = hostfs::plan(
        &image,
        &renames,
        &manifest.installed_files_template,
        &render_host,
    )?;
    warn_unused(t, &used.into_inner(), &manifest);
    if crate::util::scope::is_user() && !plan.entries.is_empty() {
        let paths: Vec<&str> = plan.entries.keys().map(String::as_str).collect();
        bail!(
            "{} installs files on the host ({}); a rootless container cannot, so only root can install it (--system)",
            t.img.name,
            paths.join(", ")
        );
    }

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let info = Info {
        image: t.image_arg.to_string(),
        revision: t.img.id().to_string(),
        ostree_commit: t.img.commit.clone(),
        created: now,
        values,
        has_container_service: !manifest.no_container_service,
        installed_files: Vec::new(),
        installed_files_checksum: BTreeMap::new(),
        installed_files_template: manifest.installed_files_template.clone(),
        rename_installed_files: renames,
        rpm_installed: None,
        system_package: "no".into(),
        remote: t.remote.clone(),
        use_links: manifest.use_links,
        runtime: t.runtime.display().to_string(),
        syscont: deploy::SyscontInfo {
            set_values: t.set.clone(),
            set_json: t.set_json.clone(),
            image_name: t.img.name.clone(),
            created_dirs: Vec::new(),
        },
    };
    Ok(Rendered {
        config,
        service,
        dropin,
        tmpfiles,
        plan,
        info,
    })
}

/// Builds a complete slot directory under a temporary name, then renames it to `NAME.slot`.
fn build_slot(store: &Store, deps: &Deployments, t: &Target<'_>, slot: u8) -> Result<Rendered> {
    let final_dir = deps.slot_dir(t.name, slot);
    let tmp = deps
        .root
        .join(format!(".{}.{slot}.tmp-{}", t.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("Creating {}", tmp.display()))?;
    let res = (|| -> Result<Rendered> {
        match &t.remote {
            Some(r) => {
                let src = remote_rootfs(Path::new(r))?;
                std::os::unix::fs::symlink(&src, tmp.join("rootfs"))?;
            }
            None => crate::store::checkout::checkout_image(store, t.img, &tmp.join("rootfs"))?,
        }
        let mut r = render_slot(store, t, &tmp, &final_dir)?;
        fsutil::atomic_write(&tmp.join("config.json"), r.config.as_bytes(), 0o644)?;
        if let Some(s) = &r.service {
            fsutil::atomic_write(&tmp.join(unit_name(t.name)), s.as_bytes(), 0o644)?;
        }
        if let Some(d) = &r.dropin {
            fsutil::atomic_write(
                &tmp.join(format!("{}.dropin.conf", t.name)),
                d.as_bytes(),
                0o644,
            )?;
        }
        if let Some(tf) = &r.tmpfiles {
            fsutil::atomic_write(
                &tmp.join(format!("tmpfiles-{}.conf", t.name)),
                tf.as_bytes(),
                0o644,
            )?;
        }
        r.info.installed_files = r.plan.entries.keys().cloned().collect();
        let mut buf = serde_json::to_vec_pretty(&r.info)?;
        buf.push(b'\n');
        fsutil::atomic_write(&tmp.join("info"), &buf, 0o644)?;
        Ok(r)
    })();
    match res {
        Ok(r) => {
            if final_dir.symlink_metadata().is_ok() {
                remove_tree(&final_dir)?;
            }
            std::fs::rename(&tmp, &final_dir).with_context(|| {
                format!("Renaming {} to {}", tmp.display(), final_dir.display())
            })?;
            fsutil::fsync_dir(&deps.root)?;
            Ok(r)
        }
        Err(e) => {
            let _ = remove_tree(&tmp);
            Err(e)
        }
    }
}

/// What an install or an update would write, rendered without changing anything.
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

/// The inputs of a preview (the same as an install's, or an update's with `replace_values`).
#[derive(Debug, Clone)]
pub(crate) struct PreviewInputs {
    pub name: String,
    pub image: String,
    pub set: BTreeMap<String, String>,
    pub set_json: BTreeMap<String, serde_json::Value>,
    pub runtime: Option<PathBuf>,
}

/// Renders what installing (or, for an installed name, updating) would write. The image
/// must be in the store; its rootfs is checked out into a scratch directory and removed.
pub(crate) fn preview(store: &Store, p: &PreviewInputs) -> Result<Preview> {
    let deps = Deployments::new(&store.checkout_path);
    let img = store.resolve_one(&p.image)?;
    let (slot, old) = match deps.active_slot(&p.name) {
        Some(cur) => (1 - cur, Some(deps.read_info(&p.name, cur)?)),
        None => (0, None),
    };
    // The runtime is checked as the real run checks it.
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
        set: p.set.clone(),
        set_json: p.set_json.clone(),
        uuid: old.as_ref().and_then(|o| o.values.get("UUID").cloned()),
        remote: old.as_ref().and_then(|o| o.remote.clone()),
    };
    let scratch = deps
        .root
        .join(format!(".{}.preview-{}", p.name, std::process::id()));
    let _ = remove_tree(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("Creating {}", scratch.display()))?;
    let final_dir = deps.slot_dir(&p.name, slot);
    let res = (|| -> Result<Preview> {
        match &target.remote {
            Some(r) => {
                std::os::unix::fs::symlink(remote_rootfs(Path::new(r))?, scratch.join("rootfs"))?
            }
            None => crate::store::checkout::checkout_image(store, &img, &scratch.join("rootfs"))?,
        }
        let r = render_slot(store, &target, &scratch, &final_dir)?;
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
            slot_dir: final_dir.clone(),
            config: r.config,
            service: r.service,
            dropin: r.dropin,
            tmpfiles: r.tmpfiles,
            host_files,
            removed_host_files,
        })
    })();
    let _ = remove_tree(&scratch);
    res
}

/// The unit, tmpfiles and config files a container has now (for diffs against a preview).
pub(crate) fn current_files(
    checkout_path: &Path,
    name: &str,
) -> (Option<String>, Option<String>, Option<String>) {
    let deps = Deployments::new(checkout_path);
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let config = deps
        .active_slot(name)
        .and_then(|s| read(deps.slot_dir(name, s).join("config.json")));
    (read(unit_path(name)), config, read(tmpfiles_path(name)))
}

/// The rootfs a `--rootfs` path refers to: `PATH/rootfs` if present, else PATH itself when
/// it looks like a root filesystem (has `usr/`). (Atomic used the parent's `rootfs`, a bug.)
fn remote_rootfs(p: &Path) -> Result<PathBuf> {
    let p = std::fs::canonicalize(p).with_context(|| format!("--rootfs {}", p.display()))?;
    if p.join("rootfs").is_dir() {
        return Ok(std::fs::canonicalize(p.join("rootfs"))?);
    }
    if p.join("usr").is_dir() {
        return Ok(p);
    }
    bail!(
        "--rootfs was given but {} does not contain a rootfs",
        p.display()
    )
}

/// Removes a directory tree; the rootfs is made of hardlinks to repository objects, which
/// are only unlinked, never modified.
fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            std::fs::remove_dir_all(p).with_context(|| format!("Removing {}", p.display()))
        }
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("Removing {}", p.display())),
        Err(_) => Ok(()),
    }
}

/// Removes what a crashed install left: slots without a link (and the host files they
/// recorded, where nobody changed them since), and temporary slot dirs.
fn clean_leftovers(deps: &Deployments, name: &str) -> Result<()> {
    if deps.active_slot(name).is_none() {
        if deps.link(name).symlink_metadata().is_ok() {
            std::fs::remove_file(deps.link(name))?;
        }
        for s in [0, 1] {
            if let Ok(info) = deps.read_info(name, s) {
                hostfs::remove(
                    Path::new("/"),
                    &info.installed_files_checksum,
                    &info.syscont.created_dirs,
                    &BTreeMap::new(),
                );
            }
            remove_tree(&deps.slot_dir(name, s))?;
        }
    }
    if let Ok(rd) = std::fs::read_dir(&deps.root) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with(&format!(".{name}.0.tmp-"))
                || f.starts_with(&format!(".{name}.1.tmp-"))
            {
                remove_tree(&e.path())?;
            }
        }
    }
    Ok(())
}

/// Finds the image (pulling it when missing).
fn image_for(
    store: &Store,
    image: &str,
    fetch: Option<&crate::image::skopeo::FetchOptions>,
    pull: bool,
) -> Result<ImageRecord> {
    if !pull {
        if let Ok(img) = store.resolve_one(image) {
            return Ok(img);
        }
    }
    let default_fetch;
    let fetch = match fetch {
        Some(f) => f,
        None => {
            default_fetch = crate::image::skopeo::FetchOptions::from_env();
            &default_fetch
        }
    };
    let _lock = store.lock()?;
    let r = crate::store::pull::pull(store, fetch, image)?;
    store
        .image_by_name(&r.name)?
        .ok_or_else(|| anyhow!("image {} vanished after the pull", r.name))
}

/// `syscont install`.
pub(crate) fn install(cfg: &StoreConfig, o: &InstallOpts) -> Result<()> {
    // What can be checked without the image is checked before anything is written.
    let set = parse_set(&o.set)?;
    let set_json = parse_set_json(&o.set_json)?;
    if let Some(n) = &o.name {
        deploy::validate_name(n)?;
    }
    let store = Store::open_or_create(cfg)?;
    let deps = Deployments::new(&cfg.checkout_path);
    let img = image_for(&store, &o.image, o.fetch.as_ref(), false)?;
    let name = match &o.name {
        Some(n) => n.clone(),
        None => crate::image::reference::default_container_name(&img.name),
    };
    deploy::validate_name(&name)?;
    deps.check_free(&name)?;
    // A refused install leaves no deployments directory it made.
    let made_root = !deps.root.exists();
    std::fs::create_dir_all(&deps.root)
        .with_context(|| format!("Creating {}", deps.root.display()))?;
    let res = install_named(&store, &deps, o, &img, &name, set, set_json);
    if res.is_err() && made_root {
        let _ = std::fs::remove_dir(&deps.root);
    }
    res
}

/// The install of `img` as `name`, once both are known.
fn install_named(
    store: &Store,
    deps: &Deployments,
    o: &InstallOpts,
    img: &ImageRecord,
    name: &str,
    set: BTreeMap<String, String>,
    set_json: BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    let name = name.to_string();
    let _lock = lock_container(deps, &name)?;
    if deps.is_installed(&name) {
        let info = deps.read_info(&name, deps.active_slot(&name).expect("installed"))?;
        let installed = info.set_values();
        let other_values: Vec<&String> = set
            .iter()
            .filter(|(k, v)| installed.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        let other_runtime = o
            .runtime
            .as_ref()
            .is_some_and(|r| runtime::resolve(r).ok().as_deref() != Some(Path::new(&info.runtime)));
        if img.id() != info.revision || !other_values.is_empty() || other_runtime {
            // Atomic said `already present` and succeeded, whatever was asked; a request for
            // something else must not pass as done.
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
            if !other_values.is_empty() {
                let keys: Vec<&str> = other_values.iter().map(|k| k.as_str()).collect();
                what.push(format!("with other values for {}", keys.join(", ")));
            }
            if other_runtime {
                what.push(format!("with the runtime {}", info.runtime));
            }
            return Err(UserError::Invalid(format!(
                "{name} already present, but {}; to change it use `syscont containers update \
                 --rebase IMAGE --set KEY=VALUE {name}`, or choose another --name",
                what.join(" and ")
            ))
            .into());
        }
        outln!("{name} already present");
        // `--start` still means the service runs afterwards (also after an install that
        // was interrupted between its last file and the start).
        if o.start && info.has_container_service {
            let sd = Systemd::connect()?;
            let st = sd.unit_state(&unit_name(&name))?;
            if st.active_state != "active" {
                sd.start(&unit_name(&name), JOB_TIMEOUT)?;
                output::status(format!("Started {}.", unit_name(&name)));
            }
        }
        return Ok(());
    }
    let runtime = runtime::resolve(&o.runtime.clone().unwrap_or_else(runtime::default_runtime))?;
    runtime::check(&runtime)?;
    check_unit_is_ours(&name)?;
    clean_leftovers(deps, &name)?;

    let config = store.config(img)?;
    if config
        .pointer("/config/Labels/atomic.run")
        .and_then(|v| v.as_str())
        == Some("once")
    {
        return run_once(store, img, &name, &set, &set_json, &runtime, &[]);
    }

    let target = Target {
        name: &name,
        img,
        image_arg: &o.image,
        runtime: runtime.clone(),
        set,
        set_json,
        uuid: None,
        remote: o.rootfs.as_ref().map(|p| p.display().to_string()),
    };
    // Atomic's line, on standard output where its users' scripts read it.
    if !output::quiet() {
        outln!("Extracting to {}", deps.slot_dir(&name, 0).display());
    }
    if crate::util::scope::is_user() && target.remote.is_none() {
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
    let rendered = build_slot(store, deps, &target, 0)?;
    crate::util::failpoint::hit("install.slot-built");
    let conflicts = hostfs::conflicts(Path::new("/"), &rendered.plan, &BTreeMap::new())?;
    if !conflicts.is_empty() {
        let _ = remove_tree(&deps.slot_dir(&name, 0));
        bail!(
            "cannot install {name}: these host files exist with other content: {}",
            conflicts.join(", ")
        );
    }
    // From here on the host changes; undo everything on failure. The `NAME` link is the
    // commit point: it appears last, once the unit is registered and enabled, so a
    // container is either installed completely or not at all, and the next run cleans up
    // after one that was killed half-way.
    let sd = Systemd::connect()?;
    let unit = unit_name(&name);
    let res = (|| -> Result<()> {
        // Record the host files before writing them, so a crash cannot orphan them.
        let mut info = rendered.info.clone();
        info.installed_files_checksum = hostfs::planned_checksums(&rendered.plan);
        deps.write_info(&name, 0, &info)?;
        crate::util::failpoint::hit("install.info-written");
        let installed = hostfs::apply(Path::new("/"), &rendered.plan)?;
        crate::util::failpoint::hit("install.hostfs-applied");
        info.installed_files_checksum = installed.checksums.clone();
        info.syscont.created_dirs = installed.created_dirs.clone();
        deps.write_info(&name, 0, &info)?;
        for f in installed.checksums.keys() {
            output::status(format!("Created file {f}"));
        }
        publish_units(deps, &name, 0)?;
        crate::util::failpoint::hit("install.units-published");
        sd.reload()?;
        tmpfiles("--create", &name)?;
        if rendered.service.is_some() {
            sd.enable(&[&unit])?;
        }
        crate::util::failpoint::hit("install.enabled");
        deps.activate(&name, 0)?;
        crate::util::failpoint::hit("install.linked");
        Ok(())
    })();
    if let Err(e) = res {
        if rendered.service.is_some() {
            let _ = sd.disable(&[&unit]);
        }
        let _ = tmpfiles("--remove", &name);
        let _ = std::fs::remove_file(unit_path(&name));
        let _ = std::fs::remove_dir_all(dropin_dir(&name));
        let _ = std::fs::remove_file(tmpfiles_path(&name));
        let _ = std::fs::remove_file(deps.link(&name));
        let _ = clean_leftovers(deps, &name);
        let _ = sd.reload();
        return Err(e);
    }
    if rendered.service.is_some() && o.start {
        sd.start(&unit, JOB_TIMEOUT)?;
    }
    output::status(format!(
        "Installed {name} from {} ({}).",
        img.name, img.digest
    ));
    Ok(())
}

/// `syscont uninstall`.
pub(crate) fn uninstall(cfg: &StoreConfig, name: &str) -> Result<()> {
    deploy::validate_name(name)?;
    let deps = Deployments::new(&cfg.checkout_path);
    let _lock = lock_container(&deps, name)?;
    let slot = deps.active_slot(name);
    let has_leftovers = [0, 1].iter().any(|s| deps.slot_dir(name, *s).exists())
        || deps.link(name).symlink_metadata().is_ok();
    let unit_ours = std::fs::read_to_string(unit_path(name))
        .map(|s| s.starts_with(UNIT_MARKER))
        .unwrap_or(false);
    if slot.is_none() && !has_leftovers && !unit_ours {
        return Err(UserError::NotInstalled(name.to_string()).into());
    }
    let info = slot.and_then(|s| deps.read_info(name, s).ok());
    let sd = Systemd::connect()?;
    let unit = unit_name(name);
    if unit_ours
        || info
            .as_ref()
            .map(|i| i.has_container_service)
            .unwrap_or(false)
    {
        sd.stop(&unit, JOB_TIMEOUT)?;
        crate::util::failpoint::hit("uninstall.stopped");
        let _ = sd.disable(&[&unit]);
    }
    let _ = std::fs::remove_file(unit_path(name));
    let _ = std::fs::remove_dir_all(dropin_dir(name));
    sd.reload()?;
    let _ = sd.reset_failed(&unit);
    let _ = tmpfiles("--remove", name);
    let _ = std::fs::remove_file(tmpfiles_path(name));
    crate::util::failpoint::hit("uninstall.units-removed");
    if let Some(info) = &info {
        for kept in hostfs::remove(
            Path::new("/"),
            &info.installed_files_checksum,
            &info.syscont.created_dirs,
            &BTreeMap::new(),
        ) {
            output::status(format!(
                "Will not delete {kept} as it was manually modified."
            ));
        }
    }
    crate::util::failpoint::hit("uninstall.hostfs-removed");
    let _ = std::fs::remove_file(deps.link(name));
    crate::util::failpoint::hit("uninstall.unlinked");
    switch::end(&deps, name);
    for s in [0, 1] {
        remove_tree(&deps.slot_dir(name, s))?;
    }
    clean_leftovers(&deps, name)?;
    output::status(format!("Uninstalled {name}."));
    Ok(())
}

/// Runs an `atomic.run=once` image (or `syscont run IMAGE CMD`) in the foreground.
pub(crate) fn run_once(
    store: &Store,
    img: &ImageRecord,
    name: &str,
    set: &BTreeMap<String, String>,
    set_json: &BTreeMap<String, serde_json::Value>,
    runtime: &Path,
    args: &[String],
) -> Result<()> {
    let deps = Deployments::new(&store.checkout_path);
    let id = format!("{name}-run-{}", std::process::id());
    let base = deps.root.join(format!(".run-{id}"));
    let _ = remove_tree(&base);
    std::fs::create_dir_all(&base)?;
    let res = (|| -> Result<u8> {
        crate::store::checkout::checkout_image(store, img, &base.join("rootfs"))?;
        let target = Target {
            name,
            img,
            image_arg: &img.name,
            runtime: runtime.to_path_buf(),
            set: set.clone(),
            set_json: set_json.clone(),
            uuid: None,
            remote: None,
        };
        let (r, tmpfiles) = render_slot_lenient(store, &target, &base)?;
        if let Some(t) = &tmpfiles {
            fsutil::atomic_write(&base.join("tmpfiles.conf"), t.as_bytes(), 0o644)?;
            crate::container::units::tmpfiles_file("--create", &base.join("tmpfiles.conf"))?;
        }
        let mut config: serde_json::Value = serde_json::from_str(&r)
            .context("The rendered config.json of the one-off run is not valid JSON")?;
        if !config.is_object() {
            bail!(
                "the rendered config.json of {} is not a JSON object",
                img.name
            );
        }
        // The root is always the checkout made here. The checkout's files are the store's
        // objects: a read-only root keeps them safe; an image that wants a writable root
        // runs on a copy of its own instead, so nothing it writes reaches the store.
        let writable = config.pointer("/root/readonly") != Some(&serde_json::Value::Bool(true));
        config["root"] = serde_json::json!({"path": "rootfs", "readonly": !writable});
        if writable {
            remove_tree(&base.join("rootfs"))?;
            crate::store::checkout::checkout_image_copy(store, img, &base.join("rootfs"))?;
        }
        if !args.is_empty() {
            config["process"]["args"] = serde_json::json!(args);
        }
        use std::io::IsTerminal;
        config["process"]["terminal"] = serde_json::json!(std::io::stdin().is_terminal());
        let mut text = serde_json::to_string_pretty(&config)?;
        // A user's one-off run is rootless, as a user's installed container is.
        if crate::util::scope::is_user() {
            text = template::make_rootless(&text)?;
        }
        fsutil::atomic_write(&base.join("config.json"), text.as_bytes(), 0o644)?;
        runtime::run_bundle(runtime, &base, &id)
    })();
    // Atomic's run-once removed what its tmpfiles made, too.
    let _ = crate::container::units::tmpfiles_file("--remove", &base.join("tmpfiles.conf"));
    let _ = remove_tree(&base);
    match res? {
        0 => Ok(()),
        code => Err(ContainerExit(code).into()),
    }
}

/// Renders the config (and the tmpfiles the run needs) for a one-off run (run-once images
/// may have a writable root).
fn render_slot_lenient(
    store: &Store,
    t: &Target<'_>,
    dir: &Path,
) -> Result<(String, Option<String>)> {
    let image = RootFs::open(&dir.join("rootfs"))?;
    let manifest = ExportsManifest::read(&image)?;
    let engine = manifest.engine()?;
    let exec = exec::exec_lines(&t.runtime, t.name, ExecMode::Classic, "", false);
    let values = template::compute_values(&ValueInputs {
        name: t.name,
        destdir: dir,
        image_name: &t.img.name,
        image_id: t.img.id(),
        runtime: &t.runtime,
        exec: &exec,
        set: &t.set,
        defaults: &manifest.defaults(),
        uuid: None,
        self_path: "syscont",
    });
    let rv = RenderValues {
        values,
        json: t.set_json.clone(),
        given: t.set.keys().cloned().collect(),
    };
    let config = if let Some(c) = read_export(&image, "config.json")? {
        c
    } else if let Some(tmpl) = read_export(&image, "config.json.template")? {
        template::render(engine, &tmpl, "exports/config.json.template", &rv, false)?
    } else {
        let process = template::ImageProcess::from_config(&store.config(t.img)?);
        template::default_config(&process, &rv)?
    };
    // What the run needs on the host, as Atomic's run-once made it: the image's tmpfiles,
    // or the bind-mount sources that are missing.
    let tmpfiles = match read_export(&image, "tmpfiles.template")? {
        Some(tmpl) => Some(template::render(
            engine,
            &tmpl,
            "exports/tmpfiles.template",
            &rv,
            true,
        )?),
        None => {
            let missing = template::missing_bind_sources(&config);
            (!missing.is_empty()).then(|| {
                missing
                    .iter()
                    .map(|m| {
                        format!(
                            "d    {m}   0700 {} {} - -\n",
                            rv.values["HOST_UID"], rv.values["HOST_GID"]
                        )
                    })
                    .collect()
            })
        }
    };
    Ok((config, tmpfiles))
}

/// One row of `containers list` (its JSON is the same, field for field).
#[derive(Debug, serde::Serialize)]
pub(crate) struct ContainerRow {
    /// The image ID (manifest digest without `sha256:`).
    pub id: String,
    pub image: String,
    pub name: String,
    pub command: String,
    /// When this deployment was made (RFC 3339).
    pub created: String,
    /// `running`, `inactive`, `failed`, `activating`, …, `no service`, `switching`,
    /// `interrupted`, or `unknown` when systemd cannot be asked.
    pub state: String,
    pub backend: String,
    pub runtime: String,
}

/// Options of `syscont containers list`.
#[derive(Debug, Clone)]
pub(crate) struct ListOpts {
    pub all: bool,
    pub format: crate::util::format::Format,
    pub no_trunc: bool,
    pub filters: Vec<String>,
}

/// `syscont containers list`. When systemd cannot be reached, the containers are listed
/// with the state `unknown` and the command fails afterwards.
pub(crate) fn list(cfg: &StoreConfig, o: &ListOpts) -> Result<()> {
    let deps = Deployments::new(&cfg.checkout_path);
    let names = deps.names()?;
    let mut infos = Vec::new();
    for n in &names {
        if let Some(s) = deps.active_slot(n) {
            if let Ok(i) = deps.read_info(n, s) {
                infos.push((n.clone(), s, i));
            }
        }
    }
    let units: Vec<String> = infos.iter().map(|(n, _, _)| unit_name(n)).collect();
    let unit_refs: Vec<&str> = units.iter().map(String::as_str).collect();
    // One D-Bus call for every unit.
    let (states, unreachable) = if unit_refs.is_empty() {
        (Default::default(), None)
    } else {
        match Systemd::connect().and_then(|sd| sd.unit_states(&unit_refs)) {
            Ok(s) => (s, None),
            Err(e) => (Default::default(), Some(e)),
        }
    };
    let mut rows = Vec::new();
    for (n, s, info) in infos {
        let switching = crate::container::switch::pending(&deps, &n).map(|_| {
            if deps.is_locked(&n) {
                "switching"
            } else {
                "interrupted"
            }
        });
        let state = if let Some(sw) = switching {
            sw.to_string()
        } else if !info.has_container_service {
            "no service".to_string()
        } else if unreachable.is_some() {
            "unknown".to_string()
        } else {
            match states.get(&unit_name(&n)) {
                Some(st) if st.active_state == "active" => "running".into(),
                Some(st) if st.active_state == "failed" => "failed".into(),
                Some(st) => st.active_state.clone(),
                None => "inactive".into(),
            }
        };
        let command = std::fs::read(deps.slot_dir(&n, s).join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.pointer("/process/args").cloned())
            .and_then(|a| serde_json::from_value::<Vec<String>>(a).ok())
            .map(|a| a.join(" "))
            .unwrap_or_default();
        rows.push(ContainerRow {
            id: info.revision.clone(),
            image: if info.syscont.image_name.is_empty() {
                info.image.clone()
            } else {
                info.syscont.image_name.clone()
            },
            name: n,
            command,
            created: crate::util::time::rfc3339(info.created),
            state,
            backend: "ostree".into(),
            runtime: info.runtime.clone(),
        });
    }
    // Without --all: what runs, or needs a look (a switch, an unknown state).
    rows.retain(|r| {
        o.all
            || matches!(
                r.state.as_str(),
                "running" | "switching" | "interrupted" | "unknown"
            )
    });
    let rows = crate::util::format::filter_rows(rows, &o.filters, &[("container", "name")])?;
    print_containers(&rows, o)?;
    match unreachable {
        None => Ok(()),
        Some(e) => Err(e.context("the states of the containers are unknown")),
    }
}

fn print_containers(rows: &[ContainerRow], o: &ListOpts) -> Result<()> {
    let t = !o.no_trunc;
    if output::quiet() && o.format == crate::util::format::Format::Table {
        // Whole names, one per line: `containers list -q | xargs syscont uninstall`.
        for r in rows {
            outln!("{}", r.name);
        }
        return Ok(());
    }
    let table = |rows: &[ContainerRow]| {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                // Atomic's truncation: id 12, image 20, name 10, command 10, runtime 10.
                vec![
                    trunc(&r.id, 12, t),
                    trunc(&r.image, 20, t),
                    trunc(&r.name, 10, t),
                    trunc(&r.command, 10, t),
                    crate::util::time::parse_rfc3339(&r.created)
                        .map(crate::util::time::table_date)
                        .unwrap_or_default(),
                    r.state.clone(),
                    r.backend.clone(),
                    trunc(&r.runtime, 10, t),
                ]
            })
            .collect();
        output::table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "NAME",
                "COMMAND",
                "CREATED",
                "STATE",
                "BACKEND",
                "RUNTIME",
            ],
            &cells,
        )
    };
    crate::util::format::print_rows(&o.format, rows, table)
}

/// `syscont run NAME` starts the service; `syscont run NAME CMD…` and `syscont run IMAGE
/// [CMD…]` run a container in the foreground and end with its exit status
/// ([`ContainerExit`]), while a failure of syscont itself is [`RunFailed`] (125).
pub(crate) fn run(cfg: &StoreConfig, target: &str, cmd: &[String], set: &[String]) -> Result<()> {
    let deps = Deployments::new(&cfg.checkout_path);
    let installed = deploy::validate_name(target).is_ok() && deps.is_installed(target);
    if installed && cmd.is_empty() {
        return start(cfg, target);
    }
    run_foreground(cfg, &deps, installed, target, cmd, set).map_err(|e| {
        if e.downcast_ref::<ContainerExit>().is_some() {
            e
        } else {
            RunFailed(e).into()
        }
    })
}

fn run_foreground(
    cfg: &StoreConfig,
    deps: &Deployments,
    installed: bool,
    target: &str,
    cmd: &[String],
    set: &[String],
) -> Result<()> {
    if installed {
        let slot = deps.active_slot(target).expect("installed");
        let info = deps.read_info(target, slot)?;
        let runtime = PathBuf::from(&info.runtime);
        if runtime::is_running(&runtime, target) {
            return match runtime::exec_in(&runtime, target, cmd)? {
                0 => Ok(()),
                code => Err(ContainerExit(code).into()),
            };
        }
        // Stopped: a one-off run in the deployment, under its own container ID.
        let dir = deps.slot_dir(target, slot);
        let id = format!("{target}-run-{}", std::process::id());
        let bundle = deps.root.join(format!(".{id}"));
        let _ = remove_tree(&bundle);
        std::fs::create_dir_all(&bundle)?;
        let res = (|| -> Result<u8> {
            let mut config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
            config["process"]["args"] = serde_json::json!(cmd);
            use std::io::IsTerminal;
            config["process"]["terminal"] = serde_json::json!(std::io::stdin().is_terminal());
            let root = std::fs::canonicalize(dir.join("rootfs"))?;
            config["root"]["path"] = serde_json::json!(root.display().to_string());
            fsutil::atomic_write(
                &bundle.join("config.json"),
                serde_json::to_string_pretty(&config)?.as_bytes(),
                0o644,
            )?;
            runtime::run_bundle(&runtime, &bundle, &id)
        })();
        let _ = remove_tree(&bundle);
        return match res? {
            0 => Ok(()),
            code => Err(ContainerExit(code).into()),
        };
    }
    let store = Store::open_or_create(cfg)?;
    let img = image_for(&store, target, None, false)?;
    let runtime = runtime::resolve(&runtime::default_runtime())?;
    // As Atomic named it: never the name of an installed container, whose run directory
    // the run's tmpfiles would otherwise create and remove.
    let name = format!("run-once-{}", std::process::id());
    run_once(
        &store,
        &img,
        &name,
        &parse_set(set)?,
        &BTreeMap::new(),
        &runtime,
        cmd,
    )
}

/// Starts an installed container's service and waits for the job's result.
pub(crate) fn start(cfg: &StoreConfig, name: &str) -> Result<()> {
    deploy::validate_name(name)?;
    let deps = Deployments::new(&cfg.checkout_path);
    if !deps.is_installed(name) {
        return Err(UserError::NotInstalled(name.to_string()).into());
    }
    let _lock = lock_container(&deps, name)?;
    Systemd::connect()?.start(&unit_name(name), JOB_TIMEOUT)?;
    output::status(format!("Started {}.", unit_name(name)));
    Ok(())
}

/// `syscont stop NAME`.
pub(crate) fn stop(cfg: &StoreConfig, name: &str) -> Result<()> {
    deploy::validate_name(name)?;
    let deps = Deployments::new(&cfg.checkout_path);
    if !deps.is_installed(name) {
        return Err(UserError::NotInstalled(name.to_string()).into());
    }
    let _lock = lock_container(&deps, name)?;
    Systemd::connect()?.stop(&unit_name(name), JOB_TIMEOUT)?;
    output::status(format!("Stopped {}.", unit_name(name)));
    Ok(())
}

/// Options of `syscont containers update`.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpdateOpts {
    pub set: Vec<String>,
    pub set_json: Vec<String>,
    pub rebase: Option<String>,
    pub pull: bool,
    pub no_rollback: bool,
    pub probation: Duration,
    pub fetch: Option<crate::image::skopeo::FetchOptions>,
    /// The values given are all the values (`apply`): earlier `--set` values are dropped.
    pub replace_values: bool,
    /// A new runtime (`apply`); `None` keeps the installed one.
    pub runtime: Option<PathBuf>,
    /// Rebuild the other slot from the store even when nothing changed (after a repair,
    /// to replace files that were changed on the host).
    pub force: bool,
}

/// The outcome of one update, for `update --all`'s summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpdateOutcome {
    UpToDate,
    Updated,
}

fn journal_tail(unit: &str) -> String {
    Command::new("journalctl")
        .args(crate::util::scope::journalctl_args())
        .args(["-u", unit, "-n", "15", "--no-pager", "-o", "cat"])
        .output_string()
        .unwrap_or_default()
}

/// Takes the container's lock, then finishes or reverts an interrupted switch of it (see
/// [`crate::container::switch`]), so every command starts from a consistent container.
pub(crate) fn lock_container(deps: &Deployments, name: &str) -> Result<fsutil::Lock> {
    let lock = deps.lock(name)?;
    switch::recover(deps, name)?;
    Ok(lock)
}

/// The global options a helper process (the switch guard) needs to find this store.
fn guard_args(cfg: &StoreConfig) -> Vec<String> {
    let mut v = vec![
        "--checkout-path".to_string(),
        cfg.checkout_path.display().to_string(),
    ];
    if let Some(r) = &cfg.repo {
        v.extend(["--repo".to_string(), r.display().to_string()]);
    }
    v
}

/// `syscont containers update NAME`.
pub(crate) fn update(cfg: &StoreConfig, name: &str, o: &UpdateOpts) -> Result<UpdateOutcome> {
    deploy::validate_name(name)?;
    let store = Store::open_or_create(cfg)?;
    let deps = Deployments::new(&cfg.checkout_path);
    let _lock = lock_container(&deps, name)?;
    let cur = deps
        .active_slot(name)
        .ok_or_else(|| UserError::NotInstalled(name.to_string()))?;
    let old = deps.read_info(name, cur)?;
    let next = 1 - cur;
    let image_arg = o.rebase.clone().unwrap_or_else(|| old.image.clone());
    let img = image_for(&store, &image_arg, o.fetch.as_ref(), o.pull)?;
    let new_set = parse_set(&o.set)?;
    let new_json = parse_set_json(&o.set_json)?;
    let (set, set_json) = if o.replace_values {
        (new_set, new_json)
    } else {
        let mut set = old.set_values();
        set.extend(new_set);
        let mut json = old.syscont.set_json.clone();
        json.extend(new_json);
        (set, json)
    };
    let runtime = match &o.runtime {
        Some(r) => {
            let r = runtime::resolve(r)?;
            runtime::check(&r)?;
            r
        }
        None => PathBuf::from(&old.runtime),
    };
    let values_changed = set != old.set_values()
        || set_json != old.syscont.set_json
        || runtime != Path::new(&old.runtime);
    if img.id() == old.revision && !values_changed && !o.force {
        outln!("Latest version already installed.");
        return Ok(UpdateOutcome::UpToDate);
    }
    let target = Target {
        name,
        img: &img,
        image_arg: &image_arg,
        runtime,
        set,
        set_json,
        uuid: old.values.get("UUID").cloned(),
        remote: old.remote.clone(),
    };
    // The other slot is rebuilt from scratch (never a union over a stale tree).
    if !output::quiet() {
        outln!("Extracting to {}", deps.slot_dir(name, next).display());
    }
    let rendered = build_slot(&store, &deps, &target, next)?;
    crate::util::failpoint::hit("update.slot-built");
    let mut new_info = rendered.info.clone();
    new_info.installed_files = rendered.plan.entries.keys().cloned().collect();

    let sd = Systemd::connect()?;
    let unit = unit_name(name);
    let was_active = switch::is_running(&sd, name, old.has_container_service);
    let rec = SwitchRecord {
        op: "update".into(),
        from: cur,
        to: next,
        was_active,
    };
    switch::begin(&sd, &deps, name, &rec, &guard_args(cfg))?;
    if was_active {
        sd.stop(&unit, JOB_TIMEOUT)?;
    }
    crate::util::failpoint::hit("update.stopped");
    let _ = tmpfiles("--remove", name);
    let mut old_info = old.clone();
    if let Err(e) = switch_to(&deps, name, next, &old, &mut new_info) {
        // Nothing was committed: put the old slot's files back and restart it.
        let _ = switch_to(&deps, name, cur, &new_info, &mut old_info);
        let _ = sd.reload();
        if was_active {
            let _ = restart_and_watch(&sd, name, Duration::ZERO);
        }
        switch::end(&deps, name);
        return Err(e);
    }
    crate::util::failpoint::hit("update.switched");
    sd.reload()?;
    if !was_active {
        tmpfiles("--create", name)?;
        switch::end(&deps, name);
        output::status(format!("Updated {name} to {} ({}).", img.name, img.digest));
        return Ok(UpdateOutcome::Updated);
    }
    let watched = restart_and_watch(&sd, name, o.probation);
    if watched.is_ok() || o.no_rollback {
        switch::end(&deps, name);
    }
    match watched {
        Ok(()) => {
            output::status(format!(
                "Updated {name} to {} ({}); it is running.",
                img.name, img.digest
            ));
            Ok(UpdateOutcome::Updated)
        }
        Err(e) if o.no_rollback => Err(e.context(format!(
            "{name} was updated but does not run; --no-rollback keeps the new version\n{}",
            journal_tail(&unit)
        ))),
        Err(e) => {
            let journal = journal_tail(&unit);
            eprintln!("Could not restart {name}.  Attempt automatic rollback");
            let _ = sd.stop(&unit, JOB_TIMEOUT);
            let _ = tmpfiles("--remove", name);
            let mut back = deps.read_info(name, cur)?;
            let now = deps.read_info(name, next)?;
            switch_to(&deps, name, cur, &now, &mut back)
                .context("Rolling back after the failed update")?;
            sd.reload()?;
            restart_and_watch(&sd, name, Duration::ZERO)
                .context("Starting the previous version after the failed update")?;
            switch::end(&deps, name);
            Err(e.context(format!(
                "the update of {name} failed and was rolled back; the previous version runs again.\nLast journal lines:\n{journal}"
            )))
        }
    }
}

/// `syscont containers rollback NAME`.
pub(crate) fn rollback(cfg: &StoreConfig, name: &str) -> Result<()> {
    deploy::validate_name(name)?;
    let deps = Deployments::new(&cfg.checkout_path);
    let _lock = lock_container(&deps, name)?;
    let cur = deps
        .active_slot(name)
        .ok_or_else(|| UserError::NotInstalled(name.to_string()))?;
    let other = 1 - cur;
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
    let sd = Systemd::connect()?;
    let unit = unit_name(name);
    let was_active = switch::is_running(&sd, name, from.has_container_service);
    let rec = SwitchRecord {
        op: "rollback".into(),
        from: cur,
        to: other,
        was_active,
    };
    switch::begin(&sd, &deps, name, &rec, &guard_args(cfg))?;
    if was_active {
        sd.stop(&unit, JOB_TIMEOUT)?;
    }
    crate::util::failpoint::hit("rollback.stopped");
    let _ = tmpfiles("--remove", name);
    switch_to(&deps, name, other, &from, &mut to)?;
    crate::util::failpoint::hit("rollback.switched");
    sd.reload()?;
    tmpfiles("--create", name)?;
    if was_active && to.has_container_service {
        sd.start(&unit, JOB_TIMEOUT)?;
        output::status(format!("Rolled back {name}; it is running again."));
    } else {
        output::status(format!("Rolled back {name}."));
    }
    switch::end(&deps, name);
    Ok(())
}

/// `syscont containers update --all`: every container, with automatic rollback, and a
/// summary table.
pub(crate) fn update_all(cfg: &StoreConfig, o: &UpdateOpts) -> Result<()> {
    let deps = Deployments::new(&cfg.checkout_path);
    let mut rows = Vec::new();
    let mut failed = 0;
    for name in deps.names()? {
        let before = deps
            .active_slot(&name)
            .and_then(|s| deps.read_info(&name, s).ok())
            .map(|i| i.revision)
            .unwrap_or_default();
        let status = match update(cfg, &name, o) {
            Ok(UpdateOutcome::UpToDate) => "Not updated".to_string(),
            Ok(UpdateOutcome::Updated) => "Updated".to_string(),
            Err(e) => {
                failed += 1;
                eprintln!("{name}: {e:#}");
                "Failed".to_string()
            }
        };
        let after = deps
            .active_slot(&name)
            .and_then(|s| deps.read_info(&name, s).ok())
            .map(|i| i.revision)
            .unwrap_or_default();
        rows.push(vec![
            name,
            trunc(&before, 12, true),
            trunc(&after, 12, true),
            status,
        ]);
    }
    outln!("SUMMARY");
    out!(
        "{}",
        output::table(
            &["Container", "Image ID before", "Image ID after", "Status"],
            &rows
        )
    );
    if failed > 0 {
        bail!("{failed} container(s) failed to update");
    }
    Ok(())
}
