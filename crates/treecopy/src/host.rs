//! Reading the host side: metadata and extended attributes of the running system's files.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::{EntryKind, Error};

/// Everything copied about one host entry except a regular file's content.
#[derive(Debug, Clone)]
pub(crate) struct HostMeta {
    pub(crate) kind: EntryKind,
    /// Full `st_mode` (type and permission bits).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) rdev: u64,
    pub(crate) ino: u64,
    pub(crate) dev: u64,
    pub(crate) atime: (i64, i64),
    pub(crate) mtime: (i64, i64),
    /// Extended attributes, name and value, in the order the kernel lists them.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The target, for a symlink.
    pub(crate) link_target: Option<PathBuf>,
}

/// The host path of an absolute manifest path under `host_root`.
pub(crate) fn host_path(host_root: &Path, path: &Path) -> PathBuf {
    host_root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The kind of a host file type.
pub(crate) fn kind_of(ft: fs::FileType) -> EntryKind {
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

/// Whether an error means "there is nothing at this path".
pub(crate) fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOENT | Errno::NOTDIR)
    )
}

fn host_err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::HostRead {
        path: path.to_owned(),
        step,
        source,
    }
}

/// Reads the metadata and xattrs of `path`; `follow` follows a final symlink (used for
/// the directories above an entry).
pub(crate) fn read_meta(path: &Path, follow: bool) -> Result<HostMeta, Error> {
    let md = if follow {
        fs::metadata(path).map_err(host_err(path, "stat"))?
    } else {
        fs::symlink_metadata(path).map_err(host_err(path, "lstat"))?
    };
    let kind = kind_of(md.file_type());
    let link_target = if kind == EntryKind::Symlink {
        Some(fs::read_link(path).map_err(host_err(path, "read symlink"))?)
    } else {
        None
    };
    let xattrs = read_xattrs(path, follow).map_err(host_err(path, "read xattrs"))?;
    Ok(HostMeta {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        ino: md.ino(),
        dev: md.dev(),
        atime: (md.atime(), md.atime_nsec()),
        mtime: (md.mtime(), md.mtime_nsec()),
        xattrs,
        link_target,
    })
}

/// Opens a host path for reading without updating its atime (falls back to a plain open
/// where `O_NOATIME` is not permitted: the caller does not own the file and is not root).
fn open_noatime(path: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
    match rustix::fs::open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::open(path, flags, Mode::empty()),
        other => other,
    }
}

/// Opens a host regular file for reading without following a symlink, and checks it is
/// still the file `meta` describes.
pub(crate) fn open_file(path: &Path, meta: &HostMeta) -> Result<File, Error> {
    let fd = open_noatime(path, OFlags::NOFOLLOW)
        .map_err(|e| host_err(path, "open for reading")(e.into()))?;
    let file = File::from(fd);
    let md = file.metadata().map_err(host_err(path, "fstat"))?;
    if !md.file_type().is_file() || md.ino() != meta.ino || md.dev() != meta.dev {
        return Err(Error::HostChanged {
            path: path.to_owned(),
            detail: "the file was replaced while being copied".to_owned(),
        });
    }
    Ok(file)
}

/// Lists and reads all xattrs of `path`. A filesystem without xattr support has none.
pub(crate) fn read_xattrs(path: &Path, follow: bool) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = loop {
        let size = match if follow {
            rustix::fs::listxattr_query(path)
        } else {
            rustix::fs::llistxattr_query(path)
        } {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; size];
        let got = if follow {
            rustix::fs::listxattr(path, &mut buf[..])
        } else {
            rustix::fs::llistxattr(path, &mut buf[..])
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let value = loop {
            let size = if follow {
                rustix::fs::getxattr_query(path, name)?
            } else {
                rustix::fs::lgetxattr_query(path, name)?
            };
            let mut buf = vec![0u8; size];
            let got = if follow {
                rustix::fs::getxattr(path, name, &mut buf[..])
            } else {
                rustix::fs::lgetxattr(path, name, &mut buf[..])
            };
            match got {
                Ok(n) => {
                    buf.truncate(n);
                    break buf;
                }
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// Reads the names in the host directory `path` (without updating its atime), sorted.
pub(crate) fn read_dir_names(path: &Path) -> Result<Vec<OsString>, Error> {
    let fd = open_noatime(path, OFlags::DIRECTORY)
        .map_err(|e| host_err(path, "open directory")(e.into()))?;
    let dir =
        rustix::fs::Dir::read_from(&fd).map_err(|e| host_err(path, "read directory")(e.into()))?;
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| host_err(path, "read directory")(e.into()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}
