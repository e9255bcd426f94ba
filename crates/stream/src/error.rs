//! The crate's error type and its classification for exit codes.

use std::io;

use crate::Compression;

/// Everything that can go wrong while opening, reading, decompressing or verifying a source.
///
/// Every variant names the path or URL it concerns (except sink errors, whose device the
/// caller knows) and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SOURCE argument is not usable (empty, or a URL that does not parse).
    #[error("invalid source {spec:?}: {reason}")]
    InvalidSource {
        /// The source as given.
        spec: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Opening a local source file failed.
    #[error("opening source {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading a local source file failed.
    #[error("reading source {path} at byte {offset}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Source byte offset of the failed read.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// An HTTP request could not be completed (connect, TLS, timeout, broken body).
    #[error("{step} {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// What was being done, e.g. "requesting" or "reading body at byte 1234 of".
        step: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with a status that does not deliver the file.
    #[error("{step} {url}: server answered HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// What was being done.
        step: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The server answered a resume request inconsistently (bad Content-Range).
    #[error("resuming {url} at byte {offset}: {reason}")]
    BadResume {
        /// The URL.
        url: String,
        /// Byte offset the resume asked for.
        offset: u64,
        /// What was wrong with the answer.
        reason: String,
    },
    /// The remote file changed while it was being downloaded (ETag, Last-Modified or
    /// length differ between requests).
    #[error("source {url} changed during download (at byte {offset}): {detail}")]
    SourceChanged {
        /// The URL.
        url: String,
        /// Byte offset at which the change was noticed.
        offset: u64,
        /// Which validator changed, old and new value.
        detail: String,
    },
    /// The decompressed image is larger than allowed; nothing past `limit` was written.
    #[error("image is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The compressed stream is corrupt.
    #[error("decompressing {format} stream from {name}: {source}")]
    Decompress {
        /// The compression format.
        format: Compression,
        /// Display name of the source.
        name: String,
        /// The decoder's error.
        source: io::Error,
    },
    /// The compressed stream ended before its end marker.
    #[error("{format} stream from {name} is truncated (ended after {source_bytes} bytes)")]
    Truncated {
        /// The compression format.
        format: Compression,
        /// Display name of the source.
        name: String,
        /// Number of source bytes read before the end.
        source_bytes: u64,
    },
    /// Writing to the sink (the target partition) failed.
    #[error("writing image to the target at byte {offset}: {source}")]
    Write {
        /// Image byte offset of the failed write.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// A SHA-256 digest given by the user or found in a checksum file is malformed.
    #[error("invalid SHA-256 {input:?}: {reason}")]
    BadHex {
        /// The offending text (shortened when long).
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The source is not exactly as long as its signed length says.
    #[error("{name} is {} bytes long, but its signed length is {expected}", actual.map(|a| a.to_string()).unwrap_or_else(|| "more than that".into()))]
    WrongLength {
        /// Display name of the source.
        name: String,
        /// The signed length.
        expected: u64,
        /// What the source has (announced or read); `None` when it has more bytes.
        actual: Option<u64>,
    },
    /// The checksum file has no entry for the image.
    #[error("no SHA-256 entry for {file_name:?} in the checksum file")]
    ChecksumMissing {
        /// The file name that was looked up.
        file_name: String,
    },
    /// The checksum file has several different entries for the image.
    #[error("the checksum file has conflicting SHA-256 entries for {file_name:?}")]
    ChecksumAmbiguous {
        /// The file name that was looked up.
        file_name: String,
    },
    /// A small text file (a checksum list) is larger than the cap.
    #[error("{name} is larger than {limit} bytes; not a checksum file")]
    TextTooLarge {
        /// Display name of the source.
        name: String,
        /// The cap in bytes.
        limit: u64,
    },
    /// A plain `http://` URL without the operator's opt-in.
    #[error("{url} is plain http, which is not authenticated: use https, or pass --allow-insecure-http (config: allow_insecure_http: true) to accept it")]
    InsecureTransport {
        /// The URL.
        url: String,
    },
    /// A redirect that is not followed: from https to http, or one too many.
    #[error("requesting {url}: {reason}")]
    Redirect {
        /// The URL first requested.
        url: String,
        /// Why the redirect was refused.
        reason: String,
    },
    /// The source (its declared length, or the bytes read so far) is larger than allowed.
    #[error("{name} is larger than the limit of {limit} bytes{}", len.map(|l| format!(" (its length is {l} bytes)")).unwrap_or_default())]
    SourceTooLarge {
        /// Display name of the source.
        name: String,
        /// The limit in bytes.
        limit: u64,
        /// The declared length, when it was the length that was refused.
        len: Option<u64>,
    },
    /// A small text file is not valid UTF-8.
    #[error("{name} is not UTF-8 text")]
    NotText {
        /// Display name of the source.
        name: String,
    },
    /// A thread of the copy pipeline could not start or stopped without a reason.
    #[error("copy pipeline: {reason}")]
    Pipeline {
        /// What happened.
        reason: String,
    },
}

/// Broad class of an [`Error`], for mapping to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad user input: the source spec, a digest, a checksum file without our entry.
    Input,
    /// Reading the source, talking to the server or writing the sink failed; also a
    /// remote file that changed mid-download. Retrying later may help.
    Io,
    /// The image itself is bad: corrupt or truncated compressed stream.
    Verification,
    /// The decompressed image or the source exceeds the size limit.
    TooLarge,
    /// Refused by the transport policy: a redirect from https to http, too many redirects.
    Refused,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidSource { .. }
            | Error::BadHex { .. }
            | Error::ChecksumMissing { .. }
            | Error::ChecksumAmbiguous { .. }
            | Error::TextTooLarge { .. }
            | Error::NotText { .. }
            | Error::InsecureTransport { .. } => ErrorKind::Input,
            Error::Redirect { .. } => ErrorKind::Refused,
            Error::Open { .. }
            | Error::Read { .. }
            | Error::Http { .. }
            | Error::HttpStatus { .. }
            | Error::BadResume { .. }
            | Error::SourceChanged { .. }
            | Error::Write { .. }
            | Error::Pipeline { .. } => ErrorKind::Io,
            Error::Decompress { .. } | Error::Truncated { .. } | Error::WrongLength { .. } => {
                ErrorKind::Verification
            }
            Error::TooLarge { .. } | Error::SourceTooLarge { .. } => ErrorKind::TooLarge,
        }
    }

    /// True when the image failed verification (corrupt, truncated or too large): the CLI's
    /// "verification failed" exit code.
    pub fn is_verification_error(&self) -> bool {
        matches!(self.kind(), ErrorKind::Verification | ErrorKind::TooLarge)
    }
}
