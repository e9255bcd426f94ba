//! GRUB's environment block (`grubenv`): a pure codec ([`GrubEnv`]) and its file I/O.
//!
//! The format follows GRUB's `lib/envblk.c`: exactly [`BLOCK_SIZE`] bytes, starting with
//! [`HEADER`], then `name=value\n` entries, padded with `#` to the end. A line that starts
//! with `#` is a comment (Debian's `grub-editenv create` writes a warning line). In values
//! GRUB escapes `\` as `\\` and a newline as `\` followed by the newline itself; reading
//! drops each escaping backslash and keeps the byte after it.
//!
//! GRUB's `save_env` rewrites the file's sectors in place from the boot loader, so an
//! existing grubenv is only ever rewritten in place ([`write_env_in_place`]), never
//! replaced, truncated or made sparse.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::Error;

/// Size of a GRUB environment block in bytes.
pub const BLOCK_SIZE: usize = 1024;

/// The line every environment block starts with.
pub const HEADER: &[u8] = b"# GRUB Environment Block\n";

/// Why a block cannot be parsed or encoded. Offsets count bytes from the block's start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// The block is not exactly [`BLOCK_SIZE`] bytes long.
    #[error("environment block is {len} bytes, expected exactly {BLOCK_SIZE}")]
    WrongSize {
        /// The length found.
        len: usize,
    },
    /// The block does not start with [`HEADER`].
    #[error("not a GRUB environment block: missing header \"# GRUB Environment Block\"")]
    BadHeader,
    /// The `#` padding at the end holds something else: GRUB reads the block but its
    /// `save_env` cannot write into it.
    #[error("byte {offset}: {byte:#04x} in the '#' padding: GRUB can read the block but not save_env into it")]
    BadPadding {
        /// Where the first foreign byte is.
        offset: usize,
        /// The byte found.
        byte: u8,
    },
    /// A NUL byte where an entry should be (zero-filled or corrupt block).
    #[error("byte {offset}: NUL byte in an entry (zero-filled or corrupt block)")]
    NulByte {
        /// Where the NUL byte is.
        offset: usize,
    },
    /// A line that is neither a comment nor `name=value`.
    #[error("byte {offset}: line without '=' (expected name=value)")]
    MissingEquals {
        /// Where the line starts.
        offset: usize,
    },
    /// An entry whose name is empty (`=value`).
    #[error("byte {offset}: entry with an empty name")]
    EmptyName {
        /// Where the entry starts.
        offset: usize,
    },
    /// The last entry runs into the end of the block without its newline.
    #[error("byte {offset}: entry is not terminated by a newline before the end of the block")]
    Unterminated {
        /// Where the entry starts.
        offset: usize,
    },
    /// An entry's name or value is not valid UTF-8.
    #[error("byte {offset}: entry is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the entry starts.
        offset: usize,
    },
    /// The same name appears twice; which one GRUB would use is ambiguous.
    #[error("byte {offset}: variable {name:?} appears a second time")]
    DuplicateName {
        /// Where the second entry starts.
        offset: usize,
        /// The repeated name.
        name: String,
    },
    /// A name that GRUB could not read back as written.
    #[error("variable name {name:?} cannot be stored: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value containing a NUL byte, which GRUB's C strings cannot hold.
    #[error("value of {name:?} contains a NUL byte, which GRUB cannot store")]
    NulInValue {
        /// The variable's name.
        name: String,
    },
    /// The variables do not fit into one block.
    #[error("variables need {needed} bytes, more than the {BLOCK_SIZE}-byte block")]
    TooLarge {
        /// Bytes needed for header and entries.
        needed: usize,
    },
}

/// The variables of one environment block, in block order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: Vec<(String, String)>,
}

