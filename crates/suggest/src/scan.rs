//! The file system side: reads the dpkg database, hashes package files and walks the scan
//! roots. Read-only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::dpkg::{self, Diversion, Md5Entry, ParseError, StatusPackage};
use crate::exclude::Excludes;
use crate::{Error, Reason, SuggestOptions, Suggestion};

/// Where dpkg keeps its database, relative to the root.
const DPKG_DIR: &str = "var/lib/dpkg";

/// Paths whose presence reveals an RPM system.
const RPM_MARKERS: &[&str] = &["var/lib/rpm", "usr/lib/sysimage/rpm", "usr/bin/rpm"];

/// See [`crate::suggest`].
pub(crate) fn suggest(opts: &SuggestOptions) -> Result<Vec<Suggestion>, Error> {
    let excludes = Excludes::new(&opts.exclude)?;
    let scan_roots = opts
        .scan_roots
        .iter()
        .map(|r| check_scan_root(r))
        .collect::<Result<Vec<_>, _>>()?;
    let scope = Scope { roots: &scan_roots };
    let db = Database::load(&opts.root, &scope)?;

    let mut found: BTreeMap<String, Reason> = BTreeMap::new();
    for pkg in db.status.iter().filter(|p| p.installed) {
        for conffile in pkg.conffiles.iter().filter(|c| !c.retired) {
            let path = &conffile.path;
            if !scope.contains(path) || excludes.is_excluded(path) {
                continue;
            }
            let location = db.location(path, &pkg.name);
            if differs(&opts.root, location, &conffile.md5)? {
                found
                    .entry(path.clone())
                    .or_insert(Reason::ModifiedConffile {
                        package: pkg.name.clone(),
                    });
            }
        }
    }
    for (package, entries) in &db.md5sums {
        for entry in entries {
            let path = &entry.path;
            if db.conffiles.contains(path) || excludes.is_excluded(path) {
                continue;
            }
            if differs(&opts.root, db.location(path, package), &entry.md5)? {
                found
                    .entry(path.clone())
                    .or_insert(Reason::ModifiedPackageFile {
                        package: package.clone(),
                    });
            }
        }
    }

    let walker = Walker {
        db: &db,
        excludes: &excludes,
    };
    for scan_root in &scan_roots {
        let host = host_path(&opts.root, scan_root);
        match fs::symlink_metadata(&host) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %host.display(), "scan root does not exist, skipped");
                continue;
            }
            Err(source) => {
                return Err(Error::Read {
                    path: host,
                    step: "reading the metadata of scan root",
                    source,
                })
            }
        }
        walker.walk(scan_root, &host, true, &mut found)?;
    }

    Ok(found
        .into_iter()
        .map(|(path, reason)| Suggestion { path, reason })
        .collect())
}

