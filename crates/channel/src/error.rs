//! The crate's error type and its classification for exit codes.

use std::path::PathBuf;

use semver::Version;

use crate::release::HeldBack;

/// Broad class of an [`Error`], for mapping to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input from the operator: options, keys, the pinned root, an image to publish.
    Input,
    /// The channel cannot be reached or a local file cannot be read or written.
    Io,
    /// The channel's metadata or a release did not verify, or the release is older than
    /// the running one: nothing from it may be used.
    Verification,
    /// A valid release that this host may not take now (not offered, too large, ...).
    Refused,
}

/// Everything that can go wrong reading, checking or publishing a channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The channel's metadata was refused by the TUF client.
    #[error("channel {url}: {what}")]
    Metadata {
        /// The channel URL.
        url: String,
        /// What the refusal means.
        what: &'static str,
        /// tough's error.
        source: Box<tough::error::Error>,
    },
    /// The channel could not be reached.
    #[error("channel {url} is unreachable")]
    Unreachable {
        /// The channel URL.
        url: String,
        /// tough's error with the transport failure.
        source: Box<tough::error::Error>,
    },
    /// The pinned root metadata is unreadable or invalid.
    #[error("pinned root metadata {}", path.display())]
    PinnedRoot {
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file operation failed.
    #[error("{step} {}", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Reading the image to publish failed.
    #[error("read the release {}", path.display())]
    Image {
        /// The image or archive.
        path: PathBuf,
        /// The streaming error.
        source: abupdate_stream::Error,
    },
    /// Building, signing or writing metadata failed while publishing.
    #[error("{step} in {}", dir.display())]
    Publish {
        /// What was being done.
        step: &'static str,
        /// The channel directory.
        dir: PathBuf,
        /// tough's error.
        source: Box<tough::error::Error>,
    },
    /// A signing key is unusable.
    #[error("signing key {}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An operator's request that cannot be carried out as given.
    #[error("{0}")]
    Invalid(String),
    /// The channel has no release with that version.
    #[error("channel {url} has no release {version} (it has: {available})")]
    NoSuchRelease {
        /// The channel URL.
        url: String,
        /// The version asked for.
        version: Version,
        /// The versions it has.
        available: String,
    },
    /// The channel offers nothing newer than the running release.
    #[error("channel {url} offers no release newer than the running one{}", why.iter().map(|w| format!("; {w}")).collect::<String>())]
    NothingOffered {
        /// The channel URL.
        url: String,
        /// Why newer releases are held back, one line each.
        why: Vec<String>,
    },
    /// The release is not newer than the running one.
    #[error("release {version} is not newer than the running release {running}: refusing a downgrade (pass --allow-downgrade to stage it anyway)")]
    Downgrade {
        /// The release asked for.
        version: Version,
        /// The running release.
        running: Version,
    },
    /// The release exists but this host may not take it.
    #[error("release {version} cannot be staged on this host: {why}")]
    Held {
        /// The release.
        version: Version,
        /// Why.
        why: HeldBack,
    },
    /// The local record of seen metadata could not be read or written.
    #[error("the record of seen channel metadata")]
    Datastore {
        /// tough's error.
        source: Box<tough::error::Error>,
    },
    /// The asynchronous runtime tough needs could not be started.
    #[error("start the runtime for the TUF client")]
    Runtime(#[source] std::io::Error),
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Metadata { .. } | Error::Downgrade { .. } => ErrorKind::Verification,
            Error::Unreachable { .. }
            | Error::Io { .. }
            | Error::Runtime(_)
            | Error::Datastore { .. } => ErrorKind::Io,
            Error::Image { source, .. } => match source.kind() {
                abupdate_stream::ErrorKind::Io => ErrorKind::Io,
                _ => ErrorKind::Input,
            },
            Error::Publish { source, .. } => match **source {
                tough::error::Error::SigningKeysNotFound { .. }
                | tough::error::Error::KeyUnrecognized { .. }
                | tough::error::Error::KeyRejected { .. } => ErrorKind::Input,
                _ => ErrorKind::Io,
            },
            Error::PinnedRoot { .. } | Error::Key { .. } | Error::Invalid(_) => ErrorKind::Input,
            Error::NoSuchRelease { .. } | Error::NothingOffered { .. } | Error::Held { .. } => {
                ErrorKind::Refused
            }
        }
    }

    /// Builds an [`Error::Io`]; use with `map_err`.
    pub(crate) fn io(
        step: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { step, path, source }
    }

    /// Classifies an error of tough's client while loading the channel at `url`.
    pub(crate) fn from_client(url: &str, source: tough::error::Error) -> Error {
        use tough::error::Error as T;
        let url = url.to_string();
        let what = match &source {
            T::Transport { .. } => {
                return Error::Unreachable {
                    url,
                    source: Box::new(source),
                }
            }
            T::ExpiredMetadata { .. } => {
                "refused: the metadata has expired (a freeze attack, or nobody re-signed the channel)"
            }
            T::OlderMetadata { .. }
            | T::OlderSnapshotInTimestamp { .. }
            | T::SnapshotRoleRollback { .. } => {
                "refused: the metadata is older than what this host has already seen (a rollback attack)"
            }
            T::VerifyMetadata { .. } | T::VerifyRoleMetadata { .. } => {
                "refused: the metadata is not signed by enough of the keys the pinned root trusts"
            }
            T::VerifyTrustedMetadata { .. } | T::ParseTrustedMetadata { .. } => {
                "refused: the pinned root metadata is not valid"
            }
            T::SystemTimeSteppedBackward { .. } => {
                "refused: the system clock is earlier than at the last check"
            }
            T::HashMismatch { .. } | T::MaxSizeExceeded { .. } | T::VersionMismatch { .. } => {
                "refused: a metadata file does not match its signed length, hash or version"
            }
            T::DatastoreCreate { .. }
            | T::DatastoreOpen { .. }
            | T::DatastoreRemove { .. }
            | T::DatastoreInit { .. }
            | T::DatastoreSerialize { .. } => {
                return Error::Datastore {
                    source: Box::new(source),
                }
            }
            _ => "refused: the metadata is not valid",
        };
        Error::Metadata {
            url,
            what,
            source: Box::new(source),
        }
    }
}
