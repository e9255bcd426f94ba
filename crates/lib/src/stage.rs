//! `abupdate stage`: stream an image onto the spare slot, verify it, give the filesystem its
//! own identity, and prepare the slot (manifest, fstab, services, kernel, version record).
//!
//! The slot's first [`HEAD_LEN`] bytes (which hold the ext4 superblock) are zeroed before
//! anything else and written last, only once the checksum matched: a stage that fails or is
//! cut short leaves a slot without a filesystem, which `status` shows as empty. The boot
//! partition is written only when the stage succeeded.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::context::{failpoint, load_all, mount_private, Context};
use crate::disk::{PartitionInfo, SlotId};
use crate::error::{Error, Result};
use crate::fsinfo;
use crate::slotfs::{find_kernel, SlotRoot};
use crate::state::{self, OpRecord, SlotRecord, SlotState};

/// Bytes at the start of the slot held back until the image is verified.
pub const HEAD_LEN: usize = 64 * 1024;

/// Options of `stage`.
#[derive(Debug, Clone)]
pub struct StageOpts {
    /// Image path or http(s) URL.
    pub source: String,
    /// Expected sha256 of the source file (hex).
    pub sha256: Option<String>,
    /// URL or path of a SHA256SUMS-style file naming the source.
    pub sha256_url: Option<String>,
    /// Print the plan and write nothing.
    pub dry_run: bool,
    /// Show a progress bar / periodic lines.
    pub progress: bool,
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
    /// Services enabled.
    pub services: Vec<String>,
    /// Plan lines (dry run) or steps done.
    pub steps: Vec<String>,
}

impl std::fmt::Display for StageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.steps {
            writeln!(f, "{}{s}", if self.dry_run { "would " } else { "" })?;
        }
        if self.dry_run {
            write!(f, "dry run: nothing was written")
        } else {
            write!(
                f,
                "slot {} staged: {} from {} (sha256 {})",
                self.slot,
                self.os.clone().unwrap_or_default(),
                self.source,
                self.sha256
            )
        }
    }
}

/// Checks that nothing uses the target partition: not the root, not mounted, no holders.
fn check_target_free(p: &PartitionInfo) -> Result<()> {
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
fn open_target(p: &PartitionInfo) -> Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc_o_excl())
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

fn libc_o_excl() -> i32 {
    nix::fcntl::OFlag::O_EXCL.bits()
}

/// Writes the image to the partition, holding back the first [`HEAD_LEN`] bytes.
struct SlotWriter<'a> {
    file: &'a File,
    device: &'a Path,
    head: Vec<u8>,
    offset: u64,
}

impl Write for SlotWriter<'_> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        if self.head.len() < HEAD_LEN {
            let take = (HEAD_LEN - self.head.len()).min(buf.len());
            self.head.extend_from_slice(&buf[..take]);
            self.offset += take as u64;
            buf = &buf[take..];
        }
        if !buf.is_empty() {
            self.file.write_all_at(buf, self.offset)?;
            self.offset += buf.len() as u64;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SlotWriter<'_> {
    fn finish(self) -> Result<()> {
        let dev = self.device;
        self.file.sync_all().map_err(Error::io("fsync", dev))?;
        self.file
            .write_all_at(&self.head, 0)
            .map_err(Error::io("write the verified head of the image to", dev))?;
        self.file.sync_all().map_err(Error::io("fsync", dev))
    }
}

fn expected_sha256(opts: &StageOpts, src: &abupdate_stream::Source) -> Result<String> {
    let serr = |name: &str| {
        let name = name.to_string();
        move |source| Error::Stream {
            source_name: name,
            source,
        }
    };
    match (&opts.sha256, &opts.sha256_url) {
        (Some(h), None) => abupdate_stream::parse_hex_sha256(h).map_err(serr("--sha256")),
        (None, Some(u)) => {
            let sums = abupdate_stream::Source::parse(u).map_err(serr(u))?;
            let text = abupdate_stream::fetch_text(&sums, &abupdate_stream::OpenOptions::default())
                .map_err(serr(u))?;
            let name = src.file_name().ok_or_else(|| {
                Error::Refused(format!(
                    "cannot tell the file name of {} to look up in {u}",
                    opts.source
                ))
            })?;
            abupdate_stream::parse_sha256sums(&text, &name).map_err(serr(u))
        }
        _ => Err(Error::Refused(
            "give exactly one of --sha256 or --sha256-url".into(),
        )),
    }
}

