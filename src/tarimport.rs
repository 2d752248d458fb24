//! Streaming import of a layer tar into OSTree objects, with path validation.
//!
//! A layer import is a pipeline that keeps both cores busy:
//!
//! 1. the *producer* (its own thread, [`import_tar_with`]'s caller supplies it) reads the
//!    blob, hashes the compressed bytes and inflates them into a [`TarPipe`];
//! 2. this thread hashes the tar (its uncompressed digest), parses and validates every
//!    entry ([`parse_layer`]) and hands each [`Item`] to a [`TreeWriter`], which computes
//!    the object checksums (see [`crate::objects`]) and builds the layer's tree;
//! 3. a pool of threads writes the new objects ([`crate::objpool`]).
//!
//! Hostile input is refused, never "fixed": absolute paths, `..` components, hardlinks to
//! anything but an earlier file of the same layer, and entries that would be written through
//! a symlink or a file of the same layer. A union of layers is built as a tree (see
//! `store::merge_layers`), so a symlink in one layer can never redirect a path of another.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};

pub(crate) use crate::objects::{dirmeta_variant, Meta, S_IFDIR, S_IFLNK, S_IFREG};
use crate::treewrite::TreeWriter;
pub(crate) use crate::treewrite::{ImportStats, LayerTree, WriteOpts};

/// Files up to this size are read whole, hashed and queued in memory; larger ones stream
/// through a spool file (see [`crate::objects::Spool`]).
const INLINE_MAX: u64 = 8 * 1024 * 1024;
/// Chunk size for streaming large files to the tree writer.
const CHUNK: usize = 1024 * 1024;
/// File bytes queued for the object writers of one layer.
const IN_FLIGHT_MAX: usize = 48 * 1024 * 1024;
/// Size and number of the buffers between the producer and the parser.
const PIPE_CHUNK: usize = 256 * 1024;
const PIPE_DEPTH: usize = 8;

/// A device node, fifo or socket-less special file found in a layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeviceNode {
    /// Path inside the rootfs, without a leading `/`.
    pub path: String,
    /// `c` (character), `b` (block) or `p` (fifo).
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl DeviceNode {
    /// The content of the placeholder file stored in OSTree for this node.
    pub(crate) fn placeholder(&self) -> Vec<u8> {
        format!(
            "syscont-special-file {} {} {}\n",
            self.kind, self.major, self.minor
        )
        .into_bytes()
    }
}

/// One validated tar entry, as passed from the parser to the writer.
#[derive(Debug)]
pub(crate) enum Item {
    /// A directory (empty path: the root).
    Dir { path: Vec<String>, meta: Meta },
    /// A regular file. When `complete` is false, [`Item::Chunk`]s and an [`Item::FileEnd`]
    /// follow with the rest of the content.
    File {
        path: Vec<String>,
        meta: Meta,
        size: u64,
        data: Vec<u8>,
        complete: bool,
    },
    /// More content of the current large file.
    Chunk(Vec<u8>),
    /// The end of the current large file.
    FileEnd,
    /// A symbolic link.
    Symlink {
        path: Vec<String>,
        meta: Meta,
        target: String,
    },
    /// A hard link to an earlier file of the same layer.
    Hardlink {
        path: Vec<String>,
        target: Vec<String>,
    },
    /// A device node or fifo.
    Special { path: Vec<String>, node: DeviceNode },
}

/// Why a path from a layer is refused.
fn check_component(c: &str) -> std::result::Result<(), &'static str> {
    match c {
        ".." => Err("it contains a '..' component"),
        _ if c.contains('\0') => Err("it contains a NUL byte"),
        _ => Ok(()),
    }
}

/// Validates and normalises a path from a layer tar: a relative path, `./` prefixes and
/// empty components dropped. Returns the components (empty for the root directory).
pub(crate) fn normalize_path(raw: &[u8]) -> std::result::Result<Vec<String>, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "it is not valid UTF-8".to_string())?;
    if s.starts_with('/') {
        return Err("absolute paths are not allowed in a layer".into());
    }
    let mut out = Vec::new();
    for c in s.split('/') {
        if c.is_empty() || c == "." {
            continue;
        }
        check_component(c).map_err(|e| e.to_string())?;
        out.push(c.to_string());
    }
    Ok(out)
}

pub(crate) fn display(path: &[String]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        path.join("/")
    }
}

fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // SELinux labels belong to the host's policy, not to the image.
                if name == "security.selinux" || name.is_empty() {
                    continue;
                }
                let mut n = name.as_bytes().to_vec();
                n.push(0);
                xattrs.push((n, ext.value_bytes().to_vec()));
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok(xattrs)
}

/// Reads a tar stream, validates each entry and hands [`Item`]s to `sink`.
///
/// `allow_devices` is false for rootless stores, where device nodes cannot be created.
pub(crate) fn parse_layer<R: Read>(
    reader: R,
    allow_devices: bool,
    sink: &mut dyn FnMut(Item) -> Result<()>,
) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut seen_files: HashSet<Vec<String>> = HashSet::new();
    for entry in archive
        .entries()
        .context("Reading the layer as a tar archive")?
    {
        let mut entry = entry.context("Reading a tar entry")?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let path = normalize_path(&raw_path)
            .map_err(|why| anyhow!("refusing tar entry {shown:?}: {why}"))?;
        let header = entry.header().clone();
        let etype = header.entry_type();
        let perms = header
            .mode()
            .with_context(|| format!("Mode of tar entry {shown:?}"))?
            & 0o7777;
        let uid = u32::try_from(header.uid()?).unwrap_or(u32::MAX);
        let gid = u32::try_from(header.gid()?).unwrap_or(u32::MAX);
        let xattrs = pax_xattrs(&mut entry)?;
        let meta = |ftype: u32| Meta {
            uid,
            gid,
            mode: ftype | perms,
            xattrs: xattrs.clone(),
        };
        use tar::EntryType as E;
        match etype {
            E::Directory => sink(Item::Dir {
                path,
                meta: meta(S_IFDIR),
            })?,
            E::Regular | E::Continuous | E::GNUSparse => {
                if path.is_empty() {
                    bail!("refusing tar entry {shown:?}: a regular file cannot be the root");
                }
                let size = entry.size();
                seen_files.insert(path.clone());
                if size <= INLINE_MAX {
                    let mut data = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut data)
                        .with_context(|| format!("Reading {shown:?} from the layer"))?;
                    sink(Item::File {
                        path,
                        meta: meta(S_IFREG),
                        size: data.len() as u64,
                        data,
                        complete: true,
                    })?;
                } else {
                    sink(Item::File {
                        path,
                        meta: meta(S_IFREG),
                        size,
                        data: Vec::new(),
                        complete: false,
                    })?;
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        let mut buf = vec![0u8; n];
                        entry
                            .read_exact(&mut buf)
                            .with_context(|| format!("Reading {shown:?} from the layer"))?;
                        left -= n as u64;
                        sink(Item::Chunk(buf))?;
                    }
                    sink(Item::FileEnd)?;
                }
            }
            E::Symlink => {
                if path.is_empty() {
                    bail!("refusing tar entry {shown:?}: the root cannot be a symlink");
                }
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("symlink {shown:?} has no target"))?;
                let target = String::from_utf8(target.into_owned())
                    .map_err(|_| anyhow!("symlink {shown:?} has a target that is not UTF-8"))?;
                if target.is_empty() || target.contains('\0') {
                    bail!("refusing symlink {shown:?}: invalid target {target:?}");
                }
                // OSTree stores every symlink as 0777, whatever the tar says.
                let mut m = meta(S_IFLNK);
                m.mode = S_IFLNK | 0o777;
                sink(Item::Symlink {
                    path,
                    meta: m,
                    target,
                })?
            }
            E::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("hardlink {shown:?} has no target"))?
                    .into_owned();
                let tshown = String::from_utf8_lossy(&raw_target).into_owned();
                let target = normalize_path(&raw_target)
                    .map_err(|why| anyhow!("refusing hardlink {shown:?} to {tshown:?}: {why}"))?;
                if !seen_files.contains(&target) {
                    bail!(
                        "refusing hardlink {shown:?} to {tshown:?}: the target is not a regular \
                         file earlier in the same layer"
                    );
                }
                seen_files.insert(path.clone());
                sink(Item::Hardlink { path, target })?
            }
            E::Char | E::Block | E::Fifo => {
                let major = header.device_major()?.unwrap_or(0);
                let minor = header.device_minor()?.unwrap_or(0);
                // Overlay-style whiteout: a 0:0 character device means "deleted".
                if etype == E::Char && major == 0 && minor == 0 {
                    let mut wpath = path.clone();
                    let Some(last) = wpath.last_mut() else {
                        bail!("refusing tar entry {shown:?}: the root cannot be a whiteout");
                    };
                    *last = format!(".wh.{last}");
                    sink(Item::File {
                        path: wpath,
                        meta: Meta {
                            uid: 0,
                            gid: 0,
                            mode: S_IFREG,
                            xattrs: Vec::new(),
                        },
                        size: 0,
                        data: Vec::new(),
                        complete: true,
                    })?;
                    continue;
                }
                if !allow_devices {
                    bail!(
                        "refusing tar entry {shown:?}: device nodes and fifos cannot be stored \
                         in a rootless store"
                    );
                }
                if path.is_empty() {
                    bail!("refusing tar entry {shown:?}: the root cannot be a device");
                }
                let kind = match etype {
                    E::Char => 'c',
                    E::Block => 'b',
                    _ => 'p',
                };
                let node = DeviceNode {
                    path: path.join("/"),
                    kind,
                    major,
                    minor,
                    mode: perms,
                    uid,
                    gid,
                };
                sink(Item::Special { path, node })?
            }
            E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink => {}
            other => bail!("refusing tar entry {shown:?}: unsupported entry type {other:?}"),
        }
    }
    Ok(())
}

