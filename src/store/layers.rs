//! Fetching layers into a pull's open transaction: one worker per core, each with its own
//! skopeo proxy, the largest layer first; each layer a pipeline (blob → SHA-256 → inflate
//! on one thread, tar digest → parser → object checksums on another, object writers in a
//! pool; see `tarimport`); a failed layer fetched again; and the end of the transaction.
//!
//! Invariants: a layer's commit and ref are written only after its compressed digest and
//! size match the manifest and its uncompressed digest matches the config; refs become
//! visible only when the transaction commits, after libostree made it durable.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::image::proxy::{ImageProxy, OpenedImage};
use crate::image::skopeo::FetchOptions;
use crate::store::commit::{write_layer_commit, LayerMeta};
use crate::store::objects::WriteMode;
use crate::store::objpool::Flusher;
use crate::store::source::{proxy_config, Source};
use crate::store::tarimport::{self, ImportStats, WriteOpts};
use crate::store::{Compression, Descriptor, Store};
use crate::util::output::{self, human_size};
use sha2::{Digest, Sha256};

/// A reader that hashes and counts what passes through it, and moves a progress bar.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    count: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            count: 0,
            bar: None,
        }
    }
    fn finish(self) -> (R, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hash.finalize())),
            self.count,
        )
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

/// The compression the first bytes of a stream show, if they show one.
fn sniff_compression(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else if head.len() >= 4 {
        // Neither magic: an uncompressed tar (the tar parser validates the rest).
        Some(Compression::None)
    } else {
        None
    }
}

/// One layer to fetch.
#[derive(Debug, Clone)]
pub(crate) struct LayerJob {
    pub index: usize,
    pub desc: Descriptor,
    pub diff_id: String,
}

/// Fetches, verifies and commits one layer blob; returns the layer commit.
fn import_layer(
    proxy: &mut ImageProxy,
    img: OpenedImage,
    repo: &ostree::Repo,
    job: &LayerJob,
    opts: &WriteOpts,
    allow_devices: bool,
    bar: Option<indicatif::ProgressBar>,
) -> Result<(String, ImportStats)> {
    let desc = &job.desc;
    let compression = Compression::from_media_type(&desc.media_type)?;
    let blob = proxy.get_blob(img, &desc.digest, desc.size)?;
    // The producer: blob -> SHA-256 -> inflate, on its own thread; the tar's digest, the
    // parser and the object checksums run on this one (tarimport).
    let imported = tarimport::import_tar_with(repo, opts, allow_devices, move |pipe| {
        let mut counted = Hashing::new(blob);
        counted.bar = bar;
        {
            // Trust the bytes over the media type: docker-archive sources declare gzip for
            // layers they store uncompressed.
            let mut head = Vec::with_capacity(8);
            (&mut counted).take(8).read_to_end(&mut head)?;
            let compression = sniff_compression(&head).unwrap_or(compression);
            let buffered =
                BufReader::with_capacity(256 * 1024, io::Cursor::new(head).chain(&mut counted));
            let mut decompressed: Box<dyn Read + '_> = match compression {
                Compression::None => Box::new(buffered),
                Compression::Gzip => crate::store::inflate::gzip(buffered),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(buffered)
                        .context("Starting zstd decompression")?,
                ),
            };
            pipe.pump(&mut decompressed)?;
        }
        io::copy(&mut counted, &mut io::sink()).context("Reading the end of the blob")?;
        Ok(counted.finish())
    });
    let (tree, tar, (blob, cdigest, csize)) = match imported {
        Ok(v) => v,
        Err(e) => {
            // A stall already waited its full timeout; a refused entry is our own verdict.
            // Otherwise skopeo's verdict on the blob (reset, truncation, digest) is the cause.
            if !crate::image::proxy::is_stall(&e) && !crate::store::refused::is_refused(&e) {
                if let Err(sk) = proxy.finish_pending() {
                    // A broken pipe only says that we stopped reading.
                    if !format!("{sk:#}").contains("broken pipe") {
                        return Err(sk.context(format!("Importing layer {}", desc.digest)));
                    }
                }
            }
            return Err(e.context(format!("Importing layer {}", desc.digest)));
        }
    };
    let (udigest, usize) = (tar.digest, tar.size);
    proxy
        .finish_blob(blob)
        .with_context(|| format!("Fetching layer {}", desc.digest))?;
    if cdigest != desc.digest || csize != desc.size {
        bail!(
            "layer {} is corrupt: received {csize} bytes hashing to {cdigest}, the manifest \
             says {} bytes",
            desc.digest,
            desc.size
        );
    }
    if udigest != job.diff_id {
        return Err(crate::store::refused::Refused(format!(
            "layer {} does not match the image config: its content hashes to {udigest}, the \
             config says {}",
            desc.digest, job.diff_id
        ))
        .into());
    }
    let layer = LayerMeta {
        uncompressed_size: usize.to_string(),
        uncompressed_digest: udigest,
        whiteouts: Some(tree.stats.whiteouts.to_string()),
        devices: if tree.devices.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&tree.devices)?)
        },
    };
    let commit = write_layer_commit(
        repo,
        desc,
        &layer,
        &tree.root,
        crate::util::time::now_secs(),
    )?;
    Ok((commit, tree.stats))
}

