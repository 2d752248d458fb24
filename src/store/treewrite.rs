//! Builds one layer's OSTree tree from validated tar [`Item`]s.
//!
//! For each file the writer computes the object checksum (see [`crate::store::objects`]), looks
//! the object up, and queues only the objects the repository does not have yet; the tree
//! refers to the checksum at once. Invariants:
//!
//! - nothing is ever written *through* a non-directory this layer created (the entry is
//!   refused), and a directory replaces a file of the same name and the reverse;
//! - a hardlink names the object of an earlier regular file of the same layer, by the
//!   checksum computed for that file, never by anything the tar says;
//! - large files are hashed and spooled as they stream; their object is queued only when
//!   the whole content arrived, so a cut layer leaves no object for a partial file.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::store::objects::{
    dirmeta_variant, file_header, Body, Meta, ObjectHasher, ObjectJob, Spool, WriteMode, S_IFREG,
};
use crate::store::objpool::{Budget, Flusher, ObjectPool};
use crate::store::tarparse::{display, DeviceNode, Item};

/// How a layer import writes its objects.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOpts {
    pub mode: WriteMode,
    /// Starts writeback while the import goes on (none in tests).
    pub flusher: Option<Arc<Flusher>>,
}

/// Counters reported after a layer import.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ImportStats {
    pub entries: u64,
    pub objects_written: u64,
    pub objects_reused: u64,
    /// Non-directories named `.wh.*` (whiteouts and opaque markers) placed in the tree.
    pub whiteouts: u64,
}

/// The result of writing one layer's tree.
#[derive(Debug)]
pub(crate) struct LayerTree {
    /// The root as a repo file, ready for `write_commit`.
    pub root: ostree::RepoFile,
    pub devices: Vec<DeviceNode>,
    pub stats: ImportStats,
}

/// A large file being received: its path, and its content stream so far.
struct Large {
    path: Vec<String>,
    spool: Spool,
}

/// Builds a layer's tree in the repository from [`Item`]s.
pub(crate) struct TreeWriter<'r> {
    repo: &'r ostree::Repo,
    /// Where large files are spooled (the repository's `tmp`).
    spool_dir: PathBuf,
    root: ostree::MutableTree,
    dirmeta: HashMap<Meta, String>,
    /// Checksums of objects known to exist (written or found) during this import.
    known: HashSet<String>,
    /// Paths of regular files of this layer and their checksums (for hardlinks).
    files: HashMap<Vec<String>, String>,
    /// Non-directories created by this layer (never written through).
    leaves: HashSet<Vec<String>>,
    devices: Vec<DeviceNode>,
    large: Option<Large>,
    stats: ImportStats,
    pool: ObjectPool,
    budget: Arc<Budget>,
}

impl std::fmt::Debug for TreeWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWriter")
            .field("stats", &self.stats)
            .finish()
    }
}

impl<'r> TreeWriter<'r> {
    /// A writer for one layer. The repository must be in a transaction; at most
    /// `in_flight` bytes of file content wait for the object writers.
    pub(crate) fn new(repo: &'r ostree::Repo, opts: &WriteOpts, in_flight: usize) -> Result<Self> {
        let budget = Arc::new(Budget::new(in_flight));
        let spool_dir = repo
            .path()
            .path()
            .ok_or_else(|| anyhow!("the repository has no local path"))?
            .join("tmp");
        let mut w = TreeWriter {
            repo,
            spool_dir,
            root: ostree::MutableTree::new(),
            dirmeta: HashMap::new(),
            known: HashSet::new(),
            files: HashMap::new(),
            leaves: HashSet::new(),
            devices: Vec::new(),
            large: None,
            stats: ImportStats::default(),
            pool: ObjectPool::new(repo, opts.mode, budget.clone(), opts.flusher.clone())?,
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
                    let sub = dir.ensure_dir(name)?;
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
            dir.remove(name, false)?;
        }
        dir.replace_file(name, csum)?;
        if name.starts_with(".wh.") {
            self.stats.whiteouts += 1;
        }
        self.leaves.insert(path.to_vec());
        Ok(())
    }

