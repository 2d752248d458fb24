//! The object writers of a layer import, the memory budget that bounds them, and the
//! flusher that starts writeback while a pull goes on.
//!
//! - [`ObjectPool`]: threads that write content objects into the repository's open
//!   transaction (libostree writes content objects from several threads itself; each
//!   thread holds its own reference to the repo). Their checksums are known before they
//!   are queued, so the tree refers to an object at once while its bytes are written.
//! - [`Budget`]: the bytes of file content queued for the writers; the importer waits while
//!   the writers are this far behind, which bounds an import's memory whatever the layer.
//! - [`Flusher`]: libostree makes a transaction durable with `syncfs` when it commits, and
//!   until then the kernel keeps most of what was written dirty in memory, so each layer
//!   would end in one long serial write-out. The flusher calls `syncfs` on another thread
//!   each time enough object bytes were written, so the write-out overlaps the CPU work and
//!   the commit finds little left to do. It only ever adds syncs: durability still comes
//!   from libostree's own `syncfs` and directory fsyncs at each commit.

use anyhow::{anyhow, bail, Result};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use crate::store::objects::{write_object, ObjectJob, WriteMode};

/// A count of bytes in flight: the producer waits while the consumers are this far behind.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Bytes in flight, and whether the consumer has stopped (then nobody waits).
    state: Mutex<(usize, bool)>,
    freed: Condvar,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            state: Mutex::new((0, false)),
            freed: Condvar::new(),
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

/// Written bytes after which the flusher starts a `syncfs`.
const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

#[derive(Debug, Default)]
struct FlushState {
    /// Bytes written since the last flush started.
    pending: u64,
    /// A flush was asked for, whatever was written.
    now: bool,
    stop: bool,
}

/// Starts writeback of what a pull wrote while the pull goes on (see the module doc).
#[derive(Debug)]
pub(crate) struct Flusher {
    state: Mutex<FlushState>,
    wake: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Flusher {
    /// A flusher for the filesystem that holds `dir` (the repository).
    pub(crate) fn start(dir: &Path) -> Result<Arc<Flusher>> {
        let fd: OwnedFd = rustix::fs::open(
            dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| anyhow!("Opening {}: {e}", dir.display()))?;
        let f = Arc::new(Flusher {
            state: Mutex::new(FlushState::default()),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        });
        let me = f.clone();
        let t = std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || me.run(fd))?;
        *f.thread.lock().expect("not poisoned") = Some(t);
        Ok(f)
    }

    fn run(&self, fd: OwnedFd) {
        loop {
            {
                let mut st = self.state.lock().expect("not poisoned");
                while !st.stop && !st.now && st.pending < FLUSH_EVERY {
                    st = self.wake.wait(st).expect("not poisoned");
                }
                if st.stop {
                    return;
                }
                st.pending = 0;
                st.now = false;
            }
            // An early start only: the commit's own syncfs reports what fails.
            if let Err(e) = rustix::fs::syncfs(&fd) {
                tracing::debug!("background syncfs: {e}");
            }
        }
    }

    /// Counts `n` bytes written.
    pub(crate) fn wrote(&self, n: u64) {
        let mut st = self.state.lock().expect("not poisoned");
        st.pending += n;
        if st.pending >= FLUSH_EVERY {
            self.wake.notify_one();
        }
    }

    /// Starts a flush now (when the writing is done and other work follows), not waiting.
    pub(crate) fn flush_now(&self) {
        self.state.lock().expect("not poisoned").now = true;
        self.wake.notify_one();
    }

    /// Stops the thread (a flush under way finishes first).
    pub(crate) fn stop(&self) {
        self.state.lock().expect("not poisoned").stop = true;
        self.wake.notify_one();
        if let Some(t) = self.thread.lock().expect("not poisoned").take() {
            let _ = t.join();
        }
    }
}

/// Threads that write content objects into the repo's open transaction.
pub(crate) struct ObjectPool {
    tx: Option<std::sync::mpsc::SyncSender<ObjectJob>>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl ObjectPool {
    pub(crate) fn new(
        repo: &ostree::Repo,
        mode: WriteMode,
        budget: Arc<Budget>,
        flusher: Option<Arc<Flusher>>,
    ) -> Result<ObjectPool> {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        let (tx, rx) = std::sync::mpsc::sync_channel::<ObjectJob>(64);
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..n)
            .map(|_| {
                let repo = repo.clone();
                let rx = rx.clone();
                let budget = budget.clone();
                let flusher = flusher.clone();
                let spawned = std::thread::Builder::new()
                    .name("objects".into())
                    .spawn(move || loop {
                        let job = match rx.lock().expect("not poisoned").recv() {
                            Ok(job) => job,
                            Err(_) => return Ok(()),
                        };
                        let mem = job.mem_len();
                        let bytes = job.stream_len();
                        let written = write_object(&repo, mode, job);
                        budget.release(mem);
                        written?;
                        if let Some(f) = &flusher {
                            f.wrote(bytes);
                        }
                    });
                spawned.map_err(|e| anyhow!("Starting an object writer: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ObjectPool {
            tx: Some(tx),
            threads,
        })
    }

    /// Queues a write; fails with the writer's own error when a writer has stopped.
    pub(crate) fn send(&mut self, job: ObjectJob) -> Result<()> {
        let sent = self.tx.as_ref().map(|tx| tx.send(job).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        self.finish()?;
        bail!("the object writers stopped")
    }

    /// Waits until every queued object is written.
    pub(crate) fn finish(&mut self) -> Result<()> {
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
}
