//! Renders suggestions as a ready-to-paste `manifest:` YAML section. Pure code, no I/O.

use crate::{Reason, Suggestion};

/// Renders `suggestions` as a YAML `manifest:` section with one commented `include` entry
/// per suggestion. Glob characters in file names are escaped (the manifest reads globs) and
/// entries YAML would misread are double-quoted.
pub fn render_manifest(suggestions: &[Suggestion]) -> String {
    let mut out = String::from(
        "# Suggested by `abupdate manifest suggest`: review every entry before using it.\n\
         manifest:\n",
    );
    if suggestions.is_empty() {
        out.push_str("  include: []\n");
        return out;
    }
    out.push_str("  include:\n");
    for s in suggestions {
        out.push_str(&format!(
            "    - {}   # {}\n",
            yaml_entry(&s.path),
            describe(&s.reason)
        ));
    }
    out
}

/// A one-line explanation of why a path is suggested.
fn describe(reason: &Reason) -> String {
    match reason {
        Reason::ModifiedConffile { package } => {
            format!("conffile of {package}, changed since installed")
        }
        Reason::ModifiedPackageFile { package } => {
            format!("file of {package}, changed since installed")
        }
        Reason::ModifiedUcfFile {
            package: Some(package),
        } => format!("configuration file of {package} (ucf), changed since installed"),
        Reason::ModifiedUcfFile { package: None } => {
            "configuration file managed by ucf, changed since installed".to_owned()
        }
        Reason::AccountDatabase => "local accounts; merge the system users the new release \
             adds (stage keeps its version as .abupdate-new)"
            .to_owned(),
        Reason::Unowned => "not owned by any package".to_owned(),
        Reason::UnownedDirectory { files } => {
            let plural = if *files == 1 { "" } else { "s" };
            format!("directory not owned by any package ({files} file{plural})")
        }
    }
}

/// The manifest entry for a literal path: glob syntax escaped, then YAML-quoted if a plain
/// scalar could be misread.
fn yaml_entry(path: &str) -> String {
    let entry = glob::Pattern::escape(path);
    let plain = entry.starts_with('/')
        && entry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+@=,~%[]".contains(&b));
    if plain {
        entry
    } else {
        // A JSON string is a valid YAML double-quoted scalar.
        serde_json::Value::String(entry).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(path: &str, reason: Reason) -> Suggestion {
        Suggestion {
            path: path.to_owned(),
            reason,
        }
    }

    #[test]
    fn renders_fixture() {
        let suggestions = [
            s("/etc/app.conf", Reason::Unowned),
            s(
                "/etc/default/grub",
                Reason::ModifiedUcfFile {
                    package: Some("grub-pc".into()),
                },
            ),
            s("/etc/group", Reason::AccountDatabase),
            s("/etc/letsencrypt", Reason::UnownedDirectory { files: 12 }),
            s("/etc/my app/a: b #c", Reason::Unowned),
            s("/etc/odd[1]*.conf", Reason::Unowned),
            s(
                "/etc/ssh/sshd_config",
                Reason::ModifiedConffile {
                    package: "openssh-server".into(),
                },
            ),
            s(
                "/etc/sudoers.d/README",
                Reason::ModifiedPackageFile {
                    package: "sudo".into(),
                },
            ),
            s(
                "/etc/unregistered",
                Reason::ModifiedUcfFile { package: None },
            ),
            s("/etc/x/one", Reason::UnownedDirectory { files: 1 }),
        ];
        let expected = include_str!("../tests/fixtures/manifest.yaml");
        assert_eq!(render_manifest(&suggestions), expected);
    }

    #[test]
    fn renders_empty_list() {
        assert!(render_manifest(&[]).ends_with("manifest:\n  include: []\n"));
    }

    #[test]
    fn quoting() {
        assert_eq!(yaml_entry("/etc/a-b_c.d/x+y@z"), "/etc/a-b_c.d/x+y@z");
        assert_eq!(yaml_entry("/etc/a b"), "\"/etc/a b\"");
        assert_eq!(yaml_entry("/etc/\"q\"\\"), "\"/etc/\\\"q\\\"\\\\\"");
        assert_eq!(yaml_entry("/etc/tab\there"), "\"/etc/tab\\there\"");
        assert_eq!(yaml_entry("/etc/what?"), "\"/etc/what[?]\"");
    }

    #[test]
    fn output_is_yaml_whose_entries_match_the_literal_paths() {
        #[derive(serde::Deserialize)]
        struct Doc {
            manifest: Manifest,
        }
        #[derive(serde::Deserialize)]
        struct Manifest {
            include: Vec<String>,
        }
        let paths = [
            "/etc/plain.conf",
            "/etc/my app/a: b #c",
            "/etc/odd[1]*?.conf",
            "/etc/quote\"back\\slash",
            "/etc/tab\tand\nnewline",
            "/etc/ünïcode",
            "/etc/-dash: yes",
        ];
        let suggestions: Vec<Suggestion> = paths.iter().map(|p| s(p, Reason::Unowned)).collect();
        let doc: Doc = serde_yaml::from_str(&render_manifest(&suggestions)).expect("valid YAML");
        assert_eq!(doc.manifest.include.len(), paths.len());
        // The manifest's matching rules (see abupdate-treecopy's `glob_match`).
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        for (entry, path) in doc.manifest.include.iter().zip(paths) {
            let pattern = glob::Pattern::new(entry).expect("valid glob");
            assert!(
                pattern.matches_with(path, options),
                "{entry:?} should match {path:?}"
            );
        }
        let empty: Doc = serde_yaml::from_str(&render_manifest(&[])).expect("valid YAML");
        assert!(empty.manifest.include.is_empty());
    }
}
