//! System containers: the lifecycle as a library behind one [`Host`].
//!
//! A command opens one `Host` (nothing is read or created until asked for): the store,
//! the deployments, one connection to systemd, the scope (system or user) and the root
//! that host files go under. The verbs take typed inputs ([`Values`], fetch options, a
//! [`Slot`]) and return typed outcomes; parsing arguments and printing results is the
//! command line's job.
//!
//! Every change is prepared off to the side (a new slot directory under a temporary name,
//! rendered files, a host-file plan with its conflicts checked) before anything visible
//! changes. The `NAME -> NAME.N` symlink flip is the commit point; systemd is told over
//! D-Bus only after the files it reads are in place.
//!
//! - `install`, `uninstall`: [`install`]; `update`, `rollback`, `update --all`: [`update`];
//! - `run`, `start`, `stop`, one-off runs: [`run`]; `containers list`: [`list`];
//! - rendering a slot: [`render`], building one: [`slots`], previews for dry runs:
//!   [`preview`]; switching between slots: [`switch`]; the published units: [`units`];
//! - `apply`: [`apply`]; `containers verify`: [`verify`]; `mount`: [`mount`];
//!   `doctor`: [`doctor`]; `images info`: [`image_info`].

pub(crate) mod apply;
pub(crate) mod deploy;
pub(crate) mod doctor;
pub(crate) mod gate;
pub(crate) mod image_info;
pub(crate) mod install;
pub(crate) mod list;
pub(crate) mod mount;
pub(crate) mod preview;
pub(crate) mod render;
pub(crate) mod rollout;
pub(crate) mod run;
pub(crate) mod slots;
pub(crate) mod switch;
pub(crate) mod units;
pub(crate) mod update;
pub(crate) mod values;
pub(crate) mod verify;

use anyhow::{anyhow, Result};
use std::cell::OnceCell;
use std::path::PathBuf;

pub(crate) use deploy::Slot;
pub(crate) use values::Values;

use crate::host::systemd::Systemd;
use crate::image::skopeo::FetchOptions;
use crate::store::{ImageRecord, Store, StoreConfig};
use crate::util::fsutil::Lock;
use crate::util::scope::Scope;
use deploy::Deployments;
use units::Units;

/// The context of one command: what it works on, opened once and on demand.
pub(crate) struct Host {
    /// Where the store and the deployments are.
    pub cfg: StoreConfig,
    /// The deployments directory (`NAME`, `NAME.0`, `NAME.1`).
    pub deps: Deployments,
    /// The system's containers (root) or the calling user's.
    pub scope: Scope,
    /// Where the scope's units and tmpfiles snippets go.
    pub units: Units,
    /// The root that host files (`/exports/hostfs`) are installed under.
    pub root: PathBuf,
    systemd: OnceCell<Systemd>,
    store: OnceCell<Store>,
}

impl Host {
    /// The context for `cfg`; nothing is opened, read or created yet.
    pub(crate) fn new(cfg: StoreConfig) -> Host {
        let scope = cfg.scope;
        Host {
            deps: Deployments::new(&cfg.checkout_path, scope),
            units: Units::new(scope),
            root: PathBuf::from("/"),
            cfg,
            scope,
            systemd: OnceCell::new(),
            store: OnceCell::new(),
        }
    }

    /// The connection to systemd (the scope's manager), made on first use.
    pub(crate) fn systemd(&self) -> Result<&Systemd> {
        if let Some(sd) = self.systemd.get() {
            return Ok(sd);
        }
        let sd = Systemd::connect(self.scope)?;
        Ok(self.systemd.get_or_init(|| sd))
    }

    /// The store, created when there is none yet (for commands that write to it).
    pub(crate) fn store(&self) -> Result<&Store> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let s = Store::open_or_create(&self.cfg)?;
        Ok(self.store.get_or_init(|| s))
    }

    /// The store if there is one: commands that only read never create it.
    pub(crate) fn existing_store(&self) -> Result<Option<&Store>> {
        if let Some(s) = self.store.get() {
            return Ok(Some(s));
        }
        match Store::open_existing(&self.cfg)? {
            Some(s) => Ok(Some(self.store.get_or_init(|| s))),
            None => Ok(None),
        }
    }

    /// The store, which must exist (fails with a hint when there is none yet).
    pub(crate) fn open_store(&self) -> Result<&Store> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let s = Store::open(&self.cfg)?;
        Ok(self.store.get_or_init(|| s))
    }

    /// Takes the container's lock, then finishes or reverts an interrupted switch of it
    /// (see [`switch`]), so every command starts from a consistent container.
    pub(crate) fn lock(&self, name: &str) -> Result<Lock> {
        let lock = self.deps.lock(name)?;
        switch::recover(self, name)?;
        Ok(lock)
    }

    /// The global options a helper process (the switch guard) needs to find this store.
    pub(crate) fn cli_args(&self) -> Vec<String> {
        let mut v = vec![
            "--checkout-path".to_string(),
            self.cfg.checkout_path.display().to_string(),
        ];
        if let Some(r) = &self.cfg.repo {
            v.extend(["--repo".to_string(), r.display().to_string()]);
        }
        v
    }

    /// The image named `image` in the store, pulled first when it is not there (or always,
    /// with `pull`).
    pub(crate) fn image(
        &self,
        image: &str,
        fetch: &FetchOptions,
        pull: bool,
    ) -> Result<ImageRecord> {
        let store = self.store()?;
        if !pull {
            if let Ok(img) = store.resolve_one(image) {
                return Ok(img);
            }
        }
        let _lock = store.lock()?;
        let r = crate::store::pull::pull(store, fetch, image)?;
        store
            .image_by_name(&r.name)?
            .ok_or_else(|| anyhow!("image {} vanished after the pull", r.name))
    }
}
