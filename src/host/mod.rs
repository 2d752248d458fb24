//! What syscont drives on the host: systemd over D-Bus, the OCI runtime (runc, crun), and
//! the files an image installs on the host (`/exports/hostfs`).

pub(crate) mod hostfs;
pub(crate) mod runtime;
pub(crate) mod systemd;
