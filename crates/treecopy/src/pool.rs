//! A small pool of threads that write file data and metadata while the caller goes on
//! reading the archive or walking the tree.
//!
//! The caller creates each file (names, links and directories stay on its thread, in the
//! order it meets them) and hands the open file to the pool with its content (a small file
//! of an archive, already read) or its source (a file to clone). A worker writes the data,
//! then the owner, xattrs, mode and times (times last: writing data changes them), and
//! starts the file's writeback. The queue is bounded, so memory stays bounded: at most
//! [`QUEUE`] jobs of at most [`SMALL_FILE`] bytes each wait.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::copy::apply_fd_meta;
use crate::host::HostMeta;
use crate::{writeback, Error};

/// Worker threads.
const WORKERS: usize = 2;
/// Jobs waiting for a worker.
const QUEUE: usize = 16;
/// Largest archive file handed to the pool with its content; larger ones are written by
/// the caller as they are read.
pub(crate) const SMALL_FILE: u64 = 256 * 1024;

/// One file for a worker to fill.
pub(crate) enum Job {
    /// Write `data` (the whole content; zero blocks left as holes) into `dst`.
    Write {
        /// The new file, open for writing.
        dst: File,
        /// Its content.
        data: Vec<u8>,
        /// Its metadata.
        meta: HostMeta,
        /// Its real path, for errors.
        display: PathBuf,
    },
    /// Copy the data extents of `src` (`size` bytes long) into `dst`.
    Copy {
        /// The source file, open for reading.
        src: File,
        /// Its length.
        size: u64,
        /// The new file, open for writing.
        dst: File,
        /// Its metadata.
        meta: HostMeta,
        /// The source path, for errors.
        src_path: PathBuf,
        /// The destination's real path, for errors.
        display: PathBuf,
    },
}

/// What the workers wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Bytes of file data written (holes of a copied file not included).
    pub(crate) bytes: u64,
    /// Copied files that had holes.
    pub(crate) sparse_files: u64,
}

/// The running pool. [`Pool::finish`] waits for every job and returns the first error.
pub(crate) struct Pool {
    tx: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<Result<Totals, Error>>>,
    failed: Arc<AtomicBool>,
    /// What jobs run on the caller's thread wrote (when no worker could start).
    inline: Totals,
}

impl Pool {
    /// Starts the workers. Without threads (the system refuses them) the caller's thread
    /// runs each job itself.
    pub(crate) fn new() -> Pool {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .filter_map(|n| {
                let (rx, failed) = (rx.clone(), failed.clone());
                std::thread::Builder::new()
                    .name(format!("treecopy-{n}"))
                    .spawn(move || work(&rx, &failed))
                    .map_err(|e| tracing::debug!("no file worker thread: {e}"))
                    .ok()
            })
            .collect::<Vec<_>>();
        Pool {
            tx: (!workers.is_empty()).then_some(tx),
            workers,
            failed,
            inline: Totals::default(),
        }
    }

    /// Queues `job`, waiting while the queue is full. After a worker failed, returns its
    /// error (the copy stops there).
    pub(crate) fn submit(&mut self, job: Job) -> Result<(), Error> {
        let Some(tx) = &self.tx else {
            let t = run(job, &mut vec![0u8; crate::clone::CHUNK])?;
            self.inline.add(t);
            return Ok(());
        };
        let display = job.display().to_owned();
        if self.failed.load(Ordering::Relaxed) || tx.send(job).is_err() {
            return Err(self.join().err().unwrap_or_else(|| Error::Destination {
                path: display,
                step: "hand the file to a writer thread".to_owned(),
                source: std::io::Error::other("the writer threads stopped"),
            }));
        }
        Ok(())
    }

    /// Waits for every queued job; returns what was written, or the first error. Jobs
    /// submitted afterwards run on the caller's thread.
    pub(crate) fn finish(&mut self) -> Result<Totals, Error> {
        let mut totals = self.join()?;
        totals.add(std::mem::take(&mut self.inline));
        Ok(totals)
    }

    /// Closes the queue and joins the workers: their totals, or the first error.
    fn join(&mut self) -> Result<Totals, Error> {
        drop(self.tx.take());
        let mut totals = Totals::default();
        let mut first_error = None;
        for w in std::mem::take(&mut self.workers) {
            match w.join() {
                Ok(Ok(t)) => totals.add(t),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(totals),
        }
    }
}

impl Totals {
    fn add(&mut self, t: Totals) {
        self.bytes += t.bytes;
        self.sparse_files += t.sparse_files;
    }
}

impl Job {
    /// The destination's real path.
    fn display(&self) -> &std::path::Path {
        match self {
            Job::Write { display, .. } | Job::Copy { display, .. } => display,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // An early return of the caller: let the workers drain the queue and stop.
        drop(self.tx.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker: runs jobs until the queue closes or one fails.
fn work(rx: &Mutex<Receiver<Job>>, failed: &AtomicBool) -> Result<Totals, Error> {
    let mut totals = Totals::default();
    let mut buf = vec![0u8; crate::clone::CHUNK];
    loop {
        // A poisoned lock means another worker panicked; its panic is re-raised by finish.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return Ok(totals),
        };
        let Ok(job) = job else {
            return Ok(totals);
        };
        match run(job, &mut buf) {
            Ok(t) => totals.add(t),
            Err(e) => {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
}

/// Runs one job: data (through `buf` for a copy), metadata, writeback.
fn run(job: Job, buf: &mut [u8]) -> Result<Totals, Error> {
    match job {
        Job::Write {
            dst,
            data,
            meta,
            display,
        } => {
            let len = data.len() as u64;
            let end = crate::tar::write_data_runs(&dst, &data, 0, &display)?;
            if end.unwrap_or(0) < len {
                rustix::fs::ftruncate(&dst, len)
                    .map_err(|e| crate::copy::dest_err(&display, "set file length", e))?;
            }
            // Only archives submit whole files: metadata the kernel refuses is the archive's.
            apply_fd_meta(std::os::fd::AsFd::as_fd(&dst), &meta, &display)
                .map_err(|e| crate::tar::kernel_refused(e, &display))?;
            writeback::start(&dst);
            Ok(Totals {
                bytes: len,
                sparse_files: 0,
            })
        }
        Job::Copy {
            src,
            size,
            dst,
            meta,
            src_path,
            display,
        } => {
            let (bytes, holes) =
                crate::clone::copy_extents(&src, &dst, size, &src_path, &display, buf)?;
            apply_fd_meta(std::os::fd::AsFd::as_fd(&dst), &meta, &display)?;
            writeback::start(&dst);
            Ok(Totals {
                bytes,
                sparse_files: u64::from(holes),
            })
        }
    }
}