impl GrubEnv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a whole environment block (exactly [`BLOCK_SIZE`] bytes).
    pub fn parse(block: &[u8]) -> Result<Self, EnvError> {
        if block.len() != BLOCK_SIZE {
            return Err(EnvError::WrongSize { len: block.len() });
        }
        if !block.starts_with(HEADER) {
            return Err(EnvError::BadHeader);
        }
        let mut env = GrubEnv::new();
        let mut pos = HEADER.len();
        while pos < block.len() {
            let rest = &block[pos..];
            if rest[0] == b'#' {
                // A comment line, or the padding: GRUB skips a line that starts with '#' up
                // to its newline (a backslash escaping the next byte), or to the end of the
                // block. Whatever the padding holds (a NUL byte, say) is read past, as
                // GRUB's envblk.c does; [`save_env_problem`] says whether GRUB could still
                // save into the block.
                pos = next_line(block, pos);
                continue;
            }
            let (name, value, len) = parse_entry(rest, pos)?;
            if env.get(&name).is_some() {
                return Err(EnvError::DuplicateName { offset: pos, name });
            }
            env.vars.push((name, value));
            pos += len;
        }
        Ok(env)
    }

    /// Encodes the variables as a block of exactly [`BLOCK_SIZE`] bytes, `#`-padded.
    pub fn to_block(&self) -> Result<Vec<u8>, EnvError> {
        let mut block = HEADER.to_vec();
        for (name, value) in &self.vars {
            check_name(name)?;
            if value.contains('\0') {
                return Err(EnvError::NulInValue { name: name.clone() });
            }
            block.extend_from_slice(name.as_bytes());
            block.push(b'=');
            for &b in value.as_bytes() {
                if b == b'\\' || b == b'\n' {
                    block.push(b'\\');
                }
                block.push(b);
            }
            block.push(b'\n');
        }
        if block.len() > BLOCK_SIZE {
            return Err(EnvError::TooLarge {
                needed: block.len(),
            });
        }
        block.resize(BLOCK_SIZE, b'#');
        Ok(block)
    }

    /// The value of `key`, if set (an empty value is `Some("")`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value`, in place if it exists, else at the end.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.vars.push((key.to_owned(), value.to_owned())),
        }
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: &str) {
        self.vars.retain(|(k, _)| k != key);
    }

    /// The variables in block order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The offset after the line that starts at `pos`, as GRUB's `find_next_line` finds it: a
/// backslash skips the byte after it; no newline means the end of the block.
fn next_line(block: &[u8], mut pos: usize) -> usize {
    while pos < block.len() {
        match block[pos] {
            b'\\' => pos += 2,
            b'\n' => return pos + 1,
            _ => pos += 1,
        }
    }
    block.len()
}

/// Why GRUB's `save_env` could not write into `block`, if it could not. GRUB finds the
/// free space by walking back over the `#` padding and gives up unless the byte before it
/// is the newline ending the last entry: a foreign byte in the padding (a NUL, say) leaves
/// the block readable but makes `save_env` fail, so a trial could never spend a try.
/// abupdate rewrites the whole block on its next write, which mends it.
pub fn save_env_problem(block: &[u8]) -> Option<EnvError> {
    if block.len() != BLOCK_SIZE {
        return Some(EnvError::WrongSize { len: block.len() });
    }
    let end = block.iter().rposition(|&b| b != b'#')?;
    if block[end] == b'\n' {
        return None;
    }
    // GRUB stops at `end`: the byte before the padding is not a newline.
    Some(EnvError::BadPadding {
        offset: end,
        byte: block[end],
    })
}

/// Reads as many variables as GRUB would from a damaged block, and says what is wrong with
/// it; never fails. Used to recover (`abupdate repair`): every variable GRUB's `load_env`
/// would see is kept, later entries are not guessed at.
pub fn salvage(block: &[u8]) -> (GrubEnv, Option<EnvError>) {
    let problem = match GrubEnv::parse(block) {
        Ok(env) => return (env, save_env_problem(block)),
        Err(e) => e,
    };
    let mut env = GrubEnv::new();
    if block.len() < HEADER.len() || !block.starts_with(HEADER) {
        return (env, Some(problem));
    }
    let mut pos = HEADER.len();
    while pos < block.len() {
        if block[pos] == b'#' {
            pos = next_line(block, pos);
            continue;
        }
        match parse_entry(&block[pos..], pos) {
            Ok((name, value, len)) => {
                if env.get(&name).is_none() && check_name(&name).is_ok() {
                    env.vars.push((name, value));
                }
                pos += len;
            }
            Err(_) => break,
        }
    }
    (env, Some(problem))
}

