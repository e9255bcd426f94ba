//! Copying a plan into a mounted slot: every check first, then the writes.
//!
//! Every destination is resolved relative to a dirfd on the slot root, one component at a
//! time, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so
//! a symlink in the new image can never send a write outside the slot.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::host::{self, host_path, HostMeta};
use crate::manifest::relative_entry_path;
use crate::{EntryKind, Error, Plan, PlannedEntry};

/// How every path in the slot is resolved: beneath the starting dirfd, no symlinks at all.
pub(crate) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Flags for a directory handle used only as the base of `*at` calls.
pub(crate) const DIR_PATH_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What [`copy_into`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated, including missing parents created in the slot.
    pub dirs: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Device nodes, FIFOs and sockets written.
    pub special: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Copies the entries of `plan` from the host tree at `host_root` into the slot mounted
/// at `slot_root`, preserving owner, group, mode, atime/mtime and all xattrs.
///
/// Every check (host entries readable, every destination resolvable without a symlink of
/// the new image, no type conflicts) runs before the first write, so a refused plan
/// leaves the slot unchanged. Files are written to a temporary name, given their
/// metadata, then renamed over the destination; directories are merged, never replaced.
/// Missing parent directories are created with the metadata of the host's directory
/// (symlinks above an entry on the host are followed); existing ones keep the image's.
/// Hard links are copied as separate files. Ends with `syncfs` on the slot.
///
/// The host is only read, with `O_NOATIME` where permitted. An I/O error during the write
/// phase can leave earlier entries written; rerunning the copy is safe.
pub fn copy_into(host_root: &Path, plan: &Plan, slot_root: &Path) -> Result<CopyReport, Error> {
    let slot_fd = rustix::fs::open(
        slot_root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| dest_err(slot_root, "open slot root", e))?;
    let slot = Slot {
        fd: slot_fd,
        root: slot_root.to_owned(),
    };
    let checked = check(host_root, plan, &slot)?;
    let mut writer = Writer {
        host_root,
        slot: &slot,
        missing_parents: checked.missing_parents,
        cached_parent: None,
        dirs: Vec::new(),
        report: CopyReport::default(),
        temp_counter: 0,
    };
    for (entry, (rel, meta)) in plan.entries.iter().zip(checked.entries) {
        writer.write_entry(entry, &rel, meta)?;
    }
    writer.finish_dirs()?;
    let report = writer.report;
    rustix::fs::syncfs(&slot.fd).map_err(|e| dest_err(slot_root, "syncfs", e))?;
    tracing::info!(
        slot = %slot_root.display(),
        files = report.files,
        dirs = report.dirs,
        symlinks = report.symlinks,
        special = report.special,
        bytes = report.bytes,
        "copied manifest into slot"
    );
    Ok(report)
}

/// The mounted slot: a dirfd on its root and the root's path for messages.
struct Slot {
    fd: OwnedFd,
    root: PathBuf,
}

impl Slot {
    /// The real path of `rel` for error messages.
    fn display(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }
}

pub(crate) fn dest_err(path: &Path, step: impl Into<String>, e: Errno) -> Error {
    Error::Destination {
        path: path.to_owned(),
        step: step.into(),
        source: e.into(),
    }
}

/// The in-slot absolute form of a relative path, as the new image sees it.
pub(crate) fn in_slot(rel: &Path) -> PathBuf {
    Path::new("/").join(rel)
}

fn type_name(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "an entry of unknown type",
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "a regular file",
        EntryKind::Dir => "a directory",
        EntryKind::Symlink => "a symlink",
        EntryKind::Other => "a device, FIFO or socket",
    }
}

/// Opens the directory `name` beneath `dir`, refusing symlinks.
fn open_dir_beneath(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    abupdate_utils::resolve::openat2(dir, name, flags, Mode::empty(), RESOLVE)
}

/// The refusal for a symlink of the new image found at `name` beneath `dir`.
fn unsafe_link(slot: &Slot, dir: BorrowedFd<'_>, name: &OsStr, rel: &Path) -> Error {
    match rustix::fs::readlinkat(dir, name, Vec::new()) {
        Ok(target) => Error::UnsafeDestination {
            path: in_slot(rel),
            link_target: PathBuf::from(OsStr::from_bytes(target.as_bytes())),
        },
        Err(e) => dest_err(&slot.display(rel), "read symlink of the new image", e),
    }
}

