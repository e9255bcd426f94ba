//! Test helpers: fixture encoders and data; the HTTP server is the test kit's.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::time::Duration;

use abupdate_stream::{OpenOptions, Transport};
pub use abupdate_testkit::http::{HttpServer, ServeOptions};
use sha2::{Digest, Sha256};

/// Serves `data` at `path` with `etag` (or no ETag header) and the faults in `opts`.
pub fn serve(path: &str, data: Vec<u8>, etag: Option<&str>, opts: ServeOptions) -> HttpServer {
    HttpServer::builder()
        .bytes(path, data, etag)
        .options(opts)
        .start()
        .unwrap()
}

/// Fast retries for tests.
pub fn quick_opts() -> OpenOptions {
    OpenOptions {
        transport: Transport::AllowInsecureHttp,
        max_source_bytes: None,
        max_retries: 3,
        retry_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
    }
}

/// Deterministic, moderately compressible test data.
pub fn sample(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                (i % 251) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 3);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}