/// Parses one `name=value\n` entry at the start of `rest` (which starts at byte `offset` of
/// the block); returns name, unescaped value and the entry's length including the newline.
fn parse_entry(rest: &[u8], offset: usize) -> Result<(String, String, usize), EnvError> {
    let mut i = 0;
    let eq = loop {
        match rest.get(i) {
            Some(b'=') => break i,
            Some(0) => return Err(EnvError::NulByte { offset: offset + i }),
            Some(b'\n') | None => return Err(EnvError::MissingEquals { offset }),
            Some(_) => i += 1,
        }
    };
    if eq == 0 {
        return Err(EnvError::EmptyName { offset });
    }
    let mut value = Vec::new();
    let mut i = eq + 1;
    loop {
        let b = match rest.get(i) {
            Some(b'\n') => break,
            // Like GRUB: a backslash keeps the next byte, whatever it is.
            Some(b'\\') => {
                i += 1;
                match rest.get(i) {
                    Some(&b) => b,
                    None => return Err(EnvError::Unterminated { offset }),
                }
            }
            Some(&b) => b,
            None => return Err(EnvError::Unterminated { offset }),
        };
        if b == 0 {
            return Err(EnvError::NulByte { offset: offset + i });
        }
        value.push(b);
        i += 1;
    }
    let utf8 =
        |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| EnvError::InvalidUtf8 { offset });
    Ok((utf8(rest[..eq].to_vec())?, utf8(value)?, i + 1))
}

/// Checks that GRUB would read `name` back as the same variable name.
fn check_name(name: &str) -> Result<(), EnvError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.starts_with('#') {
        "GRUB reads a line starting with '#' as a comment"
    } else if name.contains('=') {
        "it contains '='"
    } else if name.contains('\n') {
        "it contains a newline"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(EnvError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

fn env_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(EnvError) -> Error + 'a {
    move |source| Error::Env {
        step,
        path: path.to_owned(),
        source,
    }
}

fn refused(step: &'static str, path: &Path, reason: String) -> Error {
    Error::Refused {
        step,
        path: path.to_owned(),
        reason,
    }
}

/// Reads and parses the grubenv file at `path`.
pub fn read_env(path: &Path) -> Result<GrubEnv, Error> {
    let file = File::open(path).map_err(io_err("open grubenv", path))?;
    let len = file.metadata().map_err(io_err("stat grubenv", path))?.len();
    if len != BLOCK_SIZE as u64 {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        return Err(env_err("read grubenv", path)(EnvError::WrongSize { len }));
    }
    let mut block = Vec::with_capacity(BLOCK_SIZE);
    file.take(BLOCK_SIZE as u64 + 1)
        .read_to_end(&mut block)
        .map_err(io_err("read grubenv", path))?;
    GrubEnv::parse(&block).map_err(env_err("parse grubenv", path))
}

/// Rewrites the existing grubenv at `path` in place: checks it is a regular, fully
/// allocated file of exactly [`BLOCK_SIZE`] bytes, writes the whole block at offset 0 and
/// fsyncs. Never creates, truncates or resizes the file.
pub fn write_env_in_place(path: &Path, env: &GrubEnv) -> Result<(), Error> {
    const STEP: &str = "rewrite grubenv in place";
    let block = env
        .to_block()
        .map_err(env_err("encode grubenv for", path))?;
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io_err("open grubenv for writing", path))?;
    let meta = file.metadata().map_err(io_err("stat grubenv", path))?;
    if !meta.file_type().is_file() {
        return Err(refused(STEP, path, "not a regular file".into()));
    }
    if meta.len() != BLOCK_SIZE as u64 {
        return Err(refused(
            STEP,
            path,
            format!(
                "file is {} bytes, expected exactly {BLOCK_SIZE}",
                meta.len()
            ),
        ));
    }
    if meta.blocks() * 512 < BLOCK_SIZE as u64 {
        return Err(refused(
            STEP,
            path,
            format!(
                "file is sparse ({} bytes allocated); GRUB's save_env cannot write it",
                meta.blocks() * 512
            ),
        ));
    }
    file.write_all_at(&block, 0)
        .map_err(io_err("write grubenv", path))?;
    file.sync_all().map_err(io_err("fsync grubenv", path))
}

