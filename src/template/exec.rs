//! The `EXEC_*` template values: how a unit runs its container with the runtime, in
//! pidfile mode (`run -d --pid-file`, `Type=forking`) or in the foreground.

use std::path::Path;

/// How the unit runs the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecMode {
    /// `run -d --pid-file`: the runtime detaches; the unit is `Type=forking` with `PIDFile=`.
    Pidfile,
    /// `run` in the foreground: the runtime process is the unit's main process.
    Classic,
}

/// Whether a service template asks for pidfile mode: it uses both `EXEC_STOPPOST` and
/// `PIDFILE` (in either `$X` or `${X}` form; Atomic only saw `$X`).
pub(crate) fn template_wants_pidfile(template_vars: &[String]) -> bool {
    template_vars.iter().any(|v| v == "EXEC_STOPPOST")
        && template_vars.iter().any(|v| v == "PIDFILE")
}

/// The forced `EXEC_*` values for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecLines {
    pub start_pre: String,
    pub start: String,
    pub stop: String,
    pub stop_post: String,
}

/// Builds the `Exec` lines. `systemd_cgroup` adds `--systemd-cgroup` (system mode with
/// runc); names are validated, so quoting with `'` is safe.
pub(crate) fn exec_lines(
    runtime: &Path,
    name: &str,
    mode: ExecMode,
    pidfile: &str,
    systemd_cgroup: bool,
) -> ExecLines {
    let rt = runtime.display();
    let sg = if systemd_cgroup {
        " --systemd-cgroup"
    } else {
        ""
    };
    match mode {
        ExecMode::Pidfile => ExecLines {
            start_pre: String::new(),
            start: format!("{rt}{sg} run -d --pid-file {pidfile} '{name}'"),
            stop: String::new(),
            stop_post: format!("{rt}{sg} delete -f '{name}'"),
        },
        ExecMode::Classic => ExecLines {
            start_pre: String::new(),
            start: format!("{rt}{sg} run '{name}'"),
            stop: format!("{rt}{sg} kill '{name}'"),
            stop_post: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_lines_match_atomic_without_its_double_space() {
        let l = exec_lines(
            Path::new("/usr/bin/runc"),
            "etcd",
            ExecMode::Pidfile,
            "/run/container-etcd.pid",
            true,
        );
        assert_eq!(
            l.start,
            "/usr/bin/runc --systemd-cgroup run -d --pid-file /run/container-etcd.pid 'etcd'"
        );
        assert_eq!(
            l.stop_post,
            "/usr/bin/runc --systemd-cgroup delete -f 'etcd'"
        );
        let c = exec_lines(
            Path::new("/usr/bin/runc"),
            "etcd",
            ExecMode::Classic,
            "",
            false,
        );
        assert_eq!(c.start, "/usr/bin/runc run 'etcd'");
        assert_eq!(c.stop, "/usr/bin/runc kill 'etcd'");
    }

    #[test]
    fn pidfile_detection_accepts_both_forms() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(template_wants_pidfile(&v(&[
            "EXEC_START",
            "EXEC_STOPPOST",
            "PIDFILE"
        ])));
        assert!(!template_wants_pidfile(&v(&["EXEC_START", "EXEC_STOP"])));
    }
}
