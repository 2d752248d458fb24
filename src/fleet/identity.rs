//! Who this host is to the fleet, and when it starts: its holder id and a random splay.
//!
//! The default holder id is derived from `/etc/machine-id` the way Zincati derives its own
//! (systemd's `sd_id128_get_machine_app_specific()`: HMAC-SHA256 keyed by the machine id over
//! a fixed application id, truncated to 128 bits and marked as a version 4 UUID), with
//! syscont's own application id. Invariant: the raw machine id, which should stay
//! confidential, never leaves the host; the same host always gets the same id, and syscont's
//! id differs from Zincati's on the same host.

use anyhow::{Context, Result};
use std::time::Duration;

/// syscont's application id for [`default_id`] (`46f640833a6f468e8232082ace47b54c`).
pub const SYSCONT_APP_ID: [u8; 16] = [
    0x46, 0xf6, 0x40, 0x83, 0x3a, 0x6f, 0x46, 0x8e, 0x82, 0x32, 0x08, 0x2a, 0xce, 0x47, 0xb5, 0x4c,
];

/// This host's name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The app-specific id of `machine_id` (32 hex digits) for `app_id`, as systemd's
/// `sd_id128_get_machine_app_specific()` derives it: HMAC-SHA256 keyed by the machine id over
/// the app id, the first 16 bytes marked as a version 4 UUID, in lower-case hex.
pub fn app_specific_id(machine_id: &str, app_id: &[u8; 16]) -> Result<String> {
    use hmac::{Hmac, Mac};
    let text = machine_id.trim().replace('-', "");
    let key = hex::decode(&text)
        .ok()
        .filter(|k| k.len() == 16)
        .with_context(|| format!("machine id {:?} is not 32 hex digits", machine_id.trim()))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(app_id);
    let mut id: [u8; 16] = mac.finalize().into_bytes()[..16]
        .try_into()
        .expect("SHA-256 is 32 bytes");
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}

/// This host's default holder id: its `/etc/machine-id` hashed with [`SYSCONT_APP_ID`], never
/// the machine id itself (as Zincati does with its own app id).
pub fn default_id() -> Result<String> {
    let path = "/etc/machine-id";
    let text = std::fs::read_to_string(path).with_context(|| format!("Reading {path}"))?;
    app_specific_id(&text, &SYSCONT_APP_ID)
        .with_context(|| format!("Deriving the fleet id from {path}"))
}

/// A random delay in `[0, max)`, to spread the pulls of a fleet over time.
pub fn splay(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(fastrand::u64(0..nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_specific_id_matches_systemd() {
        // A published pair: libsystemd's keyed-hash test vector.
        assert_eq!(
            app_specific_id(
                "2e074e9b299c41a59923c51ae16f279b\n",
                &hex::decode("033b1b9b264441fcaa173e9e5bf35c5a")
                    .unwrap()
                    .try_into()
                    .unwrap()
            )
            .unwrap(),
            "4d4a86c9c6644a479560ded5d19a30c5"
        );
        assert!(app_specific_id("xyz", &SYSCONT_APP_ID).is_err());
        assert!(app_specific_id("", &SYSCONT_APP_ID).is_err());
        let id = app_specific_id("2e074e9b299c41a59923c51ae16f279b", &SYSCONT_APP_ID).unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!(id, "2e074e9b299c41a59923c51ae16f279b");
        super::super::records::validate_id(&id).unwrap();
    }

    #[test]
    fn default_id_is_stable_and_not_the_machine_id() {
        let machine = std::fs::read_to_string("/etc/machine-id").unwrap();
        let id = default_id().unwrap();
        assert_eq!(id, default_id().unwrap());
        assert_ne!(id, machine.trim());
        // systemd's own derivation with the same app id (systemd is a dependency of syscont).
        let out = std::process::Command::new("systemd-id128")
            .args([
                "machine-id",
                "--app-specific=46f640833a6f468e8232082ace47b54c",
            ])
            .output()
            .expect("systemd-id128 runs (make test installs systemd)");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    }

    #[test]
    fn splay_stays_below_max() {
        assert_eq!(splay(Duration::ZERO), Duration::ZERO);
        for _ in 0..1000 {
            assert!(splay(Duration::from_millis(5)) < Duration::from_millis(5));
        }
    }
}