    fn have_object(&mut self, csum: &str) -> Result<bool> {
        if self.known.contains(csum) {
            return Ok(true);
        }
        let have = self
            .repo
            .has_object(ostree::ObjectType::File, csum, gio::Cancellable::NONE)?;
        if have {
            self.known.insert(csum.to_string());
        }
        Ok(have)
    }

    /// Queues an object unless the repository has it; returns whether it was new.
    fn queue(&mut self, job: ObjectJob) -> Result<bool> {
        if self.have_object(&job.csum)? {
            self.stats.objects_reused += 1;
            return Ok(false);
        }
        self.known.insert(job.csum.clone());
        self.stats.objects_written += 1;
        self.budget.acquire(job.mem_len());
        self.pool.send(job)?;
        Ok(true)
    }

    /// Hashes a file or symlink held in memory and queues it; returns its checksum.
    fn write_small(
        &mut self,
        path: &[String],
        meta: &Meta,
        target: Option<&str>,
        data: Vec<u8>,
    ) -> Result<String> {
        let header = file_header(meta, target);
        let mut h = ObjectHasher::new(&header);
        h.update(&data);
        let csum = h.finish();
        self.queue(ObjectJob {
            csum: csum.clone(),
            header,
            body: Body::Bytes(data),
            path: display(path),
        })?;
        Ok(csum)
    }

    /// Applies one item.
    pub(crate) fn apply(&mut self, item: Item) -> Result<()> {
        match item {
            Item::Chunk(buf) => {
                let large = self
                    .large
                    .as_mut()
                    .ok_or_else(|| anyhow!("file content without a file"))?;
                return large
                    .spool
                    .write(&buf)
                    .with_context(|| format!("Receiving {}", display(&large.path)));
            }
            Item::FileEnd => {
                let Large { path, mut spool } = self
                    .large
                    .take()
                    .ok_or_else(|| anyhow!("file end without a file"))?;
                let csum = spool
                    .finish()
                    .with_context(|| format!("Receiving {}", display(&path)))?;
                self.queue(ObjectJob {
                    csum: csum.clone(),
                    // The spool file holds the header.
                    header: Vec::new(),
                    body: Body::Spooled(spool),
                    path: display(&path),
                })?;
                self.place_file(&path, &csum)?;
                self.files.insert(path, csum);
                return Ok(());
            }
            _ => {}
        }
        if self.large.is_some() {
            bail!("a new entry in the middle of a file");
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
                    dir.remove(name, false)?;
                    self.leaves.remove(&path);
                }
                let sub = dir.ensure_dir(name)?;
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
                    let csum = self.write_small(&path, &meta, None, data)?;
                    self.place_file(&path, &csum)?;
                    self.files.insert(path, csum);
                } else {
                    // Check the parents now, before any content is spooled.
                    self.parent(&path)?;
                    let header = file_header(&meta, None);
                    let spool = Spool::new(&self.spool_dir, &header, size)
                        .with_context(|| format!("Receiving {}", display(&path)))?;
                    self.large = Some(Large { path, spool });
                }
            }
            Item::Symlink { path, meta, target } => {
                let csum = self.write_small(&path, &meta, Some(&target), Vec::new())?;
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
                let csum = self.write_small(&path, &meta, None, node.placeholder())?;
                self.place_file(&path, &csum)?;
                self.devices.push(node);
            }
            Item::Chunk(_) | Item::FileEnd => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Stops the object writers after an error, so nothing waits for them.
    pub(crate) fn abandon(&self) {
        self.budget.close();
    }

    /// Waits for the object writers, writes the directory objects and returns the root.
    pub(crate) fn finish(mut self) -> Result<LayerTree> {
        if self.large.is_some() {
            bail!("the layer ended in the middle of a file");
        }
        self.pool.finish()?;
        let root = self
            .repo
            .write_mtree(&self.root, gio::Cancellable::NONE)
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
/// `MutableTree::lookup` that treats a missing name as `(None, None)`.
pub(crate) fn lookup(
    dir: &ostree::MutableTree,
    name: &str,
) -> Result<(Option<ostree::glib::GString>, Option<ostree::MutableTree>)> {
    match dir.lookup(name) {
        Ok(r) => Ok(r),
        Err(e) if e.matches(gio::IOErrorEnum::NotFound) => Ok((None, None)),
        Err(e) => Err(e.into()),
    }
}
