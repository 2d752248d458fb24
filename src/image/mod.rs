//! Images before they reach the store: references and their transports, registries.conf,
//! the signature policy, and skopeo (its argv, and its image proxy).

pub(crate) mod policy;
pub(crate) mod proxy;
pub(crate) mod reference;
pub(crate) mod registries;
pub(crate) mod skopeo;
