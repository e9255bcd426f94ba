//! Durable writes: a new file is written beside its destination, fsynced, renamed over it,
//! and the directory is fsynced, so a power cut leaves either the old or the new file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A durable-write failure naming the path and the step.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {source}")]
pub struct DurableError {
    /// What was being done ("create", "fsync", "rename to", ...).
    pub step: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

fn err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DurableError + 'a {
    move |source| DurableError {
        step,
        path: path.to_owned(),
        source,
    }
}

/// Replaces `path` with `data` atomically and durably (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), DurableError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        f.write_all(data).map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("fsync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(err("rename to", path))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory so that a rename or creation inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .map_err(err("open directory", dir))?
        .sync_all()
        .map_err(err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("state.json");
        write_atomic(&p, b"one", 0o644).expect("first write");
        write_atomic(&p, b"two", 0o644).expect("second write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("readdir")
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .expect("entries");
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn missing_directory_names_path() {
        let e = write_atomic(Path::new("/nonexistent-dir/x"), b"", 0o644)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/nonexistent-dir/"), "{e}");
    }
}
