//! The layers of a built image: a directory tree written as a gzip-compressed tar.
//!
//! The same tree always gives the same bytes. Entries are sorted by their name in the
//! archive, directories carry a trailing `/`, every header has the build's mtime, numeric
//! owners and no user or group names, and the gzip header has no mtime and no file name.
//! A set of hardlinks becomes one file (the first in archive order) and link entries.
//! Symlinks are archived as links and never followed; device nodes and fifos keep their
//! type; sockets are skipped. Extended attributes go into PAX records, except
//! `security.selinux`, which belongs to the host. A file that shrinks while it is read
//! fails the build rather than giving a short entry.

use anyhow::{bail, Context, Result};
use flate2::{Compression, GzBuilder};
use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::layout::{blob_path, sha256_digest};

/// The xattr that is never put into layers (it belongs to the host's policy).
const SKIPPED_XATTR: &str = "security.selinux";

/// A layer blob as written.
#[derive(Debug, Clone)]
pub(super) struct LayerBlob {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the compressed blob.
    pub size: u64,
}

/// A writer that hashes (sha256) and counts everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, the `sha256:` digest and the byte count.
    fn finish(self) -> (W, Digest, u64) {
        (
            self.inner,
            sha256_digest(self.hasher.finalize()),
            self.count,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `remaining` bytes of a file; fails if the file shrank since its stat.
struct ExactReader<R> {
    inner: io::Take<R>,
    remaining: u64,
}

impl<R: Read> ExactReader<R> {
    fn new(inner: R, len: u64) -> Self {
        ExactReader {
            inner: inner.take(len),
            remaining: len,
        }
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being archived",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// One file system object to archive.
#[derive(Debug)]
struct Entry {
    /// The name in the archive: relative, directories with a trailing `/`.
    name: Vec<u8>,
    /// Where it is on disk.
    path: PathBuf,
    meta: fs::Metadata,
}

/// All entries under `root`, sorted by archive name. With a `prefix`, `root` itself is
/// the entry `PREFIX/` and everything else lies below it.
fn collect_entries(root: &Path, prefix: Option<&str>) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut rel = Vec::new();
    if let Some(prefix) = prefix {
        rel.extend_from_slice(prefix.as_bytes());
        rel.push(b'/');
        let meta = fs::metadata(root).with_context(|| format!("Reading {}", root.display()))?;
        entries.push(Entry {
            name: rel.clone(),
            path: root.to_owned(),
            meta,
        });
    }
    walk(root, &rel, &mut entries)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn walk(dir: &Path, rel: &[u8], out: &mut Vec<Entry>) -> Result<()> {
    let reader = fs::read_dir(dir).with_context(|| format!("Reading {}", dir.display()))?;
    for item in reader {
        let item = item.with_context(|| format!("Reading {}", dir.display()))?;
        let path = item.path();
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("Reading {}", path.display()))?;
        if meta.file_type().is_socket() {
            tracing::warn!("Skipping socket {}", path.display());
            continue;
        }
        let mut name = rel.to_vec();
        name.extend_from_slice(item.file_name().as_bytes());
        if meta.is_dir() {
            name.push(b'/');
            walk(&path, &name, out)?;
        }
        out.push(Entry { name, path, meta });
    }
    Ok(())
}

/// The extended attributes of `path` (not following symlinks), sorted by name, without
/// `security.selinux`. A file system without xattr support has none.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    use rustix::io::Errno;
    let names = loop {
        let len = match rustix::fs::llistxattr_query(path) {
            Ok(0) => return Ok(Vec::new()),
            Ok(len) => len,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("Listing xattrs of {}", path.display()))
            }
        };
        let mut buf = vec![0u8; len];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            Err(Errno::RANGE) => continue, // grew in between
            Err(e) => {
                return Err(e).with_context(|| format!("Listing xattrs of {}", path.display()))
            }
        }
    };
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else {
            tracing::warn!(
                "Skipping xattr {} of {}: name is not UTF-8",
                String::from_utf8_lossy(raw),
                path.display()
            );
            continue;
        };
        if name == SKIPPED_XATTR {
            continue;
        }
        let value = loop {
            let len = match rustix::fs::lgetxattr_query(path, name) {
                Ok(len) => len,
                Err(Errno::NODATA) => break None, // removed in between
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("Reading xattr {name} of {}", path.display()))
                }
            };
            let mut buf = vec![0u8; len];
            match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    break Some(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("Reading xattr {name} of {}", path.display()))
                }
            }
        };
        if let Some(value) = value {
            out.push((name.to_owned(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the tree under `src` (below `prefix`, if given) as a gzip tar layer into `blobs`,
/// streaming through a temporary file that is renamed to the blob's digest.
pub(super) fn write_layer(
    src: &Path,
    prefix: Option<&str>,
    blobs: &Path,
    epoch: u64,
) -> Result<LayerBlob> {
    let entries = collect_entries(src, prefix)?;
    let tmp = tempfile::Builder::new()
        .prefix(".layer-")
        .suffix(".tmp")
        .tempfile_in(blobs)
        .with_context(|| format!("Creating a temporary layer file in {}", blobs.display()))?;

    let compressed = HashingWriter::new(BufWriter::new(tmp.as_file()));
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(compressed, Compression::new(6));
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    let mut first_paths: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for entry in &entries {
        append_entry(&mut tar, entry, epoch, &mut first_paths)
            .with_context(|| format!("Archiving {}", entry.path.display()))?;
    }
    let uncompressed = tar.into_inner().context("Finishing the tar stream")?;
    let (gz, diff_id, _) = uncompressed.finish();
    let compressed = gz.finish().context("Finishing the gzip stream")?;
    let (buffered, digest, size) = compressed.finish();
    buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .context("Flushing the layer file")?;

    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.sync_all().context("Syncing the layer file")?;
    let dest = blob_path(blobs, &digest)?;
    tmp.persist(&dest)
        .with_context(|| format!("Renaming the layer to {}", dest.display()))?;
    crate::util::fsutil::fsync_dir(blobs)?;
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
    })
}

/// Appends one entry with explicit, deterministic header fields. The first path of a set
/// of hardlinks (in archive order) is stored as a file; later ones become link entries.
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    entry: &Entry,
    epoch: u64,
    first_paths: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<()> {
    use tar::EntryType;
    let meta = &entry.meta;
    let file_type = meta.file_type();
    let name = Path::new(OsStr::from_bytes(&entry.name));

    let mut header = tar::Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(meta.uid().into());
    header.set_gid(meta.gid().into());
    header.set_mtime(epoch);
    header.set_size(0);

    if !file_type.is_dir() && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = first_paths.get(&key) {
            header.set_entry_type(EntryType::Link);
            tar.append_link(&mut header, name, Path::new(OsStr::from_bytes(first)))?;
            return Ok(());
        }
        first_paths.insert(key, entry.name.clone());
    }

    let xattrs = read_xattrs(&entry.path)?;
    if !xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }

    if file_type.is_file() {
        header.set_entry_type(EntryType::Regular);
        header.set_size(meta.len());
        let file = File::open(&entry.path)?;
        tar.append_data(&mut header, name, ExactReader::new(file, meta.len()))?;
    } else if file_type.is_dir() {
        header.set_entry_type(EntryType::Directory);
        tar.append_data(&mut header, name, io::empty())?;
    } else if file_type.is_symlink() {
        header.set_entry_type(EntryType::Symlink);
        let target = fs::read_link(&entry.path)?;
        tar.append_link(&mut header, name, target)?;
    } else if file_type.is_char_device() || file_type.is_block_device() {
        header.set_entry_type(if file_type.is_char_device() {
            EntryType::Char
        } else {
            EntryType::Block
        });
        header.set_device_major(rustix::fs::major(meta.rdev()))?;
        header.set_device_minor(rustix::fs::minor(meta.rdev()))?;
        tar.append_data(&mut header, name, io::empty())?;
    } else if file_type.is_fifo() {
        header.set_entry_type(EntryType::Fifo);
        tar.append_data(&mut header, name, io::empty())?;
    } else {
        bail!("Unsupported file type");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{make_exports, make_rootfs, write_file, LONG_NAME};
    use flate2::read::GzDecoder;

    /// One tar entry as read back.
    #[derive(Debug)]
    struct ReadEntry {
        name: Vec<u8>,
        kind: tar::EntryType,
        link: Option<Vec<u8>>,
        mode: u32,
        mtime: u64,
        xattrs: Vec<(String, Vec<u8>)>,
        device: Option<(u32, u32)>,
        uname: Vec<u8>,
        data: Vec<u8>,
    }

    fn read_layer(blob: &[u8]) -> Vec<ReadEntry> {
        let mut archive = tar::Archive::new(GzDecoder::new(blob));
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut xattrs = Vec::new();
            if let Some(exts) = entry.pax_extensions().unwrap() {
                for ext in exts {
                    let ext = ext.unwrap();
                    if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
            let h = entry.header().clone();
            let device = match h.entry_type() {
                tar::EntryType::Char | tar::EntryType::Block => Some((
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                )),
                _ => None,
            };
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push(ReadEntry {
                name: entry.path_bytes().into_owned(),
                kind: h.entry_type(),
                link: entry.link_name_bytes().map(|l| l.into_owned()),
                mode: h.mode().unwrap(),
                mtime: h.mtime().unwrap(),
                xattrs,
                device,
                uname: h.username_bytes().unwrap_or_default().to_vec(),
                data,
            });
        }
        out
    }

    /// A directory to write layer blobs into.
    fn blobs_dir(tmp: &Path) -> PathBuf {
        let blobs = tmp.join("blobs");
        fs::create_dir(&blobs).unwrap();
        blobs
    }

    #[test]
    fn layer_entries_are_sorted_and_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        let fixture = make_rootfs(&rootfs);
        let blobs = blobs_dir(tmp.path());
        let epoch = 1_600_000_000;
        let layer = write_layer(&rootfs, None, &blobs, epoch).unwrap();
        let blob = fs::read(blob_path(&blobs, &layer.digest).unwrap()).unwrap();
        // Nothing but the blob is left in the directory.
        assert_eq!(fs::read_dir(&blobs).unwrap().count(), 1);

        // Digests: the blob's and the uncompressed stream's.
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&blob))),
            layer.digest.as_ref()
        );
        let mut raw = Vec::new();
        GzDecoder::new(&blob[..]).read_to_end(&mut raw).unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&raw))),
            layer.diff_id.as_ref()
        );
        assert_eq!(layer.size, blob.len() as u64);
        // The gzip header carries no mtime (bytes 4..8) and no name (FLG bit 3).
        assert_eq!(&blob[4..8], &[0, 0, 0, 0]);
        assert_eq!(blob[3] & 0x08, 0);

        let entries = read_layer(&blob);
        let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "entries must be unique and in byte order");
        for e in &entries {
            let shown = String::from_utf8_lossy(&e.name);
            assert!(
                !e.name.starts_with(b"/") && !e.name.starts_with(b"./"),
                "{shown}"
            );
            assert_eq!(e.mtime, epoch, "{shown}");
            assert!(e.uname.is_empty(), "{shown}");
            assert_eq!(
                e.kind == tar::EntryType::Directory,
                e.name.ends_with(b"/"),
                "{shown}"
            );
        }
        let find = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n.as_bytes())
                .unwrap_or_else(|| panic!("no entry {n}"))
        };
        let pos = |n: &str| names.iter().position(|x| *x == n.as_bytes()).unwrap();
        assert!(pos("data-x") < pos("data/"));
        assert!(pos("data/") < pos("data/a-link"));
        assert!(pos("empty/") > 0);

        assert_eq!(find("data/a-link").kind, tar::EntryType::Regular);
        assert_eq!(find("data/a-link").data, b"shared content\n");
        let link = find("data/z-orig");
        assert_eq!(link.kind, tar::EntryType::Link);
        assert_eq!(link.link.as_deref(), Some(&b"data/a-link"[..]));
        let alias = find("usr/bin/tool-alias");
        assert_eq!(alias.kind, tar::EntryType::Symlink);
        assert_eq!(alias.link.as_deref(), Some(&b"tool"[..]));
        assert_eq!(find("usr/bin/tool").mode, 0o4755);
        assert_eq!(find(&format!("data/{LONG_NAME}")).data, b"long\n");
        assert_eq!(find("run/fifo").kind, tar::EntryType::Fifo);
        assert!(!names.contains(&&b"run/sock"[..]), "sockets are skipped");
        if fixture.has_xattr {
            assert_eq!(
                find("etc/hello.txt").xattrs,
                vec![("user.test".to_owned(), b"value-1".to_vec())]
            );
        }
        if fixture.has_device {
            let dev = find("dev/null");
            assert_eq!(dev.kind, tar::EntryType::Char);
            assert_eq!(dev.device, Some((1, 3)));
        }
    }

    #[test]
    fn a_prefixed_layer_holds_only_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let exports = tmp.path().join("exports");
        make_exports(&exports);
        let blobs = blobs_dir(tmp.path());
        let layer = write_layer(&exports, Some("exports"), &blobs, 0).unwrap();
        let blob = fs::read(blob_path(&blobs, &layer.digest).unwrap()).unwrap();
        let names: Vec<String> = read_layer(&blob)
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "exports/",
                "exports/config.json.template",
                "exports/hostfs/",
                "exports/hostfs/etc/",
                "exports/hostfs/etc/app.conf"
            ]
        );
    }

    #[test]
    fn the_same_tree_gives_the_same_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        write_file(&rootfs.join("etc/a"), b"a\n", 0o644);
        let blobs = blobs_dir(tmp.path());
        let one = write_layer(&rootfs, None, &blobs, 0).unwrap();
        let two = write_layer(&rootfs, None, &blobs, 0).unwrap();
        assert_eq!((&one.digest, &one.diff_id), (&two.digest, &two.diff_id));
        let later = write_layer(&rootfs, None, &blobs, 1).unwrap();
        assert_ne!(one.digest, later.digest, "the mtime is in the headers");
    }
}
