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

use crate::chroot::Chroot;
use crate::context::{failpoint, load_all, mount_private, Context};
use crate::disk::{PartitionInfo, SlotId};
use crate::error::{Error, Result};
use crate::fsinfo;
use crate::slotfs::{find_kernel, SlotRoot};
use crate::state::{self, OpRecord, SlotRecord, SlotState};

/// Bytes at the start of the slot held back until the image is verified.
pub const HEAD_LEN: usize = 64 * 1024;

/// How the expected sha256 of a downloaded source is given.
#[derive(Debug, Clone)]
pub enum Checksum {
    /// The hex digest itself.
    Hex(String),
    /// URL or path of a SHA256SUMS-style file naming the source.
    SumsUrl(String),
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

fn expected_sha256(checksum: &Checksum, src: &abupdate_stream::Source) -> Result<String> {
    let serr = |name: &str| {
        let name = name.to_string();
        move |source| Error::Stream {
            source_name: name,
            source,
        }
    };
    match checksum {
        Checksum::Hex(h) => abupdate_stream::parse_hex_sha256(h).map_err(serr("--sha256")),
        Checksum::SumsUrl(u) => {
            let sums = abupdate_stream::Source::parse(u).map_err(serr(u))?;
            let text = abupdate_stream::fetch_text(&sums, &abupdate_stream::OpenOptions::default())
                .map_err(serr(u))?;
            let name = src.file_name().ok_or_else(|| {
                Error::Refused(format!(
                    "cannot tell the file name of {} to look up in {u}",
                    src.display_name()
                ))
            })?;
            abupdate_stream::parse_sha256sums(&text, &name).map_err(serr(u))
        }
    }
}

/// A downloaded source resolved before the lock is taken: what to open and what it must hash to.
struct Fetch {
    src: abupdate_stream::Source,
    expected: String,
}

fn resolve_fetch(source: &str, checksum: &Checksum) -> Result<Fetch> {
    let src = abupdate_stream::Source::parse(source).map_err(|e| Error::Stream {
        source_name: source.to_string(),
        source: e,
    })?;
    let expected = expected_sha256(checksum, &src)?;
    Ok(Fetch { src, expected })
}

fn stream_err(src: &abupdate_stream::Source) -> impl Fn(abupdate_stream::Error) -> Error + '_ {
    move |source| Error::Stream {
        source_name: src.display_name(),
        source,
    }
}

/// Zeroes the slot's head now and again on drop unless disarmed, so that a stage that fails
/// after a filesystem was made leaves no filesystem behind.
struct HeadGuard {
    device: PathBuf,
    armed: bool,
}

