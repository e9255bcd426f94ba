//! The target: the spare slot's partition, checked free, opened exclusively, its head
//! invalidated first, and the writer that streams an image onto it.
//!
//! [`SlotWriter`] writes with `O_DIRECT` from the pipeline's page-aligned chunks (buffered
//! only for a tail that is not a multiple of 4096 bytes), and does not write all-zero
//! [`ZERO_BLOCK`]s: it makes them read back as zeros by [`Zeroing::Punch`] instead, or, on a
//! device that cannot zero cheaply, writes them like data ([`Zeroing::Write`]). Either way
//! every byte of the image reads back as the image has it: no stale byte of the slot's
//! old content survives inside the new filesystem.
//!
//! The first [`HEAD_LEN`] bytes (the ext4 superblock) are zeroed before anything else
//! ([`HeadGuard::arm`]) and written last ([`SlotWriter::finish`]), after everything else is
//! on the device: a stage cut short leaves a slot without a filesystem.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, OFlags};
use rustix::io::Errno;

use crate::context::{failpoint, mount_private};
use crate::disk::PartitionInfo;
use crate::error::{Error, Result};

/// Bytes at the start of the slot held back until the image is verified.
pub const HEAD_LEN: usize = 64 * 1024;
/// Granularity of zero detection: an all-zero block of this size, at a multiple of it in
/// the image, is not written.
pub const ZERO_BLOCK: usize = 64 * 1024;
/// Offset and length alignment of `O_DIRECT` writes (and the pipeline's buffers).
const DIRECT_ALIGN: usize = abupdate_stream::BUF_ALIGN;