/// The result of the check phase.
struct Checked {
    /// Each entry's path relative to the roots and its host metadata, in plan order. The
    /// metadata is read once, here, before anything reads the entry (reading a symlink
    /// updates its atime).
    entries: Vec<(PathBuf, HostMeta)>,
    /// Parent directories missing in the slot, with the metadata of the host's directory.
    missing_parents: BTreeMap<PathBuf, HostMeta>,
}

/// Checks every entry without writing anything.
fn check(host_root: &Path, plan: &Plan, slot: &Slot) -> Result<Checked, Error> {
    let mut entries = Vec::with_capacity(plan.entries.len());
    let mut missing_parents = BTreeMap::new();
    let mut non_dirs = BTreeSet::new();
    for entry in &plan.entries {
        let rel = relative_entry_path(&entry.path)?;
        if let Some(ancestor) = rel.ancestors().skip(1).find(|a| non_dirs.contains(*a)) {
            return Err(Error::DestinationConflict {
                path: in_slot(&rel),
                detail: format!(
                    "cannot be written: its parent {} is copied as a non-directory (the \
                     host path goes through a symlink)",
                    in_slot(ancestor).display()
                ),
            });
        }
        if entry.kind != EntryKind::Dir {
            non_dirs.insert(rel.clone());
        }
        let meta = check_host(host_root, entry)?;
        check_slot(host_root, slot, &rel, entry.kind, &mut missing_parents)?;
        entries.push((rel, meta));
    }
    Ok(Checked {
        entries,
        missing_parents,
    })
}

/// Checks that the host entry is still what was planned and can be read.
fn check_host(host_root: &Path, entry: &PlannedEntry) -> Result<HostMeta, Error> {
    let path = host_path(host_root, &entry.path);
    let meta = host::read_meta(&path, false)?;
    if meta.kind != entry.kind {
        return Err(Error::HostChanged {
            detail: format!(
                "planned as {} but now {}",
                kind_name(entry.kind),
                kind_name(meta.kind)
            ),
            path,
        });
    }
    match meta.kind {
        EntryKind::File => drop(host::open_file(&path, &meta)?),
        EntryKind::Dir => drop(host::read_dir_names(&path)?),
        EntryKind::Symlink | EntryKind::Other => {}
    }
    Ok(meta)
}

/// Checks that `rel` resolves in the slot under the destination policy, and records the
/// missing parent directories with their host metadata.
fn check_slot(
    host_root: &Path,
    slot: &Slot,
    rel: &Path,
    host_kind: EntryKind,
    missing_parents: &mut BTreeMap<PathBuf, HostMeta>,
) -> Result<(), Error> {
    let components: Vec<&OsStr> = rel.iter().collect();
    let Some((name, parents)) = components.split_last() else {
        return Ok(());
    };
    let mut current: Option<OwnedFd> = None;
    let mut prefix = PathBuf::new();
    for (i, comp) in parents.iter().enumerate() {
        prefix.push(comp);
        let dir = current.as_ref().map_or(slot.fd.as_fd(), |f| f.as_fd());
        match rustix::fs::statat(dir, *comp, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {
                let mut missing = prefix.clone();
                for (j, comp) in parents.iter().enumerate().skip(i) {
                    if j > i {
                        missing.push(comp);
                    }
                    if missing_parents.contains_key(&missing) {
                        continue;
                    }
                    let on_host = host_path(host_root, &in_slot(&missing));
                    let meta = host::read_meta(&on_host, true)?;
                    if meta.kind != EntryKind::Dir {
                        return Err(Error::HostChanged {
                            path: on_host,
                            detail: "no longer a directory".to_owned(),
                        });
                    }
                    missing_parents.insert(missing.clone(), meta);
                }
                return Ok(());
            }
            Err(e) => return Err(dest_err(&slot.display(&prefix), "inspect", e)),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    current = Some(
                        open_dir_beneath(dir, comp, DIR_PATH_FLAGS)
                            .map_err(|e| dest_err(&slot.display(&prefix), "open directory", e))?,
                    );
                }
                FileType::Symlink => return Err(unsafe_link(slot, dir, comp, &prefix)),
                other => {
                    return Err(Error::DestinationConflict {
                        path: in_slot(&prefix),
                        detail: format!(
                            "is {} in the new image, not a directory, so {} cannot be written",
                            type_name(other),
                            in_slot(rel).display()
                        ),
                    })
                }
            },
        }
    }
    let dir = current.as_ref().map_or(slot.fd.as_fd(), |f| f.as_fd());
    match rustix::fs::statat(dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(dest_err(&slot.display(rel), "inspect", e)),
        Ok(st) => match (FileType::from_raw_mode(st.st_mode), host_kind) {
            (FileType::Symlink, EntryKind::Symlink) => Ok(()),
            (FileType::Symlink, _) => Err(unsafe_link(slot, dir, name, rel)),
            (FileType::Directory, EntryKind::Dir) => Ok(()),
            (FileType::Directory, kind) => Err(Error::DestinationConflict {
                path: in_slot(rel),
                detail: format!(
                    "is a directory in the new image but {} on the host; abupdate does not \
                     replace directories",
                    kind_name(kind)
                ),
            }),
            (other, EntryKind::Dir) => Err(Error::DestinationConflict {
                path: in_slot(rel),
                detail: format!(
                    "is {} in the new image but a directory on the host; abupdate does not \
                     replace it",
                    type_name(other)
                ),
            }),
            (_, _) => Ok(()),
        },
    }
}

