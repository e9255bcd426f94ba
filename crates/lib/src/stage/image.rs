//! Source: a raw ext2/3/4 filesystem image (path or URL, optionally compressed), streamed
//! onto the partition by the pipeline of `abupdate-stream` and [`SlotWriter`], verified,
//! then grown to the partition and given its own identity.
//!
//! Post-steps run only where needed. The bytes are proven by the sha256 before the head is
//! written, so a filesystem whose superblock says it was cleanly unmounted (valid, no
//! errors, no journal to replay) goes to `resize2fs -f` without a full `e2fsck -f`; any
//! other runs `e2fsck -f -p` first, as before. A `metadata_csum` filesystem gets the
//! `metadata_csum_seed` feature with its new UUID, so `tune2fs` rewrites the superblock
//! instead of every checksum on the filesystem (Linux 4.4, e2fsprogs 1.43 and GRUB 2.06 as
//! Debian 12 ships it read such filesystems: `tests/tests/pipeline.rs` checks the last
//! with `grub-fstest`).

use abupdate_utils::mount::TempMount;

use super::fetch::{progress_for, Fetch};
use super::target::{open_target, SlotWriter};
use super::{time, Slot, SlotSource, StageReport};
use crate::context::{failpoint, mount_private};
use crate::disk::PartitionInfo;
use crate::error::{Error, Result};
use crate::fsinfo::{self, Ext4Info};

/// A filesystem image to stream onto the slot.
pub(super) struct ImageSource {
    pub(super) fetch: Fetch,
}

impl SlotSource for ImageSource {
    fn name(&self) -> String {
        self.fetch.src.display_name()
    }

    fn sha256(&self) -> Option<String> {
        Some(self.fetch.expected.clone())
    }

    fn plan(&self, dest: &str, label: &str) -> Vec<String> {
        vec![
            format!(
                "write the image {} onto {dest}",
                self.fetch.src.display_name()
            ),
            format!("verify sha256 {}", self.fetch.expected),
            format!(
                "grow the filesystem to the partition, give it a new UUID and the label {label}"
            ),
        ]
    }

    fn dry_run(&self, part: &PartitionInfo, report: &mut StageReport) -> Result<()> {
        report.source_bytes = self.fetch.open(part)?.len().unwrap_or(0);
        Ok(())
    }

    fn fill(&self, slot: &Slot<'_>, report: &mut StageReport) -> Result<TempMount> {
        let fs = time(report, "write", |r| write_image(&self.fetch, slot, r))?;
        failpoint("stage.after-write");
        let dev = slot.part.device.display().to_string();
        let fsck_ran = !fs.clean;
        if fsck_ran {
            time(report, "check", |_| fsck(&dev))?;
        }
        // A partition less than one block larger leaves nothing to grow into.
        if fs.size_bytes + fs.block_size <= slot.part.size_bytes {
            time(report, "resize", |_| {
                // Forced: the filesystem is clean (checked just now, or marked so in the
                // superblock of bytes whose sha256 matched), so resize2fs need not insist
                // on a fresh e2fsck.
                abupdate_utils::Cmd::new("resize2fs")
                    .args(["-f", &dev])
                    .run()
                    .map_err(Error::cmd(format!("grow the filesystem on {dev}")))
                    .map(drop)
            })?;
        }
        time(report, "identity", |_| {
            set_identity(&fs, &dev, slot.fs_uuid, &slot.part.partlabel, fsck_ran)
        })?;
        time(report, "mount", |_| mount_private(&slot.part.device, false))
    }
}

/// Gives the filesystem its new UUID and label. Where the checksums derive from the UUID,
/// `metadata_csum_seed` keeps them valid without rewriting them; a filesystem with
/// `ea_inode` but no `metadata_csum` cannot get the seed, so `tune2fs` rewrites its
/// checksums, which it does only on a freshly checked filesystem.
fn set_identity(fs: &Ext4Info, dev: &str, uuid: &str, label: &str, checked: bool) -> Result<()> {
    let mut cmd = abupdate_utils::Cmd::new("tune2fs");
    if fs.metadata_csum && !fs.csum_seed {
        cmd = cmd.args(["-O", "metadata_csum_seed"]);
    } else if fs.ea_inode && !fs.csum_seed && !checked {
        fsck(dev)?;
    }
    cmd.args(["-U", uuid, "-L", label, dev])
        .run()
        .map_err(Error::cmd(format!("set UUID and label of {dev}")))?;
    Ok(())
}

/// `e2fsck -f -p`: exit 1 means errors were corrected, which is fine for a fresh image.
fn fsck(dev: &str) -> Result<()> {
    match abupdate_utils::Cmd::new("e2fsck")
        .args(["-f", "-p", dev])
        .run()
    {
        Ok(_) => Ok(()),
        Err(abupdate_utils::CmdError::Failed { status, .. })
            if status.ends_with("exit status: 1") =>
        {
            Ok(())
        }
        Err(e) => Err(Error::Verification(format!(
            "the image's filesystem on {dev} is damaged: {e}"
        ))),
    }
}

/// Streams the image onto the partition, holding its head back until verified; returns
/// what its superblock says.
fn write_image(f: &Fetch, slot: &Slot<'_>, report: &mut StageReport) -> Result<Ext4Info> {
    let (part, target) = (slot.part, slot.id);
    let serr = f.err();
    let mut opened = f.open(part)?;
    let compression = opened.compression().map_err(&serr)?;
    if compression == abupdate_stream::Compression::None {
        if let Some(len) = opened.len() {
            if len > part.size_bytes {
                return Err(Error::Verification(format!(
                    "image {} ({len} bytes) is larger than slot {target} ({}, {} bytes)",
                    f.src.display_name(),
                    part.device.display(),
                    part.size_bytes
                )));
            }
        }
    }
    let file = open_target(part)?;
    let mut writer = SlotWriter::new(&file, &part.device, slot.zeroing);
    let mut progress = progress_for(slot.progress, "stage");
    let copy_opts = f.copy_options(part);
    let stats = abupdate_stream::copy_to(opened, &mut writer, &copy_opts, progress.as_mut())
        .map_err(&serr)?;
    let left = format!("slot {target} was left without a filesystem");
    if stats.source_sha256 != f.expected {
        return Err(f.mismatch(&stats.source_sha256, &left));
    }
    let Some(fs) = writer
        .head
        .get(1024..2048)
        .and_then(fsinfo::parse_ext4_superblock)
    else {
        return Err(Error::Verification(format!(
            "{} is not an ext2/3/4 filesystem image; {left}",
            f.src.display_name()
        )));
    };
    if stats.image_bytes < fs.size_bytes {
        return Err(Error::Verification(format!(
            "{} is truncated: it holds {} bytes but its filesystem is {} bytes; {left}",
            f.src.display_name(),
            stats.image_bytes,
            fs.size_bytes
        )));
    }
    if fs.size_bytes > part.size_bytes {
        return Err(Error::Verification(format!(
            "the filesystem in {} ({} bytes) is larger than slot {target} ({} bytes)",
            f.src.display_name(),
            fs.size_bytes,
            part.size_bytes
        )));
    }
    let written = writer.finish()?;
    report.image_bytes = stats.image_bytes;
    report.source_bytes = stats.source_bytes;
    report.image_writes = Some(written);
    Ok(fs)
}
