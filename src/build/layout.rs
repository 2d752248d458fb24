//! The OCI image layout a build writes into (`--output oci:DIR[:TAG]`, or a temporary
//! directory for a push).
//!
//! Blobs are named by their sha256 digest and only ever appear complete: each is written
//! to a temporary file and renamed into place. A digest that is not a well-formed sha256
//! digest never becomes a path. `index.json` keeps the images other builds put there: a
//! ref name (the `org.opencontainers.image.ref.name` annotation) is replaced, never
//! duplicated, and concurrent builds into one layout take turns through a lock on the
//! directory. The JSON written is canonical (compact, keys sorted), so that equal
//! content gives equal digests.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub(super) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(super) const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(super) const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// An OCI descriptor.
pub(super) fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Serialises JSON compactly with every object's keys sorted.
pub(super) fn canonical_json(mut value: Value) -> Result<Vec<u8>> {
    fn sort(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.sort_keys();
                map.values_mut().for_each(sort);
            }
            Value::Array(items) => items.iter_mut().for_each(sort),
            _ => {}
        }
    }
    sort(&mut value);
    serde_json::to_vec(&value).context("Serialising JSON")
}

/// The path of a `sha256:` blob under `blobs`; rejects anything that is not a sha256 digest.
pub(super) fn blob_path(blobs: &Path, digest: &str) -> Result<PathBuf> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(blobs.join(hex))
        }
        _ => bail!("Unsupported or invalid blob digest {digest:?}"),
    }
}

/// An OCI image layout directory being written.
#[derive(Debug)]
pub(super) struct Layout {
    dir: PathBuf,
    /// `DIR/blobs/sha256`.
    pub blobs: PathBuf,
}

impl Layout {
    /// Opens the layout at `dir`, creating it if it does not exist or is empty.
    pub(super) fn open_or_create(dir: &Path) -> Result<Self> {
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            let non_empty = fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if non_empty {
                bail!(
                    "{} is not empty and not an OCI layout (no oci-layout file)",
                    dir.display()
                );
            }
        }
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("Creating {}", blobs.display()))?;
        if !marker.exists() {
            crate::util::fsutil::atomic_write(
                &marker,
                br#"{"imageLayoutVersion":"1.0.0"}"#,
                0o644,
            )?;
        }
        Ok(Layout {
            dir: dir.to_owned(),
            blobs,
        })
    }

    /// Stores `data` as a blob and returns its digest.
    pub(super) fn put_blob(&self, data: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let path = blob_path(&self.blobs, &digest)?;
        crate::util::fsutil::atomic_write(&path, data, 0o644)?;
        Ok(digest)
    }

    /// Points the ref name `name` in `index.json` at `manifest`, replacing an entry with the
    /// same name and keeping all others.
    pub(super) fn set_ref(&self, name: &str, mut manifest: Value) -> Result<()> {
        // Serialise concurrent builds into the same layout: lock the directory itself.
        let dir_handle =
            File::open(&self.dir).with_context(|| format!("Opening {}", self.dir.display()))?;
        rustix::fs::flock(&dir_handle, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("Locking {}", self.dir.display()))?;

        let index_path = self.dir.join("index.json");
        let mut index: Value = match fs::read(&index_path) {
            Ok(data) => serde_json::from_slice(&data)
                .with_context(|| format!("Parsing {}", index_path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => json!({ "schemaVersion": 2 }),
            Err(e) => return Err(e).with_context(|| format!("Reading {}", index_path.display())),
        };
        let index_obj = index
            .as_object_mut()
            .ok_or_else(|| anyhow!("{} is not a JSON object", index_path.display()))?;
        let mut manifests: Vec<Value> = index_obj
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        manifests.retain(|m| {
            m.pointer(&format!(
                "/annotations/{}",
                REF_NAME_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
                != Some(name)
        });
        manifest["annotations"] = json!({ REF_NAME_ANNOTATION: name });
        manifests.push(manifest);
        index_obj.insert("manifests".into(), Value::Array(manifests));
        let data = canonical_json(index)?;
        crate::util::fsutil::atomic_write(&index_path, &data, 0o644)
    }
}

/// Copies a blob through a temporary file so that `dest` never holds a partial blob.
pub(super) fn copy_blob(src: &Path, dest: &Path, blobs: &Path) -> Result<()> {
    let mut input = File::open(src).with_context(|| format!("Opening {}", src.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".blob-")
        .suffix(".tmp")
        .tempfile_in(blobs)
        .with_context(|| format!("Creating a temporary file in {}", blobs.display()))?;
    io::copy(&mut input, &mut tmp)
        .with_context(|| format!("Copying {} to {}", src.display(), dest.display()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest)
        .with_context(|| format!("Renaming to {}", dest.display()))?;
    Ok(())
}

pub(super) fn read_json(path: &Path) -> Result<Value> {
    let data = fs::read(path).with_context(|| format!("Reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("Parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (ref name, digest) pairs of the layout's index.
    fn refs(dir: &Path) -> Vec<(String, String)> {
        let index = read_json(&dir.join("index.json")).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["annotations"][REF_NAME_ANNOTATION]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                    m["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn index_keeps_other_refs_and_replaces_same_ref() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let layout = Layout::open_or_create(&dir).unwrap();
        let point = |name: &str, data: &[u8]| {
            let digest = layout.put_blob(data).unwrap();
            let desc = descriptor(MEDIA_MANIFEST, &digest, data.len() as u64);
            layout.set_ref(name, desc).unwrap();
            digest
        };
        let one = point("one", b"1");
        let two = point("two", b"2");
        assert_eq!(
            refs(&dir),
            [("one".to_owned(), one), ("two".to_owned(), two.clone())]
        );
        let one_again = point("one", b"3");
        assert_eq!(
            refs(&dir),
            [("two".to_owned(), two), ("one".to_owned(), one_again)]
        );
        assert_eq!(
            fs::read_to_string(dir.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        // An existing layout opens again; a directory with other things in it does not.
        Layout::open_or_create(&dir).unwrap();
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("file"), b"x").unwrap();
        let e = Layout::open_or_create(&other).unwrap_err().to_string();
        assert!(e.contains("not an OCI layout"), "{e}");
    }

    #[test]
    fn blob_paths_and_json() {
        let hex = "ab".repeat(32);
        assert_eq!(
            blob_path(Path::new("/b"), &format!("sha256:{hex}")).unwrap(),
            Path::new("/b").join(&hex)
        );
        assert!(blob_path(Path::new("/b"), "sha256:../../etc").is_err());
        assert!(blob_path(Path::new("/b"), &format!("sha256:{}", hex.to_uppercase())).is_err());
        assert!(blob_path(Path::new("/b"), &format!("sha512:{hex}{hex}")).is_err());
        assert_eq!(
            canonical_json(json!({"b": 1, "a": {"d": 2, "c": 3}})).unwrap(),
            br#"{"a":{"c":3,"d":2},"b":1}"#
        );
    }
}
