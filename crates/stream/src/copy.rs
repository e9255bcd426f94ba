//! The streaming pipeline. Up to four threads overlap:
//!
//! ```text
//!  reader ──▶ hasher ──▶ decoder ──▶ caller's thread ──▶ sink
//!  (source)   (SHA-256   (zstd, xz,  (size limit,
//!              of the     gzip; not   image digest
//!              published  for raw      if asked)
//!              bytes)     images)
//! ```
//!
//! They pass a fixed set of page-aligned buffers through bounded channels and give them
//! back once used, so memory use does not depend on the image size: [`SOURCE_POOL`]
//! buffers of [`SOURCE_CHUNK_LEN`] bytes of compressed data and [`IMAGE_POOL`] buffers of
//! [`CHUNK_LEN`] image bytes, or for a raw image (whose source buffers are its image
//! buffers) [`RAW_POOL`] of them. The sink
//! runs on the caller's thread, so while it writes one chunk the other threads fill the
//! next ones.

use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use sha2::{Digest, Sha256};
use tracing::warn;

use crate::buffer::{pool, AlignedBuf};
use crate::{Compression, Error, OpenedSource, Progress};

/// Bytes of every image chunk handed to a [`ChunkSink`] but the last.
pub const CHUNK_LEN: usize = 1 << 20;
/// Decompressed image buffers: the decoder fills one while the sink writes the other. A
/// third would only let the decoder run further ahead of a slower sink, and costs a MiB of
/// resident memory (the decoder's window and the HTTP client's buffers already take about
/// 3.5 MiB).
pub const IMAGE_POOL: usize = 2;
/// Image buffers of a raw image, which pass from the reader through the hasher to the sink:
/// one for each, so reading, hashing and writing overlap.
pub const RAW_POOL: usize = 3;
/// Bytes of each buffer of compressed source data.
pub const SOURCE_CHUNK_LEN: usize = 128 << 10;
/// Buffers of compressed source data in flight between the reader and the decoder.
pub const SOURCE_POOL: usize = 3;

/// Options of [`copy`] and [`copy_to`].
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Largest decompressed image accepted (the target partition's size). Exceeding it is
    /// [`Error::TooLarge`], raised before any byte past the limit reaches the sink.
    pub max_image_bytes: Option<u64>,
    /// Also compute the SHA-256 of the decompressed image ([`CopyStats::image_sha256`]).
    /// Off by default: nothing is verified against it, and for a compressed source it costs
    /// as much CPU as the source digest.
    pub image_sha256: bool,
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
    /// SHA-256 of the image bytes, lowercase hex, when [`CopyOptions::image_sha256`] asked
    /// for it (for a raw image it is the source digest).
    pub image_sha256: Option<String>,
}

/// Receives the image in order, one chunk at a time, on the thread that called
/// [`copy_to`].
pub trait ChunkSink {
    /// Writes `chunk`, the image bytes at `offset`. Chunks come in order without gaps from
    /// offset 0; each starts at a [`crate::BUF_ALIGN`]-aligned address, and every chunk
    /// but the last is [`CHUNK_LEN`] bytes long.
    fn write_chunk(&mut self, offset: u64, chunk: &[u8]) -> io::Result<()>;

    /// Called once after the last chunk, before [`copy_to`] returns.
    fn flush(&mut self) -> io::Result<()>;
}

/// A [`Write`] as a [`ChunkSink`].
struct WriteSink<'a>(&'a mut dyn Write);