/// A temporary entry in a slot directory, removed on drop unless renamed into place.
struct TempEntry<'a> {
    dir: BorrowedFd<'a>,
    name: OsString,
    display: PathBuf,
    armed: bool,
}

impl Drop for TempEntry<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = rustix::fs::unlinkat(self.dir, &self.name, AtFlags::empty()) {
                tracing::warn!(
                    path = %self.display.display(),
                    error = %e,
                    "could not remove temporary file after a failed copy"
                );
            }
        }
    }
}

/// The write phase.
struct Writer<'a> {
    host_root: &'a Path,
    slot: &'a Slot,
    missing_parents: BTreeMap<PathBuf, HostMeta>,
    /// The last parent directory opened, reused for its siblings.
    cached_parent: Option<(PathBuf, OwnedFd)>,
    /// Directories whose metadata is applied last (their contents change their mtime).
    dirs: Vec<(PathBuf, HostMeta)>,
    report: CopyReport,
    temp_counter: u64,
}

impl Writer<'_> {
    fn write_entry(
        &mut self,
        entry: &PlannedEntry,
        rel: &Path,
        meta: HostMeta,
    ) -> Result<(), Error> {
        let on_host = host_path(self.host_root, &entry.path);
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().unwrap_or_default();
        let parent = self.open_parent(parent_rel)?;
        let result = self.write_in(&parent, name, rel, &on_host, meta);
        self.cached_parent = Some((parent_rel.to_owned(), parent));
        result
    }

    fn write_in(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        on_host: &Path,
        meta: HostMeta,
    ) -> Result<(), Error> {
        let display = self.slot.display(rel);
        match meta.kind {
            EntryKind::Dir => {
                match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(dest_err(&display, "create directory", e)),
                }
                // Refuses anything but a real directory, whatever appeared since the check.
                open_dir_beneath(parent.as_fd(), name, DIR_PATH_FLAGS)
                    .map_err(|e| dest_err(&display, "open directory", e))?;
                self.dirs.push((rel.to_owned(), meta));
                self.report.dirs += 1;
            }
            EntryKind::File => {
                let mut src = host::open_file(on_host, &meta)?;
                let mut temp = self.temp_name(parent.as_fd(), &display);
                let fd = abupdate_utils::resolve::openat2(
                    parent,
                    &temp.name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                    RESOLVE,
                )
                .map_err(|e| dest_err(&display, "create temp file", e))?;
                temp.armed = true;
                let mut dst = File::from(fd);
                let bytes = io::copy(&mut src, &mut dst).map_err(|source| Error::Destination {
                    path: display.clone(),
                    step: format!("copy content from {}", on_host.display()),
                    source,
                })?;
                apply_fd_meta(dst.as_fd(), &meta, &display)?;
                rename_into_place(parent, temp, name, &display)?;
                self.report.files += 1;
                self.report.bytes += bytes;
            }
            EntryKind::Symlink => {
                let target = meta.link_target.clone().unwrap_or_default();
                let mut temp = self.temp_name(parent.as_fd(), &display);
                rustix::fs::symlinkat(&target, parent, &temp.name)
                    .map_err(|e| dest_err(&display, "create temp symlink", e))?;
                temp.armed = true;
                apply_at_meta(parent.as_fd(), &temp.name, &meta, &display)?;
                rename_into_place(parent, temp, name, &display)?;
                self.report.symlinks += 1;
            }
            EntryKind::Other => {
                let mut temp = self.temp_name(parent.as_fd(), &display);
                rustix::fs::mknodat(
                    parent,
                    &temp.name,
                    FileType::from_raw_mode(meta.mode),
                    Mode::from_raw_mode(0o600),
                    meta.rdev,
                )
                .map_err(|e| dest_err(&display, "create temp node (mknodat)", e))?;
                temp.armed = true;
                apply_at_meta(parent.as_fd(), &temp.name, &meta, &display)?;
                rename_into_place(parent, temp, name, &display)?;
                self.report.special += 1;
            }
        }
        Ok(())
    }

    /// A fresh temporary name beside `display` (not yet created, so not armed).
    fn temp_name<'d>(&mut self, dir: BorrowedFd<'d>, display: &Path) -> TempEntry<'d> {
        self.temp_counter += 1;
        let temp = format!(".abupdate-{}-{}.tmp", std::process::id(), self.temp_counter);
        TempEntry {
            dir,
            display: display.with_file_name(&temp),
            name: temp.into(),
            armed: false,
        }
    }

    /// Opens the slot directory `rel` with every component resolved beneath the slot
    /// root, creating missing ones from the host's corresponding directories.
    fn open_parent(&mut self, rel: &Path) -> Result<OwnedFd, Error> {
        if let Some((cached, fd)) = self.cached_parent.take() {
            if cached == rel {
                return Ok(fd);
            }
        }
        let mut current = open_dir_beneath(self.slot.fd.as_fd(), OsStr::new("."), DIR_PATH_FLAGS)
            .map_err(|e| dest_err(&self.slot.root, "open slot root", e))?;
        let mut prefix = PathBuf::new();
        for comp in rel {
            prefix.push(comp);
            let display = self.slot.display(&prefix);
            current = match open_dir_beneath(current.as_fd(), comp, DIR_PATH_FLAGS) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let meta = match self.missing_parents.get(&prefix) {
                        Some(meta) => meta.clone(),
                        None => {
                            host::read_meta(&host_path(self.host_root, &in_slot(&prefix)), true)?
                        }
                    };
                    match rustix::fs::mkdirat(&current, comp, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(dest_err(&display, "create missing parent", e)),
                    }
                    self.dirs.push((prefix.clone(), meta));
                    self.report.dirs += 1;
                    open_dir_beneath(current.as_fd(), comp, DIR_PATH_FLAGS)
                        .map_err(|e| dest_err(&display, "open created parent", e))?
                }
                Err(Errno::LOOP) => {
                    return Err(unsafe_link(self.slot, current.as_fd(), comp, &prefix))
                }
                Err(e) => return Err(dest_err(&display, "open parent directory", e)),
            };
        }
        Ok(current)
    }

    /// Applies directory metadata, deepest first, once all contents are written.
    fn finish_dirs(&mut self) -> Result<(), Error> {
        for (rel, meta) in self.dirs.iter().rev() {
            let display = self.slot.display(rel);
            let fd = abupdate_utils::resolve::openat2(
                &self.slot.fd,
                rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(|e| dest_err(&display, "open directory to set metadata", e))?;
            apply_fd_meta(fd.as_fd(), meta, &display)?;
        }
        Ok(())
    }
}

