//! Streaming import of a layer tar into OSTree objects, with path validation.
