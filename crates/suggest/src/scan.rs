//! The file system side: reads the dpkg database and ucf's state, hashes package files and
//! walks the scan roots. Read-only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::dpkg::{self, Diversion, Md5Entry, ParseError, StatusPackage};
use crate::exclude::Excludes;
use crate::ucf;
use crate::{Error, Reason, SuggestOptions, Suggestion, ACCOUNT_DATABASES};

/// Where dpkg keeps its database, relative to the root.
const DPKG_DIR: &str = "var/lib/dpkg";

/// Where ucf keeps its state, relative to the root.
const UCF_DIR: &str = "var/lib/ucf";

/// Unowned files shorter than this many bytes are never taken for a copy of a packaged
/// template: a short line (a blank line, `#`, a hostname) is shipped by unrelated packages
/// by coincidence, so equal content proves nothing about where the file came from.
pub const MIN_TEMPLATE_LEN: u64 = 32;

/// Unowned files larger than this are not compared with templates: maintainer scripts write
/// configuration files, and hashing large data under a scan root is slow.
const MAX_TEMPLATE_LEN: u64 = 1 << 20;

/// Shipped files under these directories are not templates: a copy of a package's `/etc`
/// file under another name, or of a documentation example, is the operator's doing (Debian
/// policy forbids packages to need anything in `/usr/share/doc`).
const NOT_TEMPLATES: &[&str] = &["/etc/", "/usr/share/doc/"];

/// An MD5 digest.
type Digest16 = [u8; 16];

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
        root: &opts.root,
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
    /// Digests of the files packages ship outside [`NOT_TEMPLATES`], whatever the scan
    /// roots, but the empty file's: the templates maintainer scripts copy.
    shipped: HashSet<Digest16>,
    /// Files under the scan roots in ucf's hashfile, by path.
    ucf: HashMap<String, UcfFile>,
    /// The `preinst` and `postinst` maintainer scripts, which may write files verbatim.
    scripts: Vec<String>,
}

