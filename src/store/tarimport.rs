//! Streaming import of a layer tar into OSTree objects, with path validation.
//!
//! The import runs in two stages so that a single layer uses both cores:
//! [`parse_layer`] reads the (already decompressed) tar stream, validates every entry and
//! emits [`Item`]s; [`TreeWriter`] hashes file contents the way OSTree does, writes only
//! the objects the repository does not have yet, and builds the layer's directory tree.
//!
//! Hostile input is refused, never "fixed": absolute paths, `..` components, hardlinks to
//! anything but an earlier file of the same layer, and entries that would be written through
//! a symlink or a file of the same layer. A union of layers is built as a tree (see
//! `store::merge_layers`), so a symlink in one layer can never redirect a path of another.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::glib::prelude::*;
use ostree::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;

/// `S_IFMT` and friends, as OSTree stores them in modes.
pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFLNK: u32 = 0o120000;

/// Files up to this size are hashed in memory before writing, so objects that already
/// exist are never written again. Larger files stream through OSTree's content writer.
const INLINE_MAX: u64 = 8 * 1024 * 1024;
/// Chunk size for streaming large files between the stages.
const CHUNK: usize = 1024 * 1024;
/// File bytes in flight between the parser and the object writers of one layer.
const IN_FLIGHT_MAX: usize = 48 * 1024 * 1024;

/// A count of bytes in flight: the parser waits while the writers are this far behind,
/// which bounds the memory of an import whatever the layer holds.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Bytes in flight, and whether the consumer has stopped (then nobody waits).
    state: std::sync::Mutex<(usize, bool)>,
    freed: std::sync::Condvar,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            state: std::sync::Mutex::new((0, false)),
            freed: std::sync::Condvar::new(),
            max,
        }
    }

    /// Waits until `n` more bytes fit (a single item larger than the budget counts as all
    /// of it).
    pub(crate) fn acquire(&self, n: usize) {
        let n = n.min(self.max);
        let mut st = self.state.lock().expect("not poisoned");
        while !st.1 && st.0 + n > self.max {
            st = self.freed.wait(st).expect("not poisoned");
        }
        st.0 += n;
    }

    /// Gives back `n` bytes.
    pub(crate) fn release(&self, n: usize) {
        let n = n.min(self.max);
        let mut st = self.state.lock().expect("not poisoned");
        st.0 = st.0.saturating_sub(n);
        self.freed.notify_all();
    }

    /// The consumer stopped: nobody waits any more.
    pub(crate) fn close(&self) {
        self.state.lock().expect("not poisoned").1 = true;
        self.freed.notify_all();
    }
}

impl Item {
    /// The file bytes this item carries.
    fn data_len(&self) -> usize {
        match self {
            Item::File { data, .. } | Item::Chunk(data) => data.len(),
            _ => 0,
        }
    }
}

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

    fn xattrs_variant(&self) -> glib::Variant {
        self.xattrs.to_variant()
    }
}

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

fn display(path: &[String]) -> String {
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

/// The OSTree content checksum of a file or symlink: SHA-256 over the length-prefixed
/// file header variant `(uuuusa(ayay))` followed by the file's content.
pub(crate) fn content_checksum(meta: &Meta, symlink_target: Option<&str>, data: &[u8]) -> String {
    let header = file_header(meta, symlink_target);
    let mut h = Sha256::new();
    h.update(&header);
    h.update(data);
    hex::encode(h.finalize())
}

fn file_header(meta: &Meta, symlink_target: Option<&str>) -> Vec<u8> {
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

/// Counters reported after a layer import.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ImportStats {
    pub entries: u64,
    pub objects_written: u64,
    pub objects_reused: u64,
}

/// The result of writing one layer's tree.
#[derive(Debug)]
pub(crate) struct LayerTree {
    /// The root as a repo file, ready for `write_commit`.
    pub root: ostree::RepoFile,
    pub devices: Vec<DeviceNode>,
    pub stats: ImportStats,
}

/// Builds a layer's tree in the repository from [`Item`]s.
pub(crate) struct TreeWriter<'r> {
    repo: &'r ostree::Repo,
    root: ostree::MutableTree,
    dirmeta: HashMap<Meta, String>,
    /// Checksums of objects known to exist (written or found) during this import.
    known: HashSet<String>,
    /// Paths of regular files of this layer and their checksums (for hardlinks).
    files: HashMap<Vec<String>, String>,
    /// Non-directories created by this layer (never written through).
    leaves: HashSet<Vec<String>>,
    devices: Vec<DeviceNode>,
    large: Option<(Vec<String>, ostree::ContentWriter)>,
    stats: ImportStats,
    pool: ObjectPool,
    budget: Arc<Budget>,
}

