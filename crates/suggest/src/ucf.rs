//! Parsers of ucf's state files. Pure code over `&str`, no I/O.
//!
//! ucf ("update configuration file") keeps configuration files that maintainer scripts
//! generate or copy from a template, which dpkg therefore does not track as conffiles
//! (openssh-server's `/etc/ssh/sshd_config`, grub's `/etc/default/grub`…). It records:
//!
//! - `/var/lib/ucf/hashfile`: the MD5 of the content ucf last installed, as `md5sum` prints
//!   it (`<md5>  <path>`); `ucf --purge` removes the entry;
//! - `/var/lib/ucf/registry`: the package each file belongs to, one `<package> \t <path>`
//!   line per file, written by `ucfr`.
//!
//! `hashfile.N` and `registry.N` are ucf's backups of earlier versions and are not read.

use crate::dpkg::ParseError;

/// One entry of ucf's `hashfile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UcfHash {
    /// MD5 of the content ucf last installed (lowercase hex).
    pub md5: String,
    /// Absolute path of the configuration file.
    pub path: String,
}

/// One entry of ucf's `registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UcfRegistration {
    /// The package the file belongs to, as given to `ucfr`.
    pub package: String,
    /// Absolute path of the configuration file.
    pub path: String,
}

fn parse_error(line: usize, reason: String) -> ParseError {
    ParseError { line, reason }
}

/// Parses ucf's `hashfile`: `md5sum` output, `<32 hex digits>  <absolute path>` per line
/// (`<md5> *<path>` in binary mode). A line starting with `\` has a backslash-escaped path,
/// as `md5sum` writes names containing a backslash or a newline. Blank lines are skipped.
pub fn parse_hashfile(text: &str) -> Result<Vec<UcfHash>, ParseError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = || {
            parse_error(
                index + 1,
                format!("expected `<md5>  <absolute path>`, found {line:?}"),
            )
        };
        let (escaped, line_rest) = match line.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (md5, rest) = line_rest.split_at_checked(32).ok_or_else(malformed)?;
        if !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        let path = rest
            .strip_prefix("  ")
            .or_else(|| rest.strip_prefix(" *"))
            .ok_or_else(malformed)?;
        let path = if escaped {
            unescape(path).ok_or_else(malformed)?
        } else {
            path.to_owned()
        };
        if !path.starts_with('/') {
            return Err(malformed());
        }
        entries.push(UcfHash {
            md5: md5.to_ascii_lowercase(),
            path,
        });
    }
    Ok(entries)
}

/// Undoes `md5sum`'s escaping of a file name: `\\` and `\n`. `None` on another escape.
fn unescape(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            _ => return None,
        }
    }
    Some(out)
}

/// Parses ucf's `registry`: `<package>`, whitespace (`ucfr` writes ` \t `), then the
/// absolute path up to the end of the line. Blank lines are skipped.
pub fn parse_registry(text: &str) -> Result<Vec<UcfRegistration>, ParseError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let malformed = || {
            parse_error(
                index + 1,
                format!("expected `<package> <absolute path>`, found {line:?}"),
            )
        };
        let (package, path) = line.split_once(char::is_whitespace).ok_or_else(malformed)?;
        let path = path.trim_start();
        if package.is_empty() || !path.starts_with('/') {
            return Err(malformed());
        }
        entries.push(UcfRegistration {
            package: package.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASHFILE: &str = include_str!("../tests/fixtures/ucf/hashfile");
    const REGISTRY: &str = include_str!("../tests/fixtures/ucf/registry");

    #[test]
    fn hashfile_fixture() {
        let entries = parse_hashfile(HASHFILE).expect("parse");
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.md5.as_str(), e.path.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "fbc910d4bc9889530c92c7e8b101689b",
                    "/etc/postgresql-common/createcluster.conf"
                ),
                ("4b5a5a9b3fb9ad0fd1df6dbbd19bd6b2", "/etc/default/grub"),
                ("0123456789abcdef0123456789abcdef", "/etc/ssh/sshd_config"),
                ("00112233445566778899aabbccddeeff", "/etc/odd dir/a\\b\nc"),
                ("ffeeddccbbaa99887766554433221100", "/etc/binary mode"),
            ]
        );
    }

    #[test]
    fn hashfile_errors_name_the_line() {
        for bad in [
            "short  /etc/x",
            "zz1d8cd98f00b204e9800998ecf8427e  /etc/x",
            "d41d8cd98f00b204e9800998ecf8427e /etc/x",
            "d41d8cd98f00b204e9800998ecf8427e  etc/x",
            "\\d41d8cd98f00b204e9800998ecf8427e  /etc/bad\\escape",
        ] {
            let text = format!("d41d8cd98f00b204e9800998ecf8427e  /etc/ok\n{bad}\n");
            let err = parse_hashfile(&text).expect_err(bad);
            assert_eq!(err.line, 2, "{bad}");
        }
        assert_eq!(parse_hashfile("").expect("empty"), []);
    }

    #[test]
    fn registry_fixture() {
        let entries = parse_registry(REGISTRY).expect("parse");
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.package.as_str(), e.path.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "postgresql-common",
                    "/etc/postgresql-common/createcluster.conf"
                ),
                ("grub-pc", "/etc/default/grub"),
                ("openssh-server", "/etc/ssh/sshd_config"),
                ("foo", "/etc/foo/with space.conf"),
            ]
        );
    }

    #[test]
    fn registry_errors_name_the_line() {
        for bad in ["lonely", "pkg etc/relative", "pkg\t"] {
            let text = format!("pkg \t /etc/ok\n{bad}\n");
            let err = parse_registry(&text).expect_err(bad);
            assert_eq!(err.line, 2, "{bad}");
        }
        assert_eq!(parse_registry("\n").expect("blank"), []);
    }
}
