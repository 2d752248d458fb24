//! Entry points for the fuzz targets in `fuzz/` (built with the `fuzzing` feature): each
//! feeds arbitrary input to one parser or check and asserts what must always hold. A
//! panic, a hang or an assertion failure is a finding.

use std::collections::BTreeMap;

/// Atomic's `$VAR` engine: never panics; a success leaves no `$NAME` it knew about
/// unreplaced, and `variables` lists only names it accepts.
pub fn dollar(template: &str) {
    let mut values = BTreeMap::new();
    for v in crate::template::dollar::variables(template) {
        assert!(
            !v.is_empty() && !v.starts_with(|c: char| c.is_ascii_digit()),
            "{v:?}"
        );
        values.insert(v, "v".to_string());
    }
    let _ = crate::template::dollar::substitute(template, "fuzz", &values);
    let _ = crate::template::dollar::substitute(template, "fuzz", &BTreeMap::new());
}

/// Image references: never panic; what parses has a store name and a skopeo form.
pub fn reference(s: &str) {
    if let Ok(r) = crate::image::reference::ImageReference::parse(s) {
        let _ = r.store_name();
        let _ = r.to_skopeo();
    }
    let _ = crate::image::reference::DockerRef::parse(s);
    let _ = crate::image::reference::default_container_name(s);
}

/// Atomic's ref encoding: only `[A-Za-z0-9.-_]` come out, and it round-trips.
pub fn ostree_ref(name: &str) {
    let enc = crate::image::reference::encode_ostree_ref(name);
    assert!(
        enc.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)),
        "{enc}"
    );
    let dec = crate::image::reference::decode_ostree_ref(&enc).expect("an encoded ref decodes");
    assert_eq!(dec, name);
}

/// Tar path checks: an accepted path has no empty, `.` or `..` component.
pub fn tar_path(raw: &[u8]) {
    if let Ok(parts) = crate::store::tarparse::normalize_path(raw) {
        for p in &parts {
            assert!(
                !p.is_empty() && p != "." && p != ".." && !p.contains('/'),
                "{parts:?}"
            );
        }
    }
}

/// Manifests and indexes: never panic.
pub fn manifest(bytes: &[u8]) {
    let _ = crate::store::Manifest::parse(bytes);
}

/// Container names: an accepted name is one path component, usable in a unit name.
pub fn container_name(name: &str) {
    if crate::container::deploy::validate_name(name).is_ok() {
        assert!(!name.is_empty() && name != "." && name != "..", "{name:?}");
        assert!(
            !name.contains('/') && !name.chars().any(|c| c.is_control()),
            "{name:?}"
        );
    }
}