/// One small file for the object writers: its checksum is known, so the tree can refer to
/// it at once while the bytes are written on another thread.
struct ObjectJob {
    csum: String,
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs: Option<glib::Variant>,
    data: Vec<u8>,
}

/// Threads that write small file objects into the repo's open transaction. libostree
/// writes content objects from several threads itself (its pull does), and each thread
/// holds its own reference to the repo.
struct ObjectPool {
    tx: Option<std::sync::mpsc::SyncSender<ObjectJob>>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl ObjectPool {
    fn new(repo: &ostree::Repo, budget: Arc<Budget>) -> ObjectPool {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        let (tx, rx) = std::sync::mpsc::sync_channel::<ObjectJob>(64);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let threads = (0..n)
            .map(|_| {
                let repo = repo.clone();
                let rx = rx.clone();
                let budget = budget.clone();
                std::thread::spawn(move || -> Result<()> {
                    loop {
                        let job = match rx.lock().expect("not poisoned").recv() {
                            Ok(job) => job,
                            Err(_) => return Ok(()),
                        };
                        let written = repo
                            .write_regfile_inline(
                                Some(&job.csum),
                                job.uid,
                                job.gid,
                                job.mode,
                                job.xattrs.as_ref(),
                                &job.data,
                                gio::Cancellable::NONE,
                            )
                            .map_err(gerr)
                            .with_context(|| format!("Writing object {}", job.csum));
                        budget.release(job.data.len());
                        written?;
                    }
                })
            })
            .collect();
        ObjectPool {
            tx: Some(tx),
            threads,
        }
    }

    /// Queues a write; fails with the writer's own error when a writer has stopped.
    fn send(&mut self, job: ObjectJob) -> Result<()> {
        let sent = self.tx.as_ref().map(|tx| tx.send(job).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        self.finish()?;
        bail!("the object writers stopped")
    }

    /// Waits until every queued object is written.
    fn finish(&mut self) -> Result<()> {
        self.tx = None;
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(anyhow!("an object writer panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for ObjectPool {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

impl std::fmt::Debug for TreeWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWriter")
            .field("stats", &self.stats)
            .finish()
    }
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

impl<'r> TreeWriter<'r> {
    /// A writer for one layer. The repository must be in a transaction.
    pub(crate) fn new(repo: &'r ostree::Repo, budget: Arc<Budget>) -> Result<Self> {
        let mut w = TreeWriter {
            repo,
            root: ostree::MutableTree::new(),
            dirmeta: HashMap::new(),
            known: HashSet::new(),
            files: HashMap::new(),
            leaves: HashSet::new(),
            devices: Vec::new(),
            large: None,
            stats: ImportStats::default(),
            pool: ObjectPool::new(repo, budget.clone()),
            budget,
        };
        let m = w.dirmeta_checksum(&Meta::default_dir())?;
        w.root.set_metadata_checksum(&m);
        Ok(w)
    }

    fn dirmeta_checksum(&mut self, meta: &Meta) -> Result<String> {
        if let Some(c) = self.dirmeta.get(meta) {
            return Ok(c.clone());
        }
        let v = dirmeta_variant(meta);
        let csum = self
            .repo
            .write_metadata(
                ostree::ObjectType::DirMeta,
                None,
                &v,
                gio::Cancellable::NONE,
            )
            .map_err(gerr)
            .context("Writing directory metadata")?
            .to_hex();
        self.dirmeta.insert(meta.clone(), csum.clone());
        Ok(csum)
    }

    /// The directory that holds `path`'s last component, creating missing parents.
    fn parent(&mut self, path: &[String]) -> Result<ostree::MutableTree> {
        let mut dir = self.root.clone();
        for (i, name) in path[..path.len().saturating_sub(1)].iter().enumerate() {
            let (file, sub) = lookup(&dir, name)?;
            dir = match (file, sub) {
                (_, Some(sub)) => sub,
                (Some(_), None) => bail!(
                    "refusing tar entry {:?}: it would be written through {:?}, which this \
                     layer made a file or symlink",
                    path.join("/"),
                    path[..=i].join("/")
                ),
                (None, None) => {
                    let sub = dir.ensure_dir(name).map_err(gerr)?;
                    let m = self.dirmeta_checksum(&Meta::default_dir())?;
                    sub.set_metadata_checksum(&m);
                    sub
                }
            };
        }
        Ok(dir)
    }

    fn place_file(&mut self, path: &[String], csum: &str) -> Result<()> {
        let dir = self.parent(path)?;
        let name = path.last().expect("files have a name");
        if let (_, Some(_)) = lookup(&dir, name)? {
            dir.remove(name, false).map_err(gerr)?;
        }
        dir.replace_file(name, csum).map_err(gerr)?;
        self.leaves.insert(path.to_vec());
        Ok(())
    }

    fn have_object(&mut self, csum: &str) -> Result<bool> {
        if self.known.contains(csum) {
            return Ok(true);
        }
        let have = self
            .repo
            .has_object(ostree::ObjectType::File, csum, gio::Cancellable::NONE)
            .map_err(gerr)?;
        if have {
            self.known.insert(csum.to_string());
        }
        Ok(have)
    }

    fn write_small(&mut self, meta: &Meta, data: Vec<u8>) -> Result<String> {
        let csum = content_checksum(meta, None, &data);
        if self.have_object(&csum)? {
            self.budget.release(data.len());
            self.stats.objects_reused += 1;
            return Ok(csum);
        }
        self.pool.send(ObjectJob {
            csum: csum.clone(),
            uid: meta.uid,
            gid: meta.gid,
            mode: meta.mode,
            xattrs: (!meta.xattrs.is_empty()).then(|| meta.xattrs_variant()),
            data,
        })?;
        self.known.insert(csum.clone());
        self.stats.objects_written += 1;
        Ok(csum)
    }

    /// Applies one item.
    pub(crate) fn apply(&mut self, item: Item) -> Result<()> {
        match item {
            Item::Chunk(buf) => {
                let (path, w) = self
                    .large
                    .as_ref()
                    .ok_or_else(|| anyhow!("file content without a file"))?;
                let written = w
                    .write_all(&buf, gio::Cancellable::NONE)
                    .map_err(|e| anyhow!("{e:?}"))
                    .with_context(|| format!("Writing {}", display(path)));
                self.budget.release(buf.len());
                written?;
                return Ok(());
            }
            Item::FileEnd => {
                let (path, w) = self
                    .large
                    .take()
                    .ok_or_else(|| anyhow!("file end without a file"))?;
                let csum = w
                    .finish(gio::Cancellable::NONE)
                    .map_err(gerr)
                    .with_context(|| format!("Writing {}", display(&path)))?
                    .to_string();
                self.stats.objects_written += 1;
                self.place_file(&path, &csum)?;
                self.files.insert(path, csum);
                return Ok(());
            }
            _ => {}
        }
        self.stats.entries += 1;
        match item {
            Item::Dir { path, meta } => {
                let m = self.dirmeta_checksum(&meta)?;
                if path.is_empty() {
                    self.root.set_metadata_checksum(&m);
                    return Ok(());
                }
                let dir = self.parent(&path)?;
                let name = path.last().expect("non-root");
                if let (Some(_), None) = lookup(&dir, name)? {
                    dir.remove(name, false).map_err(gerr)?;
                    self.leaves.remove(&path);
                }
                let sub = dir.ensure_dir(name).map_err(gerr)?;
                sub.set_metadata_checksum(&m);
            }
            Item::File {
                path,
                meta,
                size,
                data,
                complete,
            } => {
                if complete {
                    let csum = self.write_small(&meta, data)?;
                    self.place_file(&path, &csum)?;
                    self.files.insert(path, csum);
                } else {
                    let xattrs = (!meta.xattrs.is_empty()).then(|| meta.xattrs_variant());
                    let w = self
                        .repo
                        .write_regfile(None, meta.uid, meta.gid, meta.mode, size, xattrs.as_ref())
                        .map_err(gerr)
                        .with_context(|| format!("Writing {}", display(&path)))?;
                    // Check the parents now, before any content is written.
                    self.parent(&path)?;
                    self.large = Some((path, w));
                }
            }
            Item::Symlink { path, meta, target } => {
                let csum = content_checksum(&meta, Some(&target), &[]);
                if self.have_object(&csum)? {
                    self.stats.objects_reused += 1;
                } else {
                    let xattrs = (!meta.xattrs.is_empty()).then(|| meta.xattrs_variant());
                    self.repo
                        .write_symlink(
                            Some(&csum),
                            meta.uid,
                            meta.gid,
                            xattrs.as_ref(),
                            &target,
                            gio::Cancellable::NONE,
                        )
                        .map_err(gerr)
                        .with_context(|| format!("Writing symlink {}", display(&path)))?;
                    self.known.insert(csum.clone());
                    self.stats.objects_written += 1;
                }
                self.place_file(&path, &csum)?;
                self.files.remove(&path);
            }
            Item::Hardlink { path, target } => {
                let csum = self.files.get(&target).cloned().ok_or_else(|| {
                    anyhow!(
                        "refusing hardlink {:?}: its target {:?} is no longer a regular file",
                        display(&path),
                        display(&target)
                    )
                })?;
                self.place_file(&path, &csum)?;
                self.files.insert(path, csum);
            }
            Item::Special { path, node } => {
                let meta = Meta {
                    uid: 0,
                    gid: 0,
                    mode: S_IFREG | 0o600,
                    xattrs: Vec::new(),
                };
                let placeholder = node.placeholder();
                self.budget.acquire(placeholder.len());
                let csum = self.write_small(&meta, placeholder)?;
                self.place_file(&path, &csum)?;
                self.devices.push(node);
            }
            Item::Chunk(_) | Item::FileEnd => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Writes the directory objects and returns the root.
    pub(crate) fn finish(mut self) -> Result<LayerTree> {
        if self.large.is_some() {
            bail!("the layer ended in the middle of a file");
        }
        self.pool.finish()?;
        let root = self
            .repo
            .write_mtree(&self.root, gio::Cancellable::NONE)
            .map_err(gerr)
            .context("Writing the layer's directory tree")?;
        let root = root
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow!("write_mtree did not return a repo file"))?;
        Ok(LayerTree {
            root,
            devices: self.devices,
            stats: self.stats,
        })
    }
}

/// Imports a layer with two threads: `produce` runs on a second thread and feeds items
/// (normally by calling [`parse_layer`] on a decompressing reader), while this thread
/// hashes and writes them. Returns the tree and whatever `produce` returned.
pub(crate) fn import_tar_with<T, F>(repo: &ostree::Repo, produce: F) -> Result<(LayerTree, T)>
where
    T: Send,
    F: FnOnce(&mut dyn FnMut(Item) -> Result<()>) -> Result<T> + Send,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<Item>(256);
    let budget = Arc::new(Budget::new(IN_FLIGHT_MAX));
    let parser_budget = budget.clone();
    std::thread::scope(|s| {
        let parser = s.spawn(move || {
            let mut sink = |item: Item| {
                parser_budget.acquire(item.data_len());
                tx.send(item)
                    .map_err(|_| anyhow!("the layer writer stopped"))
            };
            produce(&mut sink)
        });
        let mut write_err = None;
        match TreeWriter::new(repo, budget.clone()) {
            Ok(mut writer) => {
                for item in rx.iter() {
                    if let Err(e) = writer.apply(item) {
                        write_err = Some(e);
                        break;
                    }
                }
                budget.close();
                drop(rx);
                let produced = parser
                    .join()
                    .map_err(|_| anyhow!("the layer parser panicked"))?;
                match (produced, write_err) {
                    // The writer's error is the cause when the parser only saw the channel close.
                    (_, Some(e)) => Err(e),
                    (Err(e), None) => Err(e),
                    (Ok(v), None) => Ok((writer.finish()?, v)),
                }
            }
            Err(e) => {
                budget.close();
                drop(rx);
                let _ = parser.join();
                Err(e)
            }
        }
    })
}

/// Imports a decompressed layer tar (see [`import_tar_with`]).
#[cfg(test)]
pub(crate) fn import_tar<R: Read + Send>(
    repo: &ostree::Repo,
    reader: R,
    allow_devices: bool,
) -> Result<LayerTree> {
    import_tar_with(repo, move |sink| parse_layer(reader, allow_devices, sink)).map(|(t, ())| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_blocks_until_released_or_closed() {
        let b = Arc::new(Budget::new(10));
        b.acquire(8);
        b.release(8);
        b.acquire(100); // an item larger than the budget takes all of it
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.acquire(5));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !t.is_finished(),
            "acquire must wait while the budget is used up"
        );
        b.close();
        t.join().unwrap();
    }

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

    /// Our checksum must equal the one libostree computes, or every write would fail.
    #[test]
    fn checksums_match_libostree() {
        let (_d, repo) = test_repo();
        repo.prepare_transaction(gio::Cancellable::NONE).unwrap();
        let meta = Meta {
            uid: 0,
            gid: 0,
            mode: S_IFREG | 0o644,
            xattrs: vec![],
        };
        let data = b"hello world\n";
        let theirs = repo
            .write_regfile_inline(None, 0, 0, meta.mode, None, data, gio::Cancellable::NONE)
            .unwrap();
        assert_eq!(content_checksum(&meta, None, data), theirs.as_str());
        let lmeta = Meta {
            mode: S_IFLNK | 0o777,
            ..meta.clone()
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
