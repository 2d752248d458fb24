//! Errors that callers (and scripts, through the exit code) branch on.

/// Failures a script may want to tell apart by exit code.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The image is not in the local store.
    #[error("image {0} not found in the local store")]
    ImageNotFound(String),
    /// The reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// There is no image store yet (nothing was pulled).
    #[error("there is no image store at {0} yet: nothing has been pulled")]
    NoStore(String),
    /// Another syscont process holds a lock we need and we were asked not to wait.
    #[error("{0} is locked by another syscont process")]
    Locked(String),
}

/// Exit code for an error: 2 for user errors, 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.chain().find_map(|c| c.downcast_ref::<UserError>()) {
        Some(UserError::ImageNotFound(_) | UserError::NoStore(_)) => 3,
        Some(_) => 2,
        None => 1,
    }
}
