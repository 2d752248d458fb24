//! Helpers every layer uses: crash-safe files and locks, running programs, command
//! output, times, the system or user scope, confined reads of a rootfs,
//! and failpoints for crash tests.

pub(crate) mod cmdutil;
pub mod failpoint;
pub(crate) mod fsutil;
pub(crate) mod output;
pub(crate) mod rootfs;
pub(crate) mod scope;
pub mod time;
