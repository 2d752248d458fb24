//! The OCI runtime (runc by default, crun, or any `--runtime PATH`): checks, the `Exec`
//! lines written into units, and one-off runs.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::cmdutil::CommandExt;

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

/// Signals that stop a foreground run: syscont forwards them to the container and cleans
/// up, instead of dying and leaving the container and its bundle behind.
const STOP_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

/// How long a container has to exit after the forwarded signal before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Waits for a foreground runtime process. On SIGINT, SIGTERM or SIGHUP it calls `stop`
/// with the signal (then again with SIGKILL after [`STOP_GRACE`]) and keeps waiting.
/// Returns the process's status and the signal syscont received, if any.
fn wait_forwarding(
    child: &mut std::process::Child,
    stop: &dyn Fn(i32),
) -> Result<(std::process::ExitStatus, Option<i32>)> {
    let got = Arc::new(AtomicUsize::new(0));
    let ids = STOP_SIGNALS
        .iter()
        .map(|&s| signal_hook::flag::register_usize(s, got.clone(), s as usize))
        .collect::<std::io::Result<Vec<_>>>()
        .context("Installing signal handlers")?;
    let mut forwarded: Option<(i32, Instant)> = None;
    let mut killed = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        let sig = got.load(Ordering::Relaxed) as i32;
        match forwarded {
            None if sig != 0 => {
                stop(sig);
                forwarded = Some((sig, Instant::now()));
            }
            Some((_, at)) if !killed && at.elapsed() > STOP_GRACE => {
                stop(signal_hook::consts::SIGKILL);
                killed = true;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    Ok((status, forwarded.map(|(s, _)| s)))
}

/// The exit code for a run: the container's status, or 128 + the signal that stopped
/// syscont, as a shell reports a process that signal ended.
fn run_code(st: std::process::ExitStatus, signal: Option<i32>) -> u8 {
    match signal {
        Some(s) => (128 + s).clamp(0, 255) as u8,
        None => crate::error::status_code(st),
    }
}

/// Runs a command in a running container (`RUNTIME exec [--tty] ID CMD…`), inheriting
/// stdio; returns its exit code. A signal to syscont goes to the command.
pub(crate) fn exec_in(runtime: &Path, id: &str, cmd: &[String]) -> Result<u8> {
    use std::io::IsTerminal;
    let mut c = Command::new(runtime);
    c.arg("exec");
    if std::io::stdin().is_terminal() {
        c.arg("--tty");
    }
    c.arg(id).args(cmd);
    let mut child = c
        .spawn()
        .with_context(|| format!("Running {} exec {id}", runtime.display()))?;
    let pid = rustix::process::Pid::from_child(&child);
    // runc exec passes the signals it gets on to the command.
    let (st, sig) = wait_forwarding(&mut child, &|s| {
        if let Some(sig) = rustix::process::Signal::from_named_raw(s) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    })?;
    Ok(run_code(st, sig))
}

/// Runs a container in the foreground from a bundle directory (`config.json` inside),
/// inheriting stdio; returns its exit code. A signal to syscont stops the container
/// (`RUNTIME kill`, then SIGKILL after a grace time). The container's state is deleted
/// afterwards in every case.
pub(crate) fn run_bundle(runtime: &Path, bundle: &Path, id: &str) -> Result<u8> {
    let mut child = Command::new(runtime)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .spawn()
        .with_context(|| format!("Running {} run {id}", runtime.display()))?;
    let res = wait_forwarding(&mut child, &|s| {
        let _ = Command::new(runtime)
            .args(["kill", id, &s.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    });
    let _ = Command::new(runtime)
        .args(["delete", "-f", id])
        .stderr(std::process::Stdio::null())
        .status();
    let (st, sig) = res?;
    Ok(run_code(st, sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_runtime_is_a_clear_error() {
        let e = check(Path::new("/does/not/exist")).unwrap_err();
        assert!(format!("{e:#}").contains("is not installed"), "{e:#}");
        let e = resolve(Path::new("does-not-exist-runtime")).unwrap_err();
        assert!(format!("{e:#}").contains("is not installed"), "{e:#}");
    }
}
