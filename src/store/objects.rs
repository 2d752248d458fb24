//! OSTree content objects, named by syscont: the checksum of every file and symlink a layer
//! brings is computed once, here, and libostree stores the object under that name.
//!
//! An OSTree content object is named by the SHA-256 of its *content stream*: the file
//! header (the variant `(uuuusa(ayay))` of uid, gid, mode, rdev, symlink target and
//! xattrs, prefixed by its length and four NUL bytes) followed by the file's bytes.
//! [`ObjectHasher`] hashes that stream with `sha2` (SHA-NI where the CPU has it), and
//! [`write_object`] hands libostree the *same bytes* with `write_content_trusted`, which
//! takes the caller's checksum as the object's name, skips an object that already exists,
//! and hashes nothing (libostree 2022.7 would otherwise hash every object a second time,
//! with GLib's software SHA-256). [`WriteMode::Verify`] (`--verify-objects`, and the
//! tests) writes through libostree's hashing path instead and fails on any difference.
//!
//! # Why a wrong checksum never becomes an object name
//!
//! libostree does not check a trusted checksum, so the argument is ours:
//!
//! - **One buffer, hashed and written.** The header is serialised once ([`file_header`]),
//!   and the checksum is taken over exactly the header bytes and content bytes that the
//!   stream then gives libostree: the same `Vec`s for files up to the inline size, the
//!   same spool file for larger ones ([`Spool`]: what is hashed is what is written to it,
//!   its length is checked before it is used, and it is an unlinked file only this
//!   process holds). No byte is hashed that is not stored, nor stored unhashed.
//! - **The header is canonical.** libostree parses the header we send and, when it
//!   hashes (fsck, `--verify-objects`), hashes its own re-serialisation of what it parsed.
//!   Ours is built by GLib from typed values (normal form: big-endian ids, sorted and
//!   de-duplicated xattrs, rdev 0, an empty target for files, mode 0777 for symlinks), so
//!   the re-serialisation is byte-identical; `checksums_match_libostree` pins this for
//!   files, symlinks, xattrs, setuid and empty files, and the integration tests run
//!   `ostree fsck` after pulls of every layer shape.
//! - **The name depends only on the bytes, never on where they came from.** A hardlink
//!   reuses the checksum of its target's object; a layer a registry recompressed reuses
//!   the tree of the layer with the same uncompressed digest; no path copies a checksum
//!   from the registry, a manifest or a cache into an object name. A layer whose digests
//!   turn out wrong is aborted before any ref names it, and the objects it staged are still
//!   correctly named (each is the hash of its own bytes).
//! - **Repair.** `images verify --repair` deletes objects whose bytes no longer match their
//!   names; `refetch_layers` then imports the layers again through this same path, so the
//!   missing objects are written from fresh bytes under names computed from those bytes.
//!   An object that exists is never rewritten (trusted or not), so a damaged object that was
//!   not deleted stays damaged and `images verify` keeps naming it.

use anyhow::{bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::glib::prelude::*;
use ostree::prelude::*;
use sha2::{Digest, Sha256};
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// `S_IFMT` and friends, as OSTree stores them in modes.
pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFLNK: u32 = 0o120000;

/// Ownership, mode and extended attributes of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// The full `st_mode`, including the file type bits.
    pub mode: u32,
    /// Extended attributes: names with a trailing NUL (as OSTree stores them), sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// Root-owned 0755 directory: the metadata of directories a layer does not list.
    pub(crate) fn default_dir() -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            mode: S_IFDIR | 0o755,
            xattrs: Vec::new(),
        }
    }
}

/// The dirmeta variant for a directory.
pub(crate) fn dirmeta_variant(meta: &Meta) -> glib::Variant {
    (
        meta.uid.to_be(),
        meta.gid.to_be(),
        meta.mode.to_be(),
        &meta.xattrs,
    )
        .to_variant()
}

/// The length-prefixed file header that starts a content stream (and its checksum).
pub(crate) fn file_header(meta: &Meta, symlink_target: Option<&str>) -> Vec<u8> {
    let v = (
        meta.uid.to_be(),
        meta.gid.to_be(),
        meta.mode.to_be(),
        0u32,
        symlink_target.unwrap_or(""),
        &meta.xattrs,
    )
        .to_variant();
    let data = v.data();
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(data);
    out
}

