//! The library's error type and its mapping to the documented exit codes.

use std::path::PathBuf;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: an internal error (a bug).
pub const EXIT_INTERNAL: i32 = 1;
/// Exit code: bad usage or a bad configuration file.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: refused by a precondition (wrong slot, mounted target, lock held, ...).
pub const EXIT_REFUSED: i32 = 3;
/// Exit code: verification failed (checksum, corrupt, truncated or oversized image).
pub const EXIT_VERIFY: i32 = 4;
/// Exit code: an I/O or system error.
pub const EXIT_IO: i32 = 5;

/// Every failure abupdate reports; each names the step and the device or path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The command line is incomplete or contradictory.
    #[error("usage: {0}")]
    Usage(String),
    /// The operation is not allowed in the current state.
    #[error("refused: {0}")]
    Refused(String),
    /// The image or its checksum did not verify.
    #[error("verification failed: {0}")]
    Verification(String),
    /// A system call or file operation failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        /// What was being done.
        step: String,
        /// The file or device.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An external command failed.
    #[error("{step}: {source}")]
    Cmd {
        /// What was being done.
        step: String,
        /// The command failure, with its stderr.
        source: abupdate_utils::CmdError,
    },
    /// Another writer holds the lock.
    #[error(transparent)]
    Lock(#[from] abupdate_utils::lock::LockError),
    /// Mounting or unmounting failed.
    #[error(transparent)]
    Mount(#[from] abupdate_utils::mount::MountError),
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] abupdate_utils::durable::DurableError),
    /// Reading or writing GRUB's files failed.
    #[error("boot configuration: {step}")]
    Grub {
        /// What was being done.
        step: &'static str,
        /// The file or tool failure.
        source: abupdate_grub::Error,
    },
    /// The GRUB script could not be rendered from the slots' records.
    #[error("render grub.cfg")]
    Render(#[from] abupdate_grub::config::RenderError),
    /// Streaming the image failed.
    #[error("image {source_name}: {source}")]
    Stream {
        /// The image path or URL.
        source_name: String,
        /// The streaming error.
        source: abupdate_stream::Error,
    },
    /// Writing files into the new slot failed: the manifest copy, a tar extraction, a clone.
    #[error("{step}: {source}")]
    Tree {
        /// What was being done ("copy manifest into the new slot", ...).
        step: &'static str,
        /// The copy or extraction error.
        source: abupdate_treecopy::Error,
    },
    /// `manifest suggest` failed.
    #[error("manifest suggest: {0}")]
    Suggest(#[from] abupdate_suggest::Error),
    /// The state or history file is unreadable or from a future version.
    #[error("state file {}", path.display())]
    State {
        /// The state or history file.
        path: PathBuf,
        /// Why it cannot be used.
        source: crate::state::StateError,
    },
    /// A record could not be encoded as JSON (a bug).
    #[error("encode {what} as JSON")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        source: serde_json::Error,
    },
    /// The release channel refused its metadata or a release, or could not be reached.
    #[error(transparent)]
    Channel(Box<abupdate_channel::Error>),
    /// An invariant was violated (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// GRUB's boot code (core image, boot.img) is not what it must be.
    #[error("{context}: {source}")]
    BootCode {
        /// What was being done.
        context: String,
        /// What is wrong with the image.
        source: crate::bootchain::ChainError,
    },
}

/// An error and its causes in one line, each cause once (a cause whose text the line
/// already holds is skipped).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Result with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<abupdate_channel::Error> for Error {
    fn from(e: abupdate_channel::Error) -> Error {
        Error::Channel(Box::new(e))
    }
}

