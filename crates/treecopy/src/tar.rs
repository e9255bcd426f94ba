//! Extracting a tar archive into a freshly made slot filesystem (`stage --from-tar`).
//!
//! The archive is streamed entry by entry; file content is never held in memory. Every
//! entry is written through a dirfd on its parent, opened beneath the slot root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: an entry with
//! a `..` component, beneath a symlink, or a hard link whose target escapes the root or
//! goes through a symlink is refused at that entry. The `tar` crate only parses; its
//! `unpack` functions are never used.
//!
//! The work is bounded before anything is trusted ([`TarLimits`]): each entry's apparent
//! size (holes of sparse entries included) and their sum are checked against the slot's
//! free space before the entry's content is read, and the bytes the `tar` crate reads
//! between two entries (headers, PAX and GNU long-name bodies, sparse maps, all of which it
//! holds in memory) are capped at [`MAX_HEADER_BYTES`]; beyond either the archive is
//! refused ([`Error::ArchiveLimit`]). Memory stays within fixed buffers and the cap.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use ::tar::EntryType;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::copy::{apply_at_meta, apply_fd_meta, dest_err, in_slot, DIR_PATH_FLAGS, RESOLVE};
use crate::host::HostMeta;
use crate::pool::{Job, Pool, SMALL_FILE};
use crate::{writeback, EntryKind, Error};

/// Size of the buffer the content of a large file is streamed through.
const CHUNK: usize = 1 << 20;
/// Granularity at which all-zero runs of file content are left as holes.
const HOLE_BLOCK: usize = 4096;

/// Most bytes the archive may hold between two entries' contents: the next header and the
/// extension headers describing it (PAX records, GNU long names, sparse maps). The `tar`
/// crate keeps these in memory, so a larger one is refused rather than read.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Longest xattr value Linux accepts (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 64 * 1024;
/// Longest xattr name Linux accepts (`XATTR_NAME_MAX`).
const XATTR_NAME_MAX: usize = 255;

/// Bounds on what one archive may make [`extract_tar_with_limits`] do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarLimits {
    /// Largest apparent size (holes included) of one entry's content.
    pub max_entry_bytes: u64,
    /// Largest sum of the entries' apparent sizes.
    pub max_total_bytes: u64,
    /// Most bytes read between two entries' contents (see [`MAX_HEADER_BYTES`]).
    pub max_header_bytes: u64,
}

impl TarLimits {
    /// The slot's free space (for the entries, each and in total) and [`MAX_HEADER_BYTES`].
    pub fn for_slot(slot_root: &Path) -> Result<TarLimits, Error> {
        let st = rustix::fs::statvfs(slot_root)
            .map_err(|e| dest_err(slot_root, "statvfs (free space for the archive)", e))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        Ok(TarLimits {
            max_entry_bytes: free,
            max_total_bytes: free,
            max_header_bytes: MAX_HEADER_BYTES,
        })
    }
}

/// What [`extract_tar`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Regular files written.
    pub files: u64,
    /// Directory entries of the archive (the root `./` included).
    pub dirs: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Hard links made to an earlier entry.
    pub hardlinks: u64,
    /// Device nodes and FIFOs made.
    pub special: u64,
    /// Bytes of regular file content (apparent size).
    pub bytes: u64,
}

/// Extracts the (already decompressed) tar stream `reader` into the empty filesystem
/// mounted at `slot_root`.
///
/// Keeps numeric owners, modes (set-id bits included), mtimes (nanoseconds from PAX
/// records), symlinks, hard links, device nodes, FIFOs and xattrs from PAX
/// `SCHILY.xattr.*` records (POSIX ACLs and `security.capability` included). Metadata is
/// applied owner → xattrs → mode → times; directories get theirs at the end, deepest
/// first. Absolute entry paths are taken relative to the root; all-zero blocks of file
/// content are left as holes. Ends with `syncfs` on the slot.
///
/// Refused with [`Error::UnsafeArchiveEntry`], at that entry: a `..` component, an
/// entry beneath a symlink, a hard link whose target has a `..` component or goes
/// through a symlink. Entries before it may have been written: the caller treats the
/// slot as invalid on any error.
///
/// Bounded by [`TarLimits::for_slot`]: the slot's free space and [`MAX_HEADER_BYTES`].
pub fn extract_tar(reader: impl Read, slot_root: &Path) -> Result<ExtractReport, Error> {
    let limits = TarLimits::for_slot(slot_root)?;
    extract_tar_with_limits(reader, slot_root, &limits)
}

