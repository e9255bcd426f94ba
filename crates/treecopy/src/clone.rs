//! Cloning the running system's root tree onto a freshly made slot filesystem
//! (`stage --clone`).
//!
//! The source is walked through directory fds (never following a symlink, never
//! crossing a mount point); every destination is written through a dirfd opened beneath
//! the slot root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Statx, StatxFlags};
use rustix::io::Errno;

use crate::copy::{apply_at_meta, apply_fd_meta, dest_err, in_slot, RESOLVE};
use crate::host::{read_xattrs, HostMeta};
use crate::pool::{Job, Pool};
use crate::tar::{create_replacing, open_dir};
use crate::{EntryKind, Error};

/// Size of the buffer each writer thread copies file data through.
pub(crate) const CHUNK: usize = 1 << 20;

/// What [`clone_tree`] leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneOptions {
    /// Absolute paths, relative to the source root (`/var/cache/apt/archives`), not
    /// copied; a directory among them is created empty with its metadata.
    pub exclude: Vec<PathBuf>,
}

/// What [`clone_tree`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneReport {
    /// Regular files written (hard links to them not included).
    pub files: u64,
    /// Directories written, mount points and excluded directories included.
    pub dirs: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Hard links made to an entry copied earlier.
    pub hardlinks: u64,
    /// Device nodes, FIFOs and sockets made.
    pub special: u64,
    /// Bytes of regular file data copied (holes not included).
    pub bytes: u64,
    /// Regular files that had holes, copied sparse.
    pub sparse_files: u64,
    /// Mount points found below the source root (as absolute paths inside the tree),
    /// created empty in the copy.
    pub skipped_mounts: Vec<PathBuf>,
}

/// Copies the tree at `src_root` (`/` of the running system) onto the empty filesystem
/// mounted at `dst_root`.
///
/// Keeps owners, modes, atimes/mtimes, all xattrs (POSIX ACLs and `security.capability`
/// included), hard links as hard links, holes of sparse files, symlinks, device nodes,
/// FIFOs and sockets. Does not cross mount points (a different mount id or device):
/// they are created empty with their metadata and listed in
/// [`CloneReport::skipped_mounts`]; excluded paths (and the destination, if met inside
/// the source) are left out the same way. Entries that vanish during the walk are
/// skipped with a warning. Directory metadata is applied after their contents. Ends
/// with `syncfs` on the destination.
pub fn clone_tree(
    src_root: &Path,
    dst_root: &Path,
    opts: &CloneOptions,
) -> Result<CloneReport, Error> {
    let exclude = opts
        .exclude
        .iter()
        .map(|p| exclude_rel(p))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let src = open_src_dir(rustix::fs::CWD, src_root.as_os_str())
        .map_err(|e| host_err(src_root, "open source root", e))?;
    let root_st = fd_statx(src.as_fd()).map_err(|e| host_err(src_root, "statx source root", e))?;
    let dst = rustix::fs::open(
        dst_root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| dest_err(dst_root, "open destination root", e))?;
    let dst_st =
        fd_statx(dst.as_fd()).map_err(|e| dest_err(dst_root, "statx destination root", e))?;
    let mut cloner = Cloner {
        src_root,
        dst_root,
        dst: dst.as_fd(),
        exclude,
        root_dev: dev_of(&root_st),
        root_mnt: has_mnt_id(&root_st).then_some(root_st.stx_mnt_id),
        dst_id: (dev_of(&dst_st), dst_st.stx_ino),
        links: HashMap::new(),
        report: CloneReport::default(),
        pool: Pool::new(),
    };
    cloner.copy_dir(src.as_fd(), dst.as_fd(), Path::new(""))?;
    let written = cloner.pool.finish()?;
    cloner.report.bytes += written.bytes;
    cloner.report.sparse_files += written.sparse_files;
    let root_meta = fd_meta(src.as_fd(), &root_st, src_root)?;
    apply_fd_meta(dst.as_fd(), &root_meta, dst_root)?;
    rustix::fs::syncfs(&dst).map_err(|e| dest_err(dst_root, "syncfs", e))?;
    let report = cloner.report;
    tracing::info!(
        src = %src_root.display(),
        dst = %dst_root.display(),
        files = report.files,
        dirs = report.dirs,
        symlinks = report.symlinks,
        hardlinks = report.hardlinks,
        special = report.special,
        bytes = report.bytes,
        sparse_files = report.sparse_files,
        skipped_mounts = report.skipped_mounts.len(),
        "cloned tree"
    );
    Ok(report)
}

/// The relative form of an exclude path; it must be absolute and normalized.
fn exclude_rel(path: &Path) -> Result<PathBuf, Error> {
    let bad = |reason: &str| Error::BadExclude {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let rel = path
        .strip_prefix("/")
        .map_err(|_| bad("not an absolute path"))?;
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad("has a `.` or `..` component"));
    }
    if rel.as_os_str().is_empty() {
        return Err(bad("excludes the whole tree"));
    }
    Ok(rel.to_owned())
}

