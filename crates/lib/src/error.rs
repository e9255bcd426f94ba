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
    #[error("boot configuration: {0}")]
    Grub(String),
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
    /// The state file is unreadable or from a future version.
    #[error("state file {}: {reason}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The release channel refused its metadata or a release, or could not be reached.
    #[error(transparent)]
    Channel(Box<abupdate_channel::Error>),
    /// An invariant was violated (a bug).
    #[error("internal error: {0}")]
    Internal(String),
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
            Error::Config(_) => EXIT_USAGE,
            Error::Refused(_) => EXIT_REFUSED,
            Error::Lock(abupdate_utils::lock::LockError::Busy { .. }) => EXIT_REFUSED,
            Error::Verification(_) => EXIT_VERIFY,
            Error::Stream { source, .. } if source.is_verification_error() => EXIT_VERIFY,
            Error::Stream { source, .. } if source.kind() == abupdate_stream::ErrorKind::Input => {
                EXIT_USAGE
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
            Error::Channel(e) => match e.kind() {
                abupdate_channel::ErrorKind::Verification => EXIT_VERIFY,
                abupdate_channel::ErrorKind::Refused => EXIT_REFUSED,
                abupdate_channel::ErrorKind::Input => EXIT_USAGE,
                abupdate_channel::ErrorKind::Io => EXIT_IO,
            },
            Error::Internal(_) => EXIT_INTERNAL,
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

    /// Builds an [`Error::Cmd`] from a step; use with `map_err`.
    pub fn cmd(step: impl Into<String>) -> impl FnOnce(abupdate_utils::CmdError) -> Error {
        let step = step.into();
        move |source| Error::Cmd { step, source }
    }
}
