//! `run`, `stop`, and one-off runs.
//!
//! `run NAME` starts the service and waits for the job's result. `run NAME CMD...` execs in
//! the running container, or runs the command once in the stopped deployment under its own
//! container ID. `run IMAGE [CMD...]` (and an `atomic.run=once` image's install) runs the
//! image once in a scratch bundle that is removed afterwards, with the tmpfiles it needs.
//! A one-off run ends with its command's status ([`ContainerExit`]); a failure of syscont
//! itself is [`RunFailed`] (125), as `podman run` has it.
//!
//! The files of a checkout are the store's objects: a one-off run gets a read-only root,
//! or, when its image wants a writable one, a copy of its own.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::container::deploy;
use crate::container::render::{render_once, Target};
use crate::container::slots::{remove_tree, Scratch};
use crate::container::units::{unit_name, JOB_TIMEOUT};
use crate::container::values::Values;
use crate::container::Host;
use crate::error::{ContainerExit, RunFailed, UserError};
use crate::host::runtime;
use crate::image::skopeo::FetchOptions;
use crate::store::ImageRecord;
use crate::util::fsutil;
use crate::util::output;

/// A one-off run's exit status as the result of the command.
fn exit(code: u8) -> Result<()> {
    match code {
        0 => Ok(()),
        code => Err(ContainerExit(code).into()),
    }
}

/// Whether standard input is a terminal (the container gets one too).
fn terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// `syscont run TARGET [CMD...]` (see the module doc).
pub(crate) fn run(host: &Host, target: &str, cmd: &[String], values: &Values) -> Result<()> {
    let installed = deploy::validate_name(target).is_ok() && host.deps.is_installed(target);
    if installed && cmd.is_empty() {
        return start(host, target);
    }
    let res = if installed {
        run_in_deployment(host, target, cmd)
    } else {
        run_image(host, target, cmd, values)
    };
    res.map_err(|e| {
        if e.downcast_ref::<ContainerExit>().is_some() {
            e
        } else {
            RunFailed(e).into()
        }
    })
}

/// `CMD` in an installed container: exec when it runs, else a one-off run in its
/// deployment, under its own container ID.
fn run_in_deployment(host: &Host, name: &str, cmd: &[String]) -> Result<()> {
    let deps = &host.deps;
    let slot = deps.active_slot(name).expect("installed");
    let info = deps.read_info(name, slot)?;
    let runtime = PathBuf::from(&info.runtime);
    if runtime::is_running(&runtime, name) {
        return exit(runtime::exec_in(&runtime, name, cmd)?);
    }
    let dir = deps.slot_dir(name, slot);
    let id = format!("{name}-run-{}", std::process::id());
    let bundle = Scratch::new(deps.root.join(format!(".{id}")))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    config["process"]["args"] = serde_json::json!(cmd);
    config["process"]["terminal"] = serde_json::json!(terminal());
    let root = std::fs::canonicalize(dir.join("rootfs"))?;
    config["root"]["path"] = serde_json::json!(root.display().to_string());
    fsutil::atomic_write(
        &bundle.0.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
        fsutil::ROOT_ONLY,
    )?;
    exit(runtime::run_bundle(&runtime, &bundle.0, &id)?)
}

/// An image, once.
fn run_image(host: &Host, image: &str, cmd: &[String], values: &Values) -> Result<()> {
    let img = host.image(image, &FetchOptions::from_env(), false)?;
    let runtime = runtime::resolve(&runtime::default_runtime())?;
    // As Atomic named it: never the name of an installed container, whose run directory
    // the run's tmpfiles would otherwise create and remove.
    let name = format!("run-once-{}", std::process::id());
    run_once(host, &img, &name, values, &runtime, cmd)
}

/// Runs an `atomic.run=once` image (or `syscont run IMAGE CMD`) in the foreground.
pub(crate) fn run_once(
    host: &Host,
    img: &ImageRecord,
    name: &str,
    values: &Values,
    runtime: &Path,
    args: &[String],
) -> Result<()> {
    let store = host.store()?;
    let id = format!("{name}-run-{}", std::process::id());
    let base = Scratch::new(host.deps.root.join(format!(".run-{id}")))?;
    let dir = &base.0;
    let tmpfiles = dir.join("tmpfiles.conf");
    let res = (|| -> Result<u8> {
        crate::store::checkout::checkout_image(store, img, &dir.join("rootfs"))?;
        let target = Target {
            name,
            img,
            image_arg: &img.name,
            runtime: runtime.to_path_buf(),
            values: values.clone(),
            uuid: None,
            remote: None,
        };
        let (config, tmpfiles_text) = render_once(host.scope, store, &target, dir)?;
        if let Some(t) = &tmpfiles_text {
            fsutil::atomic_write(&tmpfiles, t.as_bytes(), 0o644)?;
            host.units.tmpfiles_file("--create", &tmpfiles)?;
        }
        let mut config: serde_json::Value = serde_json::from_str(&config)
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
            remove_tree(&dir.join("rootfs"))?;
            crate::store::checkout::checkout_image_copy(store, img, &dir.join("rootfs"))?;
        }
        if !args.is_empty() {
            config["process"]["args"] = serde_json::json!(args);
        }
        config["process"]["terminal"] = serde_json::json!(terminal());
        let mut text = serde_json::to_string_pretty(&config)?;
        // A user's one-off run is rootless, as a user's installed container is.
        if host.scope.is_user() {
            text = crate::template::make_rootless(&text)?;
        }
        fsutil::atomic_write(&dir.join("config.json"), text.as_bytes(), fsutil::ROOT_ONLY)?;
        runtime::run_bundle(runtime, dir, &id)
    })();
    // Atomic's run-once removed what its tmpfiles made, too.
    let _ = host.units.tmpfiles_file("--remove", &tmpfiles);
    drop(base);
    exit(res?)
}

/// Checks that `name` is an installed container, and takes its lock.
fn installed(host: &Host, name: &str) -> Result<crate::util::fsutil::Lock> {
    deploy::validate_name(name)?;
    if !host.deps.is_installed(name) {
        return Err(UserError::NotInstalled(name.to_string()).into());
    }
    host.lock(name)
}

/// Starts an installed container's service and waits for the job's result.
pub(crate) fn start(host: &Host, name: &str) -> Result<()> {
    let _lock = installed(host, name)?;
    host.systemd()?.start(&unit_name(name), JOB_TIMEOUT)?;
    output::status(format!("Started {}.", unit_name(name)));
    Ok(())
}

/// `syscont stop NAME`.
pub(crate) fn stop(host: &Host, name: &str) -> Result<()> {
    let _lock = installed(host, name)?;
    host.systemd()?.stop(&unit_name(name), JOB_TIMEOUT)?;
    output::status(format!("Stopped {}.", unit_name(name)));
    Ok(())
}
