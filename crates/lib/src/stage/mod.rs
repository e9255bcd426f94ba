//! `abupdate stage`: fill the spare slot from a source, give the filesystem its own
//! identity, and prepare the slot (manifest, fstab, services, kernel, version record).
//!
//! One module per kind of source, each a [`SlotSource`] ([`image`], [`tar`], [`bootstrap`],
//! [`clone`]), all chosen in [`source_for`] and run through the same steps here: lock,
//! checks, the pre-stage hooks, the slot's head invalidated ([`target::HeadGuard`]), the
//! source fills the slot and hands back its mounted filesystem, [`prepare`], then
//! [`record_staged`] on the boot partition. [`target`] holds the target partition and
//! its writer.
//!
//! The slot's first [`HEAD_LEN`] bytes (which hold the ext4 superblock) are zeroed before
//! anything else and written last, only once the checksum matched: a stage that fails or is
//! cut short leaves a slot without a filesystem, which `status` shows as empty. The boot
//! partition is written only when the stage succeeded.

mod bootstrap;
mod clone;
mod fetch;
mod image;
mod tar;
mod target;

use std::path::Path;
use std::time::Instant;

use abupdate_utils::mount::TempMount;
use serde::Serialize;

use crate::context::{failpoint, load_all, Context};
use crate::disk::{PartitionInfo, SlotId};
use crate::error::{Error, Result};
use crate::fsinfo;
use crate::slotfs::{find_kernel, SlotRoot};
use crate::state::{self, SlotRecord, SlotState};

pub use clone::CLONE_ROOT_ENV;
pub use target::{WriteStats, Zeroing, HEAD_LEN, ZERO_BLOCK};

/// How the expected sha256 of a downloaded source is given.
#[derive(Debug, Clone)]
pub enum Checksum {
    /// The hex digest itself.
    Hex(String),
    /// URL or path of a SHA256SUMS-style file naming the source.
    SumsUrl(String),
    /// A release of the signed channel: its signed sha256 and exact length.
    Signed {
        /// The sha256 from the channel's targets metadata (lowercase hex).
        sha256: String,
        /// The length from the same metadata; reading stops there.
        length: u64,
    },
}

/// Where the new slot's content comes from.
#[derive(Debug, Clone)]
pub enum StageSource {
    /// A raw ext4 filesystem image (path or http(s) URL, optionally compressed).
    Image {
        /// Path or URL.
        source: String,
        /// Its expected sha256.
        checksum: Checksum,
    },
    /// A tar archive of a root tree, extracted onto a fresh filesystem.
    Tar {
        /// Path or URL.
        source: String,
        /// Its expected sha256.
        checksum: Checksum,
    },
    /// An installer command run with the mounted fresh filesystem as `{target}`.
    Bootstrap {
        /// The command (run with `sh -c`; `{target}` is replaced by the quoted mount path).
        command: String,
    },
    /// A copy of the running system, then an optional command chrooted in the copy.
    Clone {
        /// Command run chrooted in the copy (e.g. `apt-get update && apt-get -y full-upgrade`).
        run: Option<String>,
    },
}

/// Options of `stage`.
#[derive(Debug, Clone)]
pub struct StageOpts {
    /// Where the content comes from.
    pub source: StageSource,
    /// Print the plan and write nothing.
    pub dry_run: bool,
    /// Show a progress bar / periodic lines.
    pub progress: bool,
    /// Accept plain-http URLs (`--allow-insecure-http`; also the config's
    /// `allow_insecure_http`), with a warning.
    pub allow_insecure_http: bool,
}

/// What `stage` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The slot written.
    pub slot: SlotId,
    /// Its device.
    pub device: String,
    /// The source.
    pub source: String,
    /// Verified sha256 of the source.
    pub sha256: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Source bytes read.
    pub source_bytes: u64,
    /// Image bytes written.
    pub image_bytes: u64,
    /// OS of the staged slot.
    pub os: Option<String>,
    /// Kernel found in the slot.
    pub kernel: Option<String>,
    /// Manifest entries copied.
    pub manifest_entries: u64,
    /// Manifest includes that matched nothing on this host.
    pub manifest_missing: Vec<String>,
    /// Manifest files the new release changed: its version is kept as `<path>.abupdate-new`.
    pub manifest_conflicts: Vec<String>,
    /// Services enabled.
    pub services: Vec<String>,
    /// Plan lines (dry run) or steps done.
    pub steps: Vec<String>,
    /// How the image went onto the slot: bytes written (with `O_DIRECT`), zero blocks
    /// made to read as zeros without writing them (image sources only).
    pub image_writes: Option<WriteStats>,
    /// Wall and CPU time of each step, in order.
    pub phases: Vec<PhaseTime>,
}

