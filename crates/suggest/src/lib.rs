//! Suggests the manifest of configuration files to carry into a staged slot
//! (`abupdate manifest suggest`).
//!
//! Under each scan root (`/etc` by default) it finds what the package manager cannot
//! recreate: conffiles changed since installed, other package files whose content differs
//! from the package, and files and symlinks no package owns. [`render_manifest`] prints
//! them as a ready-to-paste `manifest:` section.
//!
//! Only dpkg is supported. Its database is read from `<root>/var/lib/dpkg`: `status`
//! (conffiles and their original MD5), `info/*.list` (ownership), `info/*.md5sums`
//! (shipped content) and `diversions` (diverted paths count as owned). Paths matching a
//! built-in exclude ([`BUILTIN_EXCLUDES`]: caches, release identity, enablement links…) or
//! an operator's exclude are never suggested, nor are the symlinks in
//! [`GENERATED_LINK_DIRS`]. A directory whose whole content is unowned
//! is suggested as one entry.
//!
//! Architecture invariant: parsing (`dpkg`, `exclude`, `render`) is pure code over `&str`;
//! all file system access lives in `scan`, which only reads.

pub mod dpkg;
mod exclude;
mod render;
mod scan;

use std::io;
use std::path::PathBuf;

use serde::Serialize;

pub use exclude::{BUILTIN_EXCLUDES, GENERATED_LINK_DIRS};
pub use render::render_manifest;

/// Why a path is suggested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// A dpkg conffile whose content differs from the one installed.
    ModifiedConffile {
        /// The package owning the conffile.
        package: String,
    },
    /// A package file (not a conffile) whose content differs from the package's.
    ModifiedPackageFile {
        /// The package shipping the file.
        package: String,
    },
    /// A regular file or symlink owned by no package.
    Unowned,
    /// A directory owned by no package, nor anything beneath it.
    UnownedDirectory {
        /// Regular files and symlinks beneath it.
        files: usize,
    },
}

/// One path to carry into the new slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// Absolute path, as on the running system.
    pub path: String,
    /// Why it is suggested.
    pub reason: Reason,
}

/// What to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuggestOptions {
    /// Root of the system to inspect: `/` in production, a fake tree in tests.
    pub root: PathBuf,
    /// Absolute directories, relative to `root`, whose content is considered.
    pub scan_roots: Vec<String>,
    /// Absolute globs never suggested, in addition to [`BUILTIN_EXCLUDES`]; a matching
    /// directory excludes everything beneath it.
    pub exclude: Vec<String>,
}

impl Default for SuggestOptions {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            scan_roots: vec!["/etc".to_owned()],
            exclude: Vec::new(),
        }
    }
}

/// Errors of suggestion. Each names the path and the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The system uses a package manager that is not supported yet.
    #[error("unsupported package manager: {0}")]
    Unsupported(&'static str),
    /// Neither a dpkg nor an RPM database was found under the root.
    #[error(
        "no package database under {}: expected var/lib/dpkg/status (dpkg)",
        root.display()
    )]
    NoPackageDatabase {
        /// The inspected root.
        root: PathBuf,
    },
    /// A scan root is not a normalized absolute path.
    #[error("scan root {root:?} is invalid: {reason}")]
    BadScanRoot {
        /// The scan root as given.
        root: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An exclude is not an absolute glob.
    #[error("exclude {pattern:?} is invalid: {reason}")]
    BadExclude {
        /// The exclude as given.
        pattern: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file or directory could not be read.
    #[error("{step} {}", path.display())]
    Read {
        /// The path on the inspected system.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A dpkg database file is malformed.
    #[error("parsing {}, line {line}: {reason}", path.display())]
    Parse {
        /// The database file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Finds the paths under the scan roots worth carrying into a new slot, sorted by path.
pub fn suggest(opts: &SuggestOptions) -> Result<Vec<Suggestion>, Error> {
    scan::suggest(opts)
}