/// How the zero runs of an image come to read back as zeros on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Zeroing {
    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`: on a block device the
    /// kernel's write-zeroes without fallback (what `BLKZEROOUT` does, minus its fallback to
    /// writing zero pages; on SSDs and thin or file-backed devices it unmaps), on a regular
    /// file a hole. Both guarantee zeros on read; plain discard (`BLKDISCARD`) does not, so
    /// it is never used.
    Punch,
    /// The device cannot zero without writing (`EOPNOTSUPP`): zero blocks are written like
    /// data.
    Write,
}

/// Checks that nothing uses the target partition: not the root, not mounted, no holders.
pub(super) fn check_target_free(p: &PartitionInfo) -> Result<()> {
    let root_dev = std::fs::metadata("/")
        .map_err(Error::io("stat", "/"))?
        .dev();
    if root_dev == p.rdev {
        return Err(Error::Refused(format!(
            "{} holds the running root filesystem",
            p.device.display()
        )));
    }
    let (maj, min) = (
        nix::sys::stat::major(p.rdev) as u32,
        nix::sys::stat::minor(p.rdev) as u32,
    );
    let mounts =
        abupdate_utils::mountinfo::read().map_err(Error::io("read", "/proc/self/mountinfo"))?;
    if let Some(m) = mounts.iter().find(|m| m.major == maj && m.minor == min) {
        return Err(Error::Refused(format!(
            "target slot {} is mounted on {}; unmount it first",
            p.device.display(),
            m.mount_point.display()
        )));
    }
    let name = p
        .device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let holders = PathBuf::from(format!("/sys/class/block/{name}/holders"));
    if let Ok(mut it) = std::fs::read_dir(&holders) {
        if let Some(Ok(h)) = it.next() {
            return Err(Error::Refused(format!(
                "target slot {} is in use by {}",
                p.device.display(),
                h.file_name().to_string_lossy()
            )));
        }
    }
    Ok(())
}

/// Opens the target exclusively: the kernel refuses (EBUSY) if it is mounted anywhere,
/// in any mount namespace.
pub(super) fn open_target(p: &PartitionInfo) -> Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
        .open(&p.device)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) {
                Error::Refused(format!(
                    "target slot {} is in use (mounted or held open)",
                    p.device.display()
                ))
            } else {
                Error::io("open for writing", &p.device)(e)
            }
        })?;
    let meta = f.metadata().map_err(Error::io("stat", &p.device))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::Refused(format!(
            "{} is not a block device",
            p.device.display()
        )));
    }
    Ok(f)
}

/// Makes `[offset, offset + len)` of `file` read back as zeros without writing them.
/// `Ok(false)` when the file or device cannot (`EOPNOTSUPP` and its kin).
pub(super) fn punch(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    match rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::NOTTY | Errno::NODEV | Errno::INVAL) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Zeroes the slot's head (punched where the device can, else written) and makes that
/// durable; says which [`Zeroing`] the device allows.
pub(super) fn zero_head(file: &File, device: &Path) -> Result<Zeroing> {
    let zeroing = if punch(file, 0, HEAD_LEN as u64)
        .map_err(Error::io("zero the head (fallocate punch-hole) of", device))?
    {
        Zeroing::Punch
    } else {
        file.write_all_at(&[0u8; HEAD_LEN], 0)
            .map_err(Error::io("invalidate the head of", device))?;
        Zeroing::Write
    };
    file.sync_all().map_err(Error::io("fsync", device))?;
    Ok(zeroing)
}

/// Zeroes the slot's head now and again on drop unless disarmed, so that a stage that fails
/// after a filesystem was made leaves no filesystem behind.
pub(super) struct HeadGuard {
    device: PathBuf,
    armed: bool,
    zeroing: Zeroing,
}

impl HeadGuard {
    /// Zeroes the head of `part` (durably) and arms the guard.
    pub(super) fn arm(part: &PartitionInfo) -> Result<HeadGuard> {
        let file = open_target(part)?;
        let zeroing = zero_head(&file, &part.device)?;
        Ok(HeadGuard {
            device: part.device.clone(),
            armed: true,
            zeroing,
        })
    }

    /// How the target zeroes, as found while zeroing its head.
    pub(super) fn zeroing(&self) -> Zeroing {
        self.zeroing
    }

    /// The stage succeeded: leave the slot's head alone.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for HeadGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let res = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.device)
            .map_err(Error::io("open", &self.device))
            .and_then(|f| zero_head(&f, &self.device));
        if let Err(e) = res {
            tracing::warn!("could not invalidate the failed slot: {e}");
        }
    }
}

/// Makes a fresh ext4 filesystem with the slot's label and a new UUID, and mounts it.
/// Without discard: mke2fs's discard of the whole slot costs time and buys nothing, since
/// ext4 never reads blocks it has not written (uninitialised groups and inode tables are
/// flagged as such, and zeroed by the kernel after the first mount).
pub(super) fn make_fresh_fs(
    part: &PartitionInfo,
    fs_uuid: &str,
) -> Result<abupdate_utils::mount::TempMount> {
    let dev = part.device.display().to_string();
    abupdate_utils::Cmd::new("mkfs.ext4")
        .args([
            "-F",
            "-q",
            "-E",
            "nodiscard",
            "-L",
            &part.partlabel,
            "-U",
            fs_uuid,
            &dev,
        ])
        .run()
        .map_err(Error::cmd(format!("make a filesystem on {dev}")))?;
    mount_private(&part.device, false)
}

/// A write to the target that failed: the step, the device and the byte offset.
#[derive(Debug, thiserror::Error)]
#[error("{step} {} at byte {offset}: {source}", device.display())]
struct TargetIo {
    step: &'static str,
    device: PathBuf,
    offset: u64,
    source: io::Error,
}

/// What a [`SlotWriter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// How zero blocks were made to read as zeros (`write` if punching was refused).
    pub zeroing: Zeroing,
    /// Image bytes written (the held-back head included once written).
    pub written_bytes: u64,
    /// Image bytes in zero blocks made to read as zeros without writing them.
    pub zeroed_bytes: u64,
    /// Bytes written with `O_DIRECT`.
    pub direct_bytes: u64,
}

/// Streams an image onto the slot: holds back the first [`HEAD_LEN`] bytes, skips zero
/// blocks as its [`Zeroing`] allows, writes the rest with `O_DIRECT` where aligned.
pub(super) struct SlotWriter<'a> {
    file: &'a File,
    device: &'a Path,
    /// The image's first [`HEAD_LEN`] bytes, written by [`SlotWriter::finish`].
    pub(super) head: Vec<u8>,
    /// Whether `O_DIRECT` is set on `file` now.
    direct: bool,
    /// Whether the target takes `O_DIRECT` at all (a file on tmpfs does not).
    direct_ok: bool,
    /// A run of zero blocks not yet punched: `[start, end)`.
    pending: Option<(u64, u64)>,
    stats: WriteStats,
}

