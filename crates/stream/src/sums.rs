//! Parsing of SHA-256 digests given by the user and of `SHA256SUMS` files. Pure; no I/O.

use crate::Error;

/// Validates a SHA-256 digest given as 64 hexadecimal digits (surrounding whitespace is
/// ignored) and returns it in lowercase, the form [`crate::CopyStats`] uses.
pub fn parse_hex_sha256(s: &str) -> Result<String, Error> {
    let t = s.trim();
    let bad = |reason: String| Error::BadHex {
        input: shorten(t),
        reason,
    };
    if let Some((i, c)) = t.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "character {c:?} at position {i} is not a hexadecimal digit"
        )));
    }
    if t.len() != 64 {
        return Err(bad(format!(
            "expected 64 hexadecimal digits, got {}",
            t.len()
        )));
    }
    Ok(t.to_ascii_lowercase())
}

/// Finds the digest of `file_name` in the text of a checksum file as written by
/// `sha256sum` (`HEX  name` or `HEX *name`) or in BSD style (`SHA256 (name) = HEX`).
///
/// An entry matches when its name equals `file_name` (a leading `./` ignored); when no
/// entry matches exactly, entries whose last path segment equals `file_name` count.
/// Several entries with the same digest are fine; different digests are
/// [`Error::ChecksumAmbiguous`]. Blank lines, comments and lines in other formats (such as
/// the armor of an inline signature) are skipped; a malformed digest on a line naming the
/// file is an error.
pub fn parse_sha256sums(text: &str, file_name: &str) -> Result<String, Error> {
    let mut exact: Vec<&str> = Vec::new();
    let mut by_base: Vec<&str> = Vec::new();
    for line in text.lines() {
        let Some((hex, name)) = split_line(line) else {
            continue;
        };
        let name = name.strip_prefix("./").unwrap_or(name);
        if name == file_name {
            exact.push(hex);
        } else if name.rsplit('/').next() == Some(file_name) {
            by_base.push(hex);
        }
    }
    let candidates = if exact.is_empty() { by_base } else { exact };
    let mut found: Option<String> = None;
    for hex in candidates {
        let digest = parse_hex_sha256(hex)?;
        match &found {
            Some(prev) if *prev != digest => {
                return Err(Error::ChecksumAmbiguous {
                    file_name: file_name.to_string(),
                })
            }
            _ => found = Some(digest),
        }
    }
    found.ok_or_else(|| Error::ChecksumMissing {
        file_name: file_name.to_string(),
    })
}

/// Splits one checksum line into (digest text, file name), or `None` when the line is not
/// a checksum entry.
fn split_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return None;
    }
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, hex) = rest.rsplit_once(") = ")?;
        return Some((hex.trim(), name));
    }
    let (hex, rest) = line.split_once(char::is_whitespace)?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // `sha256sum` separates with two spaces (text mode) or " *" (binary mode).
    let name = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('*'))
        .unwrap_or(rest);
    let name = name.strip_prefix('*').unwrap_or(name);
    (!name.is_empty()).then_some((hex, name))
}

/// Keeps error messages readable when the input is long.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const B: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn hex_valid_and_lowercased() {
        assert_eq!(
            parse_hex_sha256(&format!(" {} \n", A.to_uppercase())).unwrap(),
            A
        );
    }

    #[test]
    fn hex_invalid() {
        assert!(matches!(parse_hex_sha256(""), Err(Error::BadHex { .. })));
        assert!(matches!(
            parse_hex_sha256(&A[..63]),
            Err(Error::BadHex { .. })
        ));
        assert!(matches!(
            parse_hex_sha256(&format!("{A}0")),
            Err(Error::BadHex { .. })
        ));
        let with_g = format!("g{}", &A[1..]);
        let err = parse_hex_sha256(&with_g).unwrap_err().to_string();
        assert!(err.contains("'g'"), "{err}");
    }

    #[test]
    fn sums_text_binary_and_bsd_forms() {
        let text = format!(
            "# comment\n\n{B}  other.img.zst\r\n{A} *debian-13.img.zst\nSHA256 (x.img) = {B}\n"
        );
        assert_eq!(parse_sha256sums(&text, "debian-13.img.zst").unwrap(), A);
        assert_eq!(parse_sha256sums(&text, "other.img.zst").unwrap(), B);
        assert_eq!(parse_sha256sums(&text, "x.img").unwrap(), B);
    }

    #[test]
    fn sums_directory_entries_and_dot_slash() {
        let text = format!("{A}  ./images/d.img\n{B}  ./e.img\n");
        assert_eq!(parse_sha256sums(&text, "d.img").unwrap(), A);
        assert_eq!(parse_sha256sums(&text, "e.img").unwrap(), B);
        // An exact match wins over a basename match.
        let text = format!("{A}  sub/f.img\n{B}  f.img\n");
        assert_eq!(parse_sha256sums(&text, "f.img").unwrap(), B);
    }

    #[test]
    fn sums_missing_ambiguous_and_duplicates() {
        let text = format!("{A}  a.img\n{B}  a.img\n{A}  c.img\n{A}  c.img\n");
        assert!(matches!(
            parse_sha256sums(&text, "b.img"),
            Err(Error::ChecksumMissing { .. })
        ));
        assert!(matches!(
            parse_sha256sums(&text, "a.img"),
            Err(Error::ChecksumAmbiguous { .. })
        ));
        assert_eq!(parse_sha256sums(&text, "c.img").unwrap(), A);
        // A name is not a prefix match.
        assert!(parse_sha256sums(&text, "a.im").is_err());
    }

    #[test]
    fn sums_bad_digest_for_our_file_is_an_error() {
        let text = format!("{}  a.img\n-----BEGIN PGP SIGNATURE-----\n", &A[..10]);
        assert!(matches!(
            parse_sha256sums(&text, "a.img"),
            Err(Error::BadHex { .. })
        ));
    }
}
