//! Named failpoints for the crash-matrix tests. Built with the `failpoints` feature (which
//! `make test` turns on), a process whose `$SYSCONT_FAILPOINT` names a step kills itself
//! with SIGKILL there, as a power cut or an OOM kill would. Without the feature, `hit`
//! does nothing and costs nothing.

/// Every failpoint, in the order the operations reach them (docs/reliability.md).
pub const ALL: &[&str] = &[
    "pull.layer-committed",
    "pull.before-image-ref",
    "install.slot-built",
    "install.info-written",
    "install.hostfs-applied",
    "install.units-published",
    "install.enabled",
    "install.linked",
    "update.slot-built",
    "fleet.slot-taken",
    "update.stopped",
    "switch.hostfs-removed",
    "switch.hostfs-applied",
    "switch.units-published",
    "update.switched",
    "update.restarted",
    "rollback.stopped",
    "rollback.switched",
    "uninstall.stopped",
    "uninstall.units-removed",
    "uninstall.hostfs-removed",
    "uninstall.unlinked",
];

/// Kills the process here when `$SYSCONT_FAILPOINT` names this step.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    debug_assert!(ALL.contains(&name), "unknown failpoint {name}");
    if std::env::var("SYSCONT_FAILPOINT").as_deref() == Ok(name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// Does nothing: failpoints are compiled in only with the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}
