//! Compression format detection: magic bytes first, file name extension second.

use std::fmt;

/// Compression of a source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A raw, uncompressed image.
    None,
    /// Zstandard (`.zst`).
    Zstd,
    /// xz / LZMA2 (`.xz`).
    Xz,
    /// gzip (`.gz`).
    Gzip,
}

/// Number of leading bytes [`Compression::detect`] looks at.
pub const MAGIC_LEN: usize = 6;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl Compression {
    /// Detects the compression from the first bytes of the data (`magic`, up to
    /// [`MAGIC_LEN`] bytes) and, when they match no known format, from the extension of
    /// `name` (`.zst`, `.zstd`, `.xz`, `.gz`). Anything else is [`Compression::None`].
    ///
    /// A name whose extension promises compression that the magic bytes do not show still
    /// selects that decoder, so a damaged file fails loudly instead of being written raw.
    pub fn detect(name: &str, magic: &[u8]) -> Compression {
        if magic.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(magic) {
            return Compression::Zstd;
        }
        if magic.starts_with(&XZ_MAGIC) {
            return Compression::Xz;
        }
        if magic.starts_with(&GZIP_MAGIC) {
            return Compression::Gzip;
        }
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".zst") || lower.ends_with(".zstd") {
            Compression::Zstd
        } else if lower.ends_with(".xz") {
            Compression::Xz
        } else if lower.ends_with(".gz") {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    /// Short lowercase name of the format, as in messages and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Zstandard skippable frames start with 0x184D2A50..=0x184D2A5F (little endian).
fn is_zstd_skippable(magic: &[u8]) -> bool {
    magic.len() >= 4 && magic[0] & 0xf0 == 0x50 && magic[1..4] == [0x2a, 0x4d, 0x18]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_wins_over_extension() {
        assert_eq!(
            Compression::detect("x.img", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0]),
            Compression::Zstd
        );
        assert_eq!(
            Compression::detect("x.gz", &[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Compression::Xz
        );
        assert_eq!(
            Compression::detect("x.zst", &[0x1f, 0x8b, 8, 0]),
            Compression::Gzip
        );
        assert_eq!(
            Compression::detect("x", &[0x5e, 0x2a, 0x4d, 0x18]),
            Compression::Zstd
        );
    }

    #[test]
    fn extension_when_magic_unknown() {
        assert_eq!(
            Compression::detect("a/B.IMG.ZST", b"abcdef"),
            Compression::Zstd
        );
        assert_eq!(Compression::detect("b.zstd", b""), Compression::Zstd);
        assert_eq!(Compression::detect("c.img.xz", b"abcdef"), Compression::Xz);
        assert_eq!(Compression::detect("d.img.gz", b"ab"), Compression::Gzip);
        assert_eq!(Compression::detect("e.img", b"abcdef"), Compression::None);
        assert_eq!(Compression::detect("", &[]), Compression::None);
    }

    #[test]
    fn partial_magic_is_not_a_match() {
        assert_eq!(Compression::detect("f", &[0x28, 0xb5]), Compression::None);
        assert_eq!(
            Compression::detect("g", &[0xfd, b'7', b'z']),
            Compression::None
        );
        assert_eq!(Compression::detect("h", &[0x1f]), Compression::None);
    }
}
