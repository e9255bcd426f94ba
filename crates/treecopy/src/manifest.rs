//! The manifest: which host paths are copied into a staged slot. Pure code, no I/O.

use std::path::{Component, Path, PathBuf};

use glob::{MatchOptions, Pattern};

use crate::Error;

/// Options shared by every pattern match: `*` and `?` never cross a `/` and never match a
/// leading `.` (shell rules), matching is case sensitive.
const MATCH_OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// The declared set of host configuration files copied into a staged slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Absolute paths or globs (`/etc/ssh/ssh_host_*`) to copy; directories are copied
    /// recursively.
    pub include: Vec<String>,
    /// Absolute paths or globs matched against every walked path; an excluded directory
    /// is skipped with everything beneath it.
    pub exclude: Vec<String>,
}

/// Whether `path` matches the glob `pattern` (`*`, `?`, `[...]`, `**` for whole
/// components). `*` does not match `/` or a leading `.`. An invalid pattern matches nothing.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    Pattern::new(pattern).is_ok_and(|p| p.matches_with(path, MATCH_OPTIONS))
}

/// Whether one path component contains glob syntax.
pub(crate) fn has_glob_syntax(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// Matches one path component against a one-component pattern.
pub(crate) fn component_matches(pattern: &Pattern, name: &str) -> bool {
    pattern.matches_with(name, MATCH_OPTIONS)
}

/// Checks that `entry` is a normalized absolute path other than `/` (trailing `/` allowed)
/// and returns its components without the root.
pub(crate) fn entry_components(entry: &str) -> Result<Vec<&str>, Error> {
    let bad = |reason: &str| Error::BadManifestEntry {
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    };
    if entry.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let Some(rest) = entry.strip_prefix('/') else {
        return Err(bad("not an absolute path"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(bad("the root directory itself cannot be copied"));
    }
    let components: Vec<&str> = rest.split('/').collect();
    for c in &components {
        match *c {
            "" => return Err(bad("empty path component (`//`)")),
            "." => return Err(bad("`.` component")),
            ".." => return Err(bad("`..` component")),
            _ => {}
        }
    }
    Ok(components)
}

/// A manifest whose entries have been validated and whose globs are compiled.
#[derive(Debug)]
pub(crate) struct CheckedManifest {
    /// Include entries, each as its components (literal or one-component patterns).
    pub(crate) include: Vec<(String, Vec<IncludeComponent>)>,
    /// Compiled exclude patterns.
    pub(crate) exclude: Vec<Pattern>,
}

/// One component of an include entry.
#[derive(Debug)]
pub(crate) enum IncludeComponent {
    /// A literal name.
    Literal(String),
    /// A glob over the names of one directory.
    Glob(Pattern),
}

impl CheckedManifest {
    /// Validates every entry of `manifest`: absolute, normalized, valid glob syntax, no `**`
    /// in includes.
    pub(crate) fn new(manifest: &Manifest) -> Result<Self, Error> {
        let compile = |entry: &str, text: &str| {
            Pattern::new(text).map_err(|e| Error::BadManifestEntry {
                entry: entry.to_owned(),
                reason: format!("invalid glob: {}", e.msg),
            })
        };
        let mut include = Vec::with_capacity(manifest.include.len());
        for entry in &manifest.include {
            let mut components = Vec::new();
            for c in entry_components(entry)? {
                if c.contains("**") {
                    return Err(Error::BadManifestEntry {
                        entry: entry.clone(),
                        reason: "`**` is not supported in includes; include the directory \
                                 instead, it is copied recursively"
                            .to_owned(),
                    });
                }
                components.push(if has_glob_syntax(c) {
                    IncludeComponent::Glob(compile(entry, c)?)
                } else {
                    IncludeComponent::Literal(c.to_owned())
                });
            }
            include.push((entry.clone(), components));
        }
        let mut exclude = Vec::with_capacity(manifest.exclude.len());
        for entry in &manifest.exclude {
            let components = entry_components(entry)?;
            exclude.push(compile(entry, &format!("/{}", components.join("/")))?);
        }
        Ok(Self { include, exclude })
    }

    /// Whether `path` (absolute) or one of its ancestors matches an exclude pattern.
    pub(crate) fn is_excluded(&self, path: &Path) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        path.ancestors()
            .take_while(|p| p.parent().is_some())
            .any(|p| {
                let text = p.to_string_lossy();
                self.exclude
                    .iter()
                    .any(|pat| pat.matches_with(&text, MATCH_OPTIONS))
            })
    }
}

/// Checks that a planned path is absolute, normalized and not `/`; returns it relative to
/// the root.
pub(crate) fn relative_entry_path(path: &Path) -> Result<PathBuf, Error> {
    let bad = |reason: &str| Error::BadManifestEntry {
        entry: path.display().to_string(),
        reason: reason.to_owned(),
    };
    let mut rel = PathBuf::new();
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(bad("not an absolute path"));
    }
    for c in components {
        match c {
            Component::Normal(name) => rel.push(name),
            Component::ParentDir => return Err(bad("`..` component")),
            Component::CurDir => return Err(bad("`.` component")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("not a plain path")),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(bad("the root directory itself cannot be copied"));
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_match_follows_shell_rules() {
        assert!(glob_match(
            "/etc/ssh/ssh_host_*",
            "/etc/ssh/ssh_host_ed25519_key"
        ));
        assert!(!glob_match("/etc/ssh/ssh_host_*", "/etc/ssh/sshd_config"));
        assert!(glob_match("/etc/app/*.conf", "/etc/app/a.conf"));
        assert!(!glob_match("/etc/app/*.conf", "/etc/app/sub/a.conf"));
        assert!(!glob_match("/etc/app/*", "/etc/app/.hidden"));
        assert!(glob_match("/etc/**/*.conf", "/etc/app/sub/a.conf"));
        assert!(glob_match("/etc/app/[ab].conf", "/etc/app/b.conf"));
        assert!(!glob_match("/etc/app/[", "/etc/app/["));
    }

    #[test]
    fn entries_must_be_absolute_and_normalized() {
        for bad in [
            "etc/x",
            "/",
            "",
            "/etc/../root",
            "/etc/./x",
            "/etc//x",
            "/a\0b",
        ] {
            let err = entry_components(bad).expect_err(bad);
            assert!(
                matches!(err, Error::BadManifestEntry { ref entry, .. } if entry == bad),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            entry_components("/etc/app/").expect("valid"),
            vec!["etc", "app"]
        );
    }

    #[test]
    fn checked_manifest_rejects_bad_globs_and_double_star_includes() {
        let m = Manifest {
            include: vec!["/etc/**".into()],
            exclude: vec![],
        };
        assert!(matches!(
            CheckedManifest::new(&m),
            Err(Error::BadManifestEntry { .. })
        ));
        let m = Manifest {
            include: vec!["/etc/app".into()],
            exclude: vec!["/etc/[".into()],
        };
        assert!(matches!(
            CheckedManifest::new(&m),
            Err(Error::BadManifestEntry { .. })
        ));
        let m = Manifest {
            include: vec!["/etc/app".into()],
            exclude: vec!["relative".into()],
        };
        assert!(matches!(
            CheckedManifest::new(&m),
            Err(Error::BadManifestEntry { .. })
        ));
    }

    #[test]
    fn excludes_cover_descendants() {
        let m = CheckedManifest::new(&Manifest {
            include: vec!["/etc".into()],
            exclude: vec!["/etc/app/cache".into(), "/etc/*.bak".into()],
        })
        .expect("valid manifest");
        assert!(m.is_excluded(Path::new("/etc/app/cache")));
        assert!(m.is_excluded(Path::new("/etc/app/cache/x/y")));
        assert!(!m.is_excluded(Path::new("/etc/app/cache2")));
        assert!(m.is_excluded(Path::new("/etc/a.bak")));
        assert!(!m.is_excluded(Path::new("/etc/sub/a.bak")));
    }

    #[test]
    fn relative_entry_path_rejects_escapes() {
        assert_eq!(
            relative_entry_path(Path::new("/etc/app.conf")).expect("valid"),
            PathBuf::from("etc/app.conf")
        );
        for bad in ["etc/x", "/", "/etc/../x"] {
            assert!(relative_entry_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
