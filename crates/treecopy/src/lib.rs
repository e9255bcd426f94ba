//! Copies a declared manifest of configuration files from the running system into a
//! staged slot, preserving owner, group, mode, timestamps and all xattrs (POSIX ACLs,
//! `security.*`), keeping symlinks as symlinks.
//!
//! Two steps: [`plan`] expands the [`Manifest`] on the host (no writes anywhere), and
//! [`copy_into`] checks every entry against the slot, then writes. Architecture invariant
//! (docs/design.md, invariant 6): every destination is resolved inside the slot with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`; a symlink of
//! the new image is never written through. The only exception is a final component that
//! is a symlink both in the image and on the host: the image's link is replaced.

mod clone;
mod copy;
mod host;
mod manifest;
mod plan;
mod pool;
mod tar;
mod writeback;

use std::io;
use std::path::PathBuf;

pub use self::tar::{
    extract_tar, extract_tar_with_limits, ExtractReport, TarLimits, MAX_HEADER_BYTES,
};
pub use clone::{clone_tree, CloneOptions, CloneReport};
pub use copy::{copy_into, CopyReport};
pub use manifest::{glob_match, Manifest};
pub use plan::{plan, EntryKind, Plan, PlannedEntry};

/// Errors of planning and copying. Each names the path and the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest entry (or planned path) is not a normalized absolute path or glob.
    #[error("manifest entry {entry:?} is invalid: {reason}")]
    BadManifestEntry {
        /// The entry as written.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A host path could not be read.
    #[error("reading host path {}: {step}", path.display())]
    HostRead {
        /// The path on the host.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A host path changed type between planning and copying.
    #[error("host path {} changed while copying: {detail}", path.display())]
    HostChanged {
        /// The path on the host.
        path: PathBuf,
        /// What changed.
        detail: String,
    },
    /// A destination (or one of its parents) is a symlink in the new image.
    #[error(
        "slot path {} is a symlink to {} in the new image; abupdate never writes through a \
         symlink of the new image — remove it from the manifest or fix the image",
        path.display(),
        link_target.display()
    )]
    UnsafeDestination {
        /// The path as seen inside the slot (`/etc/app.conf`).
        path: PathBuf,
        /// The symlink's target in the image.
        link_target: PathBuf,
    },
    /// A destination exists in the slot with a type that cannot be replaced.
    #[error("slot path {} {detail}", path.display())]
    DestinationConflict {
        /// The path as seen inside the slot.
        path: PathBuf,
        /// What is in the way.
        detail: String,
    },
    /// Writing into the slot failed.
    #[error("writing slot path {}: {step}", path.display())]
    Destination {
        /// The real path under the slot's mount point.
        path: PathBuf,
        /// What was being done ("create temp file", "set xattr security.capability", ...).
        step: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tar entry would be written outside the slot or through a symlink: refused at
    /// that entry, never written nor followed.
    #[error("unsafe archive entry {}: {reason}", entry.display())]
    UnsafeArchiveEntry {
        /// The entry's path as written in the archive.
        entry: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A tar entry uses a feature abupdate does not extract.
    #[error("unsupported archive entry {}: {reason}", entry.display())]
    UnsupportedArchiveEntry {
        /// The entry's path as written in the archive.
        entry: PathBuf,
        /// What is not supported.
        reason: String,
    },
    /// The archive would make extraction do more than the slot can hold or than its bounds
    /// allow (an entry or the sum of entries larger than the slot's free space, oversized
    /// extended headers): refused before that content is read.
    #[error("archive entry {}: {reason}", entry.display())]
    ArchiveLimit {
        /// The entry concerned (or the last one read before an oversized header).
        entry: PathBuf,
        /// Which bound, and the sizes.
        reason: String,
    },
    /// The archive could not be read (corrupt or truncated).
    #[error("reading the tar archive {}: {step}", entry.display())]
    Archive {
        /// The entry being read, or the last entry read before a header failed.
        entry: PathBuf,
        /// What was being done.
        step: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A clone exclude path is not a normalized absolute path.
    #[error("clone exclude {}: {reason}", path.display())]
    BadExclude {
        /// The path as given.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
}
