//! Planning: expanding a manifest against the host tree into a sorted list of entries.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::host::{host_path, is_absent, kind_of, read_dir_names};
use crate::manifest::{component_matches, CheckedManifest, IncludeComponent};
use crate::{Error, Manifest};

/// What a host entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file: content and metadata are copied.
    File,
    /// A directory: created (or kept) in the slot, metadata copied, contents merged.
    Dir,
    /// A symlink: recreated with the same target, never followed.
    Symlink,
    /// A device node, FIFO or socket: recreated with `mknodat`.
    Other,
}

/// One host entry to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// Absolute path, the same on the host and in the slot.
    pub path: PathBuf,
    /// What the entry was on the host when planned.
    pub kind: EntryKind,
}

/// The expansion of a manifest on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Entries sorted by path, parents before children, without duplicates.
    pub entries: Vec<PlannedEntry>,
    /// Include entries that matched nothing on the host (not an error; report them).
    pub missing: Vec<String>,
}

/// Expands `manifest` against the host tree at `host_root` (`/` in production): globs
/// and directories are expanded, excludes applied. Symlinks are entries and are never
/// descended into; directories above an include are followed like any path lookup.
pub fn plan(host_root: &Path, manifest: &Manifest) -> Result<Plan, Error> {
    let checked = CheckedManifest::new(manifest)?;
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for (entry, components) in &checked.include {
        let matches = expand(host_root, components)?;
        if matches.is_empty() {
            missing.push(entry.clone());
        }
        for path in matches {
            if !checked.is_excluded(&path) {
                add_tree(host_root, &checked, path, &mut found)?;
            }
        }
    }
    Ok(Plan {
        entries: found
            .into_iter()
            .map(|(path, kind)| PlannedEntry { path, kind })
            .collect(),
        missing,
    })
}

/// Whether `path` on the host is a directory, following symlinks.
fn host_is_dir(host_root: &Path, path: &Path) -> Result<bool, Error> {
    let on_host = host_path(host_root, path);
    match fs::metadata(&on_host) {
        Ok(md) => Ok(md.is_dir()),
        Err(e) if is_absent(&e) => Ok(false),
        Err(source) => Err(Error::HostRead {
            path: on_host,
            step: "stat",
            source,
        }),
    }
}

/// The absolute paths on the host matching one include entry, sorted.
fn expand(host_root: &Path, components: &[IncludeComponent]) -> Result<Vec<PathBuf>, Error> {
    let mut current = vec![PathBuf::from("/")];
    for (i, component) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        let mut next = Vec::new();
        for dir in &current {
            let candidates: Vec<PathBuf> = match component {
                IncludeComponent::Literal(name) => vec![dir.join(name)],
                IncludeComponent::Glob(pattern) => {
                    if !host_is_dir(host_root, dir)? {
                        continue;
                    }
                    read_dir_names(&host_path(host_root, dir))?
                        .into_iter()
                        .filter(|n| component_matches(pattern, &n.to_string_lossy()))
                        .map(|n| dir.join(n))
                        .collect()
                }
            };
            for candidate in candidates {
                let keep = if last {
                    let on_host = host_path(host_root, &candidate);
                    match fs::symlink_metadata(&on_host) {
                        Ok(_) => true,
                        Err(e) if is_absent(&e) => false,
                        Err(source) => {
                            return Err(Error::HostRead {
                                path: on_host,
                                step: "lstat",
                                source,
                            })
                        }
                    }
                } else {
                    host_is_dir(host_root, &candidate)?
                };
                if keep {
                    next.push(candidate);
                }
            }
        }
        current = next;
    }
    current.sort();
    Ok(current)
}

/// Adds `path` and, for a directory, everything beneath it that is not excluded.
fn add_tree(
    host_root: &Path,
    manifest: &CheckedManifest,
    path: PathBuf,
    found: &mut BTreeMap<PathBuf, EntryKind>,
) -> Result<(), Error> {
    let mut stack = vec![path];
    while let Some(path) = stack.pop() {
        let on_host = host_path(host_root, &path);
        let md = fs::symlink_metadata(&on_host).map_err(|source| Error::HostRead {
            path: on_host.clone(),
            step: "lstat",
            source,
        })?;
        let kind = kind_of(md.file_type());
        if found.insert(path.clone(), kind).is_some() {
            continue;
        }
        if kind == EntryKind::Dir {
            for name in read_dir_names(&on_host)? {
                let child = path.join(name);
                if !manifest.is_excluded(&child) {
                    stack.push(child);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        fs::write(p, rel).expect("write");
    }

    fn paths(plan: &Plan) -> Vec<String> {
        plan.entries
            .iter()
            .map(|e| e.path.display().to_string())
            .collect()
    }

    #[test]
    fn expands_globs_dirs_and_excludes() {
        let host = tempfile::tempdir().expect("tempdir");
        let h = host.path();
        touch(h, "etc/ssh/ssh_host_rsa_key");
        touch(h, "etc/ssh/ssh_host_rsa_key.pub");
        touch(h, "etc/ssh/sshd_config");
        touch(h, "etc/app/a.conf");
        touch(h, "etc/app/b.conf");
        touch(h, "etc/app/b.conf.bak");
        touch(h, "etc/app/cache/big");
        touch(h, "etc/app/sub/c.conf");
        symlink("/nonexistent", h.join("etc/app/link")).expect("symlink");
        let plan = plan(
            h,
            &Manifest {
                include: vec![
                    "/etc/ssh/ssh_host_*".into(),
                    "/etc/app".into(),
                    "/etc/app/a.conf".into(),
                    "/etc/nothing/*".into(),
                    "/etc/absent".into(),
                ],
                exclude: vec!["/etc/app/*.bak".into(), "/etc/app/cache".into()],
            },
        )
        .expect("plan");
        assert_eq!(
            paths(&plan),
            [
                "/etc/app",
                "/etc/app/a.conf",
                "/etc/app/b.conf",
                "/etc/app/link",
                "/etc/app/sub",
                "/etc/app/sub/c.conf",
                "/etc/ssh/ssh_host_rsa_key",
                "/etc/ssh/ssh_host_rsa_key.pub",
            ]
        );
        let kind = |p: &str| {
            plan.entries
                .iter()
                .find(|e| e.path == Path::new(p))
                .map(|e| e.kind)
        };
        assert_eq!(kind("/etc/app"), Some(EntryKind::Dir));
        assert_eq!(kind("/etc/app/link"), Some(EntryKind::Symlink));
        assert_eq!(kind("/etc/app/a.conf"), Some(EntryKind::File));
        assert_eq!(plan.missing, ["/etc/nothing/*", "/etc/absent"]);
    }

    #[test]
    fn symlinked_directories_are_not_descended() {
        let host = tempfile::tempdir().expect("tempdir");
        let h = host.path();
        touch(h, "real/x");
        fs::create_dir(h.join("etc")).expect("mkdir");
        symlink("../real", h.join("etc/dirlink")).expect("symlink");
        let plan = plan(
            h,
            &Manifest {
                include: vec!["/etc".into()],
                exclude: vec![],
            },
        )
        .expect("plan");
        assert_eq!(paths(&plan), ["/etc", "/etc/dirlink"]);
    }

    #[test]
    fn bad_entries_are_refused() {
        let host = tempfile::tempdir().expect("tempdir");
        for bad in ["etc/x", "/etc/../root", "/"] {
            let err = plan(
                host.path(),
                &Manifest {
                    include: vec![bad.into()],
                    exclude: vec![],
                },
            )
            .expect_err(bad);
            assert!(matches!(err, Error::BadManifestEntry { .. }), "{err}");
        }
    }
}
