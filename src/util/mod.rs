//! Helpers every layer uses: crash-safe files and locks, running programs, command
//! output, time and list formats, the system or user scope, confined reads of a rootfs,
//! and failpoints for crash tests.

pub(crate) mod cmdutil;
pub mod failpoint;
pub mod format;
pub(crate) mod fsutil;
pub(crate) mod output;
pub(crate) mod rootfs;
pub(crate) mod scope;
pub mod time;
