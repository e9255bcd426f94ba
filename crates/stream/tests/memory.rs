//! Memory stays bounded however large the image is; throughput measurement (ignored by
//! default; run with `cargo test --release -p abupdate-stream --test memory -- --ignored
//! --nocapture`).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use abupdate_stream::{copy, CopyOptions, NoProgress, OpenOptions, Source};

/// A field of /proc/self/status in KiB (`VmHWM` peak, `VmRSS` current resident size).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Writes `total` bytes produced chunk by chunk, zstd-compressed when `compress`.
fn write_fixture(path: &Path, total: usize, compress: bool, chunk: impl Fn(usize) -> Vec<u8>) {
    let file = File::create(path).unwrap();
    let mut out: Box<dyn Write> = if compress {
        Box::new(
            zstd::stream::write::Encoder::new(file, 3)
                .unwrap()
                .auto_finish(),
        )
    } else {
        Box::new(file)
    };
    let mut written = 0;
    while written < total {
        let c = chunk(written);
        out.write_all(&c).unwrap();
        written += c.len();
    }
    out.flush().unwrap();
}

#[test]
fn peak_memory_is_independent_of_image_size() {
    const IMAGE: usize = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zeros.img.zst");
    write_fixture(&path, IMAGE, true, |_| vec![0u8; 1 << 20]);

    // Reset the peak to the current size (Linux >= 4.0) so building the fixture does not
    // hide the copy's own peak.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let src = Source::parse(path.to_str().unwrap())
        .unwrap()
        .open(&OpenOptions::default())
        .unwrap();
    let stats = copy(
        src,
        &mut io::sink(),
        &CopyOptions::default(),
        &mut NoProgress,
    )
    .unwrap();
    let growth_mib = status_kib("VmHWM:").saturating_sub(before) / 1024;
    assert_eq!(stats.image_bytes, IMAGE as u64);
    eprintln!("peak RSS growth: {growth_mib} MiB");
    assert!(growth_mib < 32, "peak RSS grew by {growth_mib} MiB");
}

#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn throughput() {
    const IMAGE: usize = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    // Half incompressible, half patterned, like a filesystem with some free space.
    let chunk = |at: usize| {
        common::sample(8 << 20)
            .into_iter()
            .map(|b| b ^ (at >> 23) as u8)
            .collect()
    };
    for (name, compress) in [("t.img", false), ("t.img.zst", true)] {
        let path = dir.path().join(name);
        write_fixture(&path, IMAGE, compress, chunk);
        let src = Source::parse(path.to_str().unwrap())
            .unwrap()
            .open(&OpenOptions::default())
            .unwrap();
        let started = Instant::now();
        let stats = copy(
            src,
            &mut io::sink(),
            &CopyOptions::default(),
            &mut NoProgress,
        )
        .unwrap();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name}: {} MiB source, {} MiB image in {secs:.2} s: {:.0} MiB/s image, {:.0} MiB/s source",
            stats.source_bytes >> 20,
            stats.image_bytes >> 20,
            (stats.image_bytes as f64 / secs) / (1 << 20) as f64,
            (stats.source_bytes as f64 / secs) / (1 << 20) as f64,
        );
    }
}