impl ChunkSink for WriteSink<'_> {
    fn write_chunk(&mut self, _offset: u64, chunk: &[u8]) -> io::Result<()> {
        self.0.write_all(chunk)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Streams `src` into `sink`, decompressing as [`OpenedSource::compression`] detects, and
/// returns sizes and digests. Does not compare digests: the caller decides what a
/// mismatch means for the partially written target. The sink is flushed at the end.
///
/// Errors: source I/O ([`Error::Read`], [`Error::Http`], ...), corrupt or truncated
/// compressed data ([`Error::Decompress`], [`Error::Truncated`]), [`Error::TooLarge`], and
/// sink failures ([`Error::Write`]).
pub fn copy(
    src: OpenedSource,
    sink: &mut dyn Write,
    opts: &CopyOptions,
    progress: &mut dyn Progress,
) -> Result<CopyStats, Error> {
    copy_to(src, &mut WriteSink(sink), opts, progress)
}

/// [`copy`] into a [`ChunkSink`], which gets the image in large aligned chunks.
pub fn copy_to(
    mut src: OpenedSource,
    sink: &mut dyn ChunkSink,
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
    let source_done = AtomicU64::new(0);
    let limit = opts.source_len;
    let raw = compression == Compression::None;
    let (source_free, source_pool) = if raw {
        pool(RAW_POOL, CHUNK_LEN)
    } else {
        pool(SOURCE_POOL, SOURCE_CHUNK_LEN)
    };
    let (read_tx, read_rx) = sync_channel(SOURCE_POOL);
    let (hashed_tx, hashed_rx) = sync_channel(SOURCE_POOL);
    thread::scope(|s| {
        let source_done = &source_done;
        let reader = thread::Builder::new()
            .name("stage-read".into())
            .spawn_scoped(s, move || {
                read_stage(src, limit, source_pool, read_tx, source_done)
            })
            .map_err(|e| spawn_error("reader", e))?;
        let hasher = thread::Builder::new()
            .name("stage-hash".into())
            .spawn_scoped(s, move || hash_stage(read_rx, hashed_tx))
            .map_err(|e| spawn_error("hasher", e))?;
        let (written, decoder) = if raw {
            let written = sink_stage(
                hashed_rx,
                source_free,
                sink,
                opts,
                false,
                source_done,
                progress,
            );
            (written, None)
        } else {
            let (image_free, image_pool) = pool(IMAGE_POOL, CHUNK_LEN);
            let (decoded_tx, decoded_rx) = sync_channel(IMAGE_POOL);
            let input = ChunkReader::new(hashed_rx, source_free);
            let decoder = thread::Builder::new()
                .name("stage-decode".into())
                .spawn_scoped(s, move || {
                    decode_stage(compression, input, image_pool, decoded_tx)
                })
                .map_err(|e| spawn_error("decoder", e))?;
            let written = sink_stage(
                decoded_rx,
                image_free,
                sink,
                opts,
                opts.image_sha256,
                source_done,
                progress,
            );
            (written, Some(decoder))
        };
        let read = join(reader);
        let source_sha256 = join(hasher);
        let decoded = decoder.map(join);
        // The first failure wins; the other threads then only saw a closed channel.
        let written = match written {
            Err(Stop::Failed(e)) => return Err(e),
            other => other,
        };
        if let Err(Stop::Failed(e)) = read {
            return Err(e);
        }
        // A source shorter than signed: say so rather than what the decoder made of it.
        if let (Some(expected), Ok(())) = (limit, &read) {
            let done = source_done.load(Ordering::Relaxed);
            if done != expected {
                return Err(Error::WrongLength {
                    name,
                    expected,
                    actual: Some(done),
                });
            }
        }
        let trailing = match decoded {
            Some(Err(DecodeStop::Decoder(e))) => {
                return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                    Error::Truncated {
                        format: compression,
                        name,
                        source_bytes: source_done.load(Ordering::Relaxed),
                    }
                } else {
                    Error::Decompress {
                        format: compression,
                        name,
                        source: e,
                    }
                });
            }
            Some(Err(DecodeStop::Closed)) => return Err(stopped("decoder")),
            Some(Ok(trailing)) => trailing,
            None => 0,
        };
        let (image_bytes, image_sha256) = written.map_err(|_| stopped("sink"))?;
        let source_sha256 = source_sha256.map_err(|_| stopped("hasher"))?;
        if trailing > 0 && limit.is_none() {
            warn!(source = %name, bytes = trailing, format = %compression,
                "ignoring data after the end of the compressed stream");
        }
        let source_bytes = source_done.load(Ordering::Relaxed);
        progress.advance(source_bytes, image_bytes);
        progress.finish();
        // A raw image is its source: its digest is the source digest.
        let image_sha256 = match raw && opts.image_sha256 {
            true => Some(source_sha256.clone()),
            false => image_sha256,
        };
        Ok(CopyStats {
            source_bytes,
            image_bytes,
            source_sha256,
            image_sha256,
        })
    })
}

