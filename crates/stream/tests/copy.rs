//! File sources: every compression, digests, corrupt and truncated streams, size limit,
//! sink errors.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{self, Write};
use std::path::Path;

use abupdate_stream::{
    copy, Compression, CopyOptions, CopyStats, Error, ErrorKind, NoProgress, OpenOptions, Progress,
    Source,
};
use common::{gzip, sample, sha256_hex, xz, zstd};

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

fn copy_path(path: &str, opts: &CopyOptions) -> (Result<CopyStats, Error>, Vec<u8>) {
    let src = Source::parse(path)
        .unwrap()
        .open(&OpenOptions::default())
        .unwrap();
    let mut sink = Vec::new();
    let res = copy(src, &mut sink, opts, &mut NoProgress);
    (res, sink)
}

#[test]
fn every_compression_round_trips_with_digests() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample((2 << 20) + 12_345);
    let cases = [
        ("a.img", image.clone(), Compression::None),
        ("a.img.zst", zstd(&image), Compression::Zstd),
        ("a.img.xz", xz(&image), Compression::Xz),
        ("a.img.gz", gzip(&image), Compression::Gzip),
        // Magic bytes win over a misleading name.
        ("zstd-named.img", zstd(&image), Compression::Zstd),
        ("xz-named.gz", xz(&image), Compression::Xz),
    ];
    for (name, published, expected) in cases {
        let path = write_file(dir.path(), name, &published);
        let mut src = Source::parse(&path)
            .unwrap()
            .open(&OpenOptions::default())
            .unwrap();
        assert_eq!(src.len(), Some(published.len() as u64));
        assert_eq!(src.compression().unwrap(), expected, "{name}");
        let mut sink = Vec::new();
        let opts = CopyOptions {
            image_sha256: true,
            ..CopyOptions::default()
        };
        let stats = copy(src, &mut sink, &opts, &mut NoProgress).unwrap();
        assert!(sink == image, "{name}: image differs");
        assert_eq!(
            stats,
            CopyStats {
                source_bytes: published.len() as u64,
                image_bytes: image.len() as u64,
                source_sha256: sha256_hex(&published),
                image_sha256: Some(sha256_hex(&image)),
            },
            "{name}"
        );
    }
}

#[test]
fn concatenated_streams_are_all_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (sample(100_000), sample(50_000));
    let whole: Vec<u8> = [a.clone(), b.clone()].concat();
    for (name, published) in [
        ("c.zst", [zstd(&a), zstd(&b)].concat()),
        ("c.xz", [xz(&a), xz(&b)].concat()),
        ("c.gz", [gzip(&a), gzip(&b)].concat()),
    ] {
        let path = write_file(dir.path(), name, &published);
        let (res, sink) = copy_path(&path, &CopyOptions::default());
        let stats = res.unwrap();
        assert!(sink == whole, "{name}");
        assert_eq!(stats.source_sha256, sha256_hex(&published), "{name}");
    }
}

#[test]
fn empty_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "empty.img", b"");
    let opts = CopyOptions {
        image_sha256: true,
        ..CopyOptions::default()
    };
    let (res, sink) = copy_path(&path, &opts);
    let stats = res.unwrap();
    assert!(sink.is_empty());
    assert_eq!(stats.source_bytes, 0);
    assert_eq!(stats.image_sha256, Some(sha256_hex(b"")));
}

#[test]
fn corrupt_zstd_is_a_decompress_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut published = zstd(&sample(2 << 20));
    let mid = published.len() / 2;
    for b in &mut published[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let path = write_file(dir.path(), "bad.img.zst", &published);
    let (res, _) = copy_path(&path, &CopyOptions::default());
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Decompress {
                format: Compression::Zstd,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Verification);
    assert!(err.is_verification_error());
    assert!(err.to_string().contains("bad.img.zst"), "{err}");
}

#[test]
fn corrupt_xz_and_gzip_are_decompress_errors() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample(1 << 20);
    for (name, mut published, format) in [
        ("bad.xz", xz(&image), Compression::Xz),
        ("bad.gz", gzip(&image), Compression::Gzip),
    ] {
        let mid = published.len() / 2;
        for b in &mut published[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let path = write_file(dir.path(), name, &published);
        let (res, _) = copy_path(&path, &CopyOptions::default());
        let err = res.unwrap_err();
        assert!(
            matches!(&err, Error::Decompress { format: f, .. } if *f == format),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn truncated_streams_are_truncated_errors() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample(1 << 20);
    for (name, published, format) in [
        ("t.img.zst", zstd(&image), Compression::Zstd),
        ("t.img.xz", xz(&image), Compression::Xz),
        ("t.img.gz", gzip(&image), Compression::Gzip),
    ] {
        for cut in [published.len() / 2, published.len() - 3] {
            let path = write_file(dir.path(), name, &published[..cut]);
            let (res, _) = copy_path(&path, &CopyOptions::default());
            let err = res.unwrap_err();
            assert!(
                matches!(&err, Error::Truncated { format: f, source_bytes, .. }
                    if *f == format && *source_bytes == cut as u64),
                "{name} cut at {cut}: {err:?}"
            );
            assert!(err.is_verification_error());
        }
    }
}

/// Records the largest amount of data ever written.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn too_large_fires_before_the_limit_is_passed() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample(5 << 20);
    for (name, published) in [("big.img", image.clone()), ("big.img.zst", zstd(&image))] {
        let path = write_file(dir.path(), name, &published);
        for limit in [0, 1, (1 << 20) + 5, image.len() as u64 - 1] {
            let src = Source::parse(&path)
                .unwrap()
                .open(&OpenOptions::default())
                .unwrap();
            let mut sink = CountingSink(0);
            let opts = CopyOptions {
                max_image_bytes: Some(limit),
                ..CopyOptions::default()
            };
            let err = copy(src, &mut sink, &opts, &mut NoProgress).unwrap_err();
            assert!(
                matches!(err, Error::TooLarge { limit: l } if l == limit),
                "{err:?}"
            );
            assert_eq!(err.kind(), ErrorKind::TooLarge);
            assert!(
                sink.0 <= limit,
                "{name}: wrote {} with limit {limit}",
                sink.0
            );
        }
        // Exactly at the limit is fine.
        let (res, _) = copy_path(
            &path,
            &CopyOptions {
                max_image_bytes: Some(image.len() as u64),
                ..CopyOptions::default()
            },
        );
        assert_eq!(res.unwrap().image_bytes, image.len() as u64);
    }
}

struct FailingSink;

impl Write for FailingSink {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(28)) // ENOSPC
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn sink_errors_are_write_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "w.img", &sample(10_000));
    let src = Source::parse(&path)
        .unwrap()
        .open(&OpenOptions::default())
        .unwrap();
    let err = copy(
        src,
        &mut FailingSink,
        &CopyOptions::default(),
        &mut NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Write { offset: 0, .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Io);
}

