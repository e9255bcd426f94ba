//! Benchmark of the tree sources of `abupdate stage` against `dd` of the same bytes onto the
//! same slot, in the run of `bench_stage` (its disk, binary, configuration and helpers):
//!
//! - `abupdate stage --from-tar bookworm.tar` (the VM's Debian 12 root, cached by `images`)
//!   against `dd` of the tar itself;
//! - `abupdate stage --clone` of that root extracted on a scratch ext4, given to the binary
//!   with `ABUPDATE_CLONE_ROOT` (honoured only on the pretended boot `abupdate_cmd` sets up),
//!   against `dd` of as many bytes of the tar as the clone copied (its JSON report's
//!   `image_bytes`).
//!
//! Each is measured [`RUNS`] times, every round's stage against the dd of the same round.
//! A reference row per table does the same job with the standard tools (`mkfs.ext4`, then
//! GNU `tar -x` or `cp -a`, then `umount`), so the stage's cost can be read against what
//! extracting or copying that many files costs at all, not only against streaming bytes.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

use crate::bench_stage::{
    abupdate_cmd, dd_cmd, sh, sha256, timed, timed_stdout, Measure, Mounted, Table, DD_FLAGS, MIB,
    RUNS, SLOT_MIB,
};
use crate::{images, setup, util};

/// Room the tar's tree must leave free in slot B (ext4 metadata, small files' blocks).
const SLOT_HEADROOM_MIB: u64 = 256;
/// Room the scratch ext4 of the clone source gets beyond the tar's size.
const SCRATCH_HEADROOM_MIB: u64 = 256;

/// The part of `abupdate --json stage`'s report the bench reads.
#[derive(Debug, Deserialize)]
struct StageJson {
    /// Bytes of file data written into the slot (holes not included).
    image_bytes: u64,
}

/// The release binary, its configuration and the slot the stages and dd write.
pub(crate) struct Target<'a> {
    /// The release `abupdate`.
    pub(crate) bin: &'a Path,
    /// Its configuration for the bench disk.
    pub(crate) config: &'a Path,
    /// Slot B of the bench disk.
    pub(crate) slot_b: &'a Path,
}

/// Measures the tar and clone sources of the VM's root; returns one table for each.
/// `dir` is the bench's work directory (the clone source's scratch ext4 goes there).
pub(crate) fn measure(target: &Target, dir: &Path) -> Result<Vec<Table>> {
    setup::ensure_host_packages()?;
    let imgs = images::ensure().context("build or find the VM images (bookworm.tar)")?;
    let tar = imgs.bookworm_tar.as_path();
    let tar_len = fs::metadata(tar)
        .with_context(|| format!("stat {}", tar.display()))?
        .len();
    ensure!(
        tar_len + SLOT_HEADROOM_MIB * MIB <= SLOT_MIB * MIB,
        "{} is {} MiB: its tree does not fit slot B ({SLOT_MIB} MiB) with {SLOT_HEADROOM_MIB} \
         MiB to spare",
        tar.display(),
        tar_len / MIB
    );
    eprintln!("bench: sha256 of {}", tar.display());
    let tar_sha = sha256(tar)?;
    let tar_table = bench_tar(target, dir, tar, tar_len, &tar_sha)?;
    let clone_table = bench_clone(target, dir, tar, tar_len)?;
    Ok(vec![tar_table, clone_table])
}

/// `stage --from-tar` of `tar` against `dd` of the tar onto the slot.
fn bench_tar(
    target: &Target,
    dir: &Path,
    tar: &Path,
    tar_len: u64,
    tar_sha: &str,
) -> Result<Table> {
    let name = file_name(tar);
    let dd_name = format!("dd {name} ({DD_FLAGS})");
    let stage_name = format!("abupdate stage --from-tar {name}");
    let mut runs = Vec::new();
    let mut extracted = 0;
    for round in 1..=RUNS {
        eprintln!("bench: round {round}/{RUNS}: dd {name}");
        let dd = timed(&mut dd_cmd(tar, target.slot_b))
            .with_context(|| format!("dd {} onto {}", tar.display(), target.slot_b.display()))?;
        eprintln!("bench: round {round}/{RUNS}: {stage_name}");
        let (m, report) = timed_stdout(
            abupdate_cmd(target.bin, target.config)
                .args(["--json", "stage", "--from-tar"])
                .arg(tar)
                .args(["--sha256", tar_sha]),
        )
        .with_context(|| format!("{stage_name} onto {}", target.slot_b.display()))?;
        extracted = image_bytes(&report, &stage_name)?;
        eprintln!("bench: round {round}/{RUNS}: {TAR_REFERENCE}");
        let tool = reference(
            target,
            dir,
            &format!(
                "tar --xattrs --xattrs-include='*' --numeric-owner -xpf {} -C \"$1\"",
                quote(tar)
            ),
        )?;
        runs.push((dd, m, tool));
    }
    let title = format!(
        "tar: {}, {:.0} MiB ({:.0} MiB of file data once extracted), slot B {SLOT_MIB} MiB\n\
         baseline: dd of {name} itself onto slot B",
        tar.display(),
        tar_len as f64 / MIB as f64,
        extracted as f64 / MIB as f64,
    );
    Ok(table(
        title,
        tar_len,
        &dd_name,
        &stage_name,
        TAR_REFERENCE,
        &runs,
    ))
}

/// The reference row of the tar table.
const TAR_REFERENCE: &str = "reference: mkfs.ext4 + GNU tar -x + umount";
/// The reference row of the clone table.
const CLONE_REFERENCE: &str = "reference: mkfs.ext4 + cp -a + umount";