/// Ends a pull's transaction. After a failure it is committed too when `keep` (some
/// layers were complete and verified): they keep their refs, so the next pull does not
/// fetch them again, and nothing names the image, whose ref is set only once everything
/// else is in place. Otherwise a failed pull's transaction is aborted, which gives back what
/// it wrote.
pub(crate) fn end_pull_transaction<T>(
    repo: &ostree::Repo,
    res: Result<T>,
    keep: bool,
    opts: &WriteOpts,
) -> Result<T> {
    // A flush under way finishes first; the commit syncs what is left.
    if let Some(f) = &opts.flusher {
        f.stop();
    }
    if res.is_err() && !keep {
        let _ = repo.abort_transaction(gio::Cancellable::NONE);
        return res;
    }
    let start = Instant::now();
    let committed = repo.commit_transaction(gio::Cancellable::NONE);
    tracing::debug!(
        "transaction committed in {:.3} s",
        start.elapsed().as_secs_f64()
    );
    match committed {
        Ok(_) => res,
        Err(e) => {
            let _ = repo.abort_transaction(gio::Cancellable::NONE);
            let e = anyhow::Error::from(e).context("Committing the OSTree transaction");
            res.and(Err(e))
        }
    }
}

/// How a pull writes objects: trusted or verified, with a flusher for the store.
pub(crate) fn write_opts(store: &Store, fetch: &FetchOptions) -> Result<WriteOpts> {
    Ok(WriteOpts {
        mode: if fetch.verify_objects {
            WriteMode::Verify
        } else {
            WriteMode::Trusted
        },
        // libostree's switch for measuring without its syncfs turns ours off too.
        flusher: match std::env::var_os("OSTREE_SUPPRESS_SYNCFS") {
            Some(_) => None,
            None => Some(Flusher::start(&store.repo_path)?),
        },
    })
}

pub(crate) fn flush_now(opts: &WriteOpts) {
    if let Some(f) = &opts.flusher {
        f.flush_now();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("not poisoned")
}

/// How often a layer is fetched before its pull fails.
const LAYER_ATTEMPTS: usize = 3;

/// Whether fetching a layer again may help: a connection that broke, a server error or
/// bytes damaged on the way. Not for what the content itself says ([`Refused`]: a hostile
/// entry, a layer that is not what the config claims), a registry that stalled (that
/// already waited its full timeout), or a full disk.
///
/// [`Refused`]: crate::store::refused::Refused
fn worth_retrying(e: &anyhow::Error) -> bool {
    if crate::image::proxy::is_stall(e) || crate::store::refused::is_refused(e) {
        return false;
    }
    !e.chain().any(|c| {
        let io_full = c
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc_enospc()));
        let glib_full = c
            .downcast_ref::<ostree::glib::Error>()
            .is_some_and(|g| g.matches(gio::IOErrorEnum::NoSpace));
        io_full || glib_full
    })
}