fn host_err(path: &Path, step: &'static str, e: Errno) -> Error {
    Error::HostRead {
        path: path.to_owned(),
        step,
        source: e.into(),
    }
}

/// Whether a source error means the entry vanished (the system is running).
fn vanished(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::STALE)
}

/// Opens a source directory for reading, without following a symlink or updating atime.
fn open_src_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    open_src(dir, name, OFlags::DIRECTORY)
}

/// Opens a source entry read-only with `O_NOATIME` where permitted, never following a
/// symlink and never blocking (a FIFO swapped in after the stat).
fn open_src(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags = flags
        | OFlags::RDONLY
        | OFlags::NOFOLLOW
        | OFlags::NONBLOCK
        | OFlags::NOCTTY
        | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

const STATX_MASK: StatxFlags = StatxFlags::BASIC_STATS.union(StatxFlags::MNT_ID);

fn fd_statx(fd: BorrowedFd<'_>) -> Result<Statx, Errno> {
    rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, STATX_MASK)
}

/// Whether the kernel reported the mount id (Linux 5.8 and later).
fn has_mnt_id(st: &Statx) -> bool {
    st.stx_mask & StatxFlags::MNT_ID.bits() != 0
}

fn dev_of(st: &Statx) -> u64 {
    rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor)
}

fn kind_of(st: &Statx) -> EntryKind {
    match FileType::from_raw_mode(st.stx_mode.into()) {
        FileType::Directory => EntryKind::Dir,
        FileType::RegularFile => EntryKind::File,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

/// Metadata from a statx record, with the given xattrs and symlink target.
fn meta_from(
    st: &Statx,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    link_target: Option<PathBuf>,
) -> HostMeta {
    HostMeta {
        kind: kind_of(st),
        mode: st.stx_mode.into(),
        uid: st.stx_uid,
        gid: st.stx_gid,
        rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        ino: st.stx_ino,
        dev: dev_of(st),
        atime: (st.stx_atime.tv_sec, st.stx_atime.tv_nsec.into()),
        mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec.into()),
        xattrs,
        link_target,
    }
}

/// The metadata of an open source file or directory.
fn fd_meta(fd: BorrowedFd<'_>, st: &Statx, path: &Path) -> Result<HostMeta, Error> {
    let via_proc = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let xattrs = read_xattrs(&via_proc, true).map_err(|source| Error::HostRead {
        path: path.to_owned(),
        step: "read xattrs",
        source,
    })?;
    Ok(meta_from(st, xattrs, None))
}

/// The walk.
struct Cloner<'a> {
    src_root: &'a Path,
    dst_root: &'a Path,
    dst: BorrowedFd<'a>,
    exclude: BTreeSet<PathBuf>,
    root_dev: u64,
    /// The source root's mount id, where the kernel reports one.
    root_mnt: Option<u64>,
    /// (dev, ino) of the destination root, never descended if met inside the source.
    dst_id: (u64, u64),
    /// (dev, ino) of multiply linked source entries → their path in the copy.
    links: HashMap<(u64, u64), PathBuf>,
    report: CloneReport,
    /// Copies file data and metadata while the tree is walked on.
    pool: Pool,
}

