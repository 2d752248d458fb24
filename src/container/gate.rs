//! The health gate of a restarted container: what "the update worked" means.
//!
//! 1. **Readiness**: the start job must succeed. For a `Type=notify` unit systemd finishes
//!    the job only when the program said `READY=1`, so readiness is the program's own.
//! 2. **A check** (optional): a command run in the container (`RUNTIME exec NAME sh -c CMD`)
//!    or on the host (`sh -c CMD`), such as `etcdctl endpoint health --cluster`. It is tried
//!    about once a second until it passes; the unit must stay up meanwhile.
//! 3. **Soak**: the unit must then stay active for the soak time, and the check must pass
//!    once more at its end.
//!
//! Every step is bounded: the check by the gate's timeout, the soak by its length, each
//! try of the check by what is left of the timeout.

use anyhow::{anyhow, bail, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::container::units::{unit_name, JOB_TIMEOUT};
use crate::container::Host;
use crate::util::cmdutil::CommandExt;

/// Where a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Place {
    /// In the running container, with the runtime's `exec`.
    Container,
    /// On the host.
    Host,
}

/// A health check command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    /// A shell command line.
    pub command: String,
    pub place: Place,
}

/// The gate an update must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gate {
    /// How long the unit must stay active once the check passed.
    pub soak: Duration,
    pub check: Option<Check>,
    /// How long the check may take to pass.
    pub timeout: Duration,
}

impl Gate {
    /// Only a soak: the unit must stay active this long (`--probation`).
    pub(crate) fn probation(soak: Duration) -> Gate {
        Gate {
            soak,
            check: None,
            timeout: Duration::from_secs(120),
        }
    }

    /// The gate in words, for plans and errors.
    pub(crate) fn describe(&self) -> String {
        match &self.check {
            Some(c) => format!(
                "`{}` must pass (on the {}, within {} s), then the unit stays active {} s",
                c.command,
                match c.place {
                    Place::Container => "container",
                    Place::Host => "host",
                },
                self.timeout.as_secs(),
                self.soak.as_secs()
            ),
            None => format!("the unit stays active {} s", self.soak.as_secs()),
        }
    }
}

/// Runs the check once, for at most `limit`: whether it passed, and its output.
fn check_once(
    host: &Host,
    name: &str,
    runtime: &Path,
    c: &Check,
    limit: Duration,
) -> Result<(bool, String)> {
    let mut cmd = match c.place {
        Place::Container => {
            let mut cmd = Command::new(runtime);
            cmd.args(["exec", name, "/bin/sh", "-c", &c.command]);
            cmd
        }
        Place::Host => {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", &c.command]).current_dir(&host.root);
            cmd
        }
    };
    cmd.run_bounded(limit.max(Duration::from_secs(1)))
}

/// Starts the unit of `name` (on its current files) and holds it to `gate`.
pub(crate) fn start_and_gate(host: &Host, name: &str, gate: &Gate) -> Result<()> {
    let sd = host.systemd()?;
    let unit = unit_name(name);
    let _ = sd.reset_failed(&unit);
    host.units.tmpfiles("--create", name)?;
    sd.start(&unit, JOB_TIMEOUT)?;
    crate::util::failpoint::hit("update.restarted");
    let Some(check) = &gate.check else {
        return sd.wait_active(&unit, gate.soak);
    };
    let runtime = {
        let deps = &host.deps;
        let slot = deps
            .active_slot(name)
            .ok_or_else(|| anyhow!("{name} is not installed"))?;
        std::path::PathBuf::from(deps.read_info(name, slot)?.runtime)
    };
    let start = Instant::now();
    let mut last = String::new();
    // One try a second, bounded by the timeout (and by a count, whatever the clock does).
    let mut passed = false;
    for _ in 0..100_000 {
        // The unit must stay up while the check is tried.
        sd.wait_active(&unit, Duration::ZERO)?;
        let left = gate.timeout.saturating_sub(start.elapsed());
        let (ok, out) = check_once(host, name, &runtime, check, left)?;
        last = out;
        if ok {
            passed = true;
            break;
        }
        if start.elapsed() >= gate.timeout {
            break;
        }
        std::thread::sleep(
            Duration::from_secs(1).min(gate.timeout.saturating_sub(start.elapsed())),
        );
    }
    if !passed {
        bail!(
            "the health check `{}` did not pass within {} s; it said: {}",
            check.command,
            gate.timeout.as_secs(),
            if last.is_empty() { "nothing" } else { &last }
        );
    }
    sd.wait_active(&unit, gate.soak)?;
    let (ok, out) = check_once(host, name, &runtime, check, gate.timeout)?;
    if !ok {
        bail!(
            "the health check `{}` passed, then failed after {} s of soak: {out}",
            check.command,
            gate.soak.as_secs()
        );
    }
    Ok(())
}