/// Checks that a scan root is a normalized absolute path and strips a trailing `/`.
fn check_scan_root(root: &str) -> Result<String, Error> {
    let bad = |reason| Error::BadScanRoot {
        root: root.to_owned(),
        reason,
    };
    let Some(rest) = root.strip_prefix('/') else {
        return Err(bad("not an absolute path"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok("/".to_owned());
    }
    if rest.split('/').any(|c| matches!(c, "" | "." | "..")) {
        return Err(bad("not normalized (empty, `.` or `..` component)"));
    }
    if root.contains(['*', '?', '[']) {
        return Err(bad("globs are not supported in scan roots"));
    }
    Ok(format!("/{rest}"))
}

/// The scan roots, for membership tests of absolute paths.
struct Scope<'a> {
    roots: &'a [String],
}

impl Scope<'_> {
    /// Whether `path` is a scan root or beneath one.
    fn contains(&self, path: &str) -> bool {
        self.roots.iter().any(|r| {
            r == "/"
                || path
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// `path` (absolute, on the inspected system) under `root`.
fn host_path(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The dpkg database, reduced to the scan roots.
struct Database {
    /// Stanzas of `status`.
    status: Vec<StatusPackage>,
    /// Every conffile path recorded in `status`.
    conffiles: HashSet<String>,
    /// Paths under the scan roots that a package or a diversion claims.
    owned: HashSet<String>,
    /// `md5sums` entries under the scan roots, per package name.
    md5sums: BTreeMap<String, Vec<Md5Entry>>,
    /// Diversions by diverted path.
    diversions: HashMap<String, Diversion>,
}

impl Database {
    /// Reads the dpkg database under `root`, keeping the paths `scope` covers.
    fn load(root: &Path, scope: &Scope<'_>) -> Result<Self, Error> {
        let dpkg_dir = root.join(DPKG_DIR);
        let status_path = dpkg_dir.join("status");
        let status_text = match fs::read(&status_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(if RPM_MARKERS.iter().any(|m| root.join(m).exists()) {
                    Error::Unsupported("rpm -Va based suggestion is not implemented yet")
                } else {
                    Error::NoPackageDatabase {
                        root: root.to_owned(),
                    }
                });
            }
            Err(source) => {
                return Err(Error::Read {
                    path: status_path,
                    step: "reading dpkg status",
                    source,
                })
            }
        };
        let status = dpkg::parse_status(&status_text).map_err(|e| parse_error(&status_path, e))?;
        let conffiles: HashSet<String> = status
            .iter()
            .flat_map(|p| p.conffiles.iter().map(|c| c.path.clone()))
            .collect();
        let mut owned: HashSet<String> = conffiles
            .iter()
            .filter(|p| scope.contains(p))
            .cloned()
            .collect();

        let diversions_path = dpkg_dir.join("diversions");
        let diversions = match read_optional(&diversions_path, "reading dpkg diversions")? {
            Some(text) => {
                dpkg::parse_diversions(&text).map_err(|e| parse_error(&diversions_path, e))?
            }
            None => Vec::new(),
        };
        for d in &diversions {
            owned.extend(
                [&d.from, &d.to]
                    .into_iter()
                    .filter(|p| scope.contains(p))
                    .cloned(),
            );
        }
        let diversions = diversions
            .into_iter()
            .map(|d| (d.from.clone(), d))
            .collect();

        let mut md5sums: BTreeMap<String, Vec<Md5Entry>> = BTreeMap::new();
        let info_dir = dpkg_dir.join("info");
        let entries = fs::read_dir(&info_dir).map_err(|source| Error::Read {
            path: info_dir.clone(),
            step: "listing dpkg info directory",
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Read {
                path: info_dir.clone(),
                step: "listing dpkg info directory",
                source,
            })?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let path = entry.path();
            if dpkg::info_file_package(file_name, "list").is_some() {
                let text = read(&path, "reading dpkg file list")?;
                owned.extend(
                    dpkg::parse_list(&text)
                        .filter(|p| scope.contains(p))
                        .map(str::to_owned),
                );
            } else if let Some(package) = dpkg::info_file_package(file_name, "md5sums") {
                let text = read(&path, "reading dpkg md5sums")?;
                let mut list = dpkg::parse_md5sums(&text).map_err(|e| parse_error(&path, e))?;
                list.retain(|e| scope.contains(&e.path));
                if !list.is_empty() {
                    md5sums.entry(package.to_owned()).or_default().extend(list);
                }
            }
        }
        Ok(Self {
            status,
            conffiles,
            owned,
            md5sums,
            diversions,
        })
    }

    /// Where the file `package` ships as `path` actually lives: the diverted location if
    /// another package (or the administrator) diverted `path`.
    fn location<'a>(&'a self, path: &'a str, package: &str) -> &'a str {
        match self.diversions.get(path) {
            Some(d) if d.by.as_deref() != Some(package) => &d.to,
            _ => path,
        }
    }
}

/// Reads a text file, replacing invalid UTF-8.
fn read(path: &Path, step: &'static str) -> Result<String, Error> {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            step,
            source,
        })
}

/// Like [`read`], but a missing file is `None`.
fn read_optional(path: &Path, step: &'static str) -> Result<Option<String>, Error> {
    match read(path, step) {
        Ok(text) => Ok(Some(text)),
        Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Locates a parse error in the database file `path`.
fn parse_error(path: &Path, e: ParseError) -> Error {
    Error::Parse {
        path: path.to_owned(),
        line: e.line,
        reason: e.reason,
    }
}

/// Whether the file at `path` differs from the recorded `md5`. A missing file does not
/// differ (it was deleted, there is nothing to carry); a symlink or other non-regular file
/// where a regular file was installed does. An unusable record (dpkg's `newconffile` while
/// unpacking) never differs.
fn differs(root: &Path, path: &str, md5: &str) -> Result<bool, Error> {
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        tracing::debug!(path, md5, "no usable recorded MD5, not compared");
        return Ok(false);
    }
    let host = host_path(root, path);
    let meta = match fs::symlink_metadata(&host) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(Error::Read {
                path: host,
                step: "reading the metadata of package file",
                source,
            })
        }
    };
    if !meta.is_file() {
        return Ok(true);
    }
    let actual = md5_file(&host)?;
    Ok(!actual.eq_ignore_ascii_case(md5))
}

/// MD5 of a file's content, lowercase hex.
fn md5_file(path: &Path) -> Result<String, Error> {
    let err = |source| Error::Read {
        path: path.to_owned(),
        step: "hashing package file",
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Walks scan roots, collecting unowned paths.
struct Walker<'a> {
    db: &'a Database,
    excludes: &'a Excludes,
}

/// The outcome of walking one directory.
enum Walked {
    /// The directory and everything beneath it is unowned and nothing is excluded: it can
    /// be suggested as a whole. Nothing was added to the results yet.
    WholeUnowned {
        /// Regular files and symlinks beneath it.
        files: usize,
    },
    /// Its unowned content was added to the results one by one.
    Mixed,
}

impl Walker<'_> {
    /// Walks the directory `dir` (absolute on the inspected system, `host` on this one)
    /// without following symlinks. Unowned content is added to `found`, or reported as
    /// [`Walked::WholeUnowned`] for the caller to add; a scan root never is.
    fn walk(
        &self,
        dir: &str,
        host: &Path,
        is_scan_root: bool,
        found: &mut BTreeMap<String, Reason>,
    ) -> Result<Walked, Error> {
        let read_err = |source| Error::Read {
            path: host.to_owned(),
            step: "listing directory",
            source,
        };
        let mut whole = !is_scan_root && !self.db.owned.contains(dir);
        let mut files = 0;
        let mut pending: Vec<(String, Reason)> = Vec::new();
        for entry in fs::read_dir(host).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name();
            let child_host = entry.path();
            let Some(name) = name.to_str() else {
                tracing::warn!(path = %child_host.display(), "file name is not UTF-8, not suggested");
                whole = false;
                continue;
            };
            let child = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            if self.excludes.matches(&child) {
                whole = false;
                continue;
            }
            let kind = entry.file_type().map_err(|source| Error::Read {
                path: child_host.clone(),
                step: "reading the file type of",
                source,
            })?;
            if kind.is_dir() {
                match self.walk(&child, &child_host, false, found)? {
                    Walked::WholeUnowned { files: n } => {
                        files += n;
                        if n > 0 {
                            pending.push((child, Reason::UnownedDirectory { files: n }));
                        }
                    }
                    Walked::Mixed => whole = false,
                }
            } else if kind.is_file() || kind.is_symlink() {
                if self.db.owned.contains(&child)
                    || (kind.is_symlink() && self.excludes.is_generated_link(&child))
                {
                    whole = false;
                } else {
                    files += 1;
                    pending.push((child, Reason::Unowned));
                }
            } else {
                tracing::debug!(path = %child_host.display(), "not a file, symlink or directory, skipped");
                whole = false;
            }
        }
        if whole {
            return Ok(Walked::WholeUnowned { files });
        }
        for (path, reason) in pending {
            found.entry(path).or_insert(reason);
        }
        Ok(Walked::Mixed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_roots_are_checked() {
        assert_eq!(check_scan_root("/etc/").expect("ok"), "/etc");
        assert_eq!(check_scan_root("/").expect("ok"), "/");
        assert_eq!(
            check_scan_root("/usr/local/etc").expect("ok"),
            "/usr/local/etc"
        );
        for bad in ["etc", "/etc//x", "/etc/../x", "/etc/*"] {
            assert!(check_scan_root(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scope_membership() {
        let roots = ["/etc".to_owned(), "/opt/app".to_owned()];
        let scope = Scope { roots: &roots };
        assert!(scope.contains("/etc"));
        assert!(scope.contains("/etc/x"));
        assert!(scope.contains("/opt/app/y"));
        assert!(!scope.contains("/etcetera"));
        assert!(!scope.contains("/opt"));
        let all = ["/".to_owned()];
        assert!(Scope { roots: &all }.contains("/usr/bin/ls"));
    }
}
