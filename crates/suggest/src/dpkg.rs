//! Parsers of dpkg's database files. Pure code over `&str`, no I/O.

use std::fmt;

/// A syntax error in a dpkg database file, located by 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the offending text.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

fn parse_error(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError {
        line,
        reason: reason.into(),
    }
}

/// One stanza of `/var/lib/dpkg/status`, reduced to what suggestion needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPackage {
    /// The `Package:` field.
    pub name: String,
    /// Whether the package is (at least partly) installed: the third word of `Status:` is
    /// neither `not-installed` nor `config-files`.
    pub installed: bool,
    /// The `Conffiles:` entries.
    pub conffiles: Vec<Conffile>,
}

/// One entry of a `Conffiles:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conffile {
    /// Absolute path.
    pub path: String,
    /// MD5 of the content as installed (lowercase hex), or a dpkg marker such as
    /// `newconffile` while a package is being unpacked.
    pub md5: String,
    /// Flagged `obsolete` (no longer shipped) or `remove-on-upgrade` (removed by the next
    /// upgrade): the package no longer uses it.
    pub retired: bool,
}

/// Parses `/var/lib/dpkg/status`: blank-line separated stanzas of `Field: value` lines,
/// continuation lines starting with a space or tab.
pub fn parse_status(text: &str) -> Result<Vec<StatusPackage>, ParseError> {
    let mut packages = Vec::new();
    let mut current = StanzaBuilder::default();
    let mut in_conffiles = false;
    for (index, line) in text.lines().enumerate() {
        let lineno = index + 1;
        if line.trim().is_empty() {
            current.finish(lineno, &mut packages)?;
            in_conffiles = false;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if in_conffiles {
                current.conffiles.push(parse_conffile(line, lineno)?);
            }
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            return Err(parse_error(
                lineno,
                format!("expected `Field: value`, found {line:?}"),
            ));
        };
        let value = value.trim();
        in_conffiles = field.eq_ignore_ascii_case("Conffiles");
        if current.first_line == 0 {
            current.first_line = lineno;
        }
        if field.eq_ignore_ascii_case("Package") {
            current.name = Some(value.to_owned());
        } else if field.eq_ignore_ascii_case("Status") {
            current.status = Some(value.to_owned());
        }
    }
    current.finish(text.lines().count() + 1, &mut packages)?;
    Ok(packages)
}

/// Fields of the stanza being read.
#[derive(Default)]
struct StanzaBuilder {
    /// Line of the first field, 0 while the stanza is empty.
    first_line: usize,
    name: Option<String>,
    status: Option<String>,
    conffiles: Vec<Conffile>,
}

impl StanzaBuilder {
    /// Ends the stanza (if any) and appends it to `out`.
    fn finish(&mut self, lineno: usize, out: &mut Vec<StatusPackage>) -> Result<(), ParseError> {
        let stanza = std::mem::take(self);
        if stanza.first_line == 0 {
            return Ok(());
        }
        let Some(name) = stanza.name else {
            return Err(parse_error(
                stanza.first_line,
                "stanza without a `Package:` field",
            ));
        };
        let state = stanza
            .status
            .as_deref()
            .and_then(|s| s.split_whitespace().nth(2))
            .ok_or_else(|| {
                parse_error(
                    lineno.saturating_sub(1).max(stanza.first_line),
                    format!("package {name}: missing or malformed `Status:` field"),
                )
            })?;
        out.push(StatusPackage {
            installed: !matches!(state, "not-installed" | "config-files"),
            name,
            conffiles: stanza.conffiles,
        });
        Ok(())
    }
}

/// Parses one `Conffiles:` continuation line: ` /path md5 [obsolete] [remove-on-upgrade]`.
/// The path may contain spaces, so the line is read from the right.
fn parse_conffile(line: &str, lineno: usize) -> Result<Conffile, ParseError> {
    let mut rest = line.trim();
    let mut retired = false;
    loop {
        let stripped = ["obsolete", "remove-on-upgrade"]
            .iter()
            .find_map(|flag| rest.strip_suffix(flag).filter(|r| r.ends_with(' ')));
        match stripped {
            Some(r) => {
                rest = r.trim_end();
                retired = true;
            }
            None => break,
        }
    }
    let Some((path, md5)) = rest.rsplit_once(' ') else {
        return Err(parse_error(
            lineno,
            format!("conffile entry without a hash: {line:?}"),
        ));
    };
    let path = path.trim_end();
    if !path.starts_with('/') {
        return Err(parse_error(
            lineno,
            format!("conffile path is not absolute: {line:?}"),
        ));
    }
    Ok(Conffile {
        path: path.to_owned(),
        md5: md5.to_owned(),
        retired,
    })
}

