//! Suggests the manifest of configuration files to carry into a staged slot
//! (`abupdate manifest suggest`).
//!
//! Under each scan root (`/etc` by default) it finds what the new release's packages cannot
//! recreate: conffiles changed since installed, other package files whose content differs
//! from the package, files ucf generated and the operator changed since, and files and
//! symlinks no package owns. [`render_manifest`] prints them as a ready-to-paste
//! `manifest:` section, sorted by path (stable and diffable between runs).
//!
//! Only dpkg is supported. Its database is read from `<root>/var/lib/dpkg`: `status`
//! (conffiles and their original MD5), `info/*.list` (ownership), `info/*.md5sums`
//! (shipped content), `info/*.{preinst,postinst}` (maintainer scripts) and `diversions`
//! (diverted paths count as owned). ucf's state is read from `<root>/var/lib/ucf` if
//! present: `hashfile` (MD5 of what ucf last installed) and `registry` (the package each
//! file belongs to).
//!
//! The rules, in the order they apply to a path under a scan root:
//!
//! 1. A path matching a built-in exclude ([`BUILTIN_EXCLUDES`]: caches, release identity,
//!    enablement links…) or an operator's exclude is never suggested.
//! 2. A dpkg conffile or package file is suggested when its content differs from the
//!    recorded MD5 ([`Reason::ModifiedConffile`], [`Reason::ModifiedPackageFile`]).
//! 3. A file in ucf's hashfile is suggested only when its content differs from the MD5 ucf
//!    recorded ([`Reason::ModifiedUcfFile`], naming the package from ucf's registry).
//! 4. The symlinks tools of the new release generate are not suggested: those directly in
//!    [`GENERATED_LINK_DIRS`], and systemd's enablement aliases (a link directly in
//!    `/etc/systemd/system` or `/etc/systemd/user` to a unit in a vendor unit directory,
//!    see [`VENDOR_UNIT_DIRS`]; a mask, a link to `/dev/null`, is suggested).
//! 5. Of the remaining files and symlinks no package owns, these carry nothing and are not
//!    suggested:
//!    - an empty regular file: it holds no configuration (a marker file whose mere
//!      presence matters, such as `/etc/cloud/cloud-init.disabled`, is left for the
//!      operator to add by hand);
//!    - a verbatim copy of a file some package ships, outside `/etc` and `/usr/share/doc`
//!      (a template a maintainer script copied, such as base-files'
//!      `/usr/share/base-files/profile` to `/etc/profile`): the new release's scripts make
//!      their own copy. Copies of `/etc` files and of documentation examples are the
//!      operator's doing (Debian policy forbids packages to need `/usr/share/doc`), and
//!      files shorter than [`MIN_TEMPLATE_LEN`] bytes are not compared, since a short
//!      line (a blank line, a hostname) is shipped by unrelated packages by coincidence;
//!      nor are files over 1 MiB. An edited copy differs and is suggested;
//!    - what a maintainer script writes verbatim with a here-document (libwrap0's
//!      `/etc/hosts.allow`, netbase's `/etc/networks`): a `preinst` or `postinst` names
//!      the file and contains all its lines in order (same size limits);
//!    - a symlink a maintainer script makes with a literal `ln` command (base-files'
//!      `ln -sf debian /etc/dpkg/origins/default`); a link to a target computed at install
//!      time, such as tzdata's `/etc/localtime`, records a choice and is suggested.
//! 6. Account databases ([`ACCOUNT_DATABASES`]) are suggested with their own reason
//!    ([`Reason::AccountDatabase`]): local users must survive, but the new release may add
//!    system users to merge. An empty one (`/etc/subuid` without ranges) or a copy of
//!    base-passwd's master file holds no local account and falls under rule 5.
//! 7. Anything else no package owns is suggested ([`Reason::Unowned`]): hostname, SSH host
//!    keys and `/etc/machine-id` identify the machine and belong in the manifest. A
//!    directory whose whole content is unowned is suggested as one entry, provided
//!    something beneath it is worth carrying.
//!
//! Architecture invariant: parsing (`dpkg`, `ucf`, `exclude`, `render`) is pure code over
//! `&str`; all file system access lives in `scan`, which only reads.

pub mod dpkg;
mod exclude;
mod render;
mod scan;
mod ucf;

use std::io;
use std::path::PathBuf;

use serde::Serialize;

pub use exclude::{BUILTIN_EXCLUDES, GENERATED_LINK_DIRS, VENDOR_UNIT_DIRS};
pub use render::render_manifest;
pub use scan::MIN_TEMPLATE_LEN;

/// The account databases: never owned by a package, always changed by the system's own
/// users and groups, and also by the new release's packages when they add system users.
pub const ACCOUNT_DATABASES: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/subuid",
    "/etc/subgid",
];

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
    /// A file ucf manages (it is in ucf's hashfile) whose content differs from what ucf
    /// last installed.
    ModifiedUcfFile {
        /// The package ucf's registry associates with the file, if registered.
        package: Option<String>,
    },
    /// One of the [`ACCOUNT_DATABASES`], owned by no package: it holds the local users, and
    /// the new release may add system users of its own.
    AccountDatabase,
    /// A regular file or symlink owned by no package.
    Unowned,
    /// A directory owned by no package, nor anything beneath it.
    UnownedDirectory {
        /// Regular files and symlinks beneath it (all are carried, including empty files
        /// and template copies).
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