/// Creates a new grubenv at `path` durably: a fully written temp file in the same
/// directory, fsync, rename without replacing, fsync of the directory. Refuses if `path`
/// already exists.
pub fn create_env(path: &Path, env: &GrubEnv) -> Result<(), Error> {
    const STEP: &str = "create grubenv";
    if path.symlink_metadata().is_ok() {
        return Err(refused(STEP, path, "it already exists".into()));
    }
    let block = env
        .to_block()
        .map_err(env_err("encode grubenv for", path))?;
    let name = path
        .file_name()
        .ok_or_else(|| refused(STEP, path, "path has no file name".into()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.abupdate-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create temporary grubenv", &tmp))?;
        file.write_all(&block)
            .map_err(io_err("write temporary grubenv", &tmp))?;
        file.sync_all()
            .map_err(io_err("fsync temporary grubenv", &tmp))?;
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            path,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| io_err("rename temporary grubenv to", path)(e.into()))
    })();
    if result.is_err() {
        // Best effort: the error being returned matters more than a leftover temp file.
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    abupdate_utils::durable::fsync_dir(dir).map_err(|e| Error::Io {
        step: "fsync directory of new grubenv",
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_with(body: &[u8]) -> Vec<u8> {
        let mut b = HEADER.to_vec();
        b.extend_from_slice(body);
        b.resize(BLOCK_SIZE, b'#');
        b
    }

    #[test]
    fn round_trip_keeps_order_and_values() {
        let mut env = GrubEnv::new();
        env.set("ab_default", "a");
        env.set("ab_fallback", "");
        env.set("weird", "back\\slash\nnew=line\\n");
        env.set("ab_default", "b");
        let block = env.to_block().expect("encode");
        assert_eq!(block.len(), BLOCK_SIZE);
        let back = GrubEnv::parse(&block).expect("parse");
        assert_eq!(back, env);
        let pairs: Vec<_> = back.iter().collect();
        assert_eq!(
            pairs,
            [
                ("ab_default", "b"),
                ("ab_fallback", ""),
                ("weird", "back\\slash\nnew=line\\n")
            ]
        );
    }

    #[test]
    fn escaping_matches_grub() {
        let mut env = GrubEnv::new();
        env.set("k", "a\\b\nc");
        let block = env.to_block().expect("encode");
        assert_eq!(&block[HEADER.len()..HEADER.len() + 10], b"k=a\\\\b\\\nc\n");
        assert!(block[HEADER.len() + 10..].iter().all(|&b| b == b'#'));
    }

    #[test]
    fn unescape_keeps_byte_after_backslash() {
        let env = GrubEnv::parse(&block_with(b"k=\\n\\x\\\\\n")).expect("parse");
        assert_eq!(env.get("k"), Some("nx\\"));
    }

    #[test]
    fn comments_are_skipped() {
        let env = GrubEnv::parse(&block_with(b"# a comment\nk=v\n#another\n")).expect("parse");
        assert_eq!(env.iter().collect::<Vec<_>>(), [("k", "v")]);
    }

    #[test]
    fn remove_and_get() {
        let mut env = GrubEnv::new();
        env.set("a", "1");
        env.set("b", "2");
        env.remove("a");
        env.remove("missing");
        assert_eq!(env.get("a"), None);
        assert_eq!(env.get("b"), Some("2"));
    }

    #[test]
    fn rejects_corrupt_blocks() {
        use EnvError::*;
        let h = HEADER.len();
        assert_eq!(GrubEnv::parse(&[b'#'; 1023]), Err(WrongSize { len: 1023 }));
        assert_eq!(GrubEnv::parse(&[b'#'; 2048]), Err(WrongSize { len: 2048 }));
        assert_eq!(GrubEnv::parse(&[b'#'; BLOCK_SIZE]), Err(BadHeader));
        let mut zero = HEADER.to_vec();
        zero.resize(BLOCK_SIZE, 0);
        assert_eq!(GrubEnv::parse(&zero), Err(NulByte { offset: h }));
        // Garbage in the padding is read past, as GRUB does, but GRUB's save_env would
        // fail: that is reported separately.
        for byte in [b'x', 0] {
            let mut garbage = block_with(b"k=v\n");
            garbage[1000] = byte;
            let env = GrubEnv::parse(&garbage).expect("GRUB reads past the padding");
            assert_eq!(env.get("k"), Some("v"));
            assert_eq!(
                save_env_problem(&garbage),
                Some(BadPadding { offset: 1000, byte })
            );
        }
        assert_eq!(save_env_problem(&block_with(b"k=v\n")), None);
        assert_eq!(save_env_problem(&block_with(b"")), None);
        assert_eq!(
            GrubEnv::parse(&block_with(b"k=v\nnoequals\n")),
            Err(MissingEquals { offset: h + 4 })
        );
        assert_eq!(
            GrubEnv::parse(&block_with(b"=v\n")),
            Err(EmptyName { offset: h })
        );
        assert_eq!(
            GrubEnv::parse(&block_with(b"k=\xff\n")),
            Err(InvalidUtf8 { offset: h })
        );
        assert_eq!(
            GrubEnv::parse(&block_with(b"k=1\nk=2\n")),
            Err(DuplicateName {
                offset: h + 4,
                name: "k".into()
            })
        );
        let mut unterminated = HEADER.to_vec();
        unterminated.resize(BLOCK_SIZE, b'x');
        unterminated[h + 1] = b'=';
        assert_eq!(
            GrubEnv::parse(&unterminated),
            Err(Unterminated { offset: h })
        );
    }

    #[test]
    fn rejects_unstorable_variables() {
        for bad in ["", "#x", "a=b", "a\nb"] {
            let mut env = GrubEnv::new();
            env.set(bad, "v");
            assert!(
                matches!(env.to_block(), Err(EnvError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        let mut env = GrubEnv::new();
        env.set("k", "a\0b");
        assert!(matches!(env.to_block(), Err(EnvError::NulInValue { .. })));
    }

    #[test]
    fn too_large_is_an_error_and_exact_fit_is_not() {
        let mut env = GrubEnv::new();
        // header + "k=" + value + "\n" == 1024
        let fit = BLOCK_SIZE - HEADER.len() - 3;
        env.set("k", &"x".repeat(fit));
        let block = env.to_block().expect("exact fit");
        assert_eq!(GrubEnv::parse(&block).expect("parse"), env);
        env.set("k", &"x".repeat(fit + 1));
        assert_eq!(
            env.to_block(),
            Err(EnvError::TooLarge {
                needed: BLOCK_SIZE + 1
            })
        );
    }

    #[test]
    fn salvage_keeps_what_grub_reads() {
        let mut block = block_with(b"ab_default=a\nother=1\nbroken");
        block[BLOCK_SIZE - 1] = 0;
        let (env, problem) = salvage(&block);
        assert_eq!(env.get("ab_default"), Some("a"));
        assert_eq!(env.get("other"), Some("1"));
        assert!(problem.is_some());
        let (env, problem) = salvage(&[0u8; BLOCK_SIZE]);
        assert_eq!(env, GrubEnv::new());
        assert_eq!(problem, Some(EnvError::BadHeader));
        let (env, problem) = salvage(&block_with(b"k=v\n"));
        assert_eq!((env.get("k"), problem), (Some("v"), None));
    }
}
