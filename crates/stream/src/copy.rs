//! The streaming pipeline: read → hash source bytes → decompress → size check → hash
//! image bytes → write. Memory use does not depend on the image size.

use std::cell::Cell;
use std::io::{self, BufReader, Read, Write};

use sha2::{Digest, Sha256};
use tracing::warn;

use crate::{Compression, Error, OpenedSource, Progress};

/// Size of the read buffer and of the decompressed-output buffer.
const BUF_SIZE: usize = 1 << 20;

/// Limits for [`copy`].
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Largest decompressed image accepted (the target partition's size). Exceeding it is
    /// [`Error::TooLarge`], raised before any byte past the limit reaches the sink.
    pub max_image_bytes: Option<u64>,
    /// The exact length of the source (a signed target's length). A source that announces
    /// another length is refused before a byte is read; reading stops at this length, and a
    /// source with fewer or more bytes is [`Error::WrongLength`].
    pub source_len: Option<u64>,
}

/// What [`copy`] read and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes of the published (possibly compressed) file.
    pub source_bytes: u64,
    /// Bytes of the decompressed image written to the sink.
    pub image_bytes: u64,
    /// SHA-256 of the source bytes, lowercase hex (what `sha256sum FILE` prints).
    pub source_sha256: String,
    /// SHA-256 of the image bytes, lowercase hex.
    pub image_sha256: String,
}

/// Streams `src` into `sink`, decompressing as [`OpenedSource::compression`] detects, and
/// returns sizes and digests. Does not compare digests: the caller decides what a
/// mismatch means for the partially written target. The sink is flushed at the end.
///
/// Errors: source I/O ([`Error::Read`], [`Error::Http`], ...), corrupt or truncated
/// compressed data ([`Error::Decompress`], [`Error::Truncated`]), [`Error::TooLarge`], and
/// sink failures ([`Error::Write`]).
pub fn copy(
    mut src: OpenedSource,
    sink: &mut dyn Write,
    opts: &CopyOptions,
    progress: &mut dyn Progress,
) -> Result<CopyStats, Error> {
    let name = src.name().to_string();
    if let (Some(expected), Some(announced)) = (opts.source_len, src.len()) {
        if announced != expected {
            return Err(Error::WrongLength {
                name,
                expected,
                actual: Some(announced),
            });
        }
    }
    let compression = src.compression()?;
    progress.start(src.len());
    let source_done = Cell::new(0u64);
    let mut reader = HashingReader {
        src: &mut src,
        hasher: Sha256::new(),
        done: &source_done,
        error: None,
        limit: opts.source_len,
    };
    let mut writer = ImageWriter {
        sink,
        // For raw images the image digest is the source digest; skip hashing twice.
        hasher: (compression != Compression::None).then(Sha256::new),
        done: 0,
        limit: opts.max_image_bytes,
    };
    let pumped = pump(
        compression,
        &mut reader,
        &mut writer,
        &source_done,
        progress,
    );
    if let Err(failure) = pumped {
        // A compressed stream cut at the signed length looks truncated to the decoder; say
        // what it is when the source goes on.
        if let Some(expected) = opts.source_len {
            let mut probe = [0u8; 1];
            if source_done.get() == expected
                && matches!(reader.src.read_source(&mut probe), Ok(n) if n > 0)
            {
                return Err(Error::WrongLength {
                    name,
                    expected,
                    actual: None,
                });
            }
        }
        return Err(match failure {
            PumpError::Done(e) => e,
            PumpError::Decoder(e) => match reader.error.take() {
                Some(source_error) => source_error,
                None if e.kind() == io::ErrorKind::UnexpectedEof => Error::Truncated {
                    format: compression,
                    name,
                    source_bytes: source_done.get(),
                },
                None => Error::Decompress {
                    format: compression,
                    name,
                    source: e,
                },
            },
        });
    }
    // The decoder stops at the end of its stream; hash whatever follows so the source
    // digest covers the whole file.
    let mut buf = vec![0u8; BUF_SIZE];
    let before = source_done.get();
    while reader.read_source(&mut buf)? > 0 {}
    let trailing = source_done.get() - before;
    if trailing > 0 && opts.source_len.is_none() {
        warn!(source = %name, bytes = trailing, format = %compression,
            "ignoring data after the end of the compressed stream");
    }
    if let Some(expected) = opts.source_len {
        let done = source_done.get();
        // One byte past the limit tells a longer source from an exact one.
        let more = reader.src.read_source(&mut buf[..1])? > 0;
        if done != expected || more {
            return Err(Error::WrongLength {
                name,
                expected,
                actual: (!more).then_some(done),
            });
        }
    }
    writer.sink.flush().map_err(|source| Error::Write {
        offset: writer.done,
        source,
    })?;
    progress.advance(source_done.get(), writer.done);
    progress.finish();
    let source_sha256 = hex(&reader.hasher.finalize());
    let image_sha256 = match writer.hasher {
        Some(h) => hex(&h.finalize()),
        None => source_sha256.clone(),
    };
    Ok(CopyStats {
        source_bytes: source_done.get(),
        image_bytes: writer.done,
        source_sha256,
        image_sha256,
    })
}

