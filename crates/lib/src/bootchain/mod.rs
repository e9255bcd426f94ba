//! The boot chain abupdate owns: GRUB's boot code for BIOS firmware (the i386-pc core image
//! in the BIOS boot partition, `boot.img` in the MBR) and the EFI system partition for UEFI
//! firmware (`\EFI\BOOT\BOOTX64.EFI` and `\EFI\<vendor>\`, signed shim and GRUB with a stub
//! config, or an unsigned GRUB image), both loading `grub.cfg` and `grubenv` from the boot
//! partition found by its filesystem UUID. Installed by `init` from the running system's
//! GRUB packages with one code path for hosts and loop disks (no `grub-install`), recorded
//! on the boot partition for `verify`, and kept in place by the slots' packages
//! ([`debian`]). Also the kernel-driven menu refresh (`refresh-menu`).

pub mod bios;
pub mod debian;
pub mod efi;
pub mod esp;
pub mod grubimage;
pub mod kernel;
pub mod menu;
pub mod parts;
pub mod record;
pub mod verify;

use std::fmt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use abupdate_utils::Cmd;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::EfiLoader;
use crate::context::{failpoint, mount_private, BootPartition, Context};
use crate::disk::SlotId;
use crate::engine::{plan_note, plan_refresh_menu, Plan, Transaction, INIT_AFTER_CHAIN};
use crate::error::{Error, Result};
use crate::slotfs::SlotRoot;
use efi::{Loader, Origin};
use parts::FwPartition;
use record::{BiosRecord, ChainRecord, EspFile, UefiRecord};

/// Where the running system's GRUB packages keep their platform directories.
pub const GRUB_LIB: &str = "/usr/lib/grub";
/// Modules built into the i386-pc core image: enough to find the boot partition.
pub const BIOS_CORE_MODULES: &[&str] = &["biosdisk", "part_gpt", "ext2", "search_fs_uuid"];
/// Modules built into the unsigned x86_64-efi image.
pub const EFI_IMAGE_MODULES: &[&str] = &["part_gpt", "ext2", "fat", "search_fs_uuid"];
/// The label of an NVRAM entry abupdate creates.
pub const NVRAM_LABEL: &str = "abupdate";

/// A boot-code image that is not what it must be.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A core image that cannot be patched or read.
    #[error("core image: {0}")]
    BadCoreImage(String),
    /// GRUB's `boot.img` is not a boot sector.
    #[error("GRUB boot.img: {0}")]
    BadBootImage(String),
    /// The boot code on the disk is not the installed GRUB's.
    #[error("{0}")]
    ForeignBootCode(String),
    /// The compressed part of a core image does not decompress.
    #[error("decompress the core image")]
    Lzma(#[source] std::io::Error),
}

/// The early config built into GRUB images: find the boot partition by filesystem UUID
/// and take GRUB's files (`grub.cfg`, `grubenv`, modules) from its `/grub`.
pub fn early_config(boot_fs_uuid: &str) -> String {
    format!("search.fs_uuid {boot_fs_uuid} root\nset prefix=($root)/grub\n")
}

/// The BIOS part of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct BiosPlan {
    /// The BIOS boot partition.
    pub partition: FwPartition,
    /// The running system's i386-pc directory.
    pub modules_from: PathBuf,
    /// GRUB's package version there.
    pub grub_version: String,
}

/// One ESP file of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    /// Path on the ESP.
    pub path: String,
    /// What it is.
    pub origin: Origin,
}

/// The UEFI part of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct UefiPlan {
    /// The ESP.
    pub partition: FwPartition,
    /// How it is written (`mounted at /boot/efi`, `/dev/sda1 (mtools)`).
    pub access: String,
    /// Signed or unsigned loader.
    pub loader: Loader,
    /// GRUB's package version of the loader.
    pub grub_version: String,
    /// Files written.
    pub files: Vec<PlannedFile>,
    /// The loader an NVRAM entry starts.
    pub nvram_loader: String,
    /// What happens in the NVRAM.
    pub nvram: String,
    #[serde(skip)]
    nvram_plan: Option<efi::NvramPlan>,
    #[serde(skip)]
    esp: esp::Esp,
}

/// What `init` installs, found before anything is written.
#[derive(Debug, Clone, Serialize)]
pub struct ChainPlan {
    /// The disk.
    pub disk: PathBuf,
    /// The boot partition's filesystem UUID, named by every image and stub.
    pub boot_fs_uuid: String,
    /// BIOS boot code, when the disk has a BIOS boot partition.
    pub bios: Option<BiosPlan>,
    /// The ESP, when the disk has one.
    pub uefi: Option<UefiPlan>,
}

