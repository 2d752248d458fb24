//! The OSTree image store (Atomic-compatible layout).

use anyhow::Result;
use std::path::{Path, PathBuf};

use crate::cli::ImagesListOpts;

/// Where the store lives.
#[derive(Debug, Clone)]
pub(crate) struct StoreConfig {
    /// An explicit repository path.
    pub repo: Option<PathBuf>,
    /// The deployments directory.
    pub checkout_path: PathBuf,
}

pub(crate) fn images_list(_c: &StoreConfig, _o: &ImagesListOpts) -> Result<()> {
    anyhow::bail!("not implemented")
}
pub(crate) fn images_info(_c: &StoreConfig, _image: &str) -> Result<()> {
    anyhow::bail!("not implemented")
}
pub(crate) fn images_inspect(_c: &StoreConfig, _image: &str, _json: bool) -> Result<()> {
    anyhow::bail!("not implemented")
}
pub(crate) fn images_delete(_c: &StoreConfig, _images: &[String], _force: bool) -> Result<()> {
    anyhow::bail!("not implemented")
}
pub(crate) fn images_prune(_c: &StoreConfig) -> Result<()> {
    anyhow::bail!("not implemented")
}
pub(crate) fn images_tag(_c: &StoreConfig, _src: &str, _dst: &str) -> Result<()> {
    anyhow::bail!("not implemented")
}
pub(crate) fn images_verify(_c: &StoreConfig, _image: &str) -> Result<()> {
    anyhow::bail!("not implemented")
}
pub(crate) fn images_checkout(_c: &StoreConfig, _image: &str, _dir: &Path) -> Result<()> {
    anyhow::bail!("not implemented")
}