/// A file ucf manages.
struct UcfFile {
    /// MD5 of what ucf last installed (lowercase hex).
    md5: String,
    /// The package ucf's registry names, if any.
    package: Option<String>,
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
        let mut shipped: HashSet<Digest16> = HashSet::new();
        let mut scripts = Vec::new();
        let empty: Digest16 = Md5::digest(b"").into();
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
                shipped.extend(
                    list.iter()
                        .filter(|e| !NOT_TEMPLATES.iter().any(|dir| e.path.starts_with(dir)))
                        .filter_map(|e| parse_digest(&e.md5))
                        .filter(|d| *d != empty),
                );
                list.retain(|e| scope.contains(&e.path));
                if !list.is_empty() {
                    md5sums.entry(package.to_owned()).or_default().extend(list);
                }
            } else if ["preinst", "postinst"]
                .iter()
                .any(|ext| dpkg::info_file_package(file_name, ext).is_some())
            {
                scripts.push(read(&path, "reading maintainer script")?);
            }
        }
        let ucf = load_ucf(&root.join(UCF_DIR), scope)?;
        Ok(Self {
            status,
            conffiles,
            owned,
            md5sums,
            diversions,
            shipped,
            ucf,
            scripts,
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

/// Reads ucf's hashfile and registry from `dir` (both optional), keeping the hashed files
/// under the scan roots.
fn load_ucf(dir: &Path, scope: &Scope<'_>) -> Result<HashMap<String, UcfFile>, Error> {
    let hashfile_path = dir.join("hashfile");
    let Some(hashfile) = read_optional(&hashfile_path, "reading ucf hashfile")? else {
        return Ok(HashMap::new());
    };
    let hashes = ucf::parse_hashfile(&hashfile).map_err(|e| parse_error(&hashfile_path, e))?;
    let registry_path = dir.join("registry");
    let registry = match read_optional(&registry_path, "reading ucf registry")? {
        Some(text) => ucf::parse_registry(&text).map_err(|e| parse_error(&registry_path, e))?,
        None => Vec::new(),
    };
    let mut packages: HashMap<String, String> =
        registry.into_iter().map(|r| (r.path, r.package)).collect();
    Ok(hashes
        .into_iter()
        .filter(|h| scope.contains(&h.path))
        .map(|h| {
            let package = packages.remove(&h.path);
            (
                h.path,
                UcfFile {
                    md5: h.md5,
                    package,
                },
            )
        })
        .collect())
}

/// The digest of a 32-digit hex MD5, `None` if it is not one.
fn parse_digest(hex: &str) -> Option<Digest16> {
    fn nibble(b: u8) -> Option<u8> {
        // `to_digit` rejects the signs `u8::from_str_radix` would accept.
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    if hex.len() != 32 {
        return None;
    }
    let mut digest = [0u8; 16];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(digest)
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
    Ok(parse_digest(md5) != Some(md5_file(&host)?))
}

/// The target of the symlink `host`, `None` if it is not UTF-8.
fn link_target(host: &Path) -> Result<Option<String>, Error> {
    let target = fs::read_link(host).map_err(|source| Error::Read {
        path: host.to_owned(),
        step: "reading the symlink",
        source,
    })?;
    Ok(target.into_os_string().into_string().ok())
}

/// MD5 of a file's content.
fn md5_file(path: &Path) -> Result<Digest16, Error> {
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
    Ok(hasher.finalize().into())
}

/// Walks scan roots, collecting unowned paths.
struct Walker<'a> {
    /// Root of the inspected system.
    root: &'a Path,
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
        /// Those worth carrying on their own (not empty, not a template copy): a directory
        /// without any is not suggested.
        worth: usize,
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
        let mut worth = 0;
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
                    Walked::WholeUnowned { files: n, worth: w } => {
                        files += n;
                        worth += w;
                        if w > 0 {
                            pending.push((child, Reason::UnownedDirectory { files: n }));
                        }
                    }
                    Walked::Mixed => whole = false,
                }
            } else if kind.is_file() || kind.is_symlink() {
                if let Some(ucf) = self.db.ucf.get(&child) {
                    whole = false;
                    if differs(self.root, &child, &ucf.md5)? {
                        let package = ucf.package.clone();
                        pending.push((child, Reason::ModifiedUcfFile { package }));
                    }
                    continue;
                }
                // The target of a symlink, `None` for a regular file or a target that is
                // not UTF-8.
                let target = if kind.is_symlink() {
                    link_target(&child_host)?
                } else {
                    None
                };
                let generated = kind.is_symlink()
                    && self
                        .excludes
                        .is_generated_link(&child, target.as_deref().unwrap_or_default());
                if self.db.owned.contains(&child) || generated {
                    whole = false;
                } else {
                    files += 1;
                    if let Some(reason) =
                        self.unowned_reason(&child, &child_host, kind, target.as_deref())?
                    {
                        worth += 1;
                        pending.push((child, reason));
                    }
                }
            } else {
                tracing::debug!(path = %child_host.display(), "not a file, symlink or directory, skipped");
                whole = false;
            }
        }
        if whole {
            return Ok(Walked::WholeUnowned { files, worth });
        }
        for (path, reason) in pending {
            found.entry(path).or_insert(reason);
        }
        Ok(Walked::Mixed)
    }

    /// Why the unowned regular file or symlink `path` (`host` on this system) is worth
    /// carrying, or `None` if it carries nothing: an empty file, a copy of a packaged
    /// template, or a file or link a maintainer script makes verbatim (see the crate
    /// documentation). `target` is the symlink's target, if UTF-8.
    fn unowned_reason(
        &self,
        path: &str,
        host: &Path,
        kind: fs::FileType,
        target: Option<&str>,
    ) -> Result<Option<Reason>, Error> {
        if kind.is_file() {
            let len = fs::symlink_metadata(host)
                .map_err(|source| Error::Read {
                    path: host.to_owned(),
                    step: "reading the metadata of",
                    source,
                })?
                .len();
            if len == 0 {
                tracing::debug!(path, "empty unowned file, not suggested");
                return Ok(None);
            }
            if (MIN_TEMPLATE_LEN..=MAX_TEMPLATE_LEN).contains(&len) {
                let content = fs::read(host).map_err(|source| Error::Read {
                    path: host.to_owned(),
                    step: "reading unowned file",
                    source,
                })?;
                let digest: Digest16 = Md5::digest(&content).into();
                if self.db.shipped.contains(&digest) {
                    tracing::debug!(path, "copy of a file a package ships, not suggested");
                    return Ok(None);
                }
                if let Ok(text) = std::str::from_utf8(&content) {
                    if self
                        .db
                        .scripts
                        .iter()
                        .any(|script| dpkg::script_writes(script, path, text))
                    {
                        tracing::debug!(
                            path,
                            "written verbatim by a maintainer script, not suggested"
                        );
                        return Ok(None);
                    }
                }
            }
        }
        if let Some(target) = target {
            if self
                .db
                .scripts
                .iter()
                .any(|script| dpkg::script_links(script, path, target))
            {
                tracing::debug!(path, target, "made by a maintainer script, not suggested");
                return Ok(None);
            }
        }
        Ok(Some(if ACCOUNT_DATABASES.contains(&path) {
            Reason::AccountDatabase
        } else {
            Reason::Unowned
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let hex = "d41d8cd98f00b204e9800998ecf8427e";
        let digest: Digest16 = Md5::digest(b"").into();
        assert_eq!(parse_digest(hex), Some(digest));
        assert_eq!(parse_digest(&hex.to_ascii_uppercase()), Some(digest));
        assert_eq!(parse_digest("newconffile"), None);
        assert_eq!(parse_digest("zz1d8cd98f00b204e9800998ecf8427e"), None);
        assert_eq!(parse_digest("+d1d8cd98f00b204e9800998ecf8427e"), None);
        assert_eq!(parse_digest("é1d8cd98f00b204e9800998ecf8427"), None);
    }

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
