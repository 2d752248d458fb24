//! Running helper programs (skopeo, runc, systemd-tmpfiles) with useful errors.

use anyhow::{Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};

/// Extension methods for [`Command`] that capture stderr into the error.
pub(crate) trait CommandExt {
    /// Runs the command with stdin closed; fails with the tail of stderr.
    fn run_checked(&mut self) -> Result<()>;
    /// Runs the command and returns its stdout as a string.
    fn output_string(&mut self) -> Result<String>;
    /// Runs the command with stdin closed for at most `limit` (then it is killed); returns
    /// whether it succeeded and the tail of its output (stdout and stderr together).
    fn run_bounded(&mut self, limit: std::time::Duration) -> Result<(bool, String)>;
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `max` bytes of a file, as lossy UTF-8 with surrounding whitespace trimmed.
fn tail(mut f: std::fs::File, max: u64) -> String {
    let len = f.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

impl CommandExt for Command {
    fn run_checked(&mut self) -> Result<()> {
        let errf = tempfile::tempfile().context("Creating a temporary file for stderr")?;
        self.stdin(Stdio::null()).stderr(errf.try_clone()?);
        tracing::debug!("exec: {}", describe(self));
        let st = self
            .status()
            .with_context(|| format!("Executing {}", describe(self)))?;
        if !st.success() {
            anyhow::bail!("{} failed ({st}): {}", describe(self), tail(errf, 2048));
        }
        Ok(())
    }

    fn output_string(&mut self) -> Result<String> {
        let errf = tempfile::tempfile().context("Creating a temporary file for stderr")?;
        self.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(errf.try_clone()?);
        tracing::debug!("exec: {}", describe(self));
        let out = self
            .output()
            .with_context(|| format!("Executing {}", describe(self)))?;
        if !out.status.success() {
            anyhow::bail!(
                "{} failed ({}): {}",
                describe(self),
                out.status,
                tail(errf, 2048)
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("Output of {}", describe(self)))
    }

    fn run_bounded(&mut self, limit: std::time::Duration) -> Result<(bool, String)> {
        let outf = tempfile::tempfile().context("Creating a temporary file for the output")?;
        self.stdin(Stdio::null())
            .stdout(outf.try_clone()?)
            .stderr(outf.try_clone()?);
        tracing::debug!("exec: {}", describe(self));
        let mut child = self
            .spawn()
            .with_context(|| format!("Executing {}", describe(self)))?;
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if start.elapsed() >= limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let text = tail(outf, 2048);
        Ok(match status {
            Some(st) => (st.success(), text),
            None => (
                false,
                format!("{text}\n(stopped after {} s)", limit.as_secs())
                    .trim()
                    .into(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_command_reports_stderr() {
        let e = Command::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run_checked()
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn bounded_commands_end_in_time() {
        let limit = std::time::Duration::from_millis(300);
        let (ok, out) = Command::new("sh")
            .args(["-c", "echo fine; echo also >&2"])
            .run_bounded(limit)
            .unwrap();
        assert!(ok && out.contains("fine") && out.contains("also"), "{out}");
        let (ok, out) = Command::new("sleep").arg("30").run_bounded(limit).unwrap();
        assert!(!ok && out.contains("stopped after"), "{out}");
    }

    #[test]
    fn output_string_returns_stdout() {
        let s = Command::new("echo").arg("hi").output_string().unwrap();
        assert_eq!(s, "hi\n");
    }
}