/// [`extract_tar`] with explicit bounds: an entry larger than `max_entry_bytes`, entries
/// adding up to more than `max_total_bytes`, or more than `max_header_bytes` between two
/// entries is [`Error::ArchiveLimit`], raised before that content is read.
pub fn extract_tar_with_limits(
    reader: impl Read,
    slot_root: &Path,
    limits: &TarLimits,
) -> Result<ExtractReport, Error> {
    let root = rustix::fs::open(
        slot_root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| dest_err(slot_root, "open slot root", e))?;
    let mut ex = Extractor {
        root,
        root_path: slot_root,
        cached_parent: None,
        dirs: BTreeMap::new(),
        report: ExtractReport::default(),
        pool: Pool::new(),
    };
    let budget = Rc::new(Budget::default());
    let mut archive = ::tar::Archive::new(Budgeted {
        inner: reader,
        budget: Rc::clone(&budget),
    });
    let mut last = PathBuf::from("(start of archive)");
    let mut total = 0u64;
    budget.limit(limits.max_header_bytes);
    let mut entries = archive.entries().map_err(|source| Error::Archive {
        entry: last.clone(),
        step: "read the first header".to_owned(),
        source,
    })?;
    loop {
        budget.limit(limits.max_header_bytes);
        let Some(entry) = entries.next() else { break };
        let mut entry = entry.map_err(|source| {
            if budget.exceeded.get() {
                Error::ArchiveLimit {
                    entry: last.clone(),
                    reason: format!(
                        "the headers (PAX records, long names, sparse map) of the {} entry \
                         exceed {} bytes",
                        if total == 0 && ex.report == ExtractReport::default() {
                            "first"
                        } else {
                            "next"
                        },
                        limits.max_header_bytes
                    ),
                }
            } else {
                Error::Archive {
                    entry: last.clone(),
                    step: "read the header after this entry".to_owned(),
                    source,
                }
            }
        })?;
        budget.unlimited();
        last = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let size = entry.size();
        if size > limits.max_entry_bytes {
            return Err(Error::ArchiveLimit {
                entry: last,
                reason: format!(
                    "declares {size} bytes of content (holes included), more than the {} bytes \
                     free in the slot",
                    limits.max_entry_bytes
                ),
            });
        }
        total = total.saturating_add(size);
        if total > limits.max_total_bytes {
            return Err(Error::ArchiveLimit {
                entry: last,
                reason: format!(
                    "brings the archive's content to {total} bytes (holes included), more than \
                     the {} bytes free in the slot",
                    limits.max_total_bytes
                ),
            });
        }
        ex.extract_entry(&mut entry, &last)?;
        // Whatever the entry left unread (the data of a link or directory entry) is read
        // here, bounded by its size, not by the header budget of the next entry.
        io::copy(&mut entry, &mut io::sink()).map_err(|source| Error::Archive {
            entry: last.clone(),
            step: "skip the rest of the entry's data".to_owned(),
            source,
        })?;
    }
    let written = ex.pool.finish()?;
    ex.report.bytes += written.bytes;
    ex.finish_dirs()?;
    rustix::fs::syncfs(&ex.root).map_err(|e| dest_err(slot_root, "syncfs", e))?;
    let report = ex.report;
    tracing::info!(
        slot = %slot_root.display(),
        files = report.files,
        dirs = report.dirs,
        symlinks = report.symlinks,
        hardlinks = report.hardlinks,
        special = report.special,
        bytes = report.bytes,
        "extracted tar archive into slot"
    );
    Ok(report)
}

