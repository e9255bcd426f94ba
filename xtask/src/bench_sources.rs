//! Benchmark of the tree sources of `abupdate stage` against the standard tools doing the
//! same job on the same slot, in the run of `bench_stage` (its disk, binary, configuration
//! and helpers):
//!
//! - `abupdate stage --from-tar bookworm.tar` (the VM's Debian 12 root, cached by `images`)
//!   against `mkfs.ext4`, GNU `tar -x`, `sync` and `umount` of the same tar on the slot;
//! - `abupdate stage --clone` of that root extracted on a scratch ext4, given to the binary
//!   with `ABUPDATE_CLONE_ROOT` (honoured only on the pretended boot `abupdate_cmd` sets up),
//!   against `mkfs.ext4`, `cp -a`, `sync` and `umount` of the same tree.
//!
//! Each is measured [`RUNS`] times, every round's stage against the tool run of the same
//! round; the target is a ratio of at most [`TARGET`].

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::bench_stage::{
    abupdate_cmd, file_name, settle, sh, sha256, timed, timed_stage, Measure, Mounted, Table, MIB,
    RUNS, SLOT_MIB,
};
use crate::images::Images;
use crate::util;

/// Room the tar's tree must leave free in slot B (ext4 metadata, small files' blocks).
const SLOT_HEADROOM_MIB: u64 = 256;
/// Room the scratch ext4 of the clone source gets beyond the tar's size.
const SCRATCH_HEADROOM_MIB: u64 = 256;
/// The ratio the tar and clone stages should stay under.
const TARGET: f64 = 1.0;
/// The baseline of the tar table.
const TAR_REFERENCE: &str = "mkfs.ext4 + GNU tar -x + sync";
/// The baseline of the clone table.
const CLONE_REFERENCE: &str = "mkfs.ext4 + cp -a + sync";

/// The release binary, its configuration and the slot the stages and baselines write.
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
pub(crate) fn measure(target: &Target, dir: &Path, imgs: &Images) -> Result<Vec<Table>> {
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

/// `stage --from-tar` of `tar` against mkfs + GNU `tar -x` + sync of it onto the slot.
fn bench_tar(
    target: &Target,
    dir: &Path,
    tar: &Path,
    tar_len: u64,
    tar_sha: &str,
) -> Result<Table> {
    let name = file_name(tar);
    let stage_name = format!("abupdate stage --from-tar {name}");
    let mut table = Table::new(String::new(), tar_len, TAR_REFERENCE, Some(TARGET));
    let mut extracted = 0;
    for round in 1..=RUNS {
        eprintln!("bench: round {round}/{RUNS}: {TAR_REFERENCE}");
        let tool = reference(
            target,
            dir,
            &format!(
                "tar --xattrs --xattrs-include='*' --numeric-owner -xpf {} -C \"$1\"",
                quote(tar)
            ),
        )?;
        table.record(TAR_REFERENCE, tool, tool);
        eprintln!("bench: round {round}/{RUNS}: {stage_name}");
        settle(target.slot_b)?;
        let mut cmd = abupdate_cmd(target.bin, target.config);
        cmd.args(["--json", "stage", "--from-tar"]).arg(tar).args([
            "--sha256",
            tar_sha,
            "--allow-insecure-http",
        ]);
        let (m, report) = timed_stage(&mut cmd)
            .with_context(|| format!("{stage_name} onto {}", target.slot_b.display()))?;
        extracted = report.image_bytes;
        table.record(&stage_name, m, tool);
    }
    table.set_title(format!(
        "tar: {}, {:.0} MiB ({:.0} MiB of file data once extracted), slot B {SLOT_MIB} MiB\n\
         baseline: {TAR_REFERENCE} of the same tar onto slot B; target <= {TARGET:.2}x",
        tar.display(),
        tar_len as f64 / MIB as f64,
        extracted as f64 / MIB as f64,
    ));
    Ok(table)
}

/// Times the standard tools doing a stage's job on slot B: a fresh ext4 (without discard,
/// as abupdate makes it), `fill` (a shell command given the mount point as `$1`), then
/// `sync` and `umount`.
fn reference(target: &Target, dir: &Path, fill: &str) -> Result<Measure> {
    settle(target.slot_b)?;
    let mnt = dir.join("reference-mnt");
    fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
    let script = format!(
        "set -e; mkfs.ext4 -F -q -E nodiscard {slot}; mount {slot} \"$1\"; \
         if {fill}; then sync -f \"$1\"; umount \"$1\"; else umount \"$1\"; exit 1; fi",
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

/// `stage --clone` of the tree of `tar` extracted on a scratch ext4 against mkfs +
/// `cp -a` + sync of the same tree.
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

    let stage_name = "abupdate stage --clone";
    let mut copied: Option<u64> = None;
    let mut table = Table::new(String::new(), apparent, CLONE_REFERENCE, Some(TARGET));
    for round in 1..=RUNS {
        eprintln!("bench: round {round}/{RUNS}: {CLONE_REFERENCE}");
        let tool = reference(
            target,
            dir,
            &format!("cp -a --one-file-system {}/. \"$1\"", quote(src.path())),
        )?;
        table.record(CLONE_REFERENCE, tool, tool);
        eprintln!("bench: round {round}/{RUNS}: {stage_name}");
        settle(target.slot_b)?;
        let mut cmd = abupdate_cmd(target.bin, target.config);
        cmd.env("ABUPDATE_CLONE_ROOT", src.path())
            .args(["--json", "stage", "--clone"]);
        let (m, report) = timed_stage(&mut cmd).with_context(|| {
            format!(
                "{stage_name} of {} onto {}",
                src.path().display(),
                target.slot_b.display()
            )
        })?;
        if let Some(earlier) = copied {
            ensure!(
                earlier == report.image_bytes,
                "{stage_name} copied {} bytes, {earlier} the round before",
                report.image_bytes
            );
        }
        copied = Some(report.image_bytes);
        table.record(stage_name, m, tool);
    }
    src.close()?;
    let bytes = copied.context("no clone round ran")?;
    table.set_title(format!(
        "clone: the tree of {} extracted on a scratch ext4 ({:.0} MiB apparent, du -sb; \
         {:.0} MiB of file data copied), slot B {SLOT_MIB} MiB\n\
         baseline: {CLONE_REFERENCE} of the same tree onto slot B; target <= {TARGET:.2}x",
        file_name(tar),
        apparent as f64 / MIB as f64,
        bytes as f64 / MIB as f64,
    ));
    Ok(table)
}