/// Wall-clock and CPU time of one step of a stage (`write` is the data path: the image
/// streamed, the archive extracted, the tree copied or the installer run).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    /// The step: `mkfs`, `write`, `check`, `resize`, `identity`, `mount`, `run`,
    /// `prepare`, `record`.
    pub phase: String,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// User and system CPU seconds of abupdate and the commands it ran.
    pub cpu_seconds: f64,
}

/// User and system CPU seconds used so far by this process and its waited-for children.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let secs = |who| {
        getrusage(who).map_or(0.0, |u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
    };
    secs(UsageWho::RUSAGE_SELF) + secs(UsageWho::RUSAGE_CHILDREN)
}

/// Runs `f` as the step `phase`, recording its wall and CPU time in the report.
fn time<T>(
    report: &mut StageReport,
    phase: &str,
    f: impl FnOnce(&mut StageReport) -> Result<T>,
) -> Result<T> {
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let res = f(report);
    report.phases.push(PhaseTime {
        phase: phase.to_string(),
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    });
    res
}

impl std::fmt::Display for StageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = if self.dry_run { "would " } else { "- " };
        for s in &self.steps {
            writeln!(f, "{prefix}{s}")?;
        }
        if self.dry_run {
            return write!(f, "dry run: nothing was written");
        }
        write!(
            f,
            "slot {} staged: {} from {}",
            self.slot,
            self.os.clone().unwrap_or_default(),
            self.source
        )?;
        if !self.sha256.is_empty() {
            write!(f, " (sha256 {})", self.sha256)?;
        }
        for c in &self.manifest_conflicts {
            write!(f, "\nnote: the new release changed {c}; your version was carried over and the new release's is kept as {c}{}: merge them", crate::conflicts::SUFFIX)?;
        }
        for m in &self.manifest_missing {
            write!(f, "\nnote: manifest entry {m} matches nothing on this host")?;
        }
        Ok(())
    }
}

/// One way of filling the spare slot.
trait SlotSource {
    /// The source as recorded in the state and shown in messages.
    fn name(&self) -> String;
    /// The expected (and, once staged, verified) sha256 of a downloaded source.
    fn sha256(&self) -> Option<String>;
    /// The plan lines of this source, for a slot described as `dest` labelled `label`.
    fn plan(&self, dest: &str, label: &str) -> Vec<String>;
    /// What a dry run checks of the source (it opens) for the slot `part`; fills
    /// `report.source_bytes`.
    fn dry_run(&self, part: &PartitionInfo, report: &mut StageReport) -> Result<()>;
    /// Verifies what can be verified before the slot is touched (a local archive's
    /// checksum: nothing is extracted from an archive that does not match).
    fn verify_first(&self, _part: &PartitionInfo) -> Result<()> {
        Ok(())
    }
    /// Fills the slot, whose head is invalidated, and returns its filesystem mounted, with
    /// the UUID `slot.fs_uuid` and the partition's label.
    fn fill(&self, slot: &Slot<'_>, report: &mut StageReport) -> Result<TempMount>;
}

/// The slot being staged, as the sources see it.
struct Slot<'a> {
    ctx: &'a Context,
    part: &'a PartitionInfo,
    id: SlotId,
    /// The new filesystem's UUID.
    fs_uuid: &'a str,
    /// Show progress.
    progress: bool,
    /// How the target zeroes (found while invalidating its head).
    zeroing: Zeroing,
}

