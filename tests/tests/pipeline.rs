//! The image writer of `stage` on real block devices: zero blocks are made to read as
//! zeros without being written and no stale byte of the slot survives; a device that
//! cannot zero cheaply gets the zeros written; an unaligned tail is written; the head is
//! written last; GRUB reads the staged filesystem.
//!
//! Slot B is filled with a non-zero pattern first, and the stage stopped by a failpoint
//! right after the image is on the disk (before `resize2fs` and `tune2fs` change it), so
//! every byte of the partition can be compared with the image.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use abupdate_tests::checks::{assert_slot_b_staged, slot_status, stage_args};
use abupdate_tests::env::which;
use abupdate_tests::proc::run_ok;
use abupdate_tests::{
    compress, make_image, serial, Compression, DiskOptions, Image, ImageSpec, Output, TestDisk,
};
use abupdate_utils::mount::{BindMount, TempMount};
use anyhow::{ensure, Context, Result};

/// Bytes held back until the image is verified (`abupdate_lib::stage::HEAD_LEN`).
const HEAD_LEN: u64 = 64 * 1024;
/// The slots of these tests' disks.
const SLOT_MIB: u64 = 256;

/// The byte the slot is filled with at `offset` before a stage: never zero.
fn pattern(offset: u64) -> u8 {
    (offset % PERIOD) as u8 | 0x80
}

/// The period of [`pattern`].
const PERIOD: u64 = 251;

/// Writes [`pattern`] for the bytes at `offset..offset + buf.len()` into `buf`, a period at
/// a time (one byte at a time is CPU-bound in the unoptimised test build).
fn fill_pattern_at(buf: &mut [u8], offset: u64) {
    let period: Vec<u8> = (0..2 * PERIOD).map(pattern).collect();
    let start = (offset % PERIOD) as usize;
    let one = &period[start..start + PERIOD as usize];
    let mut pieces = buf.chunks_exact_mut(PERIOD as usize);
    for piece in &mut pieces {
        piece.copy_from_slice(one);
    }
    let rest = pieces.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&one[..n]);
}

/// Fills the whole device with [`pattern`].
fn fill_with_pattern(dev: &Path) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .with_context(|| format!("open {}", dev.display()))?;
    let len = f.seek(SeekFrom::End(0))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        fill_pattern_at(&mut buf[..n], at);
        f.write_all_at(&buf[..n], at)
            .with_context(|| format!("fill {} at {at}", dev.display()))?;
        at += n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// Asserts that every byte of `dev` is what the image has, except: the head is all zeros
