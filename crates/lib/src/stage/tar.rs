//! Source: a (compressed) tar archive of a root tree, extracted onto a fresh filesystem.
//!
//! The download, hashing and decompression run in the `abupdate-stream` pipeline on a
//! thread that writes into a 1 MiB pipe; the extractor reads it through a 1 MiB buffer.

use std::io::BufReader;
use std::os::fd::AsRawFd;
use std::path::Path;

use abupdate_utils::mount::TempMount;

use super::fetch::{progress_for, Fetch};
use super::target::make_fresh_fs;
use super::{time, Slot, SlotSource, StageReport};
use crate::context::failpoint;
use crate::disk::PartitionInfo;
use crate::error::{Error, Result};

/// Size asked for the pipe between the download and the extractor, and of the
/// extractor's read buffer: a few large transfers instead of many 64 KiB ones.
const PIPE_LEN: usize = 1 << 20;

/// A tar archive to extract onto a fresh filesystem.
pub(super) struct TarSource {
    pub(super) fetch: Fetch,
}

impl SlotSource for TarSource {
    fn name(&self) -> String {
        self.fetch.src.display_name()
    }

    fn sha256(&self) -> Option<String> {
        Some(self.fetch.expected.clone())
    }

    fn plan(&self, dest: &str, label: &str) -> Vec<String> {
        vec![
            format!("make a fresh ext4 filesystem (label {label}) on {dest}"),
            format!(
                "extract the archive {} into it",
                self.fetch.src.display_name()
            ),
            format!("verify sha256 {}", self.fetch.expected),
        ]
    }

    fn dry_run(&self, part: &PartitionInfo, report: &mut StageReport) -> Result<()> {
        report.source_bytes = self.fetch.open(part)?.len().unwrap_or(0);
        Ok(())
    }

    fn verify_first(&self, part: &PartitionInfo) -> Result<()> {
        self.fetch.verify_local(part)
    }

    fn fill(&self, slot: &Slot<'_>, report: &mut StageReport) -> Result<TempMount> {
        let m = time(report, "mkfs", |_| make_fresh_fs(slot.part, slot.fs_uuid))?;
        time(report, "write", |r| {
            extract_archive(&self.fetch, slot.part, m.path(), slot.progress, r)
        })?;
        failpoint("stage.after-write");
        Ok(m)
    }
}

/// Streams a (compressed) tar archive into the mounted slot while hashing it: the download
/// and decompression run in a thread that writes into a pipe the extractor reads.
///
/// Bounded before it is trusted: the source by the slot's size ([`Fetch::open`]), the
/// decompressed stream by the partition's size, and the entries by the slot's free space
/// and the header cap ([`abupdate_treecopy::extract_tar`]).
fn extract_archive(
    f: &Fetch,
    part: &PartitionInfo,
    root: &Path,
    progress: bool,
    report: &mut StageReport,
) -> Result<()> {
    let serr = f.err();
    let opened = f.open(part)?;
    let copy_opts = f.copy_options(part);
    let (reader, mut writer) = std::io::pipe().map_err(Error::io("create a pipe for", root))?;
    // A larger pipe is an optimisation only: the default size works too.
    if let Err(e) = nix::fcntl::fcntl(
        writer.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_LEN as i32),
    ) {
        tracing::debug!("cannot enlarge the extraction pipe: {e}");
    }
    let copier = std::thread::Builder::new()
        .name("stage-download".into())
        .spawn(move || {
            let mut progress = progress_for(progress, "stage");
            let res = abupdate_stream::copy(opened, &mut writer, &copy_opts, progress.as_mut());
            drop(writer);
            res
        })
        .map_err(Error::io("start the download thread for", root))?;
    let mut reader = BufReader::with_capacity(PIPE_LEN, reader);
    let extracted = abupdate_treecopy::extract_tar(&mut reader, root);
    // Read what the archive's end marker left (padding) so the whole source is hashed; after
    // a refused entry, closing the pipe stops the download instead.
    let drained = match &extracted {
        Ok(_) => std::io::copy(&mut reader, &mut std::io::sink()).map(drop),
        Err(_) => Ok(()),
    };
    drop(reader);
    let copied = copier
        .join()
        .map_err(|_| Error::Internal("the download thread panicked".into()))?;
    // When the stream failed by itself (a size bound, a corrupt or broken source), the
    // extractor only saw the pipe end early: the stream's error is the cause.
    let (extracted, stats) = match (extracted, copied) {
        (Err(_), Err(c)) if !matches!(c, abupdate_stream::Error::Write { .. }) => {
            return Err(serr(c))
        }
        (extracted, copied) => (
            extracted.map_err(Error::tree("extract the archive into the new slot"))?,
            copied.map_err(&serr)?,
        ),
    };
    drained.map_err(Error::io("read the rest of", f.src.display_name()))?;
    if stats.source_sha256 != f.expected {
        return Err(f.mismatch(
            &stats.source_sha256,
            "the slot was left without a filesystem",
        ));
    }
    report.source_bytes = stats.source_bytes;
    report.image_bytes = extracted.bytes;
    Ok(())
}