/// `ENOSPC`.
fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

/// Fetches the jobs with up to one worker per core, each with its own skopeo proxy, into
/// the store's open transaction (libostree writes from several threads into one
/// transaction). Records the commit of each layer in `done`, by digest hex, as it
/// finishes; a layer that fails is fetched again (its partial objects are correctly named
/// and merely unreferenced).
pub(crate) fn fetch_layers(
    store: &Store,
    fetch: &FetchOptions,
    src: &Source,
    first: (ImageProxy, OpenedImage),
    jobs: VecDeque<LayerJob>,
    opts: &WriteOpts,
    done: &Mutex<HashMap<String, String>>,
) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(jobs.len());
    let queue = Mutex::new(jobs);
    let failed = AtomicBool::new(false);
    let allow_devices = !store.user_mode;
    let first = Mutex::new(Some(first));
    let multi = output::progress();
    // Lines go above the bars while they are drawn.
    let say = |line: String| match &multi {
        Some(m) => {
            let _ = m.println(line);
        }
        None => output::status(line),
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|n| {
                // One handle per worker (a repo is Send, not Sync), all in the same transaction.
                let repo = store.repo.clone();
                let (first, queue, failed, say) = (&first, &queue, &failed, &say);
                let multi = &multi;
                let worker = std::thread::Builder::new().name(format!("layer-{n}"));
                worker.spawn_scoped(s, move || -> Result<()> {
                    let taken = first.lock().expect("not poisoned").take();
                    let (mut proxy, mut img) = match taken {
                        Some(p) => p,
                        None => {
                            let mut p = ImageProxy::new(&proxy_config(fetch, src))?;
                            let i = p.open_image(&src.skopeo_ref)?;
                            (p, i)
                        }
                    };
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let Some(job) = queue.lock().expect("not poisoned").pop_front() else {
                            return Ok(());
                        };
                        let start = Instant::now();
                        let bar = multi.as_ref().map(|m| {
                            let short = job.desc.hex().unwrap_or_default();
                            let label = format!("#{} {}", job.index + 1, &short[..short.len().min(12)]);
                            output::blob_bar(m, label, job.desc.size)
                        });
                        let mut attempt = 1;
                        let res = loop {
                            let res = import_layer(
                                &mut proxy,
                                img,
                                &repo,
                                &job,
                                opts,
                                allow_devices,
                                bar.clone(),
                            );
                            match res {
                                Err(e) if attempt < LAYER_ATTEMPTS && worth_retrying(&e) => {
                                    say(format!(
                                        "Layer {} failed ({e:#}); trying again ({} of {LAYER_ATTEMPTS}).",
                                        job.desc.digest,
                                        attempt + 1
                                    ));
                                    std::thread::sleep(Duration::from_secs(attempt as u64));
                                    attempt += 1;
                                    // A fresh proxy: the old one may be in the middle of a blob.
                                    proxy = ImageProxy::new(&proxy_config(fetch, src))?;
                                    img = proxy.open_image(&src.skopeo_ref)?;
                                    if let Some(bar) = &bar {
                                        bar.reset();
                                    }
                                }
                                other => break other,
                            }
                        };
                        if let Some(bar) = &bar {
                            bar.finish_and_clear();
                        }
                        if res.is_ok() {
                            crate::util::failpoint::hit("pull.layer-committed");
                        }
                        match res {
                            Ok((commit, stats)) => {
                                let hex = job.desc.hex()?.to_string();
                                lock(done).insert(hex, commit);
                                say(format!(
                                "Layer {} ({}, #{}) done in {:.2} s: {} entries, {} new objects, {} reused.",
                                job.desc.digest,
                                human_size(job.desc.size),
                                job.index + 1,
                                start.elapsed().as_secs_f64(),
                                stats.entries,
                                stats.objects_written,
                                stats.objects_reused
                            ))
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("a layer worker panicked"))),
                Err(e) => Err(anyhow!("Starting a layer worker: {e}")),
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(())
}