/// A message between two stages: a filled buffer, or the end of the data. A stage that
/// fails drops its sender without sending `End`, so the next stage knows the data is
/// incomplete.
enum Msg {
    Data(AlignedBuf),
    End,
}

/// Why a stage stopped early.
enum Stop {
    /// Its own failure, to report.
    Failed(Error),
    /// A neighbour stopped first (a channel closed); the neighbour has the reason.
    Closed,
}

/// Why the decoder stopped early.
enum DecodeStop {
    /// The decoder's error: corrupt or truncated data (or a source that stopped, which the
    /// reader reports).
    Decoder(io::Error),
    /// A neighbour stopped first.
    Closed,
}

fn spawn_error(what: &str, source: io::Error) -> Error {
    Error::Pipeline {
        reason: format!("cannot start the {what} thread: {source}"),
    }
}

fn stopped(what: &str) -> Error {
    Error::Pipeline {
        reason: format!("the {what} thread stopped without a reason"),
    }
}

/// Joins a pipeline thread, re-raising its panic.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Reads the whole source into free buffers, each filled completely but the last, and
/// counts what it read.
fn read_stage(
    mut src: OpenedSource,
    limit: Option<u64>,
    free: Receiver<AlignedBuf>,
    out: SyncSender<Msg>,
    done: &AtomicU64,
) -> Result<(), Stop> {
    let mut read = 0u64;
    loop {
        let mut buf = free.recv().map_err(|_| Stop::Closed)?;
        let mut end = false;
        while !buf.is_full() {
            let spare = buf.spare_mut();
            let take = match limit {
                Some(l) => usize::try_from(l - read)
                    .unwrap_or(usize::MAX)
                    .min(spare.len()),
                None => spare.len(),
            };
            if take == 0 {
                // At the signed length: one byte more tells a longer source from an exact one.
                let mut probe = [0u8; 1];
                if src.read_source(&mut probe).map_err(Stop::Failed)? > 0 {
                    return Err(Stop::Failed(Error::WrongLength {
                        name: src.name().to_string(),
                        expected: read,
                        actual: None,
                    }));
                }
                end = true;
                break;
            }
            let n = src.read_source(&mut spare[..take]).map_err(Stop::Failed)?;
            if n == 0 {
                end = true;
                break;
            }
            buf.advance(n);
            read += n as u64;
            done.fetch_add(n as u64, Ordering::Relaxed);
        }
        if !buf.is_empty() {
            out.send(Msg::Data(buf)).map_err(|_| Stop::Closed)?;
        }
        if end {
            return out.send(Msg::End).map_err(|_| Stop::Closed);
        }
    }
}

/// Hashes the source bytes on their way through; returns the lowercase hex digest.
fn hash_stage(input: Receiver<Msg>, out: SyncSender<Msg>) -> Result<String, Stop> {
    let mut hasher = Sha256::new();
    loop {
        match input.recv() {
            Ok(Msg::Data(buf)) => {
                hasher.update(buf.filled());
                out.send(Msg::Data(buf)).map_err(|_| Stop::Closed)?;
            }
            Ok(Msg::End) => {
                out.send(Msg::End).map_err(|_| Stop::Closed)?;
                return Ok(hex(&hasher.finalize()));
            }
            Err(_) => return Err(Stop::Closed),
        }
    }
}