impl HeadGuard {
    fn arm(part: &PartitionInfo) -> Result<HeadGuard> {
        let file = open_target(part)?;
        zero_head(&file, &part.device)?;
        Ok(HeadGuard {
            device: part.device.clone(),
            armed: true,
        })
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

fn zero_head(file: &File, device: &Path) -> Result<()> {
    file.write_all_at(&vec![0u8; HEAD_LEN], 0)
        .map_err(Error::io("invalidate the head of", device))?;
    file.sync_all().map_err(Error::io("fsync", device))
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

fn plan_steps(
    ctx: &Context,
    source: &StageSource,
    fetch: Option<&Fetch>,
    part: &PartitionInfo,
    target: SlotId,
) -> Vec<String> {
    let dest = format!(
        "slot {target} ({}, {} MiB)",
        part.device.display(),
        part.size_bytes >> 20
    );
    let label = &part.partlabel;
    let mut steps = match (source, fetch) {
        (StageSource::Image { .. }, Some(f)) => vec![
            format!("write the image {} onto {dest}", f.src.display_name()),
            format!("verify sha256 {}", f.expected),
            format!(
                "grow the filesystem to the partition, give it a new UUID and the label {label}"
            ),
        ],
        (StageSource::Tar { .. }, Some(f)) => vec![
            format!("make a fresh ext4 filesystem (label {label}) on {dest}"),
            format!("extract the archive {} into it", f.src.display_name()),
            format!("verify sha256 {}", f.expected),
        ],
        (StageSource::Bootstrap { command }, _) => vec![
            format!("make a fresh ext4 filesystem (label {label}) on {dest}"),
            format!("run the installer: {command}"),
            "make sure the slot has a kernel and an initramfs".into(),
        ],
        (StageSource::Clone { run }, _) => {
            let mut v = vec![
                format!("make a fresh ext4 filesystem (label {label}) on {dest}"),
                "copy the running system onto it (not crossing mount points)".into(),
            ];
            if let Some(r) = run {
                v.push(format!("run chrooted in the copy: {r}"));
                v.push("make sure the slot has a kernel and an initramfs".into());
            }
            v
        }
        _ => Vec::new(),
    };
    steps.push(format!(
        "copy the manifest ({} entries) into the slot",
        ctx.cfg.manifest.include.len()
    ));
    steps.push("write the slot's /etc/fstab (boot and data partitions by UUID)".into());
    if !ctx.cfg.services.is_empty() {
        steps.push(format!("enable {}", ctx.cfg.services.join(", ")));
    }
    steps.push("find the kernel and initrd in the slot's /boot and record the OS version".into());
    steps
}

/// `abupdate stage`.
pub fn stage(ctx: &Context, opts: &StageOpts) -> Result<StageReport> {
    let booted = ctx.booted()?;
    let fetch = match &opts.source {
        StageSource::Image { source, checksum } | StageSource::Tar { source, checksum } => {
            Some(resolve_fetch(source, checksum)?)
        }
        _ => None,
    };
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(false)?;
    let (_st, _bs, facts) = load_all(ctx, &boot, booted)?;
    let target = state::check_stage(&facts).map_err(Error::Refused)?;
    let part = ctx.layout.slot(target).clone();
    if part.rdev == ctx.layout.slot(booted).rdev {
        return Err(Error::Internal(
            "target and booted slot are the same partition".into(),
        ));
    }
    check_target_free(&part)?;
    let source_name = match (&opts.source, &fetch) {
        (_, Some(f)) => f.src.display_name(),
        (StageSource::Bootstrap { command }, _) => format!("bootstrap: {command}"),
        (StageSource::Clone { run: Some(r) }, _) => format!("clone of slot {booted}, then: {r}"),
        _ => format!("clone of slot {booted}"),
    };
    let mut report = StageReport {
        slot: target,
        device: part.device.display().to_string(),
        source: source_name.clone(),
        sha256: fetch
            .as_ref()
            .map(|f| f.expected.clone())
            .unwrap_or_default(),
        dry_run: opts.dry_run,
        source_bytes: 0,
        image_bytes: 0,
        os: None,
        kernel: None,
        manifest_entries: 0,
        manifest_missing: Vec::new(),
        manifest_conflicts: Vec::new(),
        services: ctx.cfg.services.clone(),
        steps: plan_steps(ctx, &opts.source, fetch.as_ref(), &part, target),
    };
    boot.close()?;
    if opts.dry_run {
        open_target(&part).map(drop)?;
        if let Some(f) = &fetch {
            let opened = f
                .src
                .open(&abupdate_stream::OpenOptions::default())
                .map_err(stream_err(&f.src))?;
            report.source_bytes = opened.len().unwrap_or(0);
        }
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

    let fs_uuid = uuid::Uuid::new_v4().hyphenated().to_string();
    // From here on the slot holds no valid filesystem until the guard is disarmed.
    let guard = HeadGuard::arm(&part)?;
    failpoint("stage.after-invalidate");
    let mount = match (&opts.source, &fetch) {
        (StageSource::Image { .. }, Some(f)) => {
            write_image(f, &part, target, opts.progress, &mut report)?;
            failpoint("stage.after-write");
            let dev = part.device.display().to_string();
            fsck(&dev)?;
            abupdate_utils::Cmd::new("resize2fs")
                .arg(&dev)
                .run()
                .map_err(Error::cmd(format!("grow the filesystem on {dev}")))?;
            abupdate_utils::Cmd::new("tune2fs")
                .args(["-U", &fs_uuid, "-L", &part.partlabel, &dev])
                .run()
                .map_err(Error::cmd(format!("set UUID and label of {dev}")))?;
            mount_private(&part.device, false)?
        }
        (StageSource::Tar { .. }, Some(f)) => {
            let m = make_fresh_fs(&part, &fs_uuid)?;
            extract_archive(f, m.path(), opts.progress, &mut report)?;
            failpoint("stage.after-write");
            m
        }
        (StageSource::Bootstrap { command }, _) => {
            let m = make_fresh_fs(&part, &fs_uuid)?;
            run_installer(command, m.path())?;
            ensure_initramfs(&SlotRoot::open(m.path())?)?;
            failpoint("stage.after-write");
            m
        }
        (StageSource::Clone { run }, _) => {
            let m = make_fresh_fs(&part, &fs_uuid)?;
            clone_running(ctx, m.path(), &mut report)?;
            if let Some(cmd) = run {
                run_in_copy(cmd, &SlotRoot::open(m.path())?)?;
            }
            failpoint("stage.after-write");
            m
        }
        _ => return Err(Error::Internal("stage source without its download".into())),
    };
    failpoint("stage.after-fs-setup");

    let rec = prepare(ctx, mount.path(), &fs_uuid, &mut report, &hook_env)?;
    mount.close()?;
    failpoint("stage.after-prepare");
    guard.disarm();

    // The only write to the boot partition: the record of the staged slot.
    let msg = format!(
        "slot {target} staged with {} from {source_name}",
        rec.os.pretty_name
    );
    let boot = ctx.mount_boot(true)?;
    let mut st = boot.store().load()?;
    // A trial GRUB still remembers for this slot was of its old content.
    if st.trial.as_ref().is_some_and(|t| t.slot == target) {
        st.trial = None;
    }
    st.slots.insert(
        target,
        SlotRecord {
            source: Some(source_name),
            sha256: fetch.map(|f| f.expected),
            staged_at: Some(state::now()),
            ..rec
        },
    );
    boot.store()
        .record(&mut st, OpRecord::new("stage", true, Some(target), &msg))?;
    boot.close()?;
    Ok(report)
}

fn progress_for(show: bool, label: &str) -> Box<dyn abupdate_stream::Progress> {
    if show {
        abupdate_stream::reporter(label)
    } else {
        Box::new(abupdate_stream::NoProgress)
    }
}

/// Streams a filesystem image onto the partition, holding its head back until verified.
fn write_image(
    f: &Fetch,
    part: &PartitionInfo,
    target: SlotId,
    progress: bool,
    report: &mut StageReport,
) -> Result<()> {
    let serr = stream_err(&f.src);
    let mut opened = f
        .src
        .open(&abupdate_stream::OpenOptions::default())
        .map_err(&serr)?;
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
    let mut writer = SlotWriter {
        file: &file,
        device: &part.device,
        head: Vec::with_capacity(HEAD_LEN),
        offset: 0,
    };
    let mut progress = progress_for(progress, "stage");
    let copy_opts = abupdate_stream::CopyOptions {
        max_image_bytes: Some(part.size_bytes),
    };
    let stats =
        abupdate_stream::copy(opened, &mut writer, &copy_opts, progress.as_mut()).map_err(&serr)?;
    if stats.source_sha256 != f.expected {
        return Err(Error::Verification(format!(
            "sha256 of {} is {}, expected {}; slot {target} was left without a filesystem",
            f.src.display_name(),
            stats.source_sha256,
            f.expected
        )));
    }
    let Some(fs) = writer
        .head
        .get(1024..2048)
        .and_then(fsinfo::parse_ext4_superblock)
    else {
        return Err(Error::Verification(format!(
            "{} is not an ext2/3/4 filesystem image; slot {target} was left without a filesystem",
            f.src.display_name()
        )));
    };
    if stats.image_bytes < fs.size_bytes {
        return Err(Error::Verification(format!(
            "{} is truncated: it holds {} bytes but its filesystem is {} bytes; slot {target} was left without a filesystem",
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
    writer.finish()?;
    report.image_bytes = stats.image_bytes;
    report.source_bytes = stats.source_bytes;
    Ok(())
}

/// Makes a fresh ext4 filesystem with the slot's label and a new UUID, and mounts it.
fn make_fresh_fs(part: &PartitionInfo, fs_uuid: &str) -> Result<abupdate_utils::mount::TempMount> {
    let dev = part.device.display().to_string();
    abupdate_utils::Cmd::new("mkfs.ext4")
        .args(["-F", "-q", "-L", &part.partlabel, "-U", fs_uuid, &dev])
        .run()
        .map_err(Error::cmd(format!("make a filesystem on {dev}")))?;
    mount_private(&part.device, false)
}

/// Streams a (compressed) tar archive into the mounted slot while hashing it: the download
/// and decompression run in a thread that writes into a pipe the extractor reads.
fn extract_archive(f: &Fetch, root: &Path, progress: bool, report: &mut StageReport) -> Result<()> {
    let serr = stream_err(&f.src);
    let opened = f
        .src
        .open(&abupdate_stream::OpenOptions::default())
        .map_err(&serr)?;
    let (mut reader, mut writer) = std::io::pipe().map_err(Error::io("create a pipe for", root))?;
    let copier = std::thread::spawn(move || {
        let mut progress = progress_for(progress, "stage");
        let res = abupdate_stream::copy(
            opened,
            &mut writer,
            &abupdate_stream::CopyOptions::default(),
            progress.as_mut(),
        );
        drop(writer);
        res
    });
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
    let extracted = extracted.map_err(Error::tree("extract the archive into the new slot"))?;
    let stats = copied.map_err(&serr)?;
    drained.map_err(Error::io("read the rest of", f.src.display_name()))?;
    if stats.source_sha256 != f.expected {
        return Err(Error::Verification(format!(
            "sha256 of {} is {}, expected {}; the slot was left without a filesystem",
            f.src.display_name(),
            stats.source_sha256,
            f.expected
        )));
    }
    report.source_bytes = stats.source_bytes;
    report.image_bytes = extracted.bytes;
    Ok(())
}

/// Quotes a path for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs an installer command with `{target}` replaced by the mounted slot.
fn run_installer(command: &str, root: &Path) -> Result<()> {
    let script = command.replace("{target}", &shell_quote(&root.to_string_lossy()));
    let out = abupdate_utils::Cmd::new("sh")
        .args(["-c", &script])
        .env("ABUPDATE_TARGET", root)
        .output()
        .map_err(Error::cmd("run the installer"))?;
    if out.status.success() {
        return Ok(());
    }
    let tail = crate::chroot::output_tail(&out);
    Err(Error::Refused(format!(
        "installer `{command}` failed ({}): {}",
        out.status,
        tail.trim()
    )))
}

/// Makes sure the slot has an initramfs for its newest kernel, building it chrooted with the
/// slot's own tool (update-initramfs or dracut) when missing.
fn ensure_initramfs(root: &SlotRoot) -> Result<()> {
    let k = find_kernel(root)?;
    if k.initrd.is_some() {
        return Ok(());
    }
    let version = k.kernel.trim_start_matches("/boot/vmlinuz-").to_string();
    let script = format!(
        "if command -v update-initramfs >/dev/null; then update-initramfs -c -k {v}; \
         elif command -v dracut >/dev/null; then dracut -f --kver {v}; \
         else echo 'neither update-initramfs nor dracut in the slot' >&2; exit 1; fi",
        v = shell_quote(&version)
    );
    let chroot = Chroot::enter(root)?;
    let res = chroot.run_shell("building the initramfs", &script, &[]);
    chroot.close()?;
    res?;
    find_kernel(root)?
        .initrd
        .map(|_| ())
        .ok_or_else(|| Error::Refused(format!("no initramfs for {} after building it", k.kernel)))
}

/// Copies the running system onto the fresh filesystem at `root`.
fn clone_running(ctx: &Context, root: &Path, report: &mut StageReport) -> Result<()> {
    let mut exclude = vec![ctx.cfg.boot_mountpoint()];
    if let Some(d) = ctx.cfg.data_mountpoint() {
        exclude.push(d);
    }
    let opts = abupdate_treecopy::CloneOptions { exclude };
    let source = clone_source();
    let r = abupdate_treecopy::clone_tree(&source, root, &opts)
        .map_err(Error::tree("copy the running system into the new slot"))?;
    for m in &r.skipped_mounts {
        tracing::info!("clone: mount point {} left empty", m.display());
    }
    report.image_bytes = r.bytes;
    Ok(())
}

/// Test-only: the tree `stage --clone` copies as the running system, honoured only together
/// with `ABUPDATE_ASSUME_BOOTED` (a pretended boot has no running root of its own).
pub const CLONE_ROOT_ENV: &str = "ABUPDATE_CLONE_ROOT";

/// The running system's root: `/`, or `ABUPDATE_CLONE_ROOT` on a pretended boot.
fn clone_source() -> PathBuf {
    match std::env::var_os(CLONE_ROOT_ENV) {
        Some(p) if std::env::var_os(crate::disk::ASSUME_BOOTED_ENV).is_some() => PathBuf::from(p),
        _ => PathBuf::from("/"),
    }
}

/// Runs the operator's command chrooted in the copy, with services kept from starting.
fn run_in_copy(cmd: &str, root: &SlotRoot) -> Result<()> {
    const POLICY: &str = "/usr/sbin/policy-rc.d";
    let had_policy = root.read_to_string(POLICY)?.is_some();
    if !had_policy {
        root.create_dir_all("/usr/sbin")?;
        root.write_file(POLICY, b"#!/bin/sh\n# written by abupdate stage --clone: no service starts in a chroot\nexit 101\n", 0o755)?;
    }
    let chroot = Chroot::enter(root)?;
    let res = chroot.run_shell(
        &format!("`{cmd}`"),
        cmd,
        &[("DEBIAN_FRONTEND", "noninteractive")],
    );
    chroot.close()?;
    if !had_policy {
        let _ = std::fs::remove_file(root.path().join(&POLICY[1..]));
    }
    res?;
    ensure_initramfs(root)
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

/// Prepares the mounted slot: manifest, fstab, services, post-stage hooks, kernel, OS.
fn prepare(
    ctx: &Context,
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

    write_fstab(ctx, &root)?;

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
