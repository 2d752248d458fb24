//! Errors that callers (and scripts, through the exit code) branch on, and the exit codes.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the command failed (the message says why) |
//! | 2 | the command line or an input was invalid (a usage error, a bad value, name or reference) |
//! | 3 | the image or container named does not exist |
//! | 141 | standard output was closed before everything was written (`| head`) |
//! | N | `syscont run` with a command, or a run-once image: the container's own exit status |
//! | 125 | `syscont run` with a command: syscont itself failed, before or around the container |

/// Failures a script may want to tell apart by exit code.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The image is not in the local store.
    #[error("image {0} not found in the local store")]
    ImageNotFound(String),
    /// There is no image store yet (nothing was pulled).
    #[error("there is no image store at {0} yet: nothing has been pulled")]
    NoStore(String),
    /// No container of that name is installed.
    #[error("System container '{0}' is not installed")]
    NotInstalled(String),
    /// The reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// An argument or value the user gave is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// A container ended with a non-zero status: `syscont run` exits with it, quietly.
#[derive(Debug, thiserror::Error)]
#[error("the container exited with status {0}")]
pub struct ContainerExit(pub u8);

/// syscont itself failed during `syscont run` (exit code 125, as `podman run`).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct RunFailed(pub anyhow::Error);

/// The exit code of a failed command (see the module doc).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(ContainerExit(code)) = e.downcast_ref::<ContainerExit>() {
        return *code;
    }
    if e.downcast_ref::<RunFailed>().is_some() {
        return RUN_FAILED;
    }
    match e.chain().find_map(|c| c.downcast_ref::<UserError>()) {
        Some(UserError::ImageNotFound(_) | UserError::NoStore(_) | UserError::NotInstalled(_)) => 3,
        Some(_) => 2,
        None => 1,
    }
}

/// The exit code of `syscont run` when syscont itself failed (as `podman run` does).
pub const RUN_FAILED: u8 = 125;

/// A container's exit status as a process exit code: its code, or 128 + the signal that
/// killed it, as a shell reports it.
pub fn status_code(st: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        _ => 1,
    }
}