/// `abupdate stage`.
pub fn stage(ctx: &Context, opts: &StageOpts) -> Result<StageReport> {
    let booted = ctx.booted()?;
    let src = abupdate_stream::Source::parse(&opts.source).map_err(|source| Error::Stream {
        source_name: opts.source.clone(),
        source,
    })?;
    let expected = expected_sha256(opts, &src)?;
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(!opts.dry_run)?;
    let (mut st, _bs, facts) = load_all(ctx, &boot, booted)?;
    let target = state::check_stage(&facts).map_err(Error::Refused)?;
    let part = ctx.layout.slot(target).clone();
    if part.rdev == ctx.layout.slot(booted).rdev {
        return Err(Error::Internal(
            "target and booted slot are the same partition".into(),
        ));
    }
    check_target_free(&part)?;
    let serr = |source| Error::Stream {
        source_name: src.display_name(),
        source,
    };
    let mut opened = src
        .open(&abupdate_stream::OpenOptions::default())
        .map_err(serr)?;
    let compression = opened.compression().map_err(serr)?;
    if compression == abupdate_stream::Compression::None {
        if let Some(len) = opened.len() {
            if len > part.size_bytes {
                return Err(Error::Verification(format!(
                    "image {} ({len} bytes) is larger than slot {target} ({}, {} bytes)",
                    src.display_name(),
                    part.device.display(),
                    part.size_bytes
                )));
            }
        }
    }
    let label = part.partlabel.clone();
    let mut steps = vec![
        format!(
            "write {} ({}) onto slot {target} ({}, {} MiB)",
            src.display_name(),
            compression.as_str(),
            part.device.display(),
            part.size_bytes >> 20
        ),
        format!("verify sha256 {expected}"),
        format!("grow the filesystem to the partition, give it a new UUID and the label {label}"),
        format!(
            "copy the manifest ({} entries) into the slot",
            ctx.cfg.manifest.include.len()
        ),
        "write the slot's /etc/fstab (boot and data partitions by UUID)".to_string(),
    ];
    if !ctx.cfg.services.is_empty() {
        steps.push(format!("enable {}", ctx.cfg.services.join(", ")));
    }
    steps.push("find the kernel and initrd in the slot's /boot and record the OS version".into());
    let mut report = StageReport {
        slot: target,
        device: part.device.display().to_string(),
        source: src.display_name(),
        sha256: expected.clone(),
        dry_run: opts.dry_run,
        source_bytes: opened.len().unwrap_or(0),
        image_bytes: 0,
        os: None,
        kernel: None,
        manifest_entries: 0,
        manifest_missing: Vec::new(),
        services: ctx.cfg.services.clone(),
        steps,
    };
    if opts.dry_run {
        open_target(&part).map(drop)?;
        boot.close()?;
        return Ok(report);
    }

    let hook_env = vec![
        ("ABUPDATE_OP", "stage".to_string()),
        ("ABUPDATE_BOOTED_SLOT", booted.as_str().to_string()),
        ("ABUPDATE_TARGET_SLOT", target.as_str().to_string()),
        ("ABUPDATE_SOURCE", src.display_name()),
        ("ABUPDATE_SHA256", expected.clone()),
    ];
    crate::hooks::run(&ctx.cfg, crate::hooks::HookPoint::PreStage, &hook_env)?;

    // 1. Invalidate the slot so an interrupted stage can never look like a filesystem.
    let file = open_target(&part)?;
    file.write_all_at(&vec![0u8; HEAD_LEN], 0)
        .map_err(Error::io("invalidate the head of", &part.device))?;
    file.sync_all().map_err(Error::io("fsync", &part.device))?;
    failpoint("stage.after-invalidate");

    // 2. Stream: read → hash → decompress → write.
    let mut writer = SlotWriter {
        file: &file,
        device: &part.device,
        head: Vec::with_capacity(HEAD_LEN),
        offset: 0,
    };
    let mut progress: Box<dyn abupdate_stream::Progress> = if opts.progress {
        abupdate_stream::reporter("stage")
    } else {
        Box::new(abupdate_stream::NoProgress)
    };
    let copy_opts = abupdate_stream::CopyOptions {
        max_image_bytes: Some(part.size_bytes),
    };
    let stats =
        abupdate_stream::copy(opened, &mut writer, &copy_opts, progress.as_mut()).map_err(serr)?;
    if stats.source_sha256 != expected {
        return Err(Error::Verification(format!(
            "sha256 of {} is {}, expected {expected}; slot {target} was left without a filesystem",
            src.display_name(),
            stats.source_sha256
        )));
    }
    if writer.head.len() < 2048 || fsinfo::parse_ext4_superblock(&writer.head[1024..2048]).is_none()
    {
        return Err(Error::Verification(format!(
            "{} is not an ext2/3/4 filesystem image; slot {target} was left without a filesystem",
            src.display_name()
        )));
    }
    writer.finish()?;
    drop(file);
    failpoint("stage.after-write");
    report.image_bytes = stats.image_bytes;
    report.source_bytes = stats.source_bytes;

    // 3. Check, grow, and give the filesystem its own identity (unmounted, see VM-NOTES).
    let dev = part.device.display().to_string();
    fsck(&dev)?;
    abupdate_utils::Cmd::new("resize2fs")
        .arg(&dev)
        .run()
        .map_err(Error::cmd(format!("grow the filesystem on {dev}")))?;
    let fs_uuid = uuid::Uuid::new_v4().hyphenated().to_string();
    abupdate_utils::Cmd::new("tune2fs")
        .args(["-U", &fs_uuid, "-L", &label, &dev])
        .run()
        .map_err(Error::cmd(format!("set UUID and label of {dev}")))?;
    failpoint("stage.after-fs-setup");

    // 4. Prepare the slot.
    let rec = prepare(ctx, &part, &fs_uuid, &mut report, &hook_env)?;
    failpoint("stage.after-prepare");

    // 5. Record it: the only write to the boot partition.
    let msg = format!(
        "slot {target} staged with {} from {}",
        rec.os.pretty_name,
        src.display_name()
    );
    st.slots.insert(
        target,
        SlotRecord {
            source: Some(src.display_name()),
            sha256: Some(expected),
            staged_at: Some(state::now()),
            ..rec
        },
    );
    boot.store()
        .record(&mut st, OpRecord::new("stage", true, Some(target), &msg))?;
    boot.close()?;
    Ok(report)
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

/// Mounts the staged slot privately and prepares it: manifest, fstab, services, kernel, OS.
fn prepare(
    ctx: &Context,
    part: &PartitionInfo,
    fs_uuid: &str,
    report: &mut StageReport,
    hook_env: &[(&str, String)],
) -> Result<SlotRecord> {
    let m = mount_private(&part.device, false)?;
    let root = SlotRoot::open(m.path())?;

    let manifest = abupdate_treecopy::Manifest {
        include: ctx.cfg.manifest.include.clone(),
        exclude: ctx.cfg.manifest.exclude.clone(),
    };
    let plan = abupdate_treecopy::plan(Path::new("/"), &manifest)?;
    let copied = abupdate_treecopy::copy_into(Path::new("/"), &plan, m.path())?;
    report.manifest_entries = copied.files + copied.dirs + copied.symlinks + copied.special;
    report.manifest_missing = plan.missing.clone();
    for missing in &plan.missing {
        tracing::warn!("manifest entry {missing} matches nothing on this host");
    }

    write_fstab(ctx, &root)?;

    if !ctx.cfg.services.is_empty() {
        abupdate_utils::Cmd::new("systemctl")
            .arg(format!("--root={}", m.path().display()))
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
    rustix::fs::syncfs(std::fs::File::open(m.path()).map_err(Error::io("open", m.path()))?)
        .map_err(|e| Error::io("syncfs", m.path())(e.into()))?;
    drop(root);
    m.close()?;
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

/// Generates the slot's fstab lines for the shared partitions (pure).
pub fn fstab_lines(boot: (&str, &Path), data: Option<(&str, &Path)>) -> String {
    let mut s = String::from(
        "# Written by abupdate stage. The root filesystem comes from the kernel command line\n\
         # (root=PARTUUID=...); the boot and data partitions are shared by both slots.\n",
    );
    s.push_str(&format!(
        "UUID={} {} auto defaults,nofail 0 2\n",
        boot.0,
        boot.1.display()
    ));
    if let Some((uuid, mp)) = data {
        s.push_str(&format!(
            "UUID={uuid} {} auto defaults,nofail 0 2\n",
            mp.display()
        ));
    }
    s
}

/// Keeps the image's own fstab lines except those for `/` and the shared mount points (pure).
pub fn merge_fstab(image: &str, ours: &str, managed: &[&Path]) -> String {
    let mut out = ours.to_string();
    let kept: Vec<&str> = image
        .lines()
        .filter(|l| {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') {
                return false;
            }
            let mp = t.split_whitespace().nth(1).unwrap_or("");
            mp != "/" && !managed.iter().any(|m| Path::new(mp) == *m)
        })
        .collect();
    if !kept.is_empty() {
        out.push_str("# Kept from the image's fstab:\n");
        for l in kept {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn write_fstab(ctx: &Context, root: &SlotRoot) -> Result<()> {
    let uuid_of = |p: &PartitionInfo| -> Result<String> {
        fsinfo::read_ext4_info(&p.device)
            .map_err(Error::io("read superblock of", &p.device))?
            .map(|i| i.uuid)
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{} holds no ext2/3/4 filesystem to put in fstab",
                    p.device.display()
                ))
            })
    };
    let boot_mp = ctx.cfg.boot_mountpoint();
    let boot_uuid = uuid_of(&ctx.layout.boot)?;
    let data = match (&ctx.layout.data, ctx.cfg.data_mountpoint()) {
        (Some(p), Some(mp)) => Some((uuid_of(p)?, mp)),
        _ => None,
    };
    let ours = fstab_lines(
        (&boot_uuid, &boot_mp),
        data.as_ref().map(|(u, m)| (u.as_str(), m.as_path())),
    );
    let image = root.read_to_string("/etc/fstab")?.unwrap_or_default();
    let mut managed = vec![boot_mp.as_path()];
    if let Some((_, mp)) = &data {
        managed.push(mp.as_path());
    }
    root.create_dir_all("/etc")?;
    root.write_file(
        "/etc/fstab",
        merge_fstab(&image, &ours, &managed).as_bytes(),
        0o644,
    )?;
    root.create_dir_all(&boot_mp.to_string_lossy())?;
    if let Some((_, mp)) = &data {
        root.create_dir_all(&mp.to_string_lossy())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_is_merged() {
        let ours = fstab_lines(
            ("B", Path::new("/boot/abboot")),
            Some(("D", Path::new("/data"))),
        );
        assert!(ours.contains("UUID=B /boot/abboot auto"));
        assert!(ours.contains("UUID=D /data auto"));
        let image = "# comment\nUUID=x / ext4 errors=remount-ro 0 1\nUUID=y /data ext4 defaults 0 2\ntmpfs /tmp tmpfs defaults 0 0\n";
        let m = merge_fstab(
            image,
            &ours,
            &[Path::new("/boot/abboot"), Path::new("/data")],
        );
        assert!(m.contains("tmpfs /tmp"));
        assert!(!m.contains("UUID=x /"));
        assert!(!m.contains("UUID=y"));
    }

    #[test]
    fn slot_writer_holds_back_the_head() {
        let f = tempfile::tempfile().expect("tempfile");
        let dev = PathBuf::from("/test");
        let mut w = SlotWriter {
            file: &f,
            device: &dev,
            head: Vec::new(),
            offset: 0,
        };
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
        for chunk in data.chunks(7000) {
            w.write_all(chunk).expect("write");
        }
        let mut on_disk = vec![0u8; data.len()];
        f.read_exact_at(&mut on_disk, 0).expect("read");
        assert!(
            on_disk[..HEAD_LEN].iter().all(|&b| b == 0),
            "head written early"
        );
        assert_eq!(&on_disk[HEAD_LEN..], &data[HEAD_LEN..]);
        w.finish().expect("finish");
        f.read_exact_at(&mut on_disk, 0).expect("read");
        assert_eq!(on_disk, data);
    }
}