/// when `head_zeroed`, and past the image's end the pattern is untouched.
fn assert_slot_holds(dev: &Path, image: &Path, head_zeroed: bool, what: &str) -> Result<()> {
    let mut d = File::open(dev).with_context(|| format!("open {}", dev.display()))?;
    let mut i = File::open(image).with_context(|| format!("open {}", image.display()))?;
    let dev_len = d.seek(SeekFrom::End(0))?;
    d.seek(SeekFrom::Start(0))?;
    let (mut got, mut want) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    while at < dev_len {
        let n = (dev_len - at).min(got.len() as u64) as usize;
        d.read_exact(&mut got[..n])?;
        let from_image = read_up_to(&mut i, &mut want[..n])?;
        fill_pattern_at(&mut want[from_image..n], at + from_image as u64);
        if head_zeroed && at < HEAD_LEN {
            let end = (HEAD_LEN - at).min(n as u64) as usize;
            want[..end].fill(0);
        }
        if got[..n] != want[..n] {
            let k = (0..n).find(|&k| got[k] != want[k]).unwrap_or(0);
            let off = at + k as u64;
            panic!(
                "{what}: byte {off} of {} is {:#04x}, expected {:#04x} ({})",
                dev.display(),
                got[k],
                want[k],
                if k >= from_image {
                    "past the image: untouched"
                } else if want[k] == 0 {
                    "a zero of the image"
                } else {
                    "the image's byte"
                }
            );
        }
        at += n as u64;
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Runs `stage` of `image` stopped by `failpoint` (the process aborts there).
fn stage_until(disk: &TestDisk, image: &Image, failpoint: &str) -> Result<()> {
    let out = Output::of(
        disk.command("a")
            .env("ABUPDATE_FAILPOINT", failpoint)
            .args(stage_args(&image.path, &image.sha256)),
    )?;
    ensure!(
        out.code != 0 && out.stderr.contains(failpoint),
        "stage did not stop at {failpoint}:\n{out}"
    );
    Ok(())
}

/// `abupdate --json stage` of `image` to the end; returns the report.
fn stage_json(disk: &TestDisk, image: &Image) -> Result<serde_json::Value> {
    let mut args = vec!["--json".into()];
    args.extend(stage_args(&image.path, &image.sha256));
    let out = disk.run(args)?;
    out.assert_ok();
    out.json()
}

/// An image exactly as large as the slot, so the comparison covers every byte of it.
fn slot_sized_image(disk: &TestDisk) -> Result<Image> {
    make_image(
        disk.dir(),
        &ImageSpec {
            name: "slot-sized.img",
            size_mib: SLOT_MIB,
            host_root: Some(disk.host.root()),
            ..Default::default()
        },
    )
}

/// A smaller image followed by a tail that is not a multiple of 4096 bytes (data after
/// the filesystem is allowed and written like the rest).
fn image_with_tail(disk: &TestDisk) -> Result<Image> {
    let img = make_image(
        disk.dir(),
        &ImageSpec {
            name: "tail.img",
            size_mib: SLOT_MIB - 8,
            host_root: Some(disk.host.root()),
            ..Default::default()
        },
    )?;
    let mut f = fs::OpenOptions::new().append(true).open(&img.path)?;
    f.write_all(&[0x5a; 1000])?;
    drop(f);
    Image::from_file(img.path)
}

#[test]
fn zero_blocks_leave_no_stale_byte() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let raw = slot_sized_image(&disk)?;
    let zst = compress(&raw, Compression::Zstd)?;
    let tail = image_with_tail(&disk)?;
    for (image, what) in [(&raw, "raw"), (&zst, "zstd"), (&tail, "unaligned tail")] {
        fill_with_pattern(&disk.slot_b())?;
        stage_until(&disk, image, "stage.after-write")?;
        let reference = if image.path == zst.path { &raw } else { image };
        assert_slot_holds(&disk.slot_b(), &reference.path, false, what)?;
    }
    fill_with_pattern(&disk.slot_b())?;
    let report = stage_json(&disk, &raw)?;
    let writes = &report["image_writes"];
    assert_eq!(writes["zeroing"], "punch", "{report:#}");
    let zeroed = writes["zeroed_bytes"].as_u64().unwrap_or(0);
    assert!(
        zeroed > (SLOT_MIB << 20) / 2,
        "only {zeroed} bytes of zero blocks skipped: {report:#}"
    );
    let (written, direct) = (
        writes["written_bytes"].as_u64().unwrap_or(0),
        writes["direct_bytes"].as_u64().unwrap_or(0),
    );
    assert_eq!(written + zeroed, SLOT_MIB << 20, "{report:#}");
    // All but the head, written last through the page cache.
    assert_eq!(direct, written - HEAD_LEN, "{report:#}");
    assert_slot_b_staged(&disk)?;
    Ok(())
}

#[test]
fn a_device_that_cannot_zero_gets_the_zeros_written() -> Result<()> {
    let _s = serial();
    // A loop device over a file on ramfs: ramfs has no fallocate, so the loop device has
    // no write-zeroes and punching a hole in it fails with EOPNOTSUPP.
    let ram = TempMount::new(Path::new("ramfs"), "ramfs", false).context("mount a ramfs")?;
    // abupdate mounts a tmpfs of its own on /run/abupdate, where the ramfs is: it sees the
    // ramfs through a bind mount outside it.
    let seen = tempfile::tempdir().context("a directory for the ramfs")?;
    let bind = BindMount::new(ram.path(), seen.path()).context("bind the ramfs")?;
    let disk = TestDisk::with(DiskOptions {
        dir: Some(seen.path().to_owned()),
        ..Default::default()
    })?;
    let zeroes = fs::read_to_string(format!(
        "/sys/class/block/{}/queue/write_zeroes_max_bytes",
        disk.device()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))?;
    assert_eq!(zeroes.trim(), "0", "this loop device can write zeroes");
    let image = image_with_tail(&disk)?;
    fill_with_pattern(&disk.slot_b())?;
    stage_until(&disk, &image, "stage.after-write")?;
    assert_slot_holds(&disk.slot_b(), &image.path, false, "no write-zeroes")?;
    fill_with_pattern(&disk.slot_b())?;
    let report = stage_json(&disk, &image)?;
    assert_eq!(report["image_writes"]["zeroing"], "write", "{report:#}");
    assert_eq!(report["image_writes"]["zeroed_bytes"], 0, "{report:#}");
    drop(disk);
    bind.close()?;
    ram.close()?;
    Ok(())
}

#[test]
fn the_head_is_written_last() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = slot_sized_image(&disk)?;
    fill_with_pattern(&disk.slot_b())?;
    stage_until(&disk, &image, "stage.after-invalidate")?;
    let mut head = vec![0u8; 2 * HEAD_LEN as usize];
    File::open(disk.slot_b())?.read_exact_at(&mut head, 0)?;
    assert!(
        head[..HEAD_LEN as usize].iter().all(|&b| b == 0),
        "the head is not zeroed first"
    );
    assert!(
        (HEAD_LEN..2 * HEAD_LEN).all(|o| head[o as usize] == pattern(o)),
        "more than the head was written before the image"
    );
    // Everything but the head is on the disk, the head is still zero: no filesystem.
    stage_until(&disk, &image, "stage.before-head")?;
    assert_slot_holds(&disk.slot_b(), &image.path, true, "before the head")?;
    let blkid = Output::of(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(disk.slot_b()),
    )?;
    assert_eq!(blkid.stdout.trim(), "", "slot B has a filesystem:\n{blkid}");
    let st = disk.status("a")?;
    assert_eq!(slot_status(&st, "b")["state"], "empty", "{st:#}");
    // Then the head.
    stage_until(&disk, &image, "stage.after-write")?;
    assert_slot_holds(&disk.slot_b(), &image.path, false, "after the head")?;
    Ok(())
}