/// The OSTree content checksum of a file or symlink (header, then content).
#[cfg(test)]
pub(crate) fn content_checksum(meta: &Meta, symlink_target: Option<&str>, data: &[u8]) -> String {
    let mut h = ObjectHasher::new(&file_header(meta, symlink_target));
    h.update(data);
    h.finish()
}

/// SHA-256 over a content stream, fed in pieces.
pub(crate) struct ObjectHasher(Sha256);

impl ObjectHasher {
    /// Starts with the header bytes the stream will carry.
    pub(crate) fn new(header: &[u8]) -> ObjectHasher {
        let mut h = Sha256::new();
        h.update(header);
        ObjectHasher(h)
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The checksum as OSTree spells it (lowercase hex).
    pub(crate) fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// How content objects reach the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum WriteMode {
    /// Named by syscont's checksum; libostree hashes nothing.
    #[default]
    Trusted,
    /// Through libostree's hashing path: it recomputes every checksum and any difference
    /// from syscont's fails the write (`--verify-objects`, and the tests).
    Verify,
}

/// The content of one object, after its header.
pub(crate) enum Body {
    /// In memory (files up to the inline size, and symlinks: empty).
    Bytes(Vec<u8>),
    /// Header and content in a spool file (larger files).
    Spooled(Spool),
}

/// One object to write, its checksum already computed over `header` and `body`.
pub(crate) struct ObjectJob {
    pub csum: String,
    pub header: Vec<u8>,
    pub body: Body,
    /// The path in the layer, for error messages.
    pub path: String,
}

impl ObjectJob {
    /// The length of the whole content stream, header included.
    pub(crate) fn stream_len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => (self.header.len() + b.len()) as u64,
            Body::Spooled(s) => s.len,
        }
    }

    /// The bytes of content this job holds in memory (what the budget counts).
    pub(crate) fn mem_len(&self) -> usize {
        match &self.body {
            Body::Bytes(b) => b.len(),
            Body::Spooled(_) => 0,
        }
    }
}

/// Writes one content object into the repository's open transaction.
pub(crate) fn write_object(repo: &ostree::Repo, mode: WriteMode, job: ObjectJob) -> Result<()> {
    let ObjectJob {
        csum,
        header,
        body,
        path,
    } = job;
    let (stream, len): (gio::InputStream, u64) = match body {
        Body::Bytes(data) => {
            let len = (header.len() + data.len()) as u64;
            let s = gio::MemoryInputStream::from_bytes(&glib::Bytes::from_owned(header));
            if !data.is_empty() {
                s.add_bytes(&glib::Bytes::from_owned(data));
            }
            (s.upcast(), len)
        }
        Body::Spooled(spool) => {
            // A stream on the spool file's descriptor lets libostree copy it in the kernel
            // (copy_file_range) instead of through an 8 KiB buffer.
            let len = spool.len;
            let f = gio::File::for_path(format!("/proc/self/fd/{}", spool.file.as_raw_fd()));
            let written = match f.read(gio::Cancellable::NONE) {
                // The spool stays open (and so alive) until the write is done.
                Ok(s) => write_stream(repo, mode, &csum, s.upcast_ref(), len),
                // No /proc: read it through a plain stream.
                Err(_) => {
                    let mut file = spool
                        .file
                        .try_clone()
                        .with_context(|| format!("Reopening the spool file of {path}"))?;
                    file.rewind()
                        .with_context(|| format!("Reading the spool file of {path}"))?;
                    let s = gio::ReadInputStream::new(file);
                    write_stream(repo, mode, &csum, s.upcast_ref(), len)
                }
            };
            drop(spool);
            return written.with_context(|| format!("Writing object {csum} ({path})"));
        }
    };
    write_stream(repo, mode, &csum, &stream, len)
        .with_context(|| format!("Writing object {csum} ({path})"))
}