/// Times the standard tools doing a stage's job on slot B: a fresh ext4, `fill` (a shell
/// command given the mount point as `$1`), then `umount` (which writes everything back).
fn reference(target: &Target, dir: &Path, fill: &str) -> Result<Measure> {
    let mnt = dir.join("reference-mnt");
    fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
    let script = format!(
        "set -e; mkfs.ext4 -F -q -E nodiscard {slot}; mount {slot} \"$1\"; \
         if {fill}; then umount \"$1\"; else umount \"$1\"; exit 1; fi",
        slot = quote(target.slot_b)
    );
    timed(
        Command::new("sh")
            .args(["-c", &script, "reference"])
            .arg(&mnt),
    )
    .with_context(|| format!("reference run on {}: {fill}", target.slot_b.display()))
}

/// Quotes a path for `sh`.
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// `stage --clone` of the tree of `tar` extracted on a scratch ext4 against `dd` of as many
/// bytes of the tar as the clone copied.
fn bench_clone(target: &Target, dir: &Path, tar: &Path, tar_len: u64) -> Result<Table> {
    eprintln!("bench: extracting {} for the clone source", tar.display());
    let image = dir.join("clone-src.img");
    let f = fs::File::create(&image).with_context(|| format!("create {}", image.display()))?;
    f.set_len(tar_len + SCRATCH_HEADROOM_MIB * MIB)
        .with_context(|| format!("size {}", image.display()))?;
    drop(f);
    sh(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "clone-src", "-E", "nodiscard"])
        .arg(&image))
    .with_context(|| format!("mkfs.ext4 {}", image.display()))?;
    let src = Mounted::new(&image, &dir.join("clone-src"), "loop")?;
    util::extract_tar(tar, src.path())?;
    let du = sh(Command::new("du").arg("-sb").arg(src.path()))
        .with_context(|| format!("du -sb {}", src.path().display()))?;
    let apparent: u64 = du
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sb {}: unexpected output {du:?}", src.path().display()))?;

    let stage_name = "abupdate stage --clone".to_owned();
    let mut runs = Vec::new();
    let mut copied: Option<u64> = None;
    for round in 1..=RUNS {
        eprintln!("bench: round {round}/{RUNS}: {stage_name}");
        let (m, report) = timed_stdout(
            abupdate_cmd(target.bin, target.config)
                .env("ABUPDATE_CLONE_ROOT", src.path())
                .args(["--json", "stage", "--clone"]),
        )
        .with_context(|| {
            format!(
                "{stage_name} of {} onto {}",
                src.path().display(),
                target.slot_b.display()
            )
        })?;
        let bytes = image_bytes(&report, &stage_name)?;
        if let Some(earlier) = copied {
            ensure!(
                earlier == bytes,
                "{stage_name} copied {bytes} bytes, {earlier} the round before"
            );
        }
        ensure!(
            bytes <= tar_len,
            "{stage_name} copied {bytes} bytes, more than {} holds ({tar_len})",
            tar.display()
        );
        copied = Some(bytes);
        eprintln!("bench: round {round}/{RUNS}: dd the first {bytes} bytes of the tar");
        let dd = timed(
            dd_cmd(tar, target.slot_b)
                .args(["iflag=count_bytes".to_owned(), format!("count={bytes}")]),
        )
        .with_context(|| {
            format!(
                "dd the first {bytes} bytes of {} onto {}",
                tar.display(),
                target.slot_b.display()
            )
        })?;
        eprintln!("bench: round {round}/{RUNS}: {CLONE_REFERENCE}");
        let tool = reference(
            target,
            dir,
            &format!("cp -a --one-file-system {}/. \"$1\"", quote(src.path())),
        )?;
        runs.push((dd, m, tool));
    }
    src.close()?;
    let bytes = copied.context("no clone round ran")?;
    let name = file_name(tar);
    let title = format!(
        "clone: the tree of {name} extracted on a scratch ext4 ({:.0} MiB apparent, du -sb), \
         slot B {SLOT_MIB} MiB\n\
         copied: {:.0} MiB of file data ({bytes} bytes: the stage report's image_bytes)\n\
         baseline: dd of the first {bytes} bytes of {name} onto slot B (iflag=count_bytes)",
        apparent as f64 / MIB as f64,
        bytes as f64 / MIB as f64,
    );
    let dd_name = format!("dd {name} head ({DD_FLAGS})");
    Ok(table(
        title,
        bytes,
        &dd_name,
        &stage_name,
        CLONE_REFERENCE,
        &runs,
    ))
}

/// A table of `(dd, stage, reference)` measurements, one triple per round.
fn table(
    title: String,
    bytes: u64,
    dd_name: &str,
    stage_name: &str,
    reference_name: &str,
    runs: &[(Measure, Measure, Measure)],
) -> Table {
    let mut t = Table::new(title, bytes);
    for &(dd, m, tool) in runs {
        t.record(dd_name, dd, dd);
        t.record(stage_name, m, dd);
        t.record(reference_name, tool, dd);
    }
    t
}

/// `image_bytes` of the JSON report `abupdate --json stage` printed.
fn image_bytes(report: &str, what: &str) -> Result<u64> {
    let r: StageJson = serde_json::from_str(report)
        .with_context(|| format!("parse the JSON report of {what}: {report:?}"))?;
    Ok(r.image_bytes)
}

/// The last component of `p`, for the table.
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_image_bytes_from_the_stage_report() {
        let report = r#"{"slot": "b", "image_bytes": 332286132, "steps": []}"#;
        assert_eq!(image_bytes(report, "stage").expect("parses"), 332_286_132);
        assert!(image_bytes("slot b staged", "stage").is_err());
    }
}