/// What one archive entry makes.
enum Action {
    Dir,
    File,
    Symlink,
    Hardlink,
    Node(FileType),
    Skip,
}

/// The extraction state.
struct Extractor<'a> {
    root: OwnedFd,
    root_path: &'a Path,
    /// The last parent directory opened, reused for its siblings.
    cached_parent: Option<(PathBuf, OwnedFd)>,
    /// Directories and their metadata, applied at the end (later entries win).
    dirs: BTreeMap<PathBuf, HostMeta>,
    report: ExtractReport,
    /// Writes small files' content and metadata while the archive is read on.
    pool: Pool,
}

impl Extractor<'_> {
    fn extract_entry<R: Read>(
        &mut self,
        entry: &mut ::tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<(), Error> {
        let action = match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Action::File,
            EntryType::Directory => Action::Dir,
            EntryType::Symlink => Action::Symlink,
            EntryType::Link => Action::Hardlink,
            EntryType::Char => Action::Node(FileType::CharacterDevice),
            EntryType::Block => Action::Node(FileType::BlockDevice),
            EntryType::Fifo => Action::Node(FileType::Fifo),
            EntryType::XGlobalHeader => Action::Skip,
            other => {
                return Err(Error::UnsupportedArchiveEntry {
                    entry: raw.to_owned(),
                    reason: format!("entry type {:?} is not extracted", other.as_byte() as char),
                })
            }
        };
        if matches!(action, Action::Skip) {
            tracing::debug!(entry = %raw.display(), "skipping PAX global header");
            return Ok(());
        }
        let rel = normalize(raw)?;
        let meta = entry_meta(entry, raw, &action)?;
        if rel.as_os_str().is_empty() {
            if !matches!(action, Action::Dir) {
                return Err(Error::UnsafeArchiveEntry {
                    entry: raw.to_owned(),
                    reason: "names the slot root itself but is not a directory".to_owned(),
                });
            }
            self.dirs.insert(rel, meta);
            self.report.dirs += 1;
            return Ok(());
        }
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_owned();
        let parent = self.open_parent(&parent_rel, raw)?;
        let result = self.write(entry, raw, &rel, parent.as_fd(), meta, action);
        self.cached_parent = Some((parent_rel, parent));
        result
    }

    fn write<R: Read>(
        &mut self,
        entry: &mut ::tar::Entry<'_, R>,
        raw: &Path,
        rel: &Path,
        parent: BorrowedFd<'_>,
        meta: HostMeta,
        action: Action,
    ) -> Result<(), Error> {
        let name = rel.file_name().unwrap_or_default();
        let display = self.root_path.join(rel);
        match action {
            Action::Dir => {
                match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        // A directory stays; anything else is replaced, like GNU tar.
                        if open_dir(parent, name).is_err() {
                            make_room(parent, name, rel, &display)?;
                            rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                                .map_err(|e| dest_err(&display, "create directory", e))?;
                        }
                    }
                    Err(e) => return Err(dest_err(&display, "create directory", e)),
                }
                self.dirs.insert(rel.to_owned(), meta);
                self.report.dirs += 1;
            }
            Action::File => {
                let fd = create_replacing(parent, name, rel, &display, "create file", || {
                    abupdate_utils::resolve::openat2(
                        parent,
                        name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                        RESOLVE,
                    )
                })?;
                let file = File::from(fd);
                self.report.files += 1;
                // A small file goes to a writer thread whole; a large one is streamed here.
                let mut head = Vec::with_capacity(entry.size().min(SMALL_FILE + 1) as usize);
                (&mut *entry)
                    .take(SMALL_FILE + 1)
                    .read_to_end(&mut head)
                    .map_err(|source| Error::Archive {
                        entry: raw.to_owned(),
                        step: "read file content (truncated archive?)".to_owned(),
                        source,
                    })?;
                if head.len() as u64 <= SMALL_FILE {
                    return self.pool.submit(Job::Write {
                        dst: file,
                        data: head,
                        meta,
                        display,
                    });
                }
                let bytes = write_holey(
                    &mut head.as_slice().chain(&mut *entry),
                    &file,
                    raw,
                    &display,
                )?;
                apply_fd_meta(file.as_fd(), &meta, &display).map_err(|e| kernel_refused(e, raw))?;
                writeback::start(&file);
                self.report.bytes += bytes;
            }
            Action::Symlink => {
                let target = meta.link_target.clone().unwrap_or_default();
                create_replacing(parent, name, rel, &display, "create symlink", || {
                    rustix::fs::symlinkat(&target, parent, name)
                })?;
                apply_at_meta(parent, name, &meta, &display).map_err(|e| kernel_refused(e, raw))?;
                self.report.symlinks += 1;
            }
            Action::Node(ft) => {
                create_replacing(parent, name, rel, &display, "create node (mknodat)", || {
                    rustix::fs::mknodat(parent, name, ft, Mode::from_raw_mode(0o600), meta.rdev)
                })?;
                apply_at_meta(parent, name, &meta, &display).map_err(|e| kernel_refused(e, raw))?;
                self.report.special += 1;
            }
            Action::Hardlink => {
                let raw_target = meta.link_target.clone().unwrap_or_default();
                let target = normalize(&raw_target).map_err(|_| Error::UnsafeArchiveEntry {
                    entry: raw.to_owned(),
                    reason: format!(
                        "hard link target {} has a `..` component",
                        raw_target.display()
                    ),
                })?;
                if target == rel {
                    return Ok(());
                }
                let Some(target_name) = target.file_name() else {
                    return Err(Error::UnsafeArchiveEntry {
                        entry: raw.to_owned(),
                        reason: "hard link to the slot root".to_owned(),
                    });
                };
                let target_parent_rel = target.parent().unwrap_or(Path::new(""));
                let not_extracted = || Error::UnsafeArchiveEntry {
                    entry: raw.to_owned(),
                    reason: format!(
                        "hard link target {} is not an entry extracted before it (targets are \
                         taken inside the slot, a leading `/` included)",
                        raw_target.display()
                    ),
                };
                let target_parent = self.open_existing(target_parent_rel).map_err(|e| {
                    match (e, self.first_symlink(target_parent_rel)) {
                        (Errno::NOENT, _) => not_extracted(),
                        (Errno::LOOP | Errno::NOTDIR, Some(link)) => Error::UnsafeArchiveEntry {
                            entry: raw.to_owned(),
                            reason: format!(
                                "hard link target {} goes through the symlink {}",
                                raw_target.display(),
                                in_slot(&link).display()
                            ),
                        },
                        (e, _) => dest_err(
                            &self.root_path.join(target_parent_rel),
                            format!(
                                "open the directory of hard link target for {}",
                                raw.display()
                            ),
                            e,
                        ),
                    }
                })?;
                match rustix::fs::statat(&target_parent, target_name, AtFlags::SYMLINK_NOFOLLOW) {
                    Err(Errno::NOENT) => return Err(not_extracted()),
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(Error::UnsafeArchiveEntry {
                            entry: raw.to_owned(),
                            reason: format!(
                                "hard link target {} is a directory",
                                raw_target.display()
                            ),
                        })
                    }
                    _ => {}
                }
                let step = format!("hard link to {}", in_slot(&target).display());
                create_replacing(parent, name, rel, &display, &step, || {
                    rustix::fs::linkat(&target_parent, target_name, parent, name, AtFlags::empty())
                })?;
                self.report.hardlinks += 1;
            }
            Action::Skip => {}
        }
        Ok(())
    }

    /// Opens the existing directory `rel` beneath the root, refusing any symlink.
    fn open_existing(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        let path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        abupdate_utils::resolve::openat2(&self.root, path, DIR_PATH_FLAGS, Mode::empty(), RESOLVE)
    }

    /// The first component of the directory path `rel` that is a symlink, if any.
    fn first_symlink(&self, rel: &Path) -> Option<PathBuf> {
        let mut current = self.open_existing(Path::new("")).ok()?;
        let mut prefix = PathBuf::new();
        for comp in rel {
            prefix.push(comp);
            if is_symlink(current.as_fd(), comp) {
                return Some(prefix);
            }
            current = open_dir(current.as_fd(), comp).ok()?;
        }
        None
    }

    /// Opens (creating missing components of) the parent directory `rel` of entry `raw`.
    /// A component that is a symlink makes the entry unsafe.
    fn open_parent(&mut self, rel: &Path, raw: &Path) -> Result<OwnedFd, Error> {
        if let Some((cached, fd)) = self.cached_parent.take() {
            if cached == rel {
                return Ok(fd);
            }
        }
        if let Ok(fd) = self.open_existing(rel) {
            return Ok(fd);
        }
        let mut current = self
            .open_existing(Path::new(""))
            .map_err(|e| dest_err(self.root_path, "open slot root", e))?;
        let mut prefix = PathBuf::new();
        for comp in rel {
            prefix.push(comp);
            let display = self.root_path.join(&prefix);
            current = match open_dir(current.as_fd(), comp) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    // A parent the archive does not list: made like GNU tar does.
                    match rustix::fs::mkdirat(&current, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(dest_err(&display, "create missing parent", e)),
                    }
                    open_dir(current.as_fd(), comp)
                        .map_err(|e| dest_err(&display, "open created parent", e))?
                }
                Err(Errno::LOOP | Errno::NOTDIR) if is_symlink(current.as_fd(), comp) => {
                    return Err(Error::UnsafeArchiveEntry {
                        entry: raw.to_owned(),
                        reason: format!(
                            "its parent {} is a symlink; nothing is written beneath a symlink",
                            in_slot(&prefix).display()
                        ),
                    })
                }
                Err(Errno::NOTDIR) => {
                    return Err(Error::DestinationConflict {
                        path: in_slot(&prefix),
                        detail: format!(
                            "is not a directory, so archive entry {} cannot be written",
                            raw.display()
                        ),
                    })
                }
                Err(e) => return Err(dest_err(&display, "open parent directory", e)),
            };
        }
        Ok(current)
    }

    /// Applies directory metadata, deepest first, once all contents are written.
    fn finish_dirs(&mut self) -> Result<(), Error> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, meta) in dirs {
            let display = self.root_path.join(&rel);
            let path = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &rel
            };
            let fd = abupdate_utils::resolve::openat2(
                &self.root,
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(|e| dest_err(&display, "open directory to set metadata", e))?;
            apply_fd_meta(fd.as_fd(), &meta, &display)?;
        }
        Ok(())
    }
}