impl Cloner<'_> {
    /// Whether a source entry lives on another mount than the source root.
    fn other_mount(&self, st: &Statx) -> bool {
        let other_mnt = match self.root_mnt {
            Some(mnt) => has_mnt_id(st) && st.stx_mnt_id != mnt,
            None => false,
        };
        other_mnt || dev_of(st) != self.root_dev
    }

    fn warn_vanished(&self, rel: &Path, step: &str, e: Errno) {
        tracing::warn!(
            path = %self.src_root.join(rel).display(),
            error = %e,
            "{step}: the entry vanished during the clone; skipped"
        );
    }

    /// Copies the contents of the source directory `src` into `dst`.
    fn copy_dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        rel: &Path,
    ) -> Result<(), Error> {
        for name in self.read_names(src, rel)? {
            let child = rel.join(&name);
            let st = match rustix::fs::statx(
                src,
                &name,
                AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
                STATX_MASK,
            ) {
                Ok(st) => st,
                Err(e) if vanished(e) => {
                    self.warn_vanished(&child, "statx", e);
                    continue;
                }
                Err(e) => return Err(host_err(&self.src_root.join(&child), "statx", e)),
            };
            self.copy_entry(src, dst, &name, &child, &st)?;
        }
        Ok(())
    }

    /// The names in a source directory, sorted.
    fn read_names(&self, src: BorrowedFd<'_>, rel: &Path) -> Result<Vec<OsString>, Error> {
        let path = self.src_root.join(rel);
        let dir = match rustix::fs::Dir::read_from(src) {
            Ok(dir) => dir,
            Err(e) if vanished(e) => {
                self.warn_vanished(rel, "read directory", e);
                return Ok(Vec::new());
            }
            Err(e) => return Err(host_err(&path, "read directory", e)),
        };
        let mut names = Vec::new();
        for entry in dir {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if vanished(e) => {
                    self.warn_vanished(rel, "read directory", e);
                    break;
                }
                Err(e) => return Err(host_err(&path, "read directory", e)),
            };
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn copy_entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        st: &Statx,
    ) -> Result<(), Error> {
        let kind = kind_of(st);
        let excluded = self.exclude.contains(rel) || (dev_of(st), st.stx_ino) == self.dst_id;
        let mount = self.other_mount(st);
        if mount {
            self.report.skipped_mounts.push(in_slot(rel));
        }
        if excluded && kind != EntryKind::Dir {
            return Ok(());
        }
        let link_key = (kind != EntryKind::Dir && !mount && st.stx_nlink > 1)
            .then(|| (dev_of(st), st.stx_ino));
        if let Some(first) = link_key.and_then(|key| self.links.get(&key).cloned()) {
            return self.hardlink(dst, name, rel, &first);
        }
        let written = match kind {
            EntryKind::Dir => self.copy_subdir(src, dst, name, rel, st, excluded || mount)?,
            EntryKind::File => self.copy_file(src, dst, name, rel, mount)?,
            EntryKind::Symlink | EntryKind::Other => self.copy_at(src, dst, name, rel, st)?,
        };
        if let (Some(key), true) = (link_key, written) {
            self.links.insert(key, rel.to_owned());
        }
        Ok(())
    }

    fn copy_subdir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        st: &Statx,
        empty: bool,
    ) -> Result<bool, Error> {
        let src_path = self.src_root.join(rel);
        let display = self.dst_root.join(rel);
        let src_dir = match open_src_dir(src, name) {
            Ok(fd) => fd,
            Err(e) if vanished(e) || e == Errno::LOOP => {
                self.warn_vanished(rel, "open directory", e);
                return Ok(false);
            }
            Err(e) => return Err(host_err(&src_path, "open directory", e)),
        };
        // The directory as opened: it may have been replaced since the listing.
        let st_now = match fd_statx(src_dir.as_fd()) {
            Ok(now) if now.stx_ino == st.stx_ino && dev_of(&now) == dev_of(st) => now,
            Ok(_) => {
                self.warn_vanished(rel, "open directory", Errno::NOENT);
                return Ok(false);
            }
            Err(e) => return Err(host_err(&src_path, "statx directory", e)),
        };
        let meta = fd_meta(src_dir.as_fd(), &st_now, &src_path)?;
        match rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(dest_err(&display, "create directory", e)),
        }
        let dst_dir = abupdate_utils::resolve::openat2(
            dst,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| dest_err(&display, "open directory", e))?;
        if !empty {
            self.copy_dir(src_dir.as_fd(), dst_dir.as_fd(), rel)?;
        }
        apply_fd_meta(dst_dir.as_fd(), &meta, &display)?;
        self.report.dirs += 1;
        Ok(true)
    }

    fn copy_file(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        mount: bool,
    ) -> Result<bool, Error> {
        let src_path = self.src_root.join(rel);
        let display = self.dst_root.join(rel);
        let file = match open_src(src, name, OFlags::empty()) {
            Ok(fd) => File::from(fd),
            Err(e) if vanished(e) || e == Errno::LOOP => {
                self.warn_vanished(rel, "open file", e);
                return Ok(false);
            }
            Err(e) => return Err(host_err(&src_path, "open file", e)),
        };
        let st_now = fd_statx(file.as_fd()).map_err(|e| host_err(&src_path, "statx file", e))?;
        if kind_of(&st_now) != EntryKind::File {
            self.warn_vanished(rel, "open file", Errno::NOENT);
            return Ok(false);
        }
        let meta = fd_meta(file.as_fd(), &st_now, &src_path)?;
        let fd = create_replacing(dst, name, rel, &display, "create file", || {
            abupdate_utils::resolve::openat2(
                dst,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
                RESOLVE,
            )
        })?;
        let out = File::from(fd);
        self.report.files += 1;
        if mount {
            // A file mounted over: its mount point, without the content.
            apply_fd_meta(out.as_fd(), &meta, &display)?;
            return Ok(true);
        }
        self.pool.submit(Job::Copy {
            src: file,
            size: st_now.stx_size,
            dst: out,
            meta,
            src_path,
            display,
        })?;
        Ok(true)
    }

    /// Recreates a symlink, device node, FIFO or socket.
    fn copy_at(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        st: &Statx,
    ) -> Result<bool, Error> {
        let src_path = self.src_root.join(rel);
        let display = self.dst_root.join(rel);
        let link_target = if kind_of(st) == EntryKind::Symlink {
            match rustix::fs::readlinkat(src, name, Vec::new()) {
                Ok(t) => Some(PathBuf::from(OsStr::from_bytes(t.as_bytes()))),
                Err(e) if vanished(e) || e == Errno::INVAL => {
                    self.warn_vanished(rel, "read symlink", e);
                    return Ok(false);
                }
                Err(e) => return Err(host_err(&src_path, "read symlink", e)),
            }
        } else {
            None
        };
        // No *xattrat(2) before Linux 6.13: the entry through the directory's magic link.
        let mut via_proc = format!("/proc/self/fd/{}/", src.as_raw_fd()).into_bytes();
        via_proc.extend_from_slice(name.as_bytes());
        let xattrs = match read_xattrs(Path::new(OsStr::from_bytes(&via_proc)), false) {
            Ok(x) => x,
            Err(e)
                if e.raw_os_error()
                    .is_some_and(|n| vanished(Errno::from_raw_os_error(n))) =>
            {
                self.warn_vanished(rel, "read xattrs", Errno::NOENT);
                return Ok(false);
            }
            Err(source) => {
                return Err(Error::HostRead {
                    path: src_path,
                    step: "read xattrs",
                    source,
                })
            }
        };
        let meta = meta_from(st, xattrs, link_target);
        match &meta.link_target {
            Some(target) => {
                create_replacing(dst, name, rel, &display, "create symlink", || {
                    rustix::fs::symlinkat(target, dst, name)
                })?;
                self.report.symlinks += 1;
            }
            None => {
                let ft = FileType::from_raw_mode(meta.mode);
                create_replacing(dst, name, rel, &display, "create node (mknodat)", || {
                    rustix::fs::mknodat(dst, name, ft, Mode::from_raw_mode(0o600), meta.rdev)
                })?;
                self.report.special += 1;
            }
        }
        apply_at_meta(dst, name, &meta, &display)?;
        Ok(true)
    }

    /// Links `name` in `dst` to the earlier copy `first` of the same source inode.
    fn hardlink(
        &mut self,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        first: &Path,
    ) -> Result<(), Error> {
        let display = self.dst_root.join(rel);
        let first_parent = first.parent().unwrap_or(Path::new(""));
        let first_name = first.file_name().unwrap_or_default();
        let parent = if first_parent.as_os_str().is_empty() {
            open_dir(self.dst, OsStr::new("."))
        } else {
            open_dir(self.dst, first_parent.as_os_str())
        }
        .map_err(|e| {
            dest_err(
                &self.dst_root.join(first_parent),
                "open hard link target's directory",
                e,
            )
        })?;
        let step = format!("hard link to {}", in_slot(first).display());
        create_replacing(dst, name, rel, &display, &step, || {
            rustix::fs::linkat(&parent, first_name, dst, name, AtFlags::empty())
        })?;
        self.report.hardlinks += 1;
        Ok(())
    }
}