fn rename_into_place(
    parent: &OwnedFd,
    mut temp: TempEntry<'_>,
    name: &OsStr,
    display: &Path,
) -> Result<(), Error> {
    // rename(2) replaces the directory entry `name`; it never follows it.
    rustix::fs::renameat(parent, &temp.name, parent, name)
        .map_err(|e| dest_err(display, "rename into place", e))?;
    temp.armed = false;
    Ok(())
}

fn timestamps(meta: &HostMeta) -> Timestamps {
    let ts = |(sec, nsec): (i64, i64)| Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    Timestamps {
        last_access: ts(meta.atime),
        last_modification: ts(meta.mtime),
    }
}

fn owner(meta: &HostMeta) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
}

/// Owner, then xattrs (chown clears `security.capability`), then mode (chown clears
/// set-id bits), then timestamps.
pub(crate) fn apply_fd_meta(
    fd: BorrowedFd<'_>,
    meta: &HostMeta,
    display: &Path,
) -> Result<(), Error> {
    let (uid, gid) = owner(meta);
    rustix::fs::fchown(fd, uid, gid)
        .map_err(|e| dest_err(display, format!("set owner {}:{}", meta.uid, meta.gid), e))?;
    mirror_xattrs(XattrTarget::Fd(fd), meta, display)?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))
        .map_err(|e| dest_err(display, format!("set mode {:04o}", meta.mode & 0o7777), e))?;
    rustix::fs::futimens(fd, &timestamps(meta)).map_err(|e| dest_err(display, "set timestamps", e))
}