/// Opens the directory `name` in `dir` as a path handle, refusing symlinks.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    abupdate_utils::resolve::openat2(dir, name, DIR_PATH_FLAGS, Mode::empty(), RESOLVE)
}

/// Whether `name` in `dir` is a symlink (not followed).
fn is_symlink(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// Runs `create`; if the name exists, removes it (never a directory) and runs it again.
pub(crate) fn create_replacing<T>(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
    display: &Path,
    step: &str,
    mut create: impl FnMut() -> Result<T, Errno>,
) -> Result<T, Error> {
    match create() {
        Err(Errno::EXIST) => {
            make_room(dir, name, rel, display)?;
            create().map_err(|e| dest_err(display, step, e))
        }
        other => other.map_err(|e| dest_err(display, step, e)),
    }
}

/// Removes a non-directory `name` from `dir` (unlinking never follows a symlink).
fn make_room(dir: BorrowedFd<'_>, name: &OsStr, rel: &Path, display: &Path) -> Result<(), Error> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(dest_err(display, "inspect existing entry", e)),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Err(Error::DestinationConflict {
                path: in_slot(rel),
                detail: "is a directory and is not replaced by a non-directory".to_owned(),
            })
        }
        Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| dest_err(display, "remove existing entry", e)),
    }
}

/// The entry's path relative to the root: empty and `.` components dropped, a leading
/// `/` stripped; `..` refused.
fn normalize(raw: &Path) -> Result<PathBuf, Error> {
    let mut rel = PathBuf::new();
    for comp in raw.as_os_str().as_bytes().split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                return Err(Error::UnsafeArchiveEntry {
                    entry: raw.to_owned(),
                    reason: "has a `..` component".to_owned(),
                })
            }
            name => rel.push(OsStr::from_bytes(name)),
        }
    }
    Ok(rel)
}