enum PumpError {
    /// A classified error (source, size limit, sink).
    Done(Error),
    /// An error out of the decoder's `read`: a source error stashed in the
    /// [`HashingReader`], or corrupt / truncated data.
    Decoder(io::Error),
}

impl From<Error> for PumpError {
    fn from(e: Error) -> Self {
        PumpError::Done(e)
    }
}

/// Moves all decoded bytes from `reader` to `writer`, reporting progress per chunk.
fn pump(
    compression: Compression,
    reader: &mut HashingReader<'_>,
    writer: &mut ImageWriter<'_>,
    source_done: &Cell<u64>,
    progress: &mut dyn Progress,
) -> Result<(), PumpError> {
    let mut decoder: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(reader),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(BUF_SIZE, reader))
                .map_err(PumpError::Decoder)?,
        ),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(
            BufReader::with_capacity(BUF_SIZE, reader),
        )),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(
            BufReader::with_capacity(BUF_SIZE, reader),
        )),
    };
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Decoder(e)),
        };
        writer.write(&buf[..n])?;
        progress.advance(source_done.get(), writer.done);
    }
}

/// Hashes and counts source bytes on their way to the decoder. A source error is kept in
/// `error` (the decoder only sees an `io::Error`) so it keeps its classification.
struct HashingReader<'a> {
    src: &'a mut OpenedSource,
    hasher: Sha256,
    done: &'a Cell<u64>,
    error: Option<Error>,
    /// Source bytes not to read past.
    limit: Option<u64>,
}

impl HashingReader<'_> {
    fn read_source(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let buf = match self.limit {
            Some(limit) => {
                let left = limit.saturating_sub(self.done.get());
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                &mut buf[..take]
            }
            None => buf,
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.src.read_source(buf)?;
        self.hasher.update(&buf[..n]);
        self.done.set(self.done.get() + n as u64);
        Ok(n)
    }
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_source(buf).map_err(|e| {
            let io = io::Error::other(e.to_string());
            self.error = Some(e);
            io
        })
    }
}

/// Enforces the size limit, hashes and writes image bytes.
struct ImageWriter<'a> {
    sink: &'a mut dyn Write,
    hasher: Option<Sha256>,
    done: u64,
    limit: Option<u64>,
}

impl ImageWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Some(limit) = self.limit {
            if self.done + data.len() as u64 > limit {
                return Err(Error::TooLarge { limit });
            }
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.sink.write_all(data).map_err(|source| Error::Write {
            offset: self.done,
            source,
        })?;
        self.done += data.len() as u64;
        Ok(())
    }
}

/// Lowercase hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