#[test]
fn grub_reads_the_staged_slot() -> Result<()> {
    let _s = serial();
    let grub_fstest = which("grub-fstest").context("grub-fstest missing (grub-common)")?;
    let disk = TestDisk::new()?;
    let image = disk.new_release_image()?;
    stage_json(&disk, &image)?;
    assert_slot_b_staged(&disk)?;
    // The UUID changed without rewriting every checksum: the seed is in the superblock.
    let features = run_ok(Command::new("dumpe2fs").arg("-h").arg(disk.slot_b()))?;
    let line = features
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_default();
    assert!(
        line.contains("metadata_csum_seed") && line.contains("metadata_csum"),
        "{line}"
    );
    // GRUB's own ext2 driver (the one that boots slots) reads the slot.
    let m = disk.mount_b()?;
    let os_release = fs::read_to_string(m.path().join("etc/os-release"))?;
    m.close()?;
    let grub = |args: &[&str]| -> Result<String> {
        let mut c = Command::new(&grub_fstest);
        c.arg(disk.slot_b()).args(args);
        run_ok(&mut c)
    };
    assert_eq!(grub(&["cat", "(loop0)/etc/os-release"])?, os_release);
    let boot = grub(&["ls", "(loop0)/boot/"])?;
    assert!(
        boot.contains("vmlinuz-6.12.0-1-amd64") && boot.contains("initrd.img-6.12.0-1-amd64"),
        "GRUB lists {boot:?} in slot B's /boot"
    );
    Ok(())
}
