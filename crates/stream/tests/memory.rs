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

/// An all-zero image of `size` bytes, raw (a sparse file) or zstd-compressed.
fn zero_image(dir: &Path, size: usize, compress: bool) -> String {
    let path = dir.join(format!(
        "zeros-{size}.img{}",
        if compress { ".zst" } else { "" }
    ));
    if compress {
        write_fixture(&path, size, true, |_| vec![0u8; 1 << 20]);
    } else {
        File::create(&path).unwrap().set_len(size as u64).unwrap();
    }
    path.to_str().unwrap().to_owned()
}

/// The peak resident size in KiB while copying `path` into a sink that drops it.
fn peak_kib(path: &str, size: usize) -> u64 {
    // Reset the peak to the current size (Linux >= 4.0).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let src = Source::parse(path)
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
    assert_eq!(stats.image_bytes, size as u64);
    status_kib("VmHWM:")
}

#[test]
fn peak_memory_is_independent_of_image_size() {
    let dir = tempfile::tempdir().unwrap();
    let (small, large) = (32 << 20, 256 << 20);
    let images: Vec<(bool, String, String)> = [false, true]
        .into_iter()
        .map(|c| {
            (
                c,
                zero_image(dir.path(), small, c),
                zero_image(dir.path(), large, c),
            )
        })
        .collect();
    // glibc raises its mmap threshold when a large block is freed, after which zstd's 2 MiB
    // window comes from a thread's arena and stays resident after the copy: each copy on
    // new threads then adds its window to the peak, whatever the image size. A fixed
    // threshold keeps large blocks in mmap, returned when freed, as in a process that stages
    // once.
    // SAFETY: mallopt only changes the allocator's tuning; no allocation is in flight in
    // this thread, and the threshold is a plain integer.
    #[allow(unsafe_code)]
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
    assert_eq!(set, 1, "mallopt(M_MMAP_THRESHOLD)");
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    for (compressed, small_path, large_path) in &images {
        // Memory freed by one copy may stay with the allocator and serve the next: every
        // peak is measured from the same starting point.
        let small_peak = peak_kib(small_path, small).saturating_sub(before);
        let large_peak = peak_kib(large_path, large).saturating_sub(before);
        eprintln!(
            "peak RSS growth (compressed: {compressed}): {small_peak} KiB for 32 MiB, \
             {large_peak} KiB for 256 MiB"
        );
        // The pipeline's buffers (3 MiB of image chunks, 512 KiB of compressed input) and
        // zstd's window; the binary's own pages come on top in `abupdate stage`.
        assert!(large_peak < 10 << 10, "peak RSS grew by {large_peak} KiB");
        assert!(
            large_peak <= small_peak + 1024,
            "peak RSS grows with the image: {small_peak} KiB for 32 MiB, {large_peak} KiB \
             for 256 MiB"
        );
    }
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