fn write_stream(
    repo: &ostree::Repo,
    mode: WriteMode,
    csum: &str,
    stream: &gio::InputStream,
    len: u64,
) -> Result<()> {
    match mode {
        WriteMode::Trusted => repo
            .write_content_trusted(csum, stream, len, gio::Cancellable::NONE)
            .map_err(anyhow::Error::from),
        WriteMode::Verify => {
            let theirs = repo
                .write_content(Some(csum), stream, len, gio::Cancellable::NONE)?
                .to_hex();
            if theirs != csum {
                bail!("libostree computed {theirs}, syscont computed {csum}");
            }
            Ok(())
        }
    }
}

/// A large file on its way to becoming an object: its content stream (header, then the
/// bytes as they arrive) goes to an unlinked temporary file next to the repository while
/// it is hashed, so memory stays bounded whatever the file's size.
pub(crate) struct Spool {
    file: std::fs::File,
    hasher: Option<ObjectHasher>,
    /// Bytes in the file (header included).
    len: u64,
    /// Content bytes still expected.
    left: u64,
}

impl Spool {
    /// Starts a spool in `dir` (the repository's `tmp`, on the same filesystem).
    pub(crate) fn new(dir: &Path, header: &[u8], size: u64) -> Result<Spool> {
        let mut file = tempfile::tempfile_in(dir)
            .with_context(|| format!("Creating a spool file in {}", dir.display()))?;
        file.write_all(header)
            .with_context(|| format!("Writing a spool file in {}", dir.display()))?;
        Ok(Spool {
            file,
            hasher: Some(ObjectHasher::new(header)),
            len: header.len() as u64,
            left: size,
        })
    }