/// The source for `source`. A download's checksum is resolved here, before the lock, under
/// the transport policy: https only, unless the operator allowed plain http or the source
/// is a channel release (checked against signed length and hash, so plain http carries it).
fn source_for(
    source: &StageSource,
    booted: SlotId,
    insecure_http: bool,
) -> Result<Box<dyn SlotSource>> {
    let transport = |checksum: &Checksum| match checksum {
        Checksum::Signed { .. } => abupdate_stream::Transport::SignedMetadata,
        _ if insecure_http => abupdate_stream::Transport::AllowInsecureHttp,
        _ => abupdate_stream::Transport::HttpsOnly,
    };
    Ok(match source {
        StageSource::Image { source, checksum } => Box::new(image::ImageSource {
            fetch: fetch::Fetch::resolve(source, checksum, transport(checksum))?,
        }),
        StageSource::Tar { source, checksum } => Box::new(tar::TarSource {
            fetch: fetch::Fetch::resolve(source, checksum, transport(checksum))?,
        }),
        StageSource::Bootstrap { command } => Box::new(bootstrap::BootstrapSource {
            command: command.clone(),
        }),
        StageSource::Clone { run } => Box::new(clone::CloneSource {
            run: run.clone(),
            booted,
        }),
    })
}

fn plan_steps(
    ctx: &Context,
    source: &dyn SlotSource,
    part: &PartitionInfo,
    target: SlotId,
) -> Vec<String> {
    let dest = format!(
        "slot {target} ({}, {} MiB)",
        part.device.display(),
        part.size_bytes >> 20
    );
    let mut steps = source.plan(&dest, &part.partlabel);
    steps.push(format!(
        "copy the manifest ({} entries) into the slot",
        ctx.cfg.manifest.include.len()
    ));
    steps.push(
        "write the slot's /etc/fstab (its root by PARTUUID, boot and data partitions by UUID)"
            .into(),
    );
    if !ctx.cfg.services.is_empty() {
        steps.push(format!("enable {}", ctx.cfg.services.join(", ")));
    }
    steps.push("find the kernel and initrd in the slot's /boot and record the OS version".into());
    steps
}

/// `abupdate stage`.
pub fn stage(ctx: &Context, opts: &StageOpts) -> Result<StageReport> {
    let booted = ctx.booted()?;
    let source = source_for(
        &opts.source,
        booted,
        opts.allow_insecure_http || ctx.cfg.allow_insecure_http,
    )?;
    let lock = ctx.lock()?;
    let boot = ctx.mount_boot(false)?;
    let (_st, _bs, facts) = load_all(ctx, &boot, booted)?;
    let target = state::check_stage(&facts).map_err(Error::Refused)?;
    let part = ctx.layout.slot(target).clone();
    if part.rdev == ctx.layout.slot(booted).rdev {
        return Err(Error::Internal(
            "target and booted slot are the same partition".into(),
        ));
    }
    target::check_target_free(&part)?;
    let source_name = source.name();
    let mut report = StageReport {
        slot: target,
        device: part.device.display().to_string(),
        source: source_name.clone(),
        sha256: source.sha256().unwrap_or_default(),
        dry_run: opts.dry_run,
        source_bytes: 0,
        image_bytes: 0,
        os: None,
        kernel: None,
        manifest_entries: 0,
        manifest_missing: Vec::new(),
        manifest_conflicts: Vec::new(),
        services: ctx.cfg.services.clone(),
        steps: plan_steps(ctx, source.as_ref(), &part, target),
        image_writes: None,
        phases: Vec::new(),
    };
    boot.close()?;
    if opts.dry_run {
        target::open_target(&part).map(drop)?;
        source.dry_run(&part, &mut report)?;
        return Ok(report);
    }

    let hook_env = vec![
        ("ABUPDATE_OP", "stage".to_string()),
        ("ABUPDATE_BOOTED_SLOT", booted.as_str().to_string()),
        ("ABUPDATE_TARGET_SLOT", target.as_str().to_string()),
        ("ABUPDATE_SOURCE", source_name.clone()),
        ("ABUPDATE_SHA256", report.sha256.clone()),
    ];
    crate::hooks::run(&ctx.cfg, crate::hooks::HookPoint::PreStage, &hook_env)?;
    source.verify_first(&part)?;

    let fs_uuid = uuid::Uuid::new_v4().hyphenated().to_string();
    // From here on the slot holds no valid filesystem until the guard is disarmed.
    let guard = target::HeadGuard::arm(&part)?;
    failpoint("stage.after-invalidate");
    let slot = Slot {
        ctx,
        part: &part,
        id: target,
        fs_uuid: &fs_uuid,
        progress: opts.progress,
        zeroing: guard.zeroing(),
    };
    let mount = source.fill(&slot, &mut report)?;
    failpoint("stage.after-fs-setup");

    let rec = time(&mut report, "prepare", |r| {
        let rec = prepare(ctx, target, mount.path(), &fs_uuid, r, &hook_env)?;
        mount.close()?;
        Ok(rec)
    })?;
    failpoint("stage.after-prepare");
    guard.disarm();

    // The only write to the boot partition: the record of the staged slot, by the engine.
    let msg = format!(
        "slot {target} staged with {} from {source_name}",
        rec.os.pretty_name
    );
    let rec = SlotRecord {
        source: Some(source_name),
        sha256: source.sha256(),
        staged_at: Some(state::now()),
        ..rec
    };
    time(&mut report, "record", |_| {
        crate::engine::record_staged(ctx, &lock, target, rec, msg).map(drop)
    })?;
    Ok(report)
}

