//! The OCI runtime (runc by default, crun, or any `--runtime PATH`): checks, the `Exec`
//! lines written into units, and one-off runs.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmdutil::CommandExt;

/// The runtime used when none is given: `$SYSCONT_RUNTIME`, else `/usr/bin/runc`.
pub(crate) fn default_runtime() -> PathBuf {
    std::env::var_os("SYSCONT_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/runc"))
}

/// Resolves a runtime given as a name or path to an absolute path.
pub(crate) fn resolve(runtime: &Path) -> Result<PathBuf> {
    if runtime.is_absolute() {
        return Ok(runtime.to_path_buf());
    }
    if runtime.components().count() == 1 {
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let p = dir.join(runtime);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
    }
    std::fs::canonicalize(runtime).with_context(|| {
        format!(
            "Cannot install the container: the runtime {} is not installed",
            runtime.display()
        )
    })
}

/// Runs `RUNTIME --version` and returns its first line.
pub(crate) fn check(runtime: &Path) -> Result<String> {
    let out = Command::new(runtime)
        .arg("--version")
        .output_string()
        .with_context(|| {
            format!(
                "Cannot install the container: the runtime {} is not installed or does not work",
                runtime.display()
            )
        })?;
    Ok(out.lines().next().unwrap_or_default().to_string())
}

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

/// What `RUNTIME state ID` reports.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct State {
    /// `created`, `running`, `stopped`, `paused`.
    pub status: String,
    /// The bundle directory the container was created from.
    pub bundle: PathBuf,
}

/// The runtime's state of a container; `None` when it does not know it.
pub(crate) fn state(runtime: &Path, id: &str) -> Option<State> {
    let out = Command::new(runtime)
        .args(["state", id])
        .output_string()
        .ok()?;
    serde_json::from_str(&out).ok()
}

/// Whether the runtime reports the container as running.
pub(crate) fn is_running(runtime: &Path, id: &str) -> bool {
    state(runtime, id).is_some_and(|s| s.status == "running")
}

/// Runs a command in a running container (`RUNTIME exec [--tty] ID CMD…`), inheriting stdio.
pub(crate) fn exec_in(runtime: &Path, id: &str, cmd: &[String]) -> Result<i32> {
    use std::io::IsTerminal;
    let mut c = Command::new(runtime);
    c.arg("exec");
    if std::io::stdin().is_terminal() {
        c.arg("--tty");
    }
    c.arg(id).args(cmd);
    let st = c
        .status()
        .with_context(|| format!("Running {} exec {id}", runtime.display()))?;
    Ok(st.code().unwrap_or(1))
}

/// Runs a container in the foreground from a bundle directory (`config.json` inside),
/// inheriting stdio; returns its exit code. The container state is deleted afterwards.
pub(crate) fn run_bundle(runtime: &Path, bundle: &Path, id: &str) -> Result<i32> {
    let st = Command::new(runtime)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .status()
        .with_context(|| format!("Running {} run {id}", runtime.display()))?;
    let _ = Command::new(runtime)
        .args(["delete", "-f", id])
        .stderr(std::process::Stdio::null())
        .status();
    if let Some(code) = st.code() {
        return Ok(code);
    }
    bail!("{} run {id} was killed by a signal", runtime.display())
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

    #[test]
    fn missing_runtime_is_a_clear_error() {
        let e = check(Path::new("/does/not/exist")).unwrap_err();
        assert!(format!("{e:#}").contains("is not installed"), "{e:#}");
        let e = resolve(Path::new("does-not-exist-runtime")).unwrap_err();
        assert!(format!("{e:#}").contains("is not installed"), "{e:#}");
    }
}