/// Decompresses the source chunks into full image buffers. After the end of the
/// compressed stream, reads the rest of the source (so it is hashed) and returns how many
/// bytes followed the stream.
fn decode_stage(
    compression: Compression,
    mut input: ChunkReader,
    free: Receiver<AlignedBuf>,
    out: SyncSender<Msg>,
) -> Result<u64, DecodeStop> {
    {
        let mut decoder: Box<dyn Read + '_> = match compression {
            // Raw images do not come here; their chunks go straight to the sink.
            Compression::None => Box::new(&mut input),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut input)
                    .map_err(DecodeStop::Decoder)?,
            ),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(&mut input)),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut input)),
        };
        loop {
            let mut buf = free.recv().map_err(|_| DecodeStop::Closed)?;
            let mut end = false;
            while !buf.is_full() {
                match decoder.read(buf.spare_mut()) {
                    Ok(0) => {
                        end = true;
                        break;
                    }
                    Ok(n) => buf.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(DecodeStop::Decoder(e)),
                }
            }
            if !buf.is_empty() {
                out.send(Msg::Data(buf)).map_err(|_| DecodeStop::Closed)?;
            }
            if end {
                break;
            }
        }
    }
    let mut trailing = 0u64;
    loop {
        let n = input.fill_buf().map_err(|_| DecodeStop::Closed)?.len();
        if n == 0 {
            break;
        }
        trailing += n as u64;
        input.consume(n);
    }
    out.send(Msg::End).map_err(|_| DecodeStop::Closed)?;
    Ok(trailing)
}

/// The source chunks as one byte stream for the decoders, giving each buffer back to the
/// reader once consumed. The stream ends at the reader's `End`; a reader that stopped
/// without one makes reads fail.
struct ChunkReader {
    input: Receiver<Msg>,
    free: SyncSender<AlignedBuf>,
    current: Option<AlignedBuf>,
    pos: usize,
    ended: bool,
}

impl ChunkReader {
    fn new(input: Receiver<Msg>, free: SyncSender<AlignedBuf>) -> ChunkReader {
        ChunkReader {
            input,
            free,
            current: None,
            pos: 0,
            ended: false,
        }
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while !self.ended
            && match &self.current {
                Some(buf) => self.pos >= buf.filled().len(),
                None => true,
            }
        {
            if let Some(used) = self.current.take() {
                // The reader may be done already; then the buffer is simply dropped.
                let _ = self.free.send(used.cleared());
            }
            self.pos = 0;
            match self.input.recv() {
                Ok(Msg::Data(buf)) => self.current = Some(buf),
                Ok(Msg::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the source stopped before its end",
                    ))
                }
            }
        }
        Ok(match &self.current {
            Some(buf) => &buf.filled()[self.pos..],
            None => &[],
        })
    }

    fn consume(&mut self, amt: usize) {
        self.pos += amt;
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The caller's end of the pipeline: enforces the size limit, hashes the image when
/// `hash_image`, writes each chunk and reports progress. Returns the image size and digest.
fn sink_stage(
    input: Receiver<Msg>,
    free: SyncSender<AlignedBuf>,
    sink: &mut dyn ChunkSink,
    opts: &CopyOptions,
    hash_image: bool,
    source_done: &AtomicU64,
    progress: &mut dyn Progress,
) -> Result<(u64, Option<String>), Stop> {
    let mut hasher = hash_image.then(Sha256::new);
    let mut done = 0u64;
    loop {
        let buf = match input.recv() {
            Ok(Msg::Data(buf)) => buf,
            Ok(Msg::End) => break,
            Err(_) => return Err(Stop::Closed),
        };
        let chunk = buf.filled();
        if let Some(limit) = opts.max_image_bytes {
            if done + chunk.len() as u64 > limit {
                return Err(Stop::Failed(Error::TooLarge { limit }));
            }
        }
        if let Some(h) = &mut hasher {
            h.update(chunk);
        }
        sink.write_chunk(done, chunk).map_err(|source| {
            Stop::Failed(Error::Write {
                offset: done,
                source,
            })
        })?;
        done += chunk.len() as u64;
        // The producer may be done already; then the buffer is simply dropped.
        let _ = free.send(buf.cleared());
        progress.advance(source_done.load(Ordering::Relaxed), done);
    }
    sink.flush().map_err(|source| {
        Stop::Failed(Error::Write {
            offset: done,
            source,
        })
    })?;
    Ok((done, hasher.map(|h| hex(&h.finalize()))))
}

/// Lowercase hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