/// The metadata of an entry from its header and PAX records.
fn entry_meta<R: Read>(
    entry: &mut ::tar::Entry<'_, R>,
    raw: &Path,
    action: &Action,
) -> Result<HostMeta, Error> {
    let bad = |field: &str, source: io::Error| Error::Archive {
        entry: raw.to_owned(),
        step: format!("read header field {field}"),
        source,
    };
    let header = entry.header();
    let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let uid = header.uid().map_err(|e| bad("uid", e))?;
    let gid = header.gid().map_err(|e| bad("gid", e))?;
    let mtime = header.mtime().map_err(|e| bad("mtime", e))?;
    let rdev = match action {
        Action::Node(FileType::CharacterDevice | FileType::BlockDevice) => {
            let major = header.device_major().map_err(|e| bad("devmajor", e))?;
            let minor = header.device_minor().map_err(|e| bad("devminor", e))?;
            rustix::fs::makedev(major.unwrap_or(0), minor.unwrap_or(0))
        }
        _ => 0,
    };
    let to_u32 = |field: &str, v: u64| {
        u32::try_from(v).map_err(|_| {
            bad(
                field,
                io::Error::new(io::ErrorKind::InvalidData, format!("{v} is out of range")),
            )
        })
    };
    let (uid, gid) = (to_u32("uid", uid)?, to_u32("gid", gid)?);
    let link_target = entry
        .link_name_bytes()
        .map(|b| PathBuf::from(OsStr::from_bytes(&b)));
    let mut mtime = (i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    let mut atime = None;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(|e| bad("PAX records", e))? {
        for ext in pax {
            // The tar crate splits PAX records at newlines (tar-rs issue #452), so a record
            // whose value holds one cannot be read: refuse it rather than guess.
            let ext = ext.map_err(|e| Error::UnsupportedArchiveEntry {
                entry: raw.to_owned(),
                reason: format!(
                    "a PAX record cannot be read ({e}): values holding a newline are not \
                     supported, such as the text ACLs `tar --acls` writes; archive ACLs with \
                     --xattrs --xattrs-include='*' and without --acls"
                ),
            })?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                check_xattr(name, ext.value_bytes()).map_err(|reason| {
                    Error::UnsupportedArchiveEntry {
                        entry: raw.to_owned(),
                        reason: format!(
                            "xattr {:?} cannot be set: {reason}",
                            String::from_utf8_lossy(name)
                        ),
                    }
                })?;
                xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            } else if key == b"mtime" {
                mtime = pax_time(ext.value_bytes()).ok_or_else(|| bad_time(raw, "mtime"))?;
            } else if key == b"atime" {
                atime = Some(pax_time(ext.value_bytes()).ok_or_else(|| bad_time(raw, "atime"))?);
            } else if key.starts_with(b"GNU.sparse.") {
                return Err(Error::UnsupportedArchiveEntry {
                    entry: raw.to_owned(),
                    reason: "PAX sparse files (GNU.sparse.*) are not supported; create the \
                             archive without --sparse or with --format=gnu"
                        .to_owned(),
                });
            } else if key.starts_with(b"SCHILY.acl.") {
                return Err(Error::UnsupportedArchiveEntry {
                    entry: raw.to_owned(),
                    reason: "text ACL records (tar --acls) are not supported; archive ACLs \
                             with --xattrs --xattrs-include='*' and without --acls"
                        .to_owned(),
                });
            }
        }
    }
    let kind = match action {
        Action::Dir => EntryKind::Dir,
        Action::File | Action::Hardlink => EntryKind::File,
        Action::Symlink => EntryKind::Symlink,
        Action::Node(_) | Action::Skip => EntryKind::Other,
    };
    Ok(HostMeta {
        kind,
        mode,
        uid,
        gid,
        rdev,
        ino: 0,
        dev: 0,
        atime: atime.unwrap_or(mtime),
        mtime,
        xattrs,
        link_target,
    })
}