/// Copies the data extents of `src` (`SEEK_DATA`/`SEEK_HOLE`) into `dst` through `buf`
/// and sets its length to `size`. Returns the data bytes copied and whether the file had
/// holes.
pub(crate) fn copy_extents(
    src: &File,
    dst: &File,
    size: u64,
    src_path: &Path,
    display: &Path,
    buf: &mut [u8],
) -> Result<(u64, bool), Error> {
    let chunk = buf.len();
    let mut pos = 0u64;
    let mut copied = 0u64;
    'extents: while pos < size {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(start) => start,
            Err(Errno::NXIO) => break,
            Err(e) => return Err(host_err(src_path, "seek to data (SEEK_DATA)", e)),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(end) => end.min(size),
            Err(Errno::NXIO) => break,
            Err(e) => return Err(host_err(src_path, "seek to hole (SEEK_HOLE)", e)),
        };
        let mut offset = start;
        while offset < end {
            let want = usize::try_from(end - offset).map_or(chunk, |n| n.min(chunk));
            let n = match src.read_at(&mut buf[..want], offset) {
                Ok(0) => break 'extents, // The file shrank while being copied.
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::HostRead {
                        path: src_path.to_owned(),
                        step: "read file data",
                        source,
                    })
                }
            };
            dst.write_all_at(&buf[..n], offset)
                .map_err(|source| Error::Destination {
                    path: display.to_owned(),
                    step: format!("write data at offset {offset}"),
                    source,
                })?;
            offset += n as u64;
            copied += n as u64;
        }
        pos = end;
    }
    // A trailing hole (or a file that shrank) needs the length set; a dense file has it.
    if pos < size || copied < size {
        rustix::fs::ftruncate(dst, size).map_err(|e| dest_err(display, "set file length", e))?;
    }
    Ok((copied, copied < size))
}