impl fmt::Display for ChainPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "boot chain on {} (boot partition filesystem {}):",
            self.disk.display(),
            self.boot_fs_uuid
        )?;
        if let Some(b) = &self.bios {
            writeln!(
                f,
                "  BIOS: GRUB {} i386-pc modules from {} to the boot partition's /grub/i386-pc; \
                 core.img to {} (LBA {}); boot.img to the MBR of {}",
                b.grub_version,
                b.modules_from.display(),
                b.partition.device.display(),
                b.partition.first_lba,
                self.disk.display()
            )?;
        }
        if let Some(u) = &self.uefi {
            writeln!(
                f,
                "  UEFI: {:?} GRUB {} on the ESP {}: {}",
                u.loader,
                u.grub_version,
                u.access,
                u.files
                    .iter()
                    .map(|p| p.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            if u.loader == Loader::Unsigned {
                writeln!(
                    f,
                    "        x86_64-efi modules to the boot partition's /grub/x86_64-efi"
                )?;
            }
            writeln!(f, "        NVRAM: {}", u.nvram)?;
        }
        write!(
            f,
            "  record: /abupdate/bootchain.json on the boot partition"
        )
    }
}

fn platform_dir(name: &str) -> Option<PathBuf> {
    let d = Path::new(GRUB_LIB).join(name);
    (d.join("kernel.img").is_file() && d.join("modinfo.sh").is_file()).then_some(d)
}

fn modules_version(dir: &Path) -> Result<String> {
    let p = dir.join("modinfo.sh");
    let text = std::fs::read_to_string(&p).map_err(Error::io("read", &p))?;
    verify::modinfo_version(&text)
        .ok_or_else(|| Error::Refused(format!("{} names no grub_package_version", p.display())))
}

fn on_uefi_firmware() -> bool {
    Path::new("/sys/firmware/efi").is_dir()
}

fn read_sector(dev: &Path, offset: u64) -> Result<[u8; 512]> {
    let mut b = [0u8; 512];
    std::fs::File::open(dev)
        .and_then(|f| f.read_exact_at(&mut b, offset))
        .map_err(Error::io("read the first sector of", dev))?;
    Ok(b)
}

/// Plans the boot chain for this disk from the running system's GRUB packages; `None`
/// when the config leaves GRUB to the operator (`bootchain.install: false`). Reads only.
pub fn plan(ctx: &Context) -> Result<Option<ChainPlan>> {
    let cfg = &ctx.cfg.bootchain;
    if !cfg.install {
        return Ok(None);
    }
    let fw = parts::discover(ctx)?;
    if fw.bios_boot.is_none() && fw.esp.is_none() {
        return Err(Error::Refused(format!(
            "{} has neither a BIOS boot partition (GPT type {}) nor an EFI system partition \
             (GPT type {}): add one (README: \"Installing on an existing BIOS or UEFI server\"), \
             or set bootchain.install: false to install GRUB's boot code yourself",
            fw.disk.display(),
            parts::BIOS_BOOT_TYPE.to_uppercase(),
            parts::ESP_TYPE.to_uppercase()
        )));
    }
    let boot_dev = &ctx.layout.boot.device;
    let boot_fs_uuid = crate::fsinfo::read_ext4_info(boot_dev)
        .map_err(Error::io("read superblock of", boot_dev))?
        .ok_or_else(|| {
            Error::Refused(format!(
                "the boot partition {} holds no ext2/3/4 filesystem: GRUB must rewrite grubenv \
                 there (mkfs.ext2 -L abboot {})",
                boot_dev.display(),
                boot_dev.display()
            ))
        })?
        .uuid;
    let bios = match fw.bios_boot {
        None => None,
        Some(p) => {
            if fw.block_size != 512 {
                return Err(Error::Refused(format!(
                    "{} has {}-byte sectors: BIOS boot needs 512",
                    fw.disk.display(),
                    fw.block_size
                )));
            }
            let dir = platform_dir("i386-pc").ok_or_else(|| {
                Error::Refused(format!(
                    "the disk has a BIOS boot partition ({}) but this system has no GRUB for BIOS \
                     ({GRUB_LIB}/i386-pc): apt-get install grub-pc-bin",
                    p.device.display()
                ))
            })?;
            let mbr = read_sector(&fw.disk, 0)?;
            if !bios::has_protective_mbr(&mbr) {
                return Err(Error::Refused(format!(
                    "{} has no protective MBR (type 0xEE entry): not a GPT disk abupdate can put \
                     BIOS boot code on",
                    fw.disk.display()
                )));
            }
            Some(BiosPlan {
                grub_version: modules_version(&dir)?,
                partition: p,
                modules_from: dir,
            })
        }
    };
    let uefi = match fw.esp {
        None => None,
        Some(p) => Some(plan_uefi(ctx, p)?),
    };
    Ok(Some(ChainPlan {
        disk: fw.disk,
        boot_fs_uuid,
        bios,
        uefi,
    }))
}