    /// Hashes and appends content bytes.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.len() as u64 > self.left {
            bail!("more content than the file's size");
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.file.write_all(data).context("Writing a spool file")?;
        self.len += data.len() as u64;
        self.left -= data.len() as u64;
        Ok(())
    }

    /// The checksum of everything written, once the whole content is there.
    pub(crate) fn finish(&mut self) -> Result<String> {
        if self.left != 0 {
            bail!("the file ended {} bytes early", self.left);
        }
        let on_disk = self
            .file
            .stream_position()
            .context("Reading a spool file")?;
        if on_disk != self.len {
            bail!(
                "the spool file holds {on_disk} bytes, {} were written",
                self.len
            );
        }
        let h = self
            .hasher
            .take()
            .ok_or_else(|| anyhow::anyhow!("a spool file was finished twice"))?;
        Ok(h.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_repo(mode: ostree::RepoMode) -> (tempfile::TempDir, ostree::Repo) {
        let d = tempfile::tempdir().unwrap();
        let repo = ostree::Repo::new_for_path(d.path().join("repo"));
        repo.create(mode, gio::Cancellable::NONE).unwrap();
        (d, repo)
    }

    fn reg(mode: u32, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            mode: S_IFREG | mode,
            xattrs,
        }
    }

    /// Our checksum must equal the one libostree computes (from the same metadata, and
    /// again from the stream we hand it), or objects would be misnamed.
    #[test]
    fn checksums_match_libostree() {
        // bare-user keeps ownership and xattrs, which bare-user-only drops.
        let (_d, repo) = test_repo(ostree::RepoMode::BareUser);
        repo.prepare_transaction(gio::Cancellable::NONE).unwrap();
        let xattrs = vec![
            (b"user.a\0".to_vec(), b"1".to_vec()),
            (b"user.b\0".to_vec(), vec![0, 1, 2]),
        ];
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let cases: Vec<(Meta, &[u8])> = vec![
            (reg(0o644, vec![]), b"hello world\n"),
            (reg(0o644, vec![]), b""),
            (reg(0o4755, vec![]), b"#!/bin/sh\n"),
            (
                Meta {
                    uid: 1234,
                    gid: 5678,
                    ..reg(0o600, vec![])
                },
                b"mine\n",
            ),
            (reg(0o644, xattrs.clone()), b"x\n"),
            (reg(0o755, vec![]), &big),
        ];
        for (meta, data) in &cases {
            let x = (!meta.xattrs.is_empty()).then(|| meta.xattrs.to_variant());
            let theirs = repo
                .write_regfile_inline(
                    None,
                    meta.uid,
                    meta.gid,
                    meta.mode,
                    x.as_ref(),
                    data,
                    gio::Cancellable::NONE,
                )
                .unwrap();
            let ours = content_checksum(meta, None, data);
            assert_eq!(ours, theirs.as_str(), "{meta:?}");
            // The stream we write hashes to the same name in libostree's hashing path.
            let job = ObjectJob {
                csum: ours.clone(),
                header: file_header(meta, None),
                body: Body::Bytes(data.to_vec()),
                path: "f".into(),
            };
            write_object(&repo, WriteMode::Verify, job).unwrap();
        }
        let lmeta = Meta {
            mode: S_IFLNK | 0o777,
            ..reg(0, vec![])
        };
        let theirs = repo
            .write_symlink(None, 0, 0, None, "/bin/busybox", gio::Cancellable::NONE)
            .unwrap();
        assert_eq!(
            content_checksum(&lmeta, Some("/bin/busybox"), &[]),
            theirs.as_str()
        );
        repo.commit_transaction(gio::Cancellable::NONE).unwrap();
    }

    /// Trusted writes, spooled or not, give objects that libostree's fsck accepts; a wrong
    /// checksum in verifying mode is refused and leaves no object.
    #[test]
    fn trusted_and_spooled_objects_pass_fsck() {
        let (d, repo) = test_repo(ostree::RepoMode::BareUser);
        repo.prepare_transaction(gio::Cancellable::NONE).unwrap();
        let meta = reg(0o644, vec![(b"user.k\0".to_vec(), b"v".to_vec())]);
        let data = b"small".to_vec();
        let csum = content_checksum(&meta, None, &data);
        let job = ObjectJob {
            csum: csum.clone(),
            header: file_header(&meta, None),
            body: Body::Bytes(data),
            path: "small".into(),
        };
        write_object(&repo, WriteMode::Trusted, job).unwrap();
        let large: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let header = file_header(&meta, None);
        let mut spool =
            Spool::new(&d.path().join("repo/tmp"), &header, large.len() as u64).unwrap();
        for c in large.chunks(100_000) {
            spool.write(c).unwrap();
        }
        let lcsum = spool.finish().unwrap();
        assert_eq!(lcsum, content_checksum(&meta, None, &large));
        let job = ObjectJob {
            csum: lcsum.clone(),
            header: Vec::new(),
            body: Body::Spooled(spool),
            path: "large".into(),
        };
        write_object(&repo, WriteMode::Trusted, job).unwrap();
        let wrong = "0".repeat(64);
        let job = ObjectJob {
            csum: wrong.clone(),
            header: file_header(&meta, None),
            body: Body::Bytes(b"other".to_vec()),
            path: "wrong".into(),
        };
        assert!(write_object(&repo, WriteMode::Verify, job).is_err());
        let root = ostree::MutableTree::new();
        let dm = repo
            .write_metadata(
                ostree::ObjectType::DirMeta,
                None,
                &dirmeta_variant(&Meta::default_dir()),
                gio::Cancellable::NONE,
            )
            .unwrap()
            .to_hex();
        root.set_metadata_checksum(&dm);
        root.replace_file("small", &csum).unwrap();
        root.replace_file("large", &lcsum).unwrap();
        let tree = repo.write_mtree(&root, gio::Cancellable::NONE).unwrap();
        let tree = tree.downcast::<ostree::RepoFile>().unwrap();
        let commit = repo
            .write_commit_with_time(None, None, None, None, &tree, 0, gio::Cancellable::NONE)
            .unwrap();
        repo.transaction_set_ref(None, "test", Some(&commit));
        repo.commit_transaction(gio::Cancellable::NONE).unwrap();
        for c in [&csum, &lcsum] {
            assert!(repo
                .has_object(ostree::ObjectType::File, c, gio::Cancellable::NONE)
                .unwrap());
        }
        assert!(!repo
            .has_object(ostree::ObjectType::File, &wrong, gio::Cancellable::NONE)
            .unwrap());
        let out = std::process::Command::new("ostree")
            .arg("fsck")
            .arg(format!("--repo={}", d.path().join("repo").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
