//! The image's `/exports` contract: `manifest.json` (Atomic's keys, plus syscont's
//! `templateEngine`) and the template files next to it, read inside the rootfs only.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

use crate::template::Engine;
use crate::util::rootfs::RootFs;

/// The parts of `/exports/manifest.json` syscont reads.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct ExportsManifest {
    #[serde(rename = "defaultValues", default)]
    pub default_values: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "renameFiles", default)]
    pub rename_files: BTreeMap<String, String>,
    #[serde(rename = "installedFilesTemplate", default)]
    pub installed_files_template: Vec<String>,
    #[serde(rename = "noContainerService", default)]
    pub no_container_service: bool,
    #[serde(rename = "useLinks", default = "yes")]
    pub use_links: bool,
    #[serde(rename = "templateEngine", default)]
    pub template_engine: Option<String>,
}

fn yes() -> bool {
    true
}

impl ExportsManifest {
    /// Reads `/exports/manifest.json` of a rootfs (inside it only).
    pub(crate) fn read(root: &RootFs) -> Result<ExportsManifest> {
        match root.read("/exports/manifest.json")? {
            Some(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "Invalid manifest.json file in image: {}/exports/manifest.json",
                    root.path().display()
                )
            }),
            None => Ok(Self::default()),
        }
    }

    /// `defaultValues` as strings (numbers and booleans as JSON writes them).
    pub(crate) fn defaults(&self) -> BTreeMap<String, String> {
        self.default_values
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    /// The template engine the image asks for.
    pub(crate) fn engine(&self) -> Result<Engine> {
        match self.template_engine.as_deref() {
            None | Some("atomic") => Ok(Engine::Dollar),
            Some("tera") => Ok(Engine::Tera),
            Some(other) => {
                bail!("unknown templateEngine {other:?} in manifest.json (use \"tera\")")
            }
        }
    }
}

/// Reads `/exports/NAME` from a rootfs (resolved inside it only), if present.
pub(crate) fn read_export(root: &RootFs, name: &str) -> Result<Option<String>> {
    root.read_string(&format!("/exports/{name}"))
}