fn plan_uefi(ctx: &Context, p: FwPartition) -> Result<UefiPlan> {
    let cfg = &ctx.cfg.bootchain;
    let signed_ok = Path::new(efi::SIGNED_SHIM).is_file() && Path::new(efi::SIGNED_GRUB).is_file();
    let loader = match cfg.efi_loader {
        EfiLoader::Signed if !signed_ok => {
            return Err(Error::Refused(format!(
                "bootchain.efi_loader is signed but {} or {} is missing: apt-get install \
                 shim-signed grub-efi-amd64-signed",
                efi::SIGNED_SHIM,
                efi::SIGNED_GRUB
            )))
        }
        EfiLoader::Signed => Loader::Signed,
        EfiLoader::Auto if signed_ok => Loader::Signed,
        EfiLoader::Auto | EfiLoader::Unsigned => Loader::Unsigned,
    };
    let grub_version = match loader {
        Loader::Signed => {
            let img =
                std::fs::read(efi::SIGNED_GRUB).map_err(Error::io("read", efi::SIGNED_GRUB))?;
            efi::sbat_grub_version(&img).unwrap_or_else(|| "unknown (no SBAT)".into())
        }
        Loader::Unsigned => {
            let dir = platform_dir("x86_64-efi").ok_or_else(|| {
                Error::Refused(format!(
                    "the disk has an EFI system partition ({}) but this system has no GRUB for \
                     UEFI ({GRUB_LIB}/x86_64-efi, or the signed shim and GRUB): apt-get install \
                     grub-efi-amd64-bin (or shim-signed grub-efi-amd64-signed)",
                    p.device.display()
                ))
            })?;
            modules_version(&dir)?
        }
    };
    let sector = read_sector(&p.device, 0)?;
    if efi::fat_info(&sector).is_none() {
        return Err(Error::Refused(format!(
            "the EFI system partition {} holds no FAT filesystem: format it first \
             (mkfs.vfat -F 32 {})",
            p.device.display(),
            p.device.display()
        )));
    }
    let esp = esp::Esp::open(&p.device)?;
    let (files, nvram_loader) = efi::plan(
        loader,
        &cfg.efi_vendor,
        Path::new(efi::SIGNED_MOKMANAGER).is_file(),
    );
    let (nvram, nvram_plan) = if !cfg.nvram {
        ("unchanged (bootchain.nvram: false)".to_string(), None)
    } else if !on_uefi_firmware() {
        (
            "unchanged: not running on UEFI firmware (the firmware finds \\EFI\\BOOT\\BOOTX64.EFI)"
                .to_string(),
            None,
        )
    } else {
        let out = Cmd::new("efibootmgr")
            .arg("-v")
            .run()
            .map_err(|e| match e {
                abupdate_utils::CmdError::Spawn { source, .. } => Error::Refused(format!(
                    "running on UEFI firmware, abupdate adds an NVRAM boot entry with efibootmgr: \
                 {source} (apt-get install efibootmgr, or set bootchain.nvram: false)"
                )),
                e => Error::cmd("list the NVRAM boot entries (efibootmgr -v)")(e),
            })?;
        let plan = efi::plan_nvram(
            &efi::parse_efibootmgr(&out.stdout_str()),
            &p.partuuid,
            &nvram_loader,
        );
        let text = match &plan {
            efi::NvramPlan::Present { num } => {
                format!("Boot{num} already starts {nvram_loader} first")
            }
            efi::NvramPlan::Reorder { num, .. } => {
                format!("put Boot{num} ({nvram_loader}) first in BootOrder")
            }
            efi::NvramPlan::Create => {
                format!(
                    "create a boot entry {NVRAM_LABEL:?} for {nvram_loader}, first in BootOrder"
                )
            }
        };
        (text, Some(plan))
    };
    Ok(UefiPlan {
        access: esp.describe(),
        loader,
        grub_version,
        files: files
            .into_iter()
            .map(|(path, origin)| PlannedFile { path, origin })
            .collect(),
        nvram_loader,
        nvram,
        nvram_plan,
        esp,
        partition: p,
    })
}