/// An xattr the kernel refuses (bad value, unsupported name) is the archive's fault.
pub(crate) fn kernel_refused(e: Error, raw: &Path) -> Error {
    match e {
        Error::Destination { step, source, .. }
            if step.starts_with("set xattr")
                && [Errno::INVAL, Errno::NOTSUP, Errno::RANGE, Errno::TOOBIG]
                    .iter()
                    .any(|errno| source.raw_os_error() == Some(errno.raw_os_error())) =>
        {
            Error::UnsupportedArchiveEntry {
                entry: raw.to_owned(),
                reason: format!("the kernel refuses its {step}: {source}"),
            }
        }
        e => e,
    }
}

/// Checks an archived xattr as the kernel would, so that a bad one is the archive's fault
/// (exit 4), not an I/O error: a known namespace and a name after it, the kernel's length
/// limits, and a well-formed POSIX ACL for `system.posix_acl_*`.
fn check_xattr(name: &[u8], value: &[u8]) -> Result<(), String> {
    const NAMESPACES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"system."];
    let Some(ns) = NAMESPACES.iter().find(|ns| name.starts_with(ns)) else {
        return Err("its name has no user., trusted., security. or system. namespace".into());
    };
    if name.len() == ns.len() || name.contains(&0) {
        return Err("its name is empty after the namespace or holds a NUL byte".into());
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(format!("its name is longer than {XATTR_NAME_MAX} bytes"));
    }
    if value.len() > XATTR_SIZE_MAX {
        return Err(format!("its value is longer than {XATTR_SIZE_MAX} bytes"));
    }
    if name == b"system.posix_acl_access" || name == b"system.posix_acl_default" {
        // struct posix_acl_xattr_header (u32 version 2), then 8-byte entries.
        let ok = value.len() >= 4
            && (value.len() - 4).is_multiple_of(8)
            && value[..4] == 2u32.to_le_bytes();
        if !ok {
            return Err("its value is not a POSIX ACL in the kernel's xattr format".into());
        }
    } else if name.starts_with(b"system.") {
        return Err(
            "only system.posix_acl_access and system.posix_acl_default are extracted".into(),
        );
    }
    Ok(())
}

