//! syscont: system containers from OCI images, stored in OSTree and run by systemd.
//!
//! The binary is a thin shell around [`cli::main`]. The folders are the layers of the
//! program, and imports run one way only, from the top down:
//!
//! ```text
//! cli        the clap tree, dispatch, parsing of arguments, printing of tables and JSON
//! container  the lifecycle behind one `Host`: install, update, rollback, uninstall, run,
//!            list, verify, apply, doctor       build   `syscont build`, OCI layouts
//! store      the OSTree store: pull, tar import, checkout, commits
//! template   $VAR and Tera rendering, values, the runtime config check, /exports
//! host       systemd over D-Bus, the OCI runtime, host files
//! fleet      coordination of updates across hosts (etcd, FleetLock)
//! image      references, registries.conf, policy, skopeo and its image proxy
//! util       files, processes, output, time, scope, confined reads of a rootfs
//! ```
//!
//! `make lint` checks the direction (packaging/check-layers.py).

pub mod cli;
pub mod error;

pub(crate) mod build;
pub(crate) mod container;
pub mod fleet;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod host;
pub(crate) mod image;
pub(crate) mod store;
pub(crate) mod template;
pub mod util;
