//! A stored image written back out as an image: `syscont images export`, and the base of
//! `syscont build --from` when the store has it; and `syscont build` storing what it built.
//!
//! An export is a new build of the image's checked-out tree with the execution parameters
//! of its config: reproducible, but with a digest of its own. Its scratch directory is
//! removed when the export is dropped, and an `/exports` that is a symlink stays in the
//! rootfs as a symlink, never followed.

use anyhow::{Context, Result};
use oci_spec::image::Config;
use serde::Deserialize;
use std::path::PathBuf;

use crate::image::reference::ImageReference;
use crate::store::{ImageRecord, Store, StoreConfig};
use crate::util::output;

/// A stored image written as an OCI layout in a scratch directory next to the
/// deployments (removed when dropped): the rootfs becomes one layer and `/exports`
/// another, with the image's Entrypoint, Cmd, Env, WorkingDir, ports, volumes and labels.
/// The output is reproducible, but it is a new image with its own digest.
struct LayoutExport {
    scratch: PathBuf,
    /// `oci:DIR:export`.
    reference: String,
    manifest_digest: String,
}

impl Drop for LayoutExport {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn export_layout(store: &Store, img: &ImageRecord) -> Result<LayoutExport> {
    let c = exec_config(&store.config(img)?).with_context(|| {
        format!(
            "The config of {} does not follow the OCI image spec",
            img.name
        )
    })?;
    let scratch = store
        .checkout_path
        .join(format!(".export-{}-{}", std::process::id(), img.id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("Creating {}", scratch.display()))?;
    let mut out = LayoutExport {
        scratch: scratch.clone(),
        reference: String::new(),
        manifest_digest: String::new(),
    };
    let rootfs = scratch.join("rootfs");
    {
        let _lock = store.lock()?;
        crate::store::checkout::checkout_image_copy(store, img, &rootfs)?;
    }
    let exports = scratch.join("exports");
    // Only a real directory moves to its own layer; a symlink stays a symlink in the
    // rootfs (following it could read the host's files).
    let has_exports = rootfs
        .join("exports")
        .symlink_metadata()
        .map(|m| m.is_dir())
        .unwrap_or(false);
    if has_exports {
        std::fs::rename(rootfs.join("exports"), &exports)?;
    }
    let labels = c
        .labels()
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.reference = format!("oci:{}:export", scratch.join("layout").display());
    let opts = crate::build::BuildOptions {
        rootfs: rootfs.clone(),
        from: None,
        exports: has_exports.then(|| exports.clone()),
        entrypoint: c.entrypoint().clone(),
        cmd: c.cmd().clone(),
        env: c.env().clone().unwrap_or_default(),
        labels,
        workdir: c.working_dir().clone().filter(|s| !s.is_empty()),
        expose: c.exposed_ports().clone().unwrap_or_default(),
        volumes: c.volumes().clone().unwrap_or_default(),
        tag: img.name.clone(),
        output: Some(out.reference.clone()),
        push: None,
        registry: Default::default(),
    };
    out.manifest_digest = crate::build::build(&opts)?.manifest_digest;
    Ok(out)
}

/// The execution parameters (`config`) of an image config; none when it has none.
fn exec_config(config: &serde_json::Value) -> Result<Config> {
    match config.get("config") {
        Some(c) if !c.is_null() => Ok(Config::deserialize(c)?),
        _ => Ok(Config::default()),
    }
}

/// `syscont images export IMAGE DEST`: writes the image to any destination skopeo takes
/// (`oci-archive:FILE[:TAG]`, `docker-archive:FILE`, `oci:DIR[:TAG]`, `dir:DIR`,
/// `docker://…`), e.g. to ship it on an air-gapped host. The destination is checked
/// before anything is built.
pub(crate) fn export(
    cfg: &StoreConfig,
    image: &str,
    dest: &str,
    registry: &crate::image::skopeo::RegistryOptions,
) -> Result<()> {
    crate::image::skopeo::check_destination(dest)?;
    let store = Store::open(cfg)?;
    let img = store.resolve_one(image)?;
    let layout = export_layout(&store, &img)?;
    let mut copy = crate::image::skopeo::Skopeo::new()?;
    copy.args(["copy", "-q"]);
    registry.dest_args(&mut copy);
    copy.arg(&layout.reference).arg(dest);
    copy.run(&format!("Writing {dest}"))?;
    output::status(format!(
        "Exported {} to {dest} ({}).",
        img.name, layout.manifest_digest
    ));
    Ok(())
}

/// `syscont build`: builds the image (see [`crate::build`]), stores it under its tag as
/// `podman build` does, and writes or pushes it where asked. A base image (`--from`) that
/// is in the store is taken from there, not fetched again. Returns the manifest digest.
pub(crate) fn build(
    cfg: &StoreConfig,
    mut opts: crate::build::BuildOptions,
    fetch: &crate::image::skopeo::FetchOptions,
) -> Result<String> {
    let store = Store::open_or_create(cfg)?;
    // Keep the base's layout until the build is done.
    let mut _base = None;
    if let Some(from) = &opts.from {
        if let Ok(img) = store.resolve_one(from) {
            output::status(format!("Using the base image {} from the store.", img.name));
            let layout = export_layout(&store, &img)?;
            opts.from = Some(layout.reference.clone());
            _base = Some(layout);
        }
    }
    let built = crate::build::build(&opts)?;
    let name = ImageReference::parse(&opts.tag)
        .and_then(|r| r.store_name())
        .with_context(|| format!("--tag {}", opts.tag))?;
    let _lock = store.lock()?;
    crate::store::pull::pull_as(&store, fetch, &built.layout_ref, &name)?;
    Ok(built.manifest_digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_execution_parameters_of_a_stored_config() {
        let c = exec_config(&json!({
            "architecture": "amd64",
            "config": {"Cmd": ["/bin/sh"], "ExposedPorts": {"80/tcp": {}}, "Labels": {"a": "1"}}
        }))
        .unwrap();
        assert_eq!(c.cmd().as_deref(), Some(&["/bin/sh".to_owned()][..]));
        assert_eq!(
            c.exposed_ports().as_deref(),
            Some(&["80/tcp".to_owned()][..])
        );
        assert_eq!(c.labels().as_ref().unwrap()["a"], "1");
        for none in [json!({}), json!({"config": null}), json!([])] {
            assert_eq!(exec_config(&none).unwrap(), Config::default(), "{none}");
        }
        assert!(exec_config(&json!({"config": {"Env": "A=1"}})).is_err());
    }
}
