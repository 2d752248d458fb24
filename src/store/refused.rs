//! Content syscont refuses, as a type that callers branch on: fetching it again cannot
//! change the verdict (see the retries in `layers`).

/// Content syscont refuses: a hostile or unsupported tar entry, manifest or digest, a
/// layer that is not what the image config says.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub String);

/// Whether `e` is a [`Refused`] somewhere in its chain.
pub(crate) fn is_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Refused>().is_some())
}
