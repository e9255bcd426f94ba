//! Streams a raw filesystem image from a file or an http(s) URL into a sink: read →
//! SHA-256 of the published bytes → decompress (zstd, xz, gzip) → size check → write, each
//! step on its own thread, passing a fixed set of large page-aligned buffers. No temporary
//! copy is made and memory use does not depend on the image size.
//!
//! Invariants: this crate never compares digests (the caller decides what a mismatch means
//! for the partly written target), never writes past [`CopyOptions::max_image_bytes`], and
//! every error names the path or URL and the step. Parsing ([`Compression::detect`],
//! [`parse_sha256sums`], [`parse_hex_sha256`]) is pure and does no I/O.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod buffer;
mod compression;
mod copy;
mod error;
mod http;
mod progress;
mod source;
mod sums;

pub use buffer::BUF_ALIGN;
pub use compression::{Compression, MAGIC_LEN};
pub use copy::{
    copy, copy_to, ChunkSink, CopyOptions, CopyStats, CHUNK_LEN, IMAGE_POOL, RAW_POOL,
    SOURCE_CHUNK_LEN, SOURCE_POOL,
};
pub use error::{Error, ErrorKind};
pub use progress::{reporter, NoProgress, Progress};
pub use source::{
    fetch_text, hash_source, OpenOptions, OpenedSource, Source, Transport, MAX_REDIRECTS,
    TEXT_LIMIT,
};
pub use sums::{parse_hex_sha256, parse_sha256sums};