/// Prepares the mounted slot: manifest, fstab, services, post-stage hooks, kernel, OS.
fn prepare(
    ctx: &Context,
    target: SlotId,
    mnt: &Path,
    fs_uuid: &str,
    report: &mut StageReport,
    hook_env: &[(&str, String)],
) -> Result<SlotRecord> {
    let root = SlotRoot::open(mnt)?;

    let manifest = abupdate_treecopy::Manifest {
        include: ctx.cfg.manifest.include.clone(),
        exclude: ctx.cfg.manifest.exclude.clone(),
    };
    let plan = abupdate_treecopy::plan(Path::new("/"), &manifest)
        .map_err(Error::tree("plan the manifest copy"))?;
    report.manifest_conflicts = crate::conflicts::keep_new_versions(Path::new("/"), &plan, &root)?;
    let copied = abupdate_treecopy::copy_into(Path::new("/"), &plan, mnt)
        .map_err(Error::tree("copy manifest into the new slot"))?;
    report.manifest_entries = copied.files + copied.dirs + copied.symlinks + copied.special;
    report.manifest_missing = plan.missing.clone();
    for missing in &plan.missing {
        tracing::warn!("manifest entry {missing} matches nothing on this host");
    }

    crate::fstab::write_fstab(&ctx.cfg, &ctx.layout, target, &root)?;
    crate::bootchain::prepare_slot(ctx, &root)?;

    if !ctx.cfg.services.is_empty() {
        abupdate_utils::Cmd::new("systemctl")
            .arg(format!("--root={}", mnt.display()))
            .arg("enable")
            .args(&ctx.cfg.services)
            .run()
            .map_err(Error::cmd(format!(
                "enable {} in the new slot",
                ctx.cfg.services.join(", ")
            )))?;
    }

    let kernel = find_kernel(&root)?;
    let os = root
        .read_to_string("/etc/os-release")?
        .map(|t| fsinfo::parse_os_release(&t))
        .unwrap_or_default();
    let mut env = hook_env.to_vec();
    env.push(("ABUPDATE_TARGET_OS", os.pretty_name.clone()));
    env.push(("ABUPDATE_SLOT_ROOT", "/".into()));
    crate::hooks::run_chrooted(&ctx.cfg, crate::hooks::HookPoint::PostStage, &root, &env)?;
    report.os = Some(os.pretty_name.clone());
    report.kernel = Some(kernel.kernel.clone());
    rustix::fs::syncfs(std::fs::File::open(mnt).map_err(Error::io("open", mnt))?)
        .map_err(|e| Error::io("syncfs", mnt)(e.into()))?;
    drop(root);
    Ok(SlotRecord {
        state: SlotState::Staged,
        fs_uuid: fs_uuid.to_string(),
        os,
        kernel: kernel.kernel,
        initrd: kernel.initrd,
        source: None,
        sha256: None,
        staged_at: None,
    })
}
