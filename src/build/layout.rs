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
use oci_spec::image::{
    Descriptor, Digest, ImageIndex, ImageIndexBuilder, MediaType, Sha256Digest,
    ANNOTATION_REF_NAME, SCHEMA_VERSION,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The digest of a finished sha256 hash.
pub(super) fn sha256_digest(hash: sha2::digest::Output<Sha256>) -> Digest {
    Sha256Digest::from_str(&hex::encode(hash))
        .expect("hex::encode of a sha256 hash is 64 lowercase hex digits")
        .into()
}

/// Serialises `value` as compact JSON with every object's keys sorted, whatever order
/// the type's fields or maps have.
pub(super) fn canonical_json(value: &impl Serialize) -> Result<Vec<u8>> {
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
    let mut value = serde_json::to_value(value).context("Serialising JSON")?;
    sort(&mut value);
    serde_json::to_vec(&value).context("Serialising JSON")
}

/// Reads and parses a JSON file.
pub(super) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let data = fs::read(path).with_context(|| format!("Reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("Parsing {}", path.display()))
}

/// The path of a `sha256:` blob under `blobs`; rejects anything that is not a sha256 digest.
pub(super) fn blob_path(blobs: &Path, digest: &Digest) -> Result<PathBuf> {
    let digest = digest.as_ref();
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

    /// Stores `value` as a canonical JSON blob and returns its descriptor.
    pub(super) fn put_json(
        &self,
        value: &impl Serialize,
        media_type: MediaType,
    ) -> Result<Descriptor> {
        let data = canonical_json(value)?;
        let digest = sha256_digest(Sha256::digest(&data));
        crate::util::fsutil::atomic_write(&blob_path(&self.blobs, &digest)?, &data, 0o644)?;
        Ok(Descriptor::new(media_type, data.len() as u64, digest))
    }

    /// Brings the blobs `digests` of the layout whose blobs are in `src` into this one,
    /// as hardlinks where possible, else as copies; blobs already here are kept.
    pub(super) fn add_blobs_from<'a>(
        &self,
        src: &Path,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<()> {
        for digest in digests {
            let from = blob_path(src, digest)?;
            let dest = blob_path(&self.blobs, digest)?;
            if dest.exists() {
                continue;
            }
            match fs::hard_link(&from, &dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(_) => copy_blob(&from, &dest, &self.blobs)?,
            }
        }
        crate::util::fsutil::fsync_dir(&self.blobs)
    }

    /// Points the ref name `name` in `index.json` at `manifest`, replacing an entry with the
    /// same name and keeping all others.
    pub(super) fn set_ref(&self, name: &str, mut manifest: Descriptor) -> Result<()> {
        // Serialise concurrent builds into the same layout: lock the directory itself.
        let dir_handle =
            File::open(&self.dir).with_context(|| format!("Opening {}", self.dir.display()))?;
        rustix::fs::flock(&dir_handle, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("Locking {}", self.dir.display()))?;

        let index_path = self.dir.join("index.json");
        let mut index = match fs::read(&index_path) {
            Ok(data) => parse_index(&data, &index_path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => ImageIndexBuilder::default()
                .schema_version(SCHEMA_VERSION)
                .manifests(Vec::new())
                .build()
                .context("Creating an image index")?,
            Err(e) => return Err(e).with_context(|| format!("Reading {}", index_path.display())),
        };
        let mut manifests = index.manifests().clone();
        manifests.retain(|m| ref_name(m) != Some(name));
        manifest.set_annotations(Some(HashMap::from([(
            ANNOTATION_REF_NAME.to_owned(),
            name.to_owned(),
        )])));
        manifests.push(manifest);
        index.set_manifests(manifests);
        let data = canonical_json(&index)?;
        crate::util::fsutil::atomic_write(&index_path, &data, 0o644)
    }
}

/// The ref name a descriptor of `index.json` carries, if any.
pub(super) fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()?
        .get(ANNOTATION_REF_NAME)
        .map(String::as_str)
}

/// Parses an existing `index.json`.
fn parse_index(data: &[u8], path: &Path) -> Result<ImageIndex> {
    let value: Value =
        serde_json::from_slice(data).with_context(|| format!("Parsing {}", path.display()))?;
    if !value.is_object() {
        return Err(anyhow!("{} is not a JSON object", path.display()));
    }
    serde_json::from_value(value).with_context(|| format!("Parsing {}", path.display()))
}

/// Copies a blob through a temporary file so that `dest` never holds a partial blob.
fn copy_blob(src: &Path, dest: &Path, blobs: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The (ref name, digest) pairs of the layout's index.
    fn refs(dir: &Path) -> Vec<(String, String)> {
        let index: ImageIndex = read_json(&dir.join("index.json")).unwrap();
        assert_eq!(index.schema_version(), 2);
        index
            .manifests()
            .iter()
            .map(|m| (ref_name(m).unwrap().to_owned(), m.digest().to_string()))
            .collect()
    }

    #[test]
    fn index_keeps_other_refs_and_replaces_same_ref() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let layout = Layout::open_or_create(&dir).unwrap();
        let point = |name: &str, content: &str| {
            let desc = layout.put_json(&content, MediaType::ImageManifest).unwrap();
            layout.set_ref(name, desc.clone()).unwrap();
            desc.digest().to_string()
        };
        let one = point("one", "1");
        let two = point("two", "2");
        assert_eq!(
            refs(&dir),
            [("one".to_owned(), one), ("two".to_owned(), two.clone())]
        );
        let one_again = point("one", "3");
        assert_eq!(
            refs(&dir),
            [("two".to_owned(), two), ("one".to_owned(), one_again)]
        );
        let index = fs::read_to_string(dir.join("index.json")).unwrap();
        assert!(
            index.starts_with(r#"{"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"two"},"digest":"sha256:"#),
            "{index}"
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
        // An index that is not an object is refused, and left alone.
        fs::write(dir.join("index.json"), b"[]").unwrap();
        let desc = layout.put_json(&"4", MediaType::ImageManifest).unwrap();
        let e = format!("{:#}", layout.set_ref("four", desc).unwrap_err());
        assert!(e.contains("is not a JSON object"), "{e}");
        assert_eq!(fs::read(dir.join("index.json")).unwrap(), b"[]");
    }

    #[test]
    fn blobs_are_named_by_their_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::open_or_create(tmp.path()).unwrap();
        let desc = layout.put_json(&"x", MediaType::ImageConfig).unwrap();
        let data = fs::read(blob_path(&layout.blobs, desc.digest()).unwrap()).unwrap();
        assert_eq!(data, br#""x""#);
        assert_eq!(desc.size(), 3);
        assert_eq!(desc.digest(), &sha256_digest(Sha256::digest(&data)));

        // Blobs of another layout come over once, by digest.
        let other = Layout::open_or_create(&tmp.path().join("other")).unwrap();
        other
            .add_blobs_from(&layout.blobs, [desc.digest(), desc.digest()])
            .unwrap();
        assert_eq!(
            fs::read(blob_path(&other.blobs, desc.digest()).unwrap()).unwrap(),
            data
        );
    }

    #[test]
    fn only_sha256_digests_become_paths() {
        let hex = "ab".repeat(32);
        let digest = |s: &str| Digest::from_str(s).unwrap();
        assert_eq!(
            blob_path(Path::new("/b"), &digest(&format!("sha256:{hex}"))).unwrap(),
            Path::new("/b").join(&hex)
        );
        let e = blob_path(Path::new("/b"), &digest(&format!("sha512:{hex}{hex}"))).unwrap_err();
        assert!(
            e.to_string().contains("Unsupported or invalid blob digest"),
            "{e}"
        );
        // Digests that could name another file do not even parse.
        assert!(Digest::from_str("sha256:../../etc").is_err());
        assert!(Digest::from_str(&format!("sha256:{}", hex.to_uppercase())).is_err());
        assert!(Digest::from_str(&format!("x/../sha256:{hex}")).is_err());
        assert_eq!(
            canonical_json(&serde_json::json!({"b": 1, "a": {"d": 2, "c": 3}})).unwrap(),
            br#"{"a":{"c":3,"d":2},"b":1}"#
        );
    }
}