/// Parses a `<package>.list` file: one absolute path per line. dpkg's `/.` entry for the
/// root directory is dropped.
pub fn parse_list(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| l.starts_with('/') && *l != "/.")
}

/// One entry of a `<package>.md5sums` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Md5Entry {
    /// MD5 of the shipped content (lowercase hex).
    pub md5: String,
    /// Absolute path (dpkg records it without the leading `/`).
    pub path: String,
}

/// Parses a `<package>.md5sums` file: `<32 hex digits>  <path without leading />` per line.
pub fn parse_md5sums(text: &str) -> Result<Vec<Md5Entry>, ParseError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let malformed = || {
            parse_error(
                index + 1,
                format!("expected `<md5>  <path>`, found {line:?}"),
            )
        };
        let (md5, path) = line.split_at_checked(32).ok_or_else(malformed)?;
        if !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        let path = path.strip_prefix("  ").ok_or_else(malformed)?;
        let path = path.strip_prefix('/').unwrap_or(path);
        if path.is_empty() {
            return Err(malformed());
        }
        entries.push(Md5Entry {
            md5: md5.to_ascii_lowercase(),
            path: format!("/{path}"),
        });
    }
    Ok(entries)
}

/// One entry of `/var/lib/dpkg/diversions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diversion {
    /// The path a package would install to.
    pub from: String,
    /// Where that package's file goes instead.
    pub to: String,
    /// The diverting package; `None` for a local diversion (`:`) made by the administrator.
    pub by: Option<String>,
}

/// Parses `/var/lib/dpkg/diversions`: three lines per diversion (from, to, package).
pub fn parse_diversions(text: &str) -> Result<Vec<Diversion>, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let triples = lines.chunks_exact(3);
    if !triples.remainder().is_empty() {
        return Err(parse_error(
            lines.len(),
            format!(
                "{} lines, expected a multiple of 3 (from, to, package)",
                lines.len()
            ),
        ));
    }
    triples
        .enumerate()
        .map(|(i, chunk)| {
            let [from, to, by] = [chunk[0], chunk[1], chunk[2]];
            for (offset, path) in [(0, from), (1, to)] {
                if !path.starts_with('/') {
                    return Err(parse_error(
                        i * 3 + offset + 1,
                        format!("diverted path is not absolute: {path:?}"),
                    ));
                }
            }
            Ok(Diversion {
                from: from.to_owned(),
                to: to.to_owned(),
                by: (by != ":").then(|| by.to_owned()),
            })
        })
        .collect()
}

/// The package name of an info file name: `openssh-server.list` and
/// `libc6:amd64.md5sums` give `openssh-server` and `libc6` for the extension `list` or
/// `md5sums`; `None` if the name does not end in `.<extension>`.
pub fn info_file_package<'a>(file_name: &'a str, extension: &str) -> Option<&'a str> {
    let stem = file_name.strip_suffix(extension)?.strip_suffix('.')?;
    let name = stem.split_once(':').map_or(stem, |(name, _arch)| name);
    (!name.is_empty()).then_some(name)
}

/// Whether the maintainer script `script` writes `content` to `path` verbatim, as a
/// here-document does (`cat > /etc/networks <<EOF`): the script names `path`, and the lines
/// of `content` appear in it, consecutive and in order. Leading tabs are ignored on both
/// sides (`<<-EOF` strips them). Empty content is never written.
pub fn script_writes(script: &str, path: &str, content: &str) -> bool {
    let wanted: Vec<&str> = content
        .lines()
        .map(|l| l.trim_start_matches('\t'))
        .collect();
    let Some(first) = wanted.first() else {
        return false;
    };
    if !script.contains(path) {
        return false;
    }
    let lines: Vec<&str> = script.lines().map(|l| l.trim_start_matches('\t')).collect();
    lines
        .windows(wanted.len())
        .any(|window| window[0] == *first && window == wanted.as_slice())
}