#[test]
fn missing_file_names_the_path() {
    let err = Source::parse("/nonexistent/dir/x.img.zst")
        .unwrap()
        .open(&OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/dir/x.img.zst"),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Io);
}

/// Records every call.
#[derive(Default)]
struct Recorder {
    total: Option<Option<u64>>,
    last: (u64, u64),
    calls: u32,
    finished: bool,
}

impl Progress for Recorder {
    fn start(&mut self, total: Option<u64>) {
        self.total = Some(total);
    }
    fn advance(&mut self, source: u64, image: u64) {
        assert!(source >= self.last.0 && image >= self.last.1);
        self.last = (source, image);
        self.calls += 1;
    }
    fn finish(&mut self) {
        self.finished = true;
    }
}

#[test]
fn progress_counts_source_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample(4 << 20);
    let published = xz(&image);
    let path = write_file(dir.path(), "p.img.xz", &published);
    let src = Source::parse(&path)
        .unwrap()
        .open(&OpenOptions::default())
        .unwrap();
    let mut rec = Recorder::default();
    copy(src, &mut io::sink(), &CopyOptions::default(), &mut rec).unwrap();
    assert_eq!(rec.total, Some(Some(published.len() as u64)));
    assert_eq!(rec.last, (published.len() as u64, image.len() as u64));
    assert!(rec.calls >= 4);
    assert!(rec.finished);
}

#[test]
fn opened_source_reads_peeked_bytes() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let data = zstd(b"hello");
    let path = write_file(dir.path(), "r.zst", &data);
    let mut src = Source::parse(&path)
        .unwrap()
        .open(&OpenOptions::default())
        .unwrap();
    assert_eq!(src.compression().unwrap(), Compression::Zstd);
    let mut all = Vec::new();
    src.read_to_end(&mut all).unwrap();
    assert_eq!(all, data);
}

#[test]
fn signed_length_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample(3 << 20);
    for (name, published) in [("s.img", image.clone()), ("s.img.zst", zstd(&image))] {
        let path = write_file(dir.path(), name, &published);
        let len = published.len() as u64;
        let exact = |n: u64| CopyOptions {
            source_len: Some(n),
            ..Default::default()
        };
        // The right length copies as without a limit.
        let (res, out) = copy_path(&path, &exact(len));
        assert_eq!(res.unwrap().source_sha256, sha256_hex(&published), "{name}");
        assert_eq!(out, image, "{name}");
        // A file whose size differs is refused before anything reaches the sink.
        for wrong in [len - 1, len + 1] {
            let (res, out) = copy_path(&path, &exact(wrong));
            let err = res.unwrap_err();
            assert!(
                matches!(err, Error::WrongLength { expected, actual: Some(a), .. } if expected == wrong && a == len),
                "{name}: {err:?}"
            );
            assert_eq!(err.kind(), ErrorKind::Verification);
            assert!(out.is_empty(), "{name}: wrote {} bytes", out.len());
        }
    }
}

#[test]
fn reading_stops_at_the_signed_length() {
    // A source of unknown length (a FIFO) that is longer than its signed length: the copy
    // reads no further than one byte past it and fails.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let image = sample(1 << 20);
    let mut longer = image.clone();
    longer.extend_from_slice(&sample(1 << 20));
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            // The reader stops early; a broken pipe is the expected end.
            let _ = f.write_all(&longer);
        })
    };
    let src = Source::parse(fifo.to_str().unwrap())
        .unwrap()
        .open(&OpenOptions::default())
        .unwrap();
    assert_eq!(src.len(), None);
    let mut sink = CountingSink(0);
    let opts = CopyOptions {
        source_len: Some(image.len() as u64),
        ..Default::default()
    };
    let err = copy(src, &mut sink, &opts, &mut NoProgress).unwrap_err();
    writer.join().unwrap();
    assert!(
        matches!(err, Error::WrongLength { actual: None, .. }),
        "{err:?}"
    );
    assert_eq!(sink.0, image.len() as u64, "wrote past the signed length");
}