fn bad_time(raw: &Path, field: &str) -> Error {
    Error::Archive {
        entry: raw.to_owned(),
        step: format!("parse PAX {field}"),
        source: io::Error::new(io::ErrorKind::InvalidData, "not a decimal time"),
    }
}

/// Parses a PAX time, `[-]seconds[.fraction]`, into seconds and nanoseconds.
fn pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10i64.pow(8 - i as u32);
    }
    Some(match (negative, nanos) {
        (false, n) => (secs, n),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

/// Streams the entry's content into `file`, leaving all-zero blocks as holes, and sets
/// the file's length. Returns the length.
fn write_holey(src: &mut impl Read, file: &File, raw: &Path, display: &Path) -> Result<u64, Error> {
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    let mut written_to = 0u64;
    loop {
        let n = read_full(src, &mut buf).map_err(|source| Error::Archive {
            entry: raw.to_owned(),
            step: "read file content (truncated archive?)".to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        written_to = write_data_runs(file, &buf[..n], offset, display)?.unwrap_or(written_to);
        offset += n as u64;
    }
    if written_to < offset {
        rustix::fs::ftruncate(file, offset).map_err(|e| dest_err(display, "set file length", e))?;
    }
    Ok(offset)
}

/// Writes the blocks of `data` that are not all zero at `offset` in `file`, leaving the
/// zero blocks as holes. Returns where the last write ended, if anything was written.
pub(crate) fn write_data_runs(
    file: &File,
    data: &[u8],
    offset: u64,
    display: &Path,
) -> Result<Option<u64>, Error> {
    let mut run: Option<(usize, usize)> = None;
    let mut end_written = None;
    for (i, block) in data.chunks(HOLE_BLOCK).enumerate() {
        let start = i * HOLE_BLOCK;
        if block.iter().all(|b| *b == 0) {
            if let Some((s, e)) = run.take() {
                write_at(file, &data[s..e], offset + s as u64, display)?;
                end_written = Some(offset + e as u64);
            }
        } else {
            let end = start + block.len();
            run = Some(run.map_or((start, end), |(s, _)| (s, end)));
        }
    }
    if let Some((s, e)) = run {
        write_at(file, &data[s..e], offset + s as u64, display)?;
        end_written = Some(offset + e as u64);
    }
    Ok(end_written)
}

fn write_at(file: &File, data: &[u8], offset: u64, display: &Path) -> Result<(), Error> {
    file.write_all_at(data, offset)
        .map_err(|source| Error::Destination {
            path: display.to_owned(),
            step: format!("write content at offset {offset}"),
            source,
        })
}

/// Reads until `buf` is full or the end of the stream; returns the bytes read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// How many bytes the archive reader may still deliver before the next entry's content.
#[derive(Debug, Default)]
struct Budget {
    left: Cell<Option<u64>>,
    exceeded: Cell<bool>,
}

impl Budget {
    fn limit(&self, bytes: u64) {
        self.left.set(Some(bytes));
    }

    fn unlimited(&self) {
        self.left.set(None);
    }
}

/// The archive's reader, failing once the [`Budget`] is spent.
struct Budgeted<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.budget.left.get() {
            None => buf.len(),
            Some(0) if !buf.is_empty() => {
                self.budget.exceeded.set(true);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "extended headers exceed the limit",
                ));
            }
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
        };
        let n = self.inner.read(&mut buf[..want])?;
        if let Some(left) = self.budget.left.get() {
            self.budget.left.set(Some(left - n as u64));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1795321263.329822907"),
            Some((1795321263, 329822907))
        );
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b".5"), None);
    }

    #[test]
    fn normalizes_entry_paths() {
        let n = |s: &str| normalize(Path::new(s)).map_err(|e| e.to_string());
        assert_eq!(n("./etc/passwd"), Ok(PathBuf::from("etc/passwd")));
        assert_eq!(n("/etc//passwd"), Ok(PathBuf::from("etc/passwd")));
        assert_eq!(n("./"), Ok(PathBuf::new()));
        assert!(n("../evil").is_err());
        assert!(n("a/../../b").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 1024,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::Direct(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../tests/corpus/proptest/tar-planner.txt"
                )),
            )),
            ..proptest::test_runner::Config::default()
        })]

        /// The entry planner never yields a path that resolves outside the slot: what it
        /// accepts is relative, without `.`, `..` or empty components, and stays beneath
        /// the root once joined to it.
        #[test]
        fn planned_paths_stay_inside(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b"..".to_vec()),
                    proptest::strategy::Just(b".".to_vec()),
                    proptest::strategy::Just(Vec::new()),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 1..6),
                ],
                0..8,
            ),
            absolute in proptest::prelude::any::<bool>(),
        ) {
            let mut raw = if absolute { b"/".to_vec() } else { Vec::new() };
            raw.extend(parts.join(&b'/'));
            let raw = PathBuf::from(OsStr::from_bytes(&raw));
            match normalize(&raw) {
                Ok(rel) => {
                    proptest::prop_assert!(rel.is_relative(), "{rel:?}");
                    for c in rel.components() {
                        proptest::prop_assert!(
                            matches!(c, std::path::Component::Normal(_)),
                            "{raw:?} gave {rel:?}"
                        );
                    }
                    let root = Path::new("/slot");
                    proptest::prop_assert!(root.join(&rel).starts_with(root));
                }
                Err(Error::UnsafeArchiveEntry { .. }) => {
                    proptest::prop_assert!(raw.as_os_str().as_bytes().split(|b| *b == b'/').any(|c| c == b".."));
                }
                Err(e) => proptest::prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}