pub(crate) fn gerr(e: glib::Error) -> anyhow::Error {
    anyhow!("{e}")
}

/// `MutableTree::lookup` that treats a missing name as `(None, None)`.
pub(crate) fn lookup(
    dir: &ostree::MutableTree,
    name: &str,
) -> Result<(Option<glib::GString>, Option<ostree::MutableTree>)> {
    match dir.lookup(name) {
        Ok(r) => Ok(r),
        Err(e) if e.matches(gio::IOErrorEnum::NotFound) => Ok((None, None)),
        Err(e) => Err(gerr(e)),
    }
}

/// Where the producer of a layer writes the decompressed tar.
pub(crate) struct TarPipe {
    tx: SyncSender<Vec<u8>>,
}

/// The error a producer gets when the importer stopped first (its own error is the cause).
const PIPE_CLOSED: &str = "the layer importer stopped";

impl TarPipe {
    /// Copies `r` to its end into the pipe; returns the number of bytes.
    pub(crate) fn pump(&mut self, r: &mut dyn Read) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; PIPE_CHUNK];
            let mut n = 0;
            while n < buf.len() {
                match r.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if n == 0 {
                return Ok(total);
            }
            buf.truncate(n);
            total += n as u64;
            self.tx.send(buf).map_err(|_| anyhow!(PIPE_CLOSED))?;
        }
    }
}

/// The importer's end of the pipe, hashing what it reads.
struct PipeReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    hash: Sha256,
    count: u64,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.hash.update(&next);
                    self.count += next.len() as u64;
                    self.cur = next;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The uncompressed digest and size of a layer, as the importer read it.
#[derive(Debug, Clone)]
pub(crate) struct TarDigest {
    pub digest: String,
    pub size: u64,
}

/// Imports a layer: `produce` runs on a second thread and writes the decompressed tar into
/// the pipe; this thread hashes it, parses it and builds the tree, and a pool writes the
/// objects. Returns the tree, the tar's digest and whatever `produce` returned. When both
/// sides fail, the producer's error is the cause unless it only saw the importer stop.
pub(crate) fn import_tar_with<T, F>(
    repo: &ostree::Repo,
    opts: &WriteOpts,
    allow_devices: bool,
    produce: F,
) -> Result<(LayerTree, TarDigest, T)>
where
    T: Send,
    F: FnOnce(&mut TarPipe) -> Result<T> + Send,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH);
    std::thread::scope(|s| {
        let producer = std::thread::Builder::new()
            .name("inflate".into())
            .spawn_scoped(s, move || produce(&mut TarPipe { tx }))
            .context("Starting the layer's inflate thread")?;
        let mut reader = PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            hash: Sha256::new(),
            count: 0,
        };
        let imported = (|| {
            let mut writer = TreeWriter::new(repo, opts, IN_FLIGHT_MAX)?;
            if let Err(e) = parse_layer(&mut reader, allow_devices, &mut |item| writer.apply(item))
            {
                writer.abandon();
                return Err(e);
            }
            // What follows the end-of-archive blocks is part of the digest too.
            io::copy(&mut reader, &mut io::sink()).context("Reading the end of the layer")?;
            writer.finish()
        })();
        let PipeReader {
            rx, hash, count, ..
        } = reader;
        // The producer stops at its next write.
        drop(rx);
        let produced = producer
            .join()
            .map_err(|_| anyhow!("the layer producer panicked"))?;
        match (produced, imported) {
            (Err(e), Err(ours)) if format!("{e:#}").contains(PIPE_CLOSED) => Err(ours),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(v), Ok(tree)) => Ok((
                tree,
                TarDigest {
                    digest: format!("sha256:{}", hex::encode(hash.finalize())),
                    size: count,
                },
                v,
            )),
        }
    })
}