impl<'a> SlotWriter<'a> {
    /// A writer onto `file` (the target, opened for writing), zeroing as `zeroing` says.
    pub(super) fn new(file: &'a File, device: &'a Path, zeroing: Zeroing) -> SlotWriter<'a> {
        SlotWriter {
            file,
            device,
            head: Vec::with_capacity(HEAD_LEN),
            direct: false,
            direct_ok: true,
            pending: None,
            stats: WriteStats {
                zeroing,
                written_bytes: 0,
                zeroed_bytes: 0,
                direct_bytes: 0,
            },
        }
    }

    fn err(&self, step: &'static str, offset: u64) -> impl FnOnce(io::Error) -> io::Error {
        let device = self.device.to_owned();
        move |source| {
            io::Error::new(
                source.kind(),
                TargetIo {
                    step,
                    device,
                    offset,
                    source,
                },
            )
        }
    }

    /// Sets or clears `O_DIRECT`; `Ok(false)` when the target refuses it.
    fn set_direct(&mut self, on: bool) -> io::Result<bool> {
        if self.direct == on {
            return Ok(true);
        }
        let flags = rustix::fs::fcntl_getfl(self.file)?;
        let flags = if on {
            flags | OFlags::DIRECT
        } else {
            flags - OFlags::DIRECT
        };
        match rustix::fs::fcntl_setfl(self.file, flags) {
            Ok(()) => {
                self.direct = on;
                Ok(true)
            }
            Err(Errno::INVAL) if on => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `data` at `offset`: the aligned part with `O_DIRECT` when the memory and
    /// the offset are aligned, the rest buffered.
    fn write_data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let aligned = (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64);
        let mut direct_len = if aligned && self.direct_ok {
            data.len() / DIRECT_ALIGN * DIRECT_ALIGN
        } else {
            0
        };
        if direct_len > 0 {
            let ok = self
                .set_direct(true)
                .map_err(self.err("set O_DIRECT on", offset))?;
            let written = match ok {
                true => match self.file.write_all_at(&data[..direct_len], offset) {
                    // Nothing was written: the target refuses direct I/O after all.
                    Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => false,
                    other => {
                        other.map_err(self.err("write (O_DIRECT) to", offset))?;
                        true
                    }
                },
                false => false,
            };
            if written {
                self.stats.direct_bytes += direct_len as u64;
            } else {
                tracing::debug!(device = %self.device.display(), "no O_DIRECT: writing buffered");
                self.direct_ok = false;
                direct_len = 0;
            }
        }
        let rest = &data[direct_len..];
        if !rest.is_empty() {
            let at = offset + direct_len as u64;
            self.set_direct(false)
                .map_err(self.err("clear O_DIRECT on", at))?;
            self.file
                .write_all_at(rest, at)
                .map_err(self.err("write to", at))?;
        }
        self.stats.written_bytes += data.len() as u64;
        Ok(())
    }

    /// Adds the zero block `[offset, offset + len)` to the pending run, punching the
    /// previous run if this one does not continue it.
    fn add_zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        match self.pending {
            Some((start, end)) if end == offset => self.pending = Some((start, offset + len)),
            _ => {
                self.punch_pending()?;
                self.pending = Some((offset, offset + len));
            }
        }
        self.stats.zeroed_bytes += len;
        Ok(())
    }

    /// Makes the pending zero run read back as zeros.
    fn punch_pending(&mut self) -> io::Result<()> {
        let Some((start, end)) = self.pending.take() else {
            return Ok(());
        };
        if punch(self.file, start, end - start).map_err(self.err("zero (punch-hole)", start))? {
            return Ok(());
        }
        // The device zeroed the head but refuses now: write the zeros after all.
        tracing::warn!(device = %self.device.display(), "punch-hole refused: writing zeros");
        self.stats.zeroing = Zeroing::Write;
        self.stats.zeroed_bytes -= end - start;
        let zeros = vec![0u8; ZERO_BLOCK];
        let mut at = start;
        while at < end {
            let n = (end - at).min(ZERO_BLOCK as u64);
            self.set_direct(false)
                .map_err(self.err("clear O_DIRECT on", at))?;
            self.file
                .write_all_at(&zeros[..n as usize], at)
                .map_err(self.err("write zeros to", at))?;
            self.stats.written_bytes += n;
            at += n;
        }
        Ok(())
    }

    /// Writes the verified head, last, and makes everything durable: fsync (the image and
    /// its zeroed runs are on the device), then the head, then fsync again.
    pub(super) fn finish(mut self) -> Result<WriteStats> {
        let dev = self.device;
        self.punch_pending()
            .map_err(Error::io("zero the last run of zeros of", dev))?;
        self.file.sync_all().map_err(Error::io("fsync", dev))?;
        failpoint("stage.before-head");
        self.set_direct(false)
            .map_err(Error::io("clear O_DIRECT on", dev))?;
        self.file
            .write_all_at(&self.head, 0)
            .map_err(Error::io("write the verified head of the image to", dev))?;
        self.file.sync_all().map_err(Error::io("fsync", dev))?;
        self.stats.written_bytes += self.head.len() as u64;
        Ok(self.stats)
    }
}

