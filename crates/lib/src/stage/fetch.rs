//! What the downloaded sources (an image, a tar archive) share: the source and its
//! expected sha256, resolved before the lock is taken, and progress reporting.

use super::Checksum;
use crate::disk::PartitionInfo;
use crate::error::{Error, Result};

/// A downloaded source resolved before the lock is taken: what to open, how, and what it
/// must hash to.
pub(super) struct Fetch {
    /// The path or URL.
    pub(super) src: abupdate_stream::Source,
    /// The sha256 it must have, lowercase hex.
    pub(super) expected: String,
    /// Transport policy; the size bound is set once the target slot is known.
    open: abupdate_stream::OpenOptions,
    /// The exact source length, for a signed channel release.
    length: Option<u64>,
}

impl Fetch {
    /// Parses `source`, checks its URL against the transport policy and finds its expected
    /// sha256 (fetching a SHA256SUMS file if asked, under the same policy).
    pub(super) fn resolve(
        source: &str,
        checksum: &Checksum,
        transport: abupdate_stream::Transport,
    ) -> Result<Fetch> {
        let src = abupdate_stream::Source::parse(source).map_err(|e| Error::Stream {
            source_name: source.to_string(),
            source: e,
        })?;
        let open = abupdate_stream::OpenOptions {
            transport,
            ..abupdate_stream::OpenOptions::default()
        };
        src.check_transport(transport).map_err(|e| Error::Stream {
            source_name: source.to_string(),
            source: e,
        })?;
        let expected = expected_sha256(checksum, &src, &open)?;
        let length = match checksum {
            Checksum::Signed { length, .. } => Some(*length),
            _ => None,
        };
        Ok(Fetch {
            src,
            expected,
            open,
            length,
        })
    }

    /// The open options for a source staged onto `part`: no source larger than the slot
    /// (plus what compression can add to incompressible data) is read.
    fn open_for(&self, part: &PartitionInfo) -> abupdate_stream::OpenOptions {
        abupdate_stream::OpenOptions {
            max_source_bytes: Some(part.size_bytes + part.size_bytes / 64 + (1 << 20)),
            ..self.open.clone()
        }
    }

    /// Opens the source for staging onto `part`.
    pub(super) fn open(&self, part: &PartitionInfo) -> Result<abupdate_stream::OpenedSource> {
        self.src.open(&self.open_for(part)).map_err(self.err())
    }

    /// The copy options for a source staged onto `part`: the image no larger than the
    /// slot, and a signed release exactly as long as signed.
    pub(super) fn copy_options(&self, part: &PartitionInfo) -> abupdate_stream::CopyOptions {
        abupdate_stream::CopyOptions {
            max_image_bytes: Some(part.size_bytes),
            source_len: self.length,
            ..abupdate_stream::CopyOptions::default()
        }
    }

    /// Verifies a local source's checksum before anything is made from it (a URL is hashed
    /// while it streams into the invalidated slot instead).
    pub(super) fn verify_local(&self, part: &PartitionInfo) -> Result<()> {
        if !self.src.is_local() {
            return Ok(());
        }
        let (sha, _) =
            abupdate_stream::hash_source(&self.src, &self.open_for(part)).map_err(self.err())?;
        if sha != self.expected {
            return Err(self.mismatch(&sha, "nothing was extracted"));
        }
        Ok(())
    }

    /// Wraps a streaming error with the source's name.
    pub(super) fn err(&self) -> impl Fn(abupdate_stream::Error) -> Error + '_ {
        move |source| Error::Stream {
            source_name: self.src.display_name(),
            source,
        }
    }

    /// The verification error for a source that hashed to `actual`.
    pub(super) fn mismatch(&self, actual: &str, outcome: &str) -> Error {
        Error::Verification(format!(
            "sha256 of {} is {actual}, expected {}; {outcome}",
            self.src.display_name(),
            self.expected
        ))
    }
}

fn expected_sha256(
    checksum: &Checksum,
    src: &abupdate_stream::Source,
    open: &abupdate_stream::OpenOptions,
) -> Result<String> {
    let serr = |name: &str| {
        let name = name.to_string();
        move |source| Error::Stream {
            source_name: name,
            source,
        }
    };
    match checksum {
        Checksum::Hex(h) => abupdate_stream::parse_hex_sha256(h).map_err(serr("--sha256")),
        Checksum::Signed { sha256, .. } => {
            abupdate_stream::parse_hex_sha256(sha256).map_err(serr("the channel's metadata"))
        }
        Checksum::SumsUrl(u) => {
            let sums = abupdate_stream::Source::parse(u).map_err(serr(u))?;
            let text = abupdate_stream::fetch_text(&sums, open).map_err(serr(u))?;
            let name = src.file_name().ok_or_else(|| {
                Error::Refused(format!(
                    "cannot tell the file name of {} to look up in {u}",
                    src.display_name()
                ))
            })?;
            abupdate_stream::parse_sha256sums(&text, &name).map_err(serr(u))
        }
    }
}

/// A progress reporter on stderr when `show`, else none.
pub(super) fn progress_for(show: bool, label: &str) -> Box<dyn abupdate_stream::Progress> {
    if show {
        abupdate_stream::reporter(label)
    } else {
        Box::new(abupdate_stream::NoProgress)
    }
}
