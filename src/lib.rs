//! syscont: system containers from OCI images, stored in OSTree and run by systemd.
//!
//! The binary is a thin shell around [`cli::main`]; every concern has its own module.

pub mod cli;
pub mod error;

pub(crate) mod apply;
pub(crate) mod checkout;
pub(crate) mod cmdutil;
pub(crate) mod container;
pub(crate) mod deploy;
pub(crate) mod doctor;
pub(crate) mod dollar;
pub(crate) mod exports;
pub mod failpoint;
pub mod fleet;
pub(crate) mod fsutil;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod hostfs;
pub(crate) mod imagebuild;
pub(crate) mod images;
pub(crate) mod inflate;
pub(crate) mod layers;
pub(crate) mod mount;
pub(crate) mod objects;
pub(crate) mod objpool;
pub(crate) mod output;
pub(crate) mod policy;
pub(crate) mod proxy;
pub(crate) mod pull;
pub(crate) mod reference;
pub(crate) mod registries;
pub(crate) mod rootfs;
pub(crate) mod runtime;
pub(crate) mod runtime_config;
pub(crate) mod scope;
pub(crate) mod skopeo;
pub(crate) mod store;
pub(crate) mod switch;
pub(crate) mod systemd;
pub(crate) mod tarimport;
pub(crate) mod templates;
pub(crate) mod treewrite;
pub(crate) mod units;
pub(crate) mod verify;
