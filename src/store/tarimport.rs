//! Streaming import of a layer tar into OSTree objects, with path validation.
//!
//! A layer import is a pipeline that keeps both cores busy:
//!
//! 1. the *producer* (its own thread, [`import_tar_with`]'s caller supplies it) reads the
//!    blob, hashes the compressed bytes and inflates them into a [`TarPipe`];
//! 2. this thread parses and validates every entry ([`parse_layer`], in `tarparse`) and
//!    hands each [`Item`] to a [`TreeWriter`], which computes the object checksums (see
//!    [`crate::store::objects`]) and builds the layer's tree;
//! 3. a hashing thread computes the tar's digest (its uncompressed digest) from the same
//!    chunks, in the order the parser read them, so the two hashes of the uncompressed
//!    bytes run on both cores;
//! 4. a pool of threads writes the new objects ([`crate::store::objpool`]).
//!
//! A union of layers is built as a tree (see `store::merge`), so a symlink in one
//! layer can never redirect a path of another.

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use crate::store::tarparse::parse_layer;
use crate::store::treewrite::TreeWriter;
pub(crate) use crate::store::treewrite::{ImportStats, LayerTree, WriteOpts};

/// File bytes queued for the object writers of one layer.
const IN_FLIGHT_MAX: usize = 48 * 1024 * 1024;
/// Size and number of the buffers between the producer and the parser.
const PIPE_CHUNK: usize = 256 * 1024;
const PIPE_DEPTH: usize = 8;

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

/// The importer's end of the pipe. Each chunk it takes also goes to the layer's hashing
/// thread, which computes the tar's digest beside the parser (see [`hash_chunks`]).
struct PipeReader {
    rx: Receiver<Vec<u8>>,
    cur: Arc<Vec<u8>>,
    pos: usize,
    to_hash: SyncSender<Arc<Vec<u8>>>,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.cur = Arc::new(next);
                    self.pos = 0;
                    self.to_hash
                        .send(Arc::clone(&self.cur))
                        .map_err(|_| io::Error::other("the layer's hashing thread stopped"))?;
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

/// Hashes the chunks of a layer's tar in the order the parser read them, until the reader
/// is gone: the tar's digest and size.
fn hash_chunks(rx: Receiver<Arc<Vec<u8>>>) -> TarDigest {
    let mut hash = Sha256::new();
    let mut size = 0u64;
    for chunk in rx {
        hash.update(chunk.as_slice());
        size += chunk.len() as u64;
    }
    TarDigest {
        digest: format!("sha256:{}", hex::encode(hash.finalize())),
        size,
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
    let (hash_tx, hash_rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(PIPE_DEPTH);
    std::thread::scope(|s| {
        let producer = std::thread::Builder::new()
            .name("inflate".into())
            .spawn_scoped(s, move || produce(&mut TarPipe { tx }))
            .context("Starting the layer's inflate thread")?;
        let hasher = std::thread::Builder::new()
            .name("tar-hash".into())
            .spawn_scoped(s, move || hash_chunks(hash_rx))
            .context("Starting the layer's hashing thread")?;
        let mut reader = PipeReader {
            rx,
            cur: Arc::new(Vec::new()),
            pos: 0,
            to_hash: hash_tx,
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
        let PipeReader { rx, to_hash, .. } = reader;
        // The producer stops at its next write; the hasher ends with what it was sent.
        drop(rx);
        drop(to_hash);
        let produced = producer
            .join()
            .map_err(|_| anyhow!("the layer producer panicked"))?;
        let digest = hasher
            .join()
            .map_err(|_| anyhow!("the layer's hashing thread panicked"))?;
        match (produced, imported) {
            (Err(e), Err(ours)) if format!("{e:#}").contains(PIPE_CLOSED) => Err(ours),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(v), Ok(tree)) => Ok((tree, digest, v)),
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
        mode: crate::store::objects::WriteMode::Verify,
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
    use ostree::gio;

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
