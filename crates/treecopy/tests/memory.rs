//! Memory stays bounded whatever an archive declares: a 1 GiB PAX header and a 256 MiB
//! file streamed from a generator (never held anywhere) leave the peak resident size within
//! a few MiB of where it started, like the stream crate's memory test. Runs as root (the
//! extraction sets owners).

use std::io::{self, Read};

use abupdate_treecopy::{extract_tar, extract_tar_with_limits, Error, TarLimits};

/// A field of /proc/self/status in KiB (`VmHWM` peak, `VmRSS` current resident size).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .expect("field");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("number")
}

/// Resets the peak to the current size (Linux >= 4.0) and returns the current size.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
    status_kib("VmRSS:")
}

/// One ustar header block.
fn header(name: &str, typeflag: u8, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// An archive made on the fly: `head`, then `fill` bytes of `byte`, then `tail`.
struct Generated {
    head: Vec<u8>,
    fill: u64,
    byte: u8,
    tail: Vec<u8>,
    pos: u64,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let head = self.head.len() as u64;
        let mut n = 0;
        while n < buf.len() {
            let p = self.pos;
            let left = if p < head {
                let part = &self.head[p as usize..];
                let k = part.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&part[..k]);
                k
            } else if p < head + self.fill {
                let k = ((head + self.fill - p) as usize).min(buf.len() - n);
                buf[n..n + k].fill(self.byte);
                k
            } else {
                let at = (p - head - self.fill) as usize;
                let part = self.tail.get(at..).unwrap_or_default();
                let k = part.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&part[..k]);
                if k == 0 {
                    break;
                }
                k
            };
            n += left;
            self.pos += left as u64;
        }
        Ok(n)
    }
}

/// End of an archive: a small file entry, then two zero blocks.
fn tail() -> Vec<u8> {
    let mut t = header("after", b'0', 6);
    let mut data = b"after\n".to_vec();
    data.resize(512, 0);
    t.extend_from_slice(&data);
    t.extend_from_slice(&[0u8; 1024]);
    t
}

fn scratch() -> tempfile::TempDir {
    assert!(
        rustix::process::geteuid().is_root(),
        "extraction sets owners: run as root"
    );
    tempfile::Builder::new()
        .prefix("treecopy-mem-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}

#[test]
fn a_1gib_pax_header_is_refused_in_fixed_memory() {
    const PAX: u64 = 1 << 30;
    let dir = scratch();
    // "<len> comment=AAAA...\n" with len counting itself: 10 digits.
    let value = PAX - 10 - " comment=\n".len() as u64;
    let record = format!("{PAX} comment=");
    let mut head = header("././@PaxHeader", b'x', PAX);
    head.extend_from_slice(record.as_bytes());
    // The record ends with a newline; PAX is a multiple of the block size, so no padding.
    let mut tail_bytes = b"\n".to_vec();
    tail_bytes.extend_from_slice(&tail());
    let archive = Generated {
        head,
        fill: value,
        byte: b'A',
        tail: tail_bytes,
        pos: 0,
    };
    let before = reset_peak();
    let result = extract_tar(archive, dir.path());
    let growth_mib = status_kib("VmHWM:").saturating_sub(before) / 1024;
    eprintln!("peak RSS growth: {growth_mib} MiB");
    match result {
        Err(Error::ArchiveLimit { reason, .. }) => assert!(reason.contains("exceed"), "{reason}"),
        other => panic!("expected ArchiveLimit, got {other:?}"),
    }
    assert!(growth_mib < 16, "peak RSS grew by {growth_mib} MiB");
    assert!(!dir.path().join("after").exists());
}

#[test]
fn a_large_file_is_streamed_in_fixed_memory() {
    const SIZE: u64 = 256 << 20;
    let dir = scratch();
    let archive = Generated {
        head: header("big", b'0', SIZE),
        fill: SIZE,
        byte: 0x5a,
        tail: tail(),
        pos: 0,
    };
    let limits = TarLimits {
        max_entry_bytes: SIZE,
        max_total_bytes: SIZE + 6,
        max_header_bytes: 1 << 20,
    };
    let before = reset_peak();
    let report = extract_tar_with_limits(archive, dir.path(), &limits).expect("extract");
    let growth_mib = status_kib("VmHWM:").saturating_sub(before) / 1024;
    eprintln!("peak RSS growth: {growth_mib} MiB");
    assert_eq!(report.bytes, SIZE + 6);
    assert_eq!(
        std::fs::metadata(dir.path().join("big"))
            .expect("stat")
            .len(),
        SIZE
    );
    assert!(growth_mib < 16, "peak RSS grew by {growth_mib} MiB");
}