/// Whether the maintainer script `script` makes the symlink `path` pointing to `target`
/// with a literal `ln` command (`ln -sf debian "$DPKG_ROOT/etc/dpkg/origins/default"`): a
/// line holds the word `ln`, then `target`, then a word ending in `path`, quotes aside. A
/// link whose target the script computes (`ln -s "/usr/share/zoneinfo/$ZONE" …`) is a
/// choice made at install time and does not match.
pub fn script_links(script: &str, path: &str, target: &str) -> bool {
    if target.is_empty() || !script.contains(path) {
        return false;
    }
    script.lines().any(|line| {
        let mut words = line
            .split_whitespace()
            .map(|w| w.trim_matches(['"', '\'']))
            .skip_while(|w| *w != "ln");
        words.next().is_some()
            && words.by_ref().any(|w| w == target)
            && words.any(|w| w.ends_with(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = include_str!("../tests/fixtures/status");

    #[test]
    fn status_fixture() {
        let packages = parse_status(STATUS).expect("parse");
        let names: Vec<&str> = packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["openssh-server", "libc6", "oldpkg", "newpkg"]);

        let ssh = &packages[0];
        assert!(ssh.installed);
        assert_eq!(
            ssh.conffiles,
            [
                Conffile {
                    path: "/etc/ssh/moduli".into(),
                    md5: "0e1f2b8a3b4f4b7d3c2e6f8b9a1d2c3e".into(),
                    retired: false,
                },
                Conffile {
                    path: "/etc/ssh/sshd_config".into(),
                    md5: "b8e3a8d5c1f2e4a6b7c8d9e0f1a2b3c4".into(),
                    retired: false,
                },
                Conffile {
                    path: "/etc/init.d/ssh old".into(),
                    md5: "11112222333344445555666677778888".into(),
                    retired: true,
                },
                Conffile {
                    path: "/etc/ssh/gone".into(),
                    md5: "99990000aaaabbbbccccddddeeeeffff".into(),
                    retired: true,
                },
            ]
        );
        assert!(packages[1].installed);
        assert!(packages[1].conffiles.is_empty());
        assert!(!packages[2].installed, "config-files is not installed");
        assert_eq!(packages[2].conffiles.len(), 1);
        assert_eq!(packages[3].conffiles[0].md5, "newconffile");
    }

    #[test]
    fn status_errors_name_the_line() {
        let err = parse_status("Package: a\nStatus: install ok installed\n\nnonsense\n")
            .expect_err("bad field");
        assert_eq!(err.line, 4);
        let err = parse_status("Version: 1\nStatus: install ok installed\n").expect_err("no name");
        assert_eq!(err.line, 1);
        assert!(err.reason.contains("Package"), "{err}");
        let err = parse_status("Package: a\nStatus: install\n").expect_err("bad status");
        assert!(err.reason.contains("package a"), "{err}");
        let err = parse_status("Package: a\nStatus: install ok installed\nConffiles:\n /etc/x\n")
            .expect_err("no hash");
        assert_eq!(err.line, 4);
        let err = parse_status("Package: a\nStatus: install ok installed\nConffiles:\n etc/x 0\n")
            .expect_err("relative");
        assert!(err.reason.contains("not absolute"), "{err}");
    }

    #[test]
    fn empty_status_has_no_packages() {
        assert_eq!(parse_status("\n\n").expect("parse"), []);
    }

    #[test]
    fn list_skips_root_entry() {
        let text = "/.\n/etc\n/etc/foo.conf\n/usr/share/doc/foo bar\n";
        let paths: Vec<&str> = parse_list(text).collect();
        assert_eq!(paths, ["/etc", "/etc/foo.conf", "/usr/share/doc/foo bar"]);
    }

    #[test]
    fn md5sums_lines() {
        let text = "d41d8cd98f00b204e9800998ecf8427e  etc/foo/a b.conf\n\
                    0123456789ABCDEF0123456789abcdef  usr/bin/foo\n";
        assert_eq!(
            parse_md5sums(text).expect("parse"),
            [
                Md5Entry {
                    md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
                    path: "/etc/foo/a b.conf".into(),
                },
                Md5Entry {
                    md5: "0123456789abcdef0123456789abcdef".into(),
                    path: "/usr/bin/foo".into(),
                },
            ]
        );
    }

    #[test]
    fn md5sums_errors() {
        for bad in [
            "short  etc/x",
            "zz1d8cd98f00b204e9800998ecf8427e  etc/x",
            "d41d8cd98f00b204e9800998ecf8427e etc/x",
            "d41d8cd98f00b204e9800998ecf8427e  ",
        ] {
            let text = format!("d41d8cd98f00b204e9800998ecf8427e  etc/ok\n{bad}\n");
            let err = parse_md5sums(&text).expect_err(bad);
            assert_eq!(err.line, 2, "{bad}");
        }
    }

    #[test]
    fn diversions_triples() {
        let text = "/usr/bin/pg_config\n/usr/bin/pg_config.libpq-dev\npostgresql-common\n\
                    /etc/issue\n/etc/issue.orig\n:\n";
        assert_eq!(
            parse_diversions(text).expect("parse"),
            [
                Diversion {
                    from: "/usr/bin/pg_config".into(),
                    to: "/usr/bin/pg_config.libpq-dev".into(),
                    by: Some("postgresql-common".into()),
                },
                Diversion {
                    from: "/etc/issue".into(),
                    to: "/etc/issue.orig".into(),
                    by: None,
                },
            ]
        );
        assert_eq!(parse_diversions("").expect("empty"), []);
        assert!(parse_diversions("/a\n/b\n").is_err());
        assert_eq!(
            parse_diversions("/a\nb\npkg\n").expect_err("relative").line,
            2
        );
    }

    #[test]
    fn scripts_writing_files() {
        let postinst = "#!/bin/sh\nset -e\n\ncreate_networks_file() {\n  \
                        if [ -e /etc/networks ]; then return 0; fi\n\n  \
                        cat > /etc/networks <<-EOF\n\
                        \tdefault\t\t0.0.0.0\n\
                        \tloopback\t127.0.0.0\n\
                        \n\
                        EOF\n}\n";
        let networks = "default\t\t0.0.0.0\nloopback\t127.0.0.0\n\n";
        assert!(script_writes(postinst, "/etc/networks", networks));
        assert!(script_writes(
            postinst,
            "/etc/networks",
            "default\t\t0.0.0.0\n"
        ));
        // Another path, edited content, lines out of order, nothing.
        assert!(!script_writes(postinst, "/etc/hosts", networks));
        let edited = "default\t\t0.0.0.0\nloopback\t127.0.0.0\nlan\t10.0.0.0\n";
        assert!(!script_writes(postinst, "/etc/networks", edited));
        let swapped = "loopback\t127.0.0.0\ndefault\t\t0.0.0.0\n";
        assert!(!script_writes(postinst, "/etc/networks", swapped));
        assert!(!script_writes(postinst, "/etc/networks", ""));
    }

    #[test]
    fn scripts_making_links() {
        let postinst = "if [ ! -e \"$DPKG_ROOT/etc/dpkg/origins/default\" ]; then\n  \
                        ln -sf debian \"$DPKG_ROOT/etc/dpkg/origins/default\"\nfi\n\
                        ln -nsf \"/usr/share/zoneinfo/$TIMEZONE\" \"$DPKG_ROOT/etc/localtime\"\n";
        assert!(script_links(
            postinst,
            "/etc/dpkg/origins/default",
            "debian"
        ));
        assert!(!script_links(
            postinst,
            "/etc/dpkg/origins/default",
            "ubuntu"
        ));
        assert!(!script_links(postinst, "/etc/dpkg/origins/other", "debian"));
        assert!(!script_links(
            postinst,
            "/etc/localtime",
            "/usr/share/zoneinfo/Etc/UTC"
        ));
        assert!(!script_links(postinst, "/etc/dpkg/origins/default", ""));
        // The words must come in `ln`'s order: target, then link.
        let reversed = "ln -s /etc/x/link target\n";
        assert!(!script_links(reversed, "/etc/x/link", "target"));
        assert!(script_links(
            "ln -s target /etc/x/link\n",
            "/etc/x/link",
            "target"
        ));
    }

    #[test]
    fn info_file_names() {
        assert_eq!(
            info_file_package("openssh-server.list", "list"),
            Some("openssh-server")
        );
        assert_eq!(
            info_file_package("libc6:amd64.md5sums", "md5sums"),
            Some("libc6")
        );
        assert_eq!(info_file_package("libc6:amd64.md5sums", "list"), None);
        assert_eq!(info_file_package("foo.postinst", "list"), None);
        assert_eq!(info_file_package("format", "list"), None);
        assert_eq!(info_file_package(".list", "list"), None);
        assert_eq!(info_file_package("foolist", "list"), None);
    }
}
