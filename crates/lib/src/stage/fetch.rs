//! What the downloaded sources (an image, a tar archive) share: the source and its
//! expected sha256, resolved before the lock is taken, and progress reporting.

use super::Checksum;
use crate::error::{Error, Result};

/// A downloaded source resolved before the lock is taken: what to open and what it must hash to.
pub(super) struct Fetch {
    /// The path or URL.
    pub(super) src: abupdate_stream::Source,
    /// The sha256 it must have, lowercase hex.
    pub(super) expected: String,
}

impl Fetch {
    /// Parses `source` and finds its expected sha256 (fetching a SHA256SUMS file if asked).
    pub(super) fn resolve(source: &str, checksum: &Checksum) -> Result<Fetch> {
        let src = abupdate_stream::Source::parse(source).map_err(|e| Error::Stream {
            source_name: source.to_string(),
            source: e,
        })?;
        let expected = expected_sha256(checksum, &src)?;
        Ok(Fetch { src, expected })
    }

    /// Opens the source for reading.
    pub(super) fn open(&self) -> Result<abupdate_stream::OpenedSource> {
        self.src
            .open(&abupdate_stream::OpenOptions::default())
            .map_err(self.err())
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

fn expected_sha256(checksum: &Checksum, src: &abupdate_stream::Source) -> Result<String> {
    let serr = |name: &str| {
        let name = name.to_string();
        move |source| Error::Stream {
            source_name: name,
            source,
        }
    };
    match checksum {
        Checksum::Hex(h) => abupdate_stream::parse_hex_sha256(h).map_err(serr("--sha256")),
        Checksum::SumsUrl(u) => {
            let sums = abupdate_stream::Source::parse(u).map_err(serr(u))?;
            let text = abupdate_stream::fetch_text(&sums, &abupdate_stream::OpenOptions::default())
                .map_err(serr(u))?;
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
