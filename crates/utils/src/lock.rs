//! One writer at a time: an exclusive `flock` on a lock file that records the holder's pid.
//! The kernel drops the lock when the process dies, so a killed writer never leaves it stale.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("another abupdate (pid {pid}) is running (lock {path})")]
    Busy {
        /// The holder's pid as recorded in the lock file ("unknown" if unreadable).
        pid: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be opened or written.
    #[error("{step} lock file {path}: {source}")]
    Io {
        /// The step that failed.
        step: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A held writer lock; released on drop or by [`WriterLock::release`].
#[derive(Debug)]
pub struct WriterLock {
    file: File,
    path: PathBuf,
}

impl WriterLock {
    /// Takes the lock without waiting; `Busy` names the pid of the holder.
    pub fn acquire(path: &Path) -> Result<WriterLock, LockError> {
        let io = |step| {
            move |source| LockError::Io {
                step,
                path: path.to_owned(),
                source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create directory of"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("open"))?;
        if flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Busy {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
                path: path.to_owned(),
            });
        }
        file.set_len(0).map_err(io("truncate"))?;
        file.rewind().map_err(io("rewind"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("write pid to"))?;
        Ok(WriterLock {
            file,
            path: path.to_owned(),
        })
    }

    /// Releases the lock explicitly, reporting failure.
    pub fn release(self) -> Result<(), LockError> {
        flock(self.file.as_fd(), FlockOperation::Unlock).map_err(|e| LockError::Io {
            step: "unlock",
            path: self.path.clone(),
            source: e.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused_with_pid() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("abupdate.lock");
        let held = WriterLock::acquire(&p).expect("first");
        let e = WriterLock::acquire(&p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        held.release().expect("release");
        WriterLock::acquire(&p).expect("free again");
    }
}