/// The same as [`apply_fd_meta`] for a symlink or node `name` in `dir`, never following it.
pub(crate) fn apply_at_meta(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    meta: &HostMeta,
    display: &Path,
) -> Result<(), Error> {
    let (uid, gid) = owner(meta);
    rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| dest_err(display, format!("set owner {}:{}", meta.uid, meta.gid), e))?;
    // No *xattrat(2) before Linux 6.13: name the entry through the directory's magic link,
    // which is the dirfd resolved above; the final component is not followed (l*xattr).
    let mut via_proc = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    via_proc.extend_from_slice(name.as_bytes());
    mirror_xattrs(
        XattrTarget::NoFollow(OsStr::from_bytes(&via_proc)),
        meta,
        display,
    )?;
    if meta.kind == EntryKind::Other {
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(meta.mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| dest_err(display, format!("set mode {:04o}", meta.mode & 0o7777), e))?;
    }
    rustix::fs::utimensat(dir, name, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| dest_err(display, "set timestamps", e))
}

/// Where xattrs are written.
#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    NoFollow(&'a OsStr),
}

impl XattrTarget<'_> {
    fn list(self) -> Result<Vec<u8>, Errno> {
        loop {
            let size = match self {
                Self::Fd(fd) => rustix::fs::flistxattr_query(fd),
                Self::NoFollow(p) => rustix::fs::llistxattr_query(p),
            };
            let size = match size {
                Ok(n) => n,
                Err(Errno::NOTSUP) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut buf = vec![0u8; size];
            let got = match self {
                Self::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
                Self::NoFollow(p) => rustix::fs::llistxattr(p, &mut buf[..]),
            };
            match got {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn remove(self, name: &[u8]) -> Result<(), Errno> {
        match self {
            Self::Fd(fd) => rustix::fs::fremovexattr(fd, name),
            Self::NoFollow(p) => rustix::fs::lremovexattr(p, name),
        }
    }

    fn set(self, name: &[u8], value: &[u8]) -> Result<(), Errno> {
        match self {
            Self::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
            Self::NoFollow(p) => rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()),
        }
    }
}

/// Makes the destination's xattrs exactly the host's: removes the ones the host lacks
/// (for example an ACL inherited from a default ACL), then sets every host xattr.
fn mirror_xattrs(target: XattrTarget<'_>, meta: &HostMeta, display: &Path) -> Result<(), Error> {
    let step = |what: &str, name: &[u8]| format!("{what} xattr {}", String::from_utf8_lossy(name));
    let existing = target
        .list()
        .map_err(|e| dest_err(display, "list xattrs", e))?;
    for name in existing.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !meta.xattrs.iter().any(|(n, _)| n == name) {
            target
                .remove(name)
                .map_err(|e| dest_err(display, step("remove", name), e))?;
        }
    }
    for (name, value) in &meta.xattrs {
        target
            .set(name, value)
            .map_err(|e| dest_err(display, step("set", name), e))?;
    }
    Ok(())
}