/// What installing the chain did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChainReport {
    /// What was written (devices, files).
    pub written: Vec<String>,
    /// What was already as it must be.
    pub unchanged: usize,
    /// The NVRAM entry used, if any.
    pub nvram_entry: Option<String>,
    /// What the guard did in the booted slot.
    pub guard: Option<debian::GuardReport>,
}

impl fmt::Display for ChainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.written.is_empty() {
            write!(
                f,
                "boot chain already in place ({} items unchanged)",
                self.unchanged
            )?;
        } else {
            write!(
                f,
                "boot chain: wrote {} ({} unchanged)",
                self.written.join(", "),
                self.unchanged
            )?;
        }
        if let Some(n) = &self.nvram_entry {
            write!(f, "; NVRAM entry Boot{n}")?;
        }
        if let Some(g) = &self.guard {
            write!(f, "; booted slot: {g}")?;
        }
        Ok(())
    }
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` at `offset` of a device unless it already holds it; fsyncs.
fn write_device(
    dev: &Path,
    offset: u64,
    data: &[u8],
    what: &str,
    report: &mut ChainReport,
) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(Error::io("open for writing", dev))?;
    let mut cur = vec![0u8; data.len()];
    if f.read_exact_at(&mut cur, offset).is_ok() && cur == data {
        report.unchanged += 1;
        return Ok(());
    }
    f.write_all_at(data, offset)
        .and_then(|()| f.sync_all())
        .map_err(Error::io(format!("write {what} to"), dev))?;
    report.written.push(format!("{what} ({})", dev.display()));
    Ok(())
}

/// Copies GRUB's platform files to `rel` on the boot partition (only those that differ):
/// every changed file is written beside its destination, one `syncfs` makes them all
/// durable, then each is renamed into place and the directory is fsynced.
fn copy_modules(from: &Path, boot_root: &Path, rel: &str, report: &mut ChainReport) -> Result<()> {
    let to = boot_root.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(&to).map_err(Error::io("create", &to))?;
    let mut staged = Vec::new();
    for entry in std::fs::read_dir(from).map_err(Error::io("list", from))? {
        let path = entry.map_err(Error::io("list", from))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "mod" | "lst" | "img" | "o" | "sh") || !path.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let data = std::fs::read(&path).map_err(Error::io("read", &path))?;
        let dest = to.join(name);
        if std::fs::read(&dest).is_ok_and(|d| d == data) {
            continue;
        }
        let tmp = to.join(format!(".{name}.abupdate-tmp"));
        std::fs::write(&tmp, &data).map_err(Error::io("write", &tmp))?;
        staged.push((tmp, dest));
    }
    if staged.is_empty() {
        report.unchanged += 1;
        return Ok(());
    }
    let dir = std::fs::File::open(&to).map_err(Error::io("open", &to))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io("syncfs", &to)(e.into()))?;
    for (tmp, dest) in &staged {
        std::fs::rename(tmp, dest).map_err(Error::io("rename into place", dest))?;
    }
    abupdate_utils::durable::fsync_dir(&to)?;
    report.written.push(format!(
        "{} GRUB files to the boot partition's {rel}",
        staged.len()
    ));
    Ok(())
}

fn mkimage(
    format: &str,
    dir: &Path,
    early: &Path,
    out: &Path,
    modules: &[&str],
) -> Result<Vec<u8>> {
    Cmd::new("grub-mkimage")
        .args(["-O", format, "-d"])
        .arg(dir)
        .arg("-c")
        .arg(early)
        .args(["-p", "/grub", "-o"])
        .arg(out)
        .args(modules)
        .run()
        .map_err(Error::cmd(format!(
            "build GRUB's {format} image with grub-mkimage"
        )))?;
    std::fs::read(out).map_err(Error::io("read", out))
}

fn install_bios(
    plan: &ChainPlan,
    b: &BiosPlan,
    boot_root: &Path,
    tmp: &Path,
    report: &mut ChainReport,
) -> Result<BiosRecord> {
    let early = tmp.join("early.cfg");
    let early_text = early_config(&plan.boot_fs_uuid);
    std::fs::write(&early, &early_text).map_err(Error::io("write", &early))?;
    copy_modules(&b.modules_from, boot_root, "/grub/i386-pc", report)?;
    let core = mkimage(
        "i386-pc",
        &b.modules_from,
        &early,
        &tmp.join("core.img"),
        BIOS_CORE_MODULES,
    )?;
    let p = &b.partition;
    let core = bios::patch_core(&core, p.first_lba).map_err(|source| Error::BootCode {
        context: "build the BIOS core image".into(),
        source,
    })?;
    if core.len() as u64 > p.size_bytes {
        return Err(Error::Refused(format!(
            "the core image ({} bytes) does not fit the BIOS boot partition {} ({} bytes)",
            core.len(),
            p.device.display(),
            p.size_bytes
        )));
    }
    write_device(&p.device, 0, &core, "core.img", report)?;
    failpoint("init.after-core");
    let boot_img_path = b.modules_from.join("boot.img");
    let boot_img = std::fs::read(&boot_img_path).map_err(Error::io("read", &boot_img_path))?;
    let current = read_sector(&plan.disk, 0)?;
    let mbr =
        bios::patch_mbr(&boot_img, &current, p.first_lba).map_err(|source| Error::BootCode {
            context: format!("patch {}", boot_img_path.display()),
            source,
        })?;
    write_device(&plan.disk, 0, &mbr, "boot.img in the MBR", report)?;
    failpoint("init.after-mbr");
    let dec = b.modules_from.join("lzma_decompress.img");
    let decompressor_len = std::fs::metadata(&dec)
        .map_err(Error::io("stat", &dec))?
        .len();
    Ok(BiosRecord {
        grub_version: b.grub_version.clone(),
        partuuid: p.partuuid.clone(),
        first_lba: p.first_lba,
        core_len: core.len() as u64,
        core_sha256: sha256_hex(&core),
        early_config: early_text,
        boot_img_sha256: sha256_hex(&boot_img),
        modules_dir: "/grub/i386-pc".into(),
        decompressor_len,
    })
}

fn install_uefi(
    plan: &ChainPlan,
    u: &UefiPlan,
    boot_root: &Path,
    tmp: &Path,
    report: &mut ChainReport,
) -> Result<UefiRecord> {
    let early_text = early_config(&plan.boot_fs_uuid);
    let built = match u.loader {
        Loader::Unsigned => {
            let dir = platform_dir("x86_64-efi")
                .ok_or_else(|| Error::Internal("x86_64-efi vanished after planning".into()))?;
            copy_modules(&dir, boot_root, "/grub/x86_64-efi", report)?;
            let early = tmp.join("early-efi.cfg");
            std::fs::write(&early, &early_text).map_err(Error::io("write", &early))?;
            Some(mkimage(
                "x86_64-efi",
                &dir,
                &early,
                &tmp.join("grubx64.efi"),
                EFI_IMAGE_MODULES,
            )?)
        }
        Loader::Signed => None,
    };
    let stub = efi::render_stub(&plan.boot_fs_uuid);
    let read = |p: &str| std::fs::read(p).map_err(Error::io("read", p));
    let mut files = Vec::new();
    for f in &u.files {
        let data = match f.origin {
            Origin::Shim => read(efi::SIGNED_SHIM)?,
            Origin::MokManager => read(efi::SIGNED_MOKMANAGER)?,
            Origin::SignedGrub => read(efi::SIGNED_GRUB)?,
            Origin::BuiltGrub => built
                .clone()
                .ok_or_else(|| Error::Internal("no built GRUB image".into()))?,
            Origin::StubConfig => stub.clone().into_bytes(),
        };
        if u.esp.read(&f.path)?.as_deref() == Some(data.as_slice()) {
            report.unchanged += 1;
        } else {
            u.esp.write(&f.path, &data)?;
            report.written.push(format!("ESP {}", f.path));
        }
        files.push(EspFile {
            path: f.path.clone(),
            origin: f.origin,
            sha256: sha256_hex(&data),
        });
    }
    u.esp.sync()?;
    failpoint("init.after-esp");
    let nvram_entry = match &u.nvram_plan {
        None => None,
        Some(efi::NvramPlan::Present { num }) => Some(num.clone()),
        Some(efi::NvramPlan::Reorder { num, order }) => {
            Cmd::new("efibootmgr")
                .arg("--bootorder")
                .arg(order.join(","))
                .run()
                .map_err(Error::cmd(
                    "put abupdate's boot entry first (efibootmgr --bootorder)",
                ))?;
            report
                .written
                .push(format!("NVRAM BootOrder ({num} first)"));
            Some(num.clone())
        }
        Some(efi::NvramPlan::Create) => {
            Cmd::new("efibootmgr")
                .args(["--create", "--disk"])
                .arg(&plan.disk)
                .arg("--part")
                .arg(u.partition.number.to_string())
                .args(["--label", NVRAM_LABEL, "--loader"])
                .arg(u.nvram_loader.replace('/', "\\"))
                .run()
                .map_err(Error::cmd(
                    "create abupdate's NVRAM boot entry (efibootmgr --create)",
                ))?;
            let out = Cmd::new("efibootmgr")
                .arg("-v")
                .run()
                .map_err(Error::cmd("list the NVRAM boot entries (efibootmgr -v)"))?;
            let num = match efi::plan_nvram(
                &efi::parse_efibootmgr(&out.stdout_str()),
                &u.partition.partuuid,
                &u.nvram_loader,
            ) {
                efi::NvramPlan::Present { num } | efi::NvramPlan::Reorder { num, .. } => Some(num),
                efi::NvramPlan::Create => None,
            };
            report.written.push(format!("NVRAM entry {NVRAM_LABEL}"));
            num
        }
    };
    report.nvram_entry = nvram_entry.clone();
    Ok(UefiRecord {
        grub_version: u.grub_version.clone(),
        partuuid: u.partition.partuuid.clone(),
        loader: u.loader,
        files,
        nvram_loader: u.nvram_loader.clone(),
        nvram_entry,
        early_config: built.map(|_| early_text),
        modules_dir: (u.loader == Loader::Unsigned).then(|| "/grub/x86_64-efi".to_string()),
    })
}

/// The root of `slot` for writing into it: `/` when the running system is that slot, else
/// a private mount of its partition (read-write).
fn with_slot_root<T>(
    ctx: &Context,
    slot: SlotId,
    f: impl FnOnce(&SlotRoot) -> Result<T>,
) -> Result<T> {
    let part = ctx.layout.slot(slot);
    let root_dev = std::fs::metadata("/")
        .map_err(Error::io("stat", "/"))?
        .dev();
    if part.rdev == root_dev {
        return f(&SlotRoot::open(Path::new("/"))?);
    }
    let m = mount_private(&part.device, false)?;
    let root = SlotRoot::open(m.path())?;
    let result = f(&root);
    drop(root);
    m.close()?;
    result
}

/// Installs the planned chain (boot code, ESP, NVRAM), records it on the mounted boot
/// partition and applies the distribution guard to `slot` (the running system's slot).
/// Writes only what differs: running it again changes nothing.
pub fn install(
    ctx: &Context,
    boot: &BootPartition,
    plan: &ChainPlan,
    slot: SlotId,
) -> Result<ChainReport> {
    let mut report = ChainReport::default();
    let tmp = tempfile::tempdir().map_err(Error::io(
        "create a temporary directory in",
        std::env::temp_dir(),
    ))?;
    let bios = plan
        .bios
        .as_ref()
        .map(|b| install_bios(plan, b, boot.root(), tmp.path(), &mut report))
        .transpose()?;
    let uefi = plan
        .uefi
        .as_ref()
        .map(|u| install_uefi(plan, u, boot.root(), tmp.path(), &mut report))
        .transpose()?;
    let rec = ChainRecord {
        version: record::RECORD_VERSION,
        installed_at: crate::state::now(),
        boot_fs_uuid: plan.boot_fs_uuid.clone(),
        bios,
        uefi,
    };
    let same = ChainRecord::load(boot.root())?.is_some_and(|old| {
        ChainRecord {
            installed_at: String::new(),
            ..old
        } == ChainRecord {
            installed_at: String::new(),
            ..rec.clone()
        }
    });
    if !same {
        rec.save(boot.root())?;
        failpoint("init.after-record");
    }
    report.guard = Some(with_slot_root(ctx, slot, debian::guard)?);
    Ok(report)
}

/// `abupdate init --dry-run`: what `init` would write, without writing.
#[derive(Debug, Clone, Serialize)]
pub struct InitPlan {
    /// The slot that would become the good default.
    pub slot: SlotId,
    /// The boot chain, unless the config leaves it to the operator.
    pub chain: Option<ChainPlan>,
    /// The guard applied to the slot.
    pub slot_changes: Vec<String>,
}

impl fmt::Display for InitPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "init --slot {} would write (nothing written now):\n  boot partition: /grub/grub.cfg, \
             /grub/grubenv, /abupdate/state.json and history.json (slot {} the good default)",
            self.slot.as_str(),
            self.slot
        )?;
        match &self.chain {
            Some(c) => writeln!(f, "{c}")?,
            None => writeln!(
                f,
                "boot chain: left to the operator (bootchain.install: false)"
            )?,
        }
        for c in &self.slot_changes {
            writeln!(f, "  slot {}: {c}", self.slot)?;
        }
        Ok(())
    }
}

/// Plans `init --slot` without writing anything.
pub fn init_plan(ctx: &Context, slot: SlotId) -> Result<InitPlan> {
    let chain = plan(ctx)?;
    let slot_changes = if chain.is_some() {
        vec![
            format!(
                "debconf answers (debconf-set-selections): {}",
                debian::DEBCONF_SELECTIONS
                    .lines()
                    .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            format!(
                "dpkg-divert --local --rename --divert {} {} and abupdate's {} in its place",
                debian::GRUB_INSTALL_DIVERTED,
                debian::GRUB_INSTALL,
                debian::GRUB_INSTALL
            ),
            format!("kernel hooks {}", debian::KERNEL_HOOK_PATHS.join(", ")),
            "(the debconf answers and the diversion only where the slot has dpkg)".to_string(),
        ]
    } else {
        Vec::new()
    };
    Ok(InitPlan {
        slot,
        chain,
        slot_changes,
    })
}

/// `abupdate init --chain-only`: (re)installs the boot chain from the running system's GRUB
/// on a boot partition that is already set up, leaving grub.cfg, grubenv and the state as
/// they are.
pub fn reinstall(ctx: &Context) -> Result<ChainReport> {
    let Some(plan) = plan(ctx)? else {
        return Err(Error::Refused(
            "bootchain.install is false: abupdate installs no boot code".into(),
        ));
    };
    let tx = Transaction::begin(ctx)?;
    let booted = tx.snapshot().booted;
    let mut report = None;
    tx.apply_then(
        Plan::nothing("init", Some(booted), String::new()),
        |boot, snap, set| {
            let r = install(ctx, boot, &plan, booted)?;
            let note = plan_note(
                snap,
                set,
                "init",
                Some(booted),
                format!("--chain-only: {r}"),
                INIT_AFTER_CHAIN,
            )
            .map_err(Error::Refused)?;
            report = Some(r);
            Ok(Some(note))
        },
    )?;
    report.ok_or_else(|| Error::Internal("the boot chain was not installed".into()))
}

/// Called by `stage` for every slot it prepares: keeps the slot's boot-loader packages
/// from replacing abupdate's chain and installs the kernel hooks (nothing when the config
/// leaves GRUB to the operator).
pub fn prepare_slot(ctx: &Context, root: &SlotRoot) -> Result<()> {
    if !ctx.cfg.bootchain.install {
        return Ok(());
    }
    let r = debian::guard(root)?;
    tracing::info!("new slot's boot-loader packages: {r}");
    Ok(())
}

/// What `refresh-menu` did.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    /// The slot whose entry was considered, if any.
    pub slot: Option<SlotId>,
    /// The plan (absent when nothing was considered).
    pub refresh: Option<kernel::Refresh>,
    /// Why nothing was considered (hook mode).
    pub skipped: Option<String>,
}

impl fmt::Display for RefreshReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.skipped, &self.refresh, self.slot) {
            (Some(why), _, _) => write!(f, "boot menu not refreshed: {why}"),
            (_, Some(kernel::Refresh::Unchanged { kernel }), Some(s)) => {
                write!(f, "slot {s}'s menu entry already boots {kernel}")
            }
            (
                _,
                Some(kernel::Refresh::Update {
                    kernel,
                    initrd,
                    from_kernel,
                    ..
                }),
                Some(s),
            ) => write!(
                f,
                "slot {s}'s menu entry now boots {kernel} (initrd {}), was {from_kernel}",
                initrd.as_deref().unwrap_or("none")
            ),
            (_, Some(kernel::Refresh::NoKernel), Some(s)) => {
                write!(
                    f,
                    "slot {s} has no kernel in /boot: its menu entry is left as it is"
                )
            }
            _ => write!(f, "nothing to refresh"),
        }
    }
}

fn skipped(why: String) -> RefreshReport {
    RefreshReport {
        slot: None,
        refresh: None,
        skipped: Some(why),
    }
}

/// `abupdate refresh-menu`: points the booted slot's menu entry at the newest kernel in its
/// `/boot` ([`kernel::plan_refresh`]), rewriting grub.cfg durably, then the state. With
/// `hook` (the kernel hooks), a chroot, a system that is not an abupdate slot or a host
/// without abupdate's config is not an error: nothing is done.
pub fn refresh_menu(ctx: Option<&Context>, hook: bool) -> Result<RefreshReport> {
    if hook && debian::in_chroot() {
        return Ok(skipped(
            "running in a chroot (a slot being prepared)".into(),
        ));
    }
    let Some(ctx) = ctx else {
        return Ok(skipped("abupdate is not configured on this system".into()));
    };
    let booted = match ctx.booted() {
        Ok(b) => b,
        Err(e) if hook => return Ok(skipped(e.to_string())),
        Err(e) => return Err(e),
    };
    if hook && !setup(ctx)? {
        return Ok(skipped("the boot partition is not set up".into()));
    }
    let tx = Transaction::begin(ctx)?;
    let rec = tx
        .snapshot()
        .state
        .as_ref()
        .and_then(|st| st.slots.get(&booted))
        .cloned()
        .ok_or_else(|| {
            Error::Refused(format!("slot {booted} has no record: run `abupdate init`"))
        })?;
    let names = with_slot_listing(ctx, booted)?;
    let refresh = kernel::plan_refresh(&rec.kernel, rec.initrd.as_deref(), &names);
    if let kernel::Refresh::Update { kernel, initrd, .. } = &refresh {
        let msg = format!(
            "slot {booted} boots {kernel} (initrd {})",
            initrd.as_deref().unwrap_or("none")
        );
        let plan = plan_refresh_menu(
            tx.snapshot(),
            tx.settings(),
            booted,
            kernel.clone(),
            initrd.clone(),
            msg,
        )
        .map_err(Error::Refused)?;
        tx.apply(plan)?;
    } else {
        tx.close()?;
    }
    Ok(RefreshReport {
        slot: Some(booted),
        refresh: Some(refresh),
        skipped: None,
    })
}

/// Whether the boot partition holds abupdate's records (a read-only look, under the lock).
fn setup(ctx: &Context) -> Result<bool> {
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(false)?;
    let exists = boot.store().exists();
    boot.close()?;
    Ok(exists)
}

/// The names in the booted slot's `/boot` (the running system's own when it is that slot).
fn with_slot_listing(ctx: &Context, slot: SlotId) -> Result<Vec<String>> {
    let part = ctx.layout.slot(slot);
    let root_dev = std::fs::metadata("/")
        .map_err(Error::io("stat", "/"))?
        .dev();
    if part.rdev == root_dev {
        return SlotRoot::open(Path::new("/"))?.list_dir("/boot");
    }
    let m = mount_private(&part.device, true)?;
    let names = SlotRoot::open(m.path())?.list_dir("/boot");
    m.close()?;
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_config_is_what_verify_reads() {
        let c = early_config("5e1f0000-0000-4000-8000-0000000000b2");
        assert_eq!(
            efi::config_uuid(&c).as_deref(),
            Some("5e1f0000-0000-4000-8000-0000000000b2")
        );
        assert_eq!(efi::config_prefix(&c).as_deref(), Some("($root)/grub"));
    }

    #[test]
    fn config_keys() {
        let base = "partitions:\n  boot: { partlabel: abboot }\n  slot_a: { partlabel: root-a }\n  slot_b: { partlabel: root-b }\n";
        let parse = |extra: &str| {
            crate::config::Config::parse(&format!("{base}{extra}"), Path::new("t.yaml"))
        };
        let c = parse("").expect("defaults");
        assert!(c.bootchain.install && c.bootchain.nvram);
        assert_eq!(c.bootchain.efi_loader, EfiLoader::Auto);
        assert_eq!(c.bootchain.efi_vendor, "debian");
        let c = parse("bootchain: { efi_loader: signed, esp: { partlabel: esp }, nvram: false }\n")
            .expect("valid");
        assert_eq!(c.bootchain.efi_loader, EfiLoader::Signed);
        assert_eq!(
            c.bootchain.esp.and_then(|e| e.partlabel).as_deref(),
            Some("esp")
        );
        for (bad, key) in [
            ("bootchain: { efi_vendor: \"../x\" }\n", "bootchain.efi_vendor"),
            ("bootchain: { esp: { partlabel: a, partuuid: 5e1f0000-0000-4000-8000-000000000001 } }\n", "bootchain.esp"),
            ("bootchain: { bios_boot: { partuuid: nope } }\n", "bootchain.bios_boot"),
            ("bootchain: { esp: { partlabel: esp, mountpoint: /boot/efi } }\n", "bootchain.esp"),
        ] {
            let e = parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(key), "{bad}: {e}");
        }
        let e = parse("bootchain: { efi_loader: maybe }\n")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.unwrap_or_default().contains("line 5"),
            "unknown variant located"
        );
    }

    #[test]
    fn reports_say_what_happened() {
        let r = ChainReport {
            written: vec!["core.img (/dev/sda1)".into()],
            unchanged: 3,
            nvram_entry: Some("0004".into()),
            guard: None,
        };
        assert_eq!(
            r.to_string(),
            "boot chain: wrote core.img (/dev/sda1) (3 unchanged); NVRAM entry Boot0004"
        );
        assert_eq!(
            ChainReport::default().to_string(),
            "boot chain already in place (0 items unchanged)"
        );
        let s = skipped("running in a chroot".into());
        assert_eq!(
            s.to_string(),
            "boot menu not refreshed: running in a chroot"
        );
    }
}