/// Imports a decompressed layer tar (see [`import_tar_with`]), verifying every object.
#[cfg(test)]
pub(crate) fn import_tar<R: Read + Send>(
    repo: &ostree::Repo,
    mut reader: R,
    allow_devices: bool,
) -> Result<LayerTree> {
    let opts = WriteOpts {
        mode: crate::objects::WriteMode::Verify,
        flusher: None,
    };
    import_tar_with(repo, &opts, allow_devices, move |pipe| {
        pipe.pump(&mut reader)
    })
    .map(|(t, _, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated() {
        let ok = |s: &str| normalize_path(s.as_bytes()).unwrap();
        assert_eq!(ok("./etc/passwd"), vec!["etc", "passwd"]);
        assert_eq!(ok("usr//bin/"), vec!["usr", "bin"]);
        assert!(ok("./").is_empty());
        assert!(ok(".").is_empty());
        for bad in ["../x", "a/../../b", "/etc/passwd", "a/..", "/"] {
            assert!(normalize_path(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(normalize_path(b"a/\xff").is_err());
    }

    fn test_repo() -> (tempfile::TempDir, ostree::Repo) {
        let d = tempfile::tempdir().unwrap();
        let repo = ostree::Repo::new_for_path(d.path().join("repo"));
        repo.create(ostree::RepoMode::BareUserOnly, gio::Cancellable::NONE)
            .unwrap();
        (d, repo)
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, t, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_mode(if *t == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            // Write the name bytes directly: the builder refuses hostile paths.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn import(tar: &[u8]) -> Result<LayerTree> {
        let (_d, repo) = test_repo();
        repo.prepare_transaction(gio::Cancellable::NONE).unwrap();
        let r = import_tar(&repo, tar, true);
        repo.abort_transaction(gio::Cancellable::NONE).unwrap();
        r
    }

    #[test]
    fn hostile_layers_are_refused() {
        use tar::EntryType as E;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                tar_with(&[("../evil", E::Regular, b"x", "")]),
                "'..'",
            ),
            (
                "absolute",
                tar_with(&[("/etc/evil", E::Regular, b"x", "")]),
                "absolute",
            ),
            (
                "hardlink escape",
                tar_with(&[("a", E::Link, b"", "../../etc/shadow")]),
                "'..'",
            ),
            (
                "hardlink to nothing",
                tar_with(&[("a", E::Link, b"", "etc/shadow")]),
                "not a regular file earlier",
            ),
            (
                "through symlink",
                tar_with(&[
                    ("x", E::Symlink, b"", "/etc"),
                    ("x/evil", E::Regular, b"x", ""),
                ]),
                "written through",
            ),
        ];
        for (what, tar, expect) in cases {
            let e = import(&tar)
                .err()
                .unwrap_or_else(|| panic!("{what} accepted"));
            let msg = format!("{e:#}");
            assert!(msg.contains(expect), "{what}: {msg}");
        }
    }

    #[test]
    fn imports_a_small_layer() {
        use tar::EntryType as E;
        let t = tar_with(&[
            ("./", E::Directory, b"", ""),
            ("etc/", E::Directory, b"", ""),
            ("etc/hello", E::Regular, b"hi\n", ""),
            ("etc/hello2", E::Link, b"", "etc/hello"),
            ("bin/sh", E::Symlink, b"", "busybox"),
            ("etc/.wh.gone", E::Regular, b"", ""),
            ("etc/copy", E::Regular, b"hi\n", ""),
        ]);
        let tree = import(&t).unwrap();
        assert_eq!(tree.stats.entries, 7);
        assert_eq!(tree.stats.objects_written, 3);
        assert_eq!(tree.stats.objects_reused, 1);
    }
}