impl Error {
    /// The documented process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage(_) => EXIT_USAGE,
            Error::Refused(_) => EXIT_REFUSED,
            Error::Lock(abupdate_utils::lock::LockError::Busy { .. }) => EXIT_REFUSED,
            Error::Verification(_) => EXIT_VERIFY,
            Error::Stream { source, .. } if source.is_verification_error() => EXIT_VERIFY,
            Error::Stream { source, .. } if source.kind() == abupdate_stream::ErrorKind::Input => {
                EXIT_USAGE
            }
            Error::Stream { source, .. }
                if source.kind() == abupdate_stream::ErrorKind::Refused =>
            {
                EXIT_REFUSED
            }
            Error::Tree {
                source:
                    abupdate_treecopy::Error::UnsafeDestination { .. }
                    | abupdate_treecopy::Error::DestinationConflict { .. }
                    | abupdate_treecopy::Error::BadManifestEntry { .. },
                ..
            } => EXIT_REFUSED,
            // The archive itself is bad input, like a corrupt image.
            Error::Tree {
                source:
                    abupdate_treecopy::Error::UnsafeArchiveEntry { .. }
                    | abupdate_treecopy::Error::UnsupportedArchiveEntry { .. }
                    | abupdate_treecopy::Error::ArchiveLimit { .. }
                    | abupdate_treecopy::Error::Archive { .. },
                ..
            } => EXIT_VERIFY,
            Error::Suggest(
                abupdate_suggest::Error::Unsupported(_)
                | abupdate_suggest::Error::NoPackageDatabase { .. },
            ) => EXIT_REFUSED,
            Error::Suggest(
                abupdate_suggest::Error::BadScanRoot { .. }
                | abupdate_suggest::Error::BadExclude { .. },
            ) => EXIT_USAGE,
            // A slot record GRUB's script cannot hold (a title or path from the image).
            Error::Render(_) => EXIT_VERIFY,
            Error::Internal(_) | Error::Encode { .. } => EXIT_INTERNAL,
            Error::BootCode { .. } => EXIT_VERIFY,
            Error::Channel(e) => match e.kind() {
                abupdate_channel::ErrorKind::Verification => EXIT_VERIFY,
                abupdate_channel::ErrorKind::Refused => EXIT_REFUSED,
                abupdate_channel::ErrorKind::Input => EXIT_USAGE,
                abupdate_channel::ErrorKind::Io => EXIT_IO,
            },
            _ => EXIT_IO,
        }
    }

    /// Builds an [`Error::Io`] from a step and a path; use with `map_err`.
    pub fn io(
        step: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let (step, path) = (step.into(), path.into());
        move |source| Error::Io { step, path, source }
    }

    /// Builds an [`Error::Tree`] from a step; use with `map_err`.
    pub fn tree(step: &'static str) -> impl FnOnce(abupdate_treecopy::Error) -> Error {
        move |source| Error::Tree { step, source }
    }

    /// Builds an [`Error::Grub`] from a step; use with `map_err`.
    pub fn grub(step: &'static str) -> impl FnOnce(abupdate_grub::Error) -> Error {
        move |source| Error::Grub { step, source }
    }

    /// Builds an [`Error::Cmd`] from a step; use with `map_err`.
    pub fn cmd(step: impl Into<String>) -> impl FnOnce(abupdate_utils::CmdError) -> Error {
        let step = step.into();
        move |source| Error::Cmd { step, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's exit-code table, row by row: (code, meaning).
    fn readme_table() -> Vec<(i32, String)> {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("## Exit codes")
            .nth(1)
            .expect("README has an Exit codes section");
        section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let mut cells = l.trim_matches('|').split('|').map(str::trim);
                let code = cells.next()?.parse().ok()?;
                Some((code, cells.next()?.to_lowercase()))
            })
            .collect()
    }

    fn stream(e: abupdate_stream::Error) -> Error {
        Error::Stream {
            source_name: "x".into(),
            source: e,
        }
    }

    fn tree(e: abupdate_treecopy::Error) -> Error {
        Error::Tree {
            step: "extract",
            source: e,
        }
    }

    #[test]
    fn readme_exit_codes_match_the_code() {
        let table = readme_table();
        let codes: Vec<i32> = table.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            codes,
            [
                EXIT_OK,
                EXIT_INTERNAL,
                EXIT_USAGE,
                EXIT_REFUSED,
                EXIT_VERIFY,
                EXIT_IO
            ]
        );
        let meaning = |code: i32| table[code as usize].1.clone();
        // Each documented kind of failure maps to the row that names it.
        let p = std::path::PathBuf::from("x");
        let cases: Vec<(Error, i32, &str)> = vec![
            (Error::Internal("bug".into()), EXIT_INTERNAL, "internal"),
            (Error::Usage("--sha256".into()), EXIT_USAGE, "usage"),
            (
                Error::Config(crate::config::ConfigError::Invalid {
                    path: p.clone(),
                    location: (1, 1),
                    key: "k".into(),
                    message: "m".into(),
                }),
                EXIT_USAGE,
                "configuration",
            ),
            (
                stream(abupdate_stream::Error::InsecureTransport { url: "u".into() }),
                EXIT_USAGE,
                "usage",
            ),
            (Error::Refused("mounted".into()), EXIT_REFUSED, "refused"),
            (
                stream(abupdate_stream::Error::Redirect {
                    url: "u".into(),
                    reason: "r".into(),
                }),
                EXIT_REFUSED,
                "refused",
            ),
            (Error::Verification("sha".into()), EXIT_VERIFY, "checksum"),
            (
                stream(abupdate_stream::Error::SourceTooLarge {
                    name: "n".into(),
                    limit: 1,
                    len: Some(2),
                }),
                EXIT_VERIFY,
                "oversized",
            ),
            (
                tree(abupdate_treecopy::Error::ArchiveLimit {
                    entry: p.clone(),
                    reason: "r".into(),
                }),
                EXIT_VERIFY,
                "archive",
            ),
            (
                tree(abupdate_treecopy::Error::UnsafeArchiveEntry {
                    entry: p.clone(),
                    reason: "r".into(),
                }),
                EXIT_VERIFY,
                "outside the slot",
            ),
            (
                tree(abupdate_treecopy::Error::UnsupportedArchiveEntry {
                    entry: p.clone(),
                    reason: "r".into(),
                }),
                EXIT_VERIFY,
                "cannot extract",
            ),
            (
                Error::Io {
                    step: "read".into(),
                    path: p,
                    source: std::io::Error::other("x"),
                },
                EXIT_IO,
                "i/o",
            ),
        ];
        for (e, code, word) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
            assert!(
                meaning(code).contains(word),
                "README row {code} ({}) should mention {word:?} for {e}",
                meaning(code)
            );
        }
    }
}