impl abupdate_stream::ChunkSink for SlotWriter<'_> {
    fn write_chunk(&mut self, mut offset: u64, mut chunk: &[u8]) -> io::Result<()> {
        if offset < HEAD_LEN as u64 {
            let take = (HEAD_LEN - offset as usize).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            offset += take as u64;
            chunk = &chunk[take..];
        }
        let skip_zeros = self.stats.zeroing == Zeroing::Punch;
        // Data not yet written: chunk[run..i].
        let mut run = 0;
        let mut i = 0;
        while i < chunk.len() {
            let at = offset + i as u64;
            let to_boundary = ZERO_BLOCK - (at % ZERO_BLOCK as u64) as usize;
            let end = (i + to_boundary).min(chunk.len());
            let block = &chunk[i..end];
            if skip_zeros && block.len() == ZERO_BLOCK && is_zero(block) {
                if run < i {
                    self.write_data(offset + run as u64, &chunk[run..i])?;
                }
                self.add_zero(at, ZERO_BLOCK as u64)?;
                run = end;
            }
            i = end;
        }
        if run < chunk.len() {
            self.write_data(offset + run as u64, &chunk[run..])?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.punch_pending()
    }
}

/// Whether every byte of `block` is zero.
fn is_zero(block: &[u8]) -> bool {
    static ZEROS: [u8; ZERO_BLOCK] = [0; ZERO_BLOCK];
    // A slice comparison is one `memcmp` (vectorised, stops at the first difference), in an
    // unoptimised build too.
    block.chunks(ZERO_BLOCK).all(|c| c == &ZEROS[..c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use abupdate_stream::ChunkSink;
    use std::os::unix::fs::FileExt;

    /// An image of `blocks` zero blocks with data in the blocks `data` lists, and an
    /// unaligned tail of `tail` bytes of data.
    fn image(blocks: usize, data: &[usize], tail: usize) -> Vec<u8> {
        let mut img = vec![0u8; blocks * ZERO_BLOCK + tail];
        for &b in data {
            for (i, byte) in img[b * ZERO_BLOCK..(b + 1) * ZERO_BLOCK]
                .iter_mut()
                .enumerate()
            {
                *byte = (i % 251) as u8 + 1;
            }
        }
        let len = img.len();
        for (i, byte) in img[len - tail..].iter_mut().enumerate() {
            *byte = (i % 13) as u8 + 1;
        }
        // A single non-zero byte in an otherwise zero block is data.
        if blocks > 7 {
            img[7 * ZERO_BLOCK + 4095] = 9;
        }
        img
    }

    /// A target file pre-filled with a non-zero pattern, longer than the image.
    fn stale_target(len: usize) -> File {
        let f = tempfile::tempfile().expect("test I/O");
        let stale: Vec<u8> = (0..len).map(|i| (i % 241) as u8 | 0x80).collect();
        f.write_all_at(&stale, 0).expect("test I/O");
        f
    }

    /// Streams `img` in pipeline-like chunks of `chunk` bytes (the memory aligned).
    fn stream(w: &mut SlotWriter<'_>, img: &[u8], chunk: usize) {
        let mut buf = vec![0u8; chunk + DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        for (n, piece) in img.chunks(chunk).enumerate() {
            let aligned = &mut buf[start..start + piece.len()];
            aligned.copy_from_slice(piece);
            w.write_chunk((n * chunk) as u64, aligned)
                .expect("test I/O");
        }
        w.flush().expect("test I/O");
    }

    fn read_all(f: &File, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        f.read_exact_at(&mut out, 0).expect("test I/O");
        out
    }

    #[test]
    fn zero_blocks_never_leave_stale_bytes() {
        let img = image(40, &[1, 2, 5, 17, 18, 19, 39], 1000);
        for zeroing in [Zeroing::Punch, Zeroing::Write] {
            for chunk in [ZERO_BLOCK, 3 * ZERO_BLOCK + 4096, 1 << 20] {
                let f = stale_target(img.len() + ZERO_BLOCK);
                let dev = PathBuf::from("/test");
                let mut w = SlotWriter::new(&f, &dev, zeroing);
                stream(&mut w, &img, chunk);
                let on_disk = read_all(&f, img.len());
                assert!(
                    on_disk[HEAD_LEN..] == img[HEAD_LEN..],
                    "{zeroing:?}, chunks of {chunk}: the image's bytes past the head differ"
                );
                assert!(
                    on_disk[..HEAD_LEN].iter().all(|&b| b & 0x80 != 0),
                    "{zeroing:?}: the head was written before finish"
                );
                let stats = w.finish().expect("test I/O");
                let on_disk = read_all(&f, img.len() + ZERO_BLOCK);
                assert!(on_disk[..img.len()] == img[..], "{zeroing:?}: after finish");
                assert!(
                    on_disk[img.len()..].iter().all(|&b| b & 0x80 != 0),
                    "{zeroing:?}: wrote past the image"
                );
                assert_eq!(
                    stats.written_bytes + stats.zeroed_bytes,
                    img.len() as u64,
                    "{zeroing:?}: {stats:?}"
                );
                match zeroing {
                    // Blocks 0 (the head), 1, 2, 5, 7, 17-19, 39 and the tail are written;
                    // a zero block split between two chunks is written too.
                    Zeroing::Punch if chunk % ZERO_BLOCK == 0 => {
                        assert_eq!(stats.zeroed_bytes, 31 * ZERO_BLOCK as u64)
                    }
                    Zeroing::Punch => assert!(stats.zeroed_bytes > 0),
                    Zeroing::Write => assert_eq!(stats.zeroed_bytes, 0),
                }
            }
        }
    }

    #[test]
    fn unaligned_tails_and_short_images() {
        for len in [
            0,
            1,
            4095,
            HEAD_LEN - 1,
            HEAD_LEN,
            HEAD_LEN + 1,
            HEAD_LEN + 4097,
        ] {
            let img: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
            let f = stale_target(len + 8192);
            let dev = PathBuf::from("/test");
            let mut w = SlotWriter::new(&f, &dev, Zeroing::Punch);
            stream(&mut w, &img, 1 << 20);
            w.finish().expect("test I/O");
            let on_disk = read_all(&f, len + 8192);
            assert!(on_disk[..len] == img[..], "image of {len} bytes");
            assert!(
                on_disk[len..].iter().all(|&b| b & 0x80 != 0),
                "{len}: past the end"
            );
        }
    }

    #[test]
    fn a_regular_file_target_is_punched() {
        let f = tempfile::tempfile().expect("test I/O");
        f.write_all_at(&[1u8; 3 * HEAD_LEN], 0).expect("test I/O");
        assert!(punch(&f, HEAD_LEN as u64, 4096).expect("test I/O"));
        let on_disk = read_all(&f, 3 * HEAD_LEN);
        assert!(on_disk[HEAD_LEN..HEAD_LEN + 4096].iter().all(|&b| b == 0));
        assert!(on_disk[HEAD_LEN + 4096..].iter().all(|&b| b == 1));
        assert_eq!(
            zero_head(&f, Path::new("/test")).expect("test I/O"),
            Zeroing::Punch
        );
        assert!(read_all(&f, HEAD_LEN).iter().all(|&b| b == 0));
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; ZERO_BLOCK]));
        assert!(is_zero(&[]));
        let mut b = vec![0u8; ZERO_BLOCK + 3];
        assert!(is_zero(&b));
        b[ZERO_BLOCK + 2] = 1;
        assert!(!is_zero(&b));
        b[ZERO_BLOCK + 2] = 0;
        b[100] = 0x80;
        assert!(!is_zero(&b));
    }
}
