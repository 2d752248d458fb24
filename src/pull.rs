//! `syscont pull`: resolve, fetch through the skopeo proxy, import into OSTree.

use anyhow::Result;

use crate::cli::FetchOpts;
use crate::store::StoreConfig;

pub(crate) fn pull_cmd(_c: &StoreConfig, _f: &FetchOpts, _image: &str) -> Result<()> {
    anyhow::bail!("not implemented")
}
