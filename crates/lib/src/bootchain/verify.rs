//! `abupdate verify`: proves with GRUB's own filesystem code (`grub-fstest` of the
//! installed GRUB) that the boot chain can boot a slot: GRUB reads the slot's filesystem
//! and the kernel and initrd its menu entry names, with the same bytes as the mounted slot
//! (CRC-32 from GRUB's read against the file read through Linux); the installed boot code
//! and ESP are the ones `init` recorded and search for the boot partition's filesystem
//! UUID; grubenv sits where GRUB's `save_env` can rewrite it. It only reads: the boot
//! partition and the slots are mounted read-only.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use abupdate_utils::Cmd;
use rustix::fs::OFlags;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::record::ChainRecord;
use super::{bios, efi, esp::Esp, grubimage, menu, parts};
use crate::context::{load_all, mount_private, Context};
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::slotfs::SlotRoot;
use crate::state::SlotState;

/// One check and its outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`slot-b-kernel`, `bios-core`, ...).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or why it failed.
    pub detail: String,
}

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Every check passed.
    pub ok: bool,
    /// The slots checked.
    pub slots: Vec<SlotId>,
    /// `grub-fstest --version` of the running system.
    pub grub_fstest: String,
    /// Versions of the installed GRUB images, as recorded.
    pub installed_grub: Vec<String>,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Things worth knowing that do not fail verification.
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// The failed checks, one line each.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "{} {:<22} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        write!(
            f,
            "{}",
            if self.ok {
                format!(
                    "verified with {}: GRUB can boot slot{} {}",
                    self.grub_fstest,
                    if self.slots.len() == 1 { "" } else { "s" },
                    self.slots
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                )
            } else {
                "verification failed".to_string()
            }
        )
    }
}

/// ext2/3/4 feature names by bit (compat, incompat, ro_compat), as `mke2fs -O` spells them.
const COMPAT: &[(u32, &str)] = &[
    (0x4, "has_journal"),
    (0x8, "ext_attr"),
    (0x10, "resize_inode"),
    (0x20, "dir_index"),
    (0x200, "sparse_super2"),
    (0x400, "fast_commit"),
    (0x800, "stable_inodes"),
    (0x1000, "orphan_file"),
];
const INCOMPAT: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const RO_COMPAT: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];

/// The features of an ext2/3/4 superblock (the 1024 bytes at offset 1024), by name.
pub fn ext_features(sb: &[u8]) -> Option<Vec<&'static str>> {
    if sb.len() < 108 || u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return None;
    }
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    let mut out = Vec::new();
    for (word, names) in [
        (le32(92), COMPAT),
        (le32(96), INCOMPAT),
        (le32(100), RO_COMPAT),
    ] {
        out.extend(
            names
                .iter()
                .filter(|(bit, _)| word & bit != 0)
                .map(|(_, n)| *n),
        );
    }
    Some(out)
}

/// Sectors of a `grub-fstest blocklist` answer (`18434+2` or `100+3,200+1`).
pub fn blocklist_sectors(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    t.split(',')
        .map(|run| {
            let (_, len) = run.trim().split_once('+')?;
            len.parse::<u64>().ok()
        })
        .sum()
}

/// `grub-fstest --version` → `2.06-13+deb12u2`.
pub fn parse_grub_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .skip_while(|w| *w != "(GRUB)")
        .nth(1)
        .map(str::to_string)
}

/// `grub_package_version="..."` of a `modinfo.sh`.
pub fn modinfo_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("grub_package_version="))
        .map(|v| v.trim_matches(['"', '\'']).to_string())
}

fn sha256(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `grub-fstest DEVICE ARGS...` and returns what it printed.
fn fstest(device: &Path, args: &[&str]) -> std::result::Result<String, String> {
    Cmd::new("grub-fstest")
        .arg(device)
        .args(args)
        .run()
        .map(|o| o.stdout_str())
        .map_err(|e| e.to_string())
}

fn superblock(dev: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(dev).map_err(Error::io("open", dev))?;
    let mut sb = vec![0u8; 1024];
    f.read_exact_at(&mut sb, 1024)
        .map_err(Error::io("read superblock of", dev))?;
    Ok(sb)
}

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: impl Into<String>, r: std::result::Result<String, String>) {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.0.push(Check {
            name: name.into(),
            ok,
            detail,
        });
    }
}

/// GRUB's CRC-32 of `path` on `device` against the CRC-32 of the same file in the mounted
/// slot, opened beneath the slot's root.
fn same_bytes(device: &Path, root: &SlotRoot, path: &str) -> std::result::Result<String, String> {
    let fd = root.open_read(path, OFlags::empty()).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            format!("{path} does not exist in the slot")
        }
        other => other.to_string(),
    })?;
    let mut file = std::fs::File::from(fd);
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read {path} in the slot: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let linux = format!("{:08x}", hasher.finalize());
    let grub =
        fstest(device, &["crc", path]).map_err(|e| format!("GRUB cannot read {path}: {e}"))?;
    let grub = grub.trim().to_string();
    if grub == linux {
        Ok(format!(
            "{path}: {len} bytes, GRUB reads CRC-32 {grub} as Linux does"
        ))
    } else {
        Err(format!(
            "{path}: GRUB reads CRC-32 {grub:?}, the mounted slot has {linux}"
        ))
    }
}

/// Checks one slot: filesystem, menu entry, kernel and initrd.
fn check_slot(
    ctx: &Context,
    slot: SlotId,
    entry: &crate::state::SlotRecord,
    grub_cfg: &str,
    checks: &mut Checks,
) -> Result<()> {
    let dev = &ctx.layout.slot(slot).device;
    let name = |what: &str| format!("slot-{}-{what}", slot.as_str());
    let sb = superblock(dev)?;
    let features = ext_features(&sb);
    let listing = fstest(dev, &["ls", "/"]);
    let fs_ok = matches!(&listing, Ok(l) if !l.trim().is_empty());
    checks.add(
        name("filesystem"),
        if fs_ok {
            Ok(format!(
                "GRUB reads the filesystem on {} ({})",
                dev.display(),
                features.as_ref().map(|f| f.join(" ")).unwrap_or_default()
            ))
        } else {
            Err(match features {
                Some(f) => format!(
                    "GRUB's ext2 driver does not read the filesystem on {} (features: {}): the \
                     installed GRUB cannot boot this slot; rebuild the image without the \
                     feature GRUB lacks (mkfs.ext4 -O ^feature)",
                    dev.display(),
                    f.join(" ")
                ),
                None => format!("{} holds no ext2/3/4 filesystem", dev.display()),
            })
        },
    );
    let fs_uuid = crate::fsinfo::parse_ext4_superblock(&sb).map(|i| i.uuid);
    let in_menu = menu::entry(grub_cfg, slot);
    let mut entry_problems = Vec::new();
    if fs_uuid.as_deref() != Some(entry.fs_uuid.as_str()) {
        entry_problems.push(format!(
            "the entry searches filesystem UUID {} but the slot has {}",
            entry.fs_uuid,
            fs_uuid.as_deref().unwrap_or("none")
        ));
    }
    if let Some(m) = &in_menu {
        if m.fs_uuid.as_deref() != Some(entry.fs_uuid.as_str())
            || m.kernel.as_deref() != Some(entry.kernel.as_str())
            || m.initrd != entry.initrd
        {
            entry_problems.push(format!(
                "grub.cfg's entry (UUID {}, {}) differs from abupdate's record (UUID {}, {})",
                m.fs_uuid.as_deref().unwrap_or("-"),
                m.kernel.as_deref().unwrap_or("-"),
                entry.fs_uuid,
                entry.kernel
            ));
        }
    }
    checks.add(
        name("entry"),
        if entry_problems.is_empty() {
            Ok(format!(
                "{} entry: search --fs-uuid {}, linux {}, initrd {}",
                if in_menu.is_some() {
                    "grub.cfg's"
                } else {
                    "the staged (next switch's)"
                },
                entry.fs_uuid,
                entry.kernel,
                entry.initrd.as_deref().unwrap_or("none")
            ))
        } else {
            Err(entry_problems.join("; "))
        },
    );
    let m = mount_private(dev, true)?;
    // The booted slot may hold data the page cache has not written yet (a kernel just
    // installed): flush it so that GRUB's reading of the device sees it.
    if let Ok(f) = std::fs::File::open(m.path()) {
        let _ = rustix::fs::syncfs(&f);
    }
    let root = SlotRoot::open(m.path())?;
    checks.add(name("kernel"), same_bytes(dev, &root, &entry.kernel));
    if let Some(initrd) = &entry.initrd {
        checks.add(name("initrd"), same_bytes(dev, &root, initrd));
    }
    drop(root);
    m.close()?;
    Ok(())
}

/// Checks the boot partition: grubenv rewritable in place by GRUB, grub.cfg readable.
fn check_boot(ctx: &Context, boot_root: &Path, checks: &mut Checks) -> Result<String> {
    let dev = &ctx.layout.boot.device;
    let sb = superblock(dev)?;
    let info = crate::fsinfo::parse_ext4_superblock(&sb);
    let features = ext_features(&sb).unwrap_or_default();
    let blocklist = fstest(dev, &["blocklist", "/grub/grubenv"]);
    checks.add(
        "grubenv-writable",
        match (&info, &blocklist) {
            (None, _) => Err(format!(
                "the boot partition {} holds no ext2/3/4 filesystem: GRUB's save_env cannot \
                 rewrite grubenv there",
                dev.display()
            )),
            (Some(_), _) if features.contains(&"inline_data") || features.contains(&"encrypt") => {
                Err(format!(
                    "the boot partition's filesystem has {}: GRUB cannot rewrite grubenv in place",
                    features.join(" ")
                ))
            }
            (Some(_), Ok(b)) if blocklist_sectors(b).is_some_and(|s| s >= 2) => Ok(format!(
                "grubenv on a plain {} partition, GRUB's blocklist {} (save_env rewrites it in place)",
                if features.contains(&"has_journal") { "ext3/4" } else { "ext2" },
                b.trim()
            )),
            (Some(_), Ok(b)) => Err(format!(
                "GRUB finds no blocks for /grub/grubenv on {} ({:?})",
                dev.display(),
                b.trim()
            )),
            (Some(_), Err(e)) => Err(format!("GRUB cannot read /grub/grubenv: {e}")),
        },
    );
    let root = SlotRoot::open(boot_root)?;
    checks.add("grub-cfg", same_bytes(dev, &root, "/grub/grub.cfg"));
    Ok(info.map(|i| i.uuid).unwrap_or_default())
}

fn check_chain(
    ctx: &Context,
    boot_root: &Path,
    boot_uuid: &str,
    rec: &ChainRecord,
    checks: &mut Checks,
    notes: &mut Vec<String>,
) -> Result<()> {
    let fw = parts::discover(ctx)?;
    if rec.boot_fs_uuid != boot_uuid {
        checks.add(
            "boot-partition",
            Err(format!(
                "the boot chain was installed for the boot filesystem {}, the boot partition now has {boot_uuid}: run `abupdate init --chain-only`",
                rec.boot_fs_uuid
            )),
        );
    }
    let wants = |config: &str| -> std::result::Result<(), String> {
        match efi::config_uuid(config) {
            Some(u) if u == boot_uuid => Ok(()),
            Some(u) => Err(format!(
                "searches the filesystem UUID {u}, the boot partition has {boot_uuid}"
            )),
            None => Err("names no filesystem UUID".into()),
        }
    };
    if let Some(b) = &rec.bios {
        let part = fw.bios_boot.as_ref().filter(|p| p.partuuid == b.partuuid);
        let r = match part {
            None => Err(format!(
                "the BIOS boot partition {} is gone from the GPT",
                b.partuuid
            )),
            Some(p) => check_bios(&fw.disk, p, b, boot_root, &wants),
        };
        checks.add("bios-boot-code", r);
    }
    if let Some(u) = &rec.uefi {
        let part = fw.esp.as_ref().filter(|p| p.partuuid == u.partuuid);
        let r = match part {
            None => Err(format!("the ESP {} is gone from the GPT", u.partuuid)),
            Some(p) => check_esp(p, u, &wants),
        };
        checks.add("esp", r);
        if std::path::Path::new("/sys/firmware/efi").exists() {
            if let Ok(out) = Cmd::new("efibootmgr").arg("-v").run() {
                let cfg = efi::parse_efibootmgr(&out.stdout_str());
                match efi::plan_nvram(&cfg, &u.partuuid, &u.nvram_loader) {
                    efi::NvramPlan::Present { .. } => {}
                    efi::NvramPlan::Reorder { num, .. } => notes.push(format!(
                        "NVRAM: Boot{num} starts {} but is not first in BootOrder",
                        u.nvram_loader
                    )),
                    efi::NvramPlan::Create => notes.push(format!(
                        "NVRAM: no boot entry starts {}; the firmware must find \\EFI\\BOOT\\BOOTX64.EFI",
                        u.nvram_loader
                    )),
                }
            }
        }
    }
    Ok(())
}

fn check_bios(
    disk: &Path,
    p: &parts::FwPartition,
    b: &super::record::BiosRecord,
    boot_root: &Path,
    wants: &dyn Fn(&str) -> std::result::Result<(), String>,
) -> std::result::Result<String, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let boot_img = std::fs::read(boot_root.join("grub/i386-pc/boot.img"))
        .map_err(|e| io("read boot.img from the boot partition", e))?;
    let mut mbr = [0u8; bios::SECTOR];
    std::fs::File::open(disk)
        .and_then(|f| f.read_exact_at(&mut mbr, 0))
        .map_err(|e| io(&format!("read the MBR of {}", disk.display()), e))?;
    let lba = bios::mbr_core_lba(&mbr, &boot_img).map_err(|e| {
        format!(
            "the MBR of {} is not the installed GRUB's boot code ({e}): something else \
             (the distribution's grub-install?) wrote it",
            disk.display()
        )
    })?;
    if lba != p.first_lba {
        return Err(format!(
            "the MBR loads a core image from LBA {lba}, the BIOS boot partition starts at {}",
            p.first_lba
        ));
    }
    let f = std::fs::File::open(&p.device).map_err(|e| io(&p.device.display().to_string(), e))?;
    let mut first = vec![0u8; bios::SECTOR];
    f.read_exact_at(&mut first, 0)
        .map_err(|e| io("read the core image", e))?;
    let sectors = bios::core_sectors(&first, p.first_lba).ok_or_else(|| {
        format!(
            "the BIOS boot partition {} does not start with a core image that loads itself",
            p.device.display()
        )
    })?;
    let mut core = vec![0u8; sectors * bios::SECTOR];
    f.read_exact_at(&mut core, 0)
        .map_err(|e| io("read the core image", e))?;
    let embedded = grubimage::i386_pc_payload(&core, b.decompressor_len as usize)
        .map_err(|e| e.to_string())
        .and_then(|payload| {
            grubimage::embedded(&payload).ok_or_else(|| "no module list in the core image".into())
        })
        .map_err(|e| format!("cannot read the core image's early config: {e}"))?;
    let config = embedded.config.unwrap_or_default();
    wants(&config).map_err(|e| format!("core.img {e}"))?;
    if sha256(&core) != b.core_sha256 {
        return Err(format!(
            "the core image differs from the one abupdate installed (sha256 {}); it still \
             searches the boot partition, but run `abupdate init --chain-only` to reinstall",
            sha256(&core)
        ));
    }
    let modinfo = std::fs::read_to_string(boot_root.join("grub/i386-pc/modinfo.sh"))
        .map_err(|e| io("read grub/i386-pc/modinfo.sh on the boot partition", e))?;
    let mods = modinfo_version(&modinfo).unwrap_or_default();
    if mods != b.grub_version {
        return Err(format!(
            "the boot partition's i386-pc modules are GRUB {mods}, the core image is {}",
            b.grub_version
        ));
    }
    Ok(format!(
        "MBR → core.img ({sectors} sectors at LBA {lba}) → search.fs_uuid {}, modules GRUB {mods}",
        efi::config_uuid(&config).unwrap_or_default()
    ))
}

fn check_esp(
    p: &parts::FwPartition,
    u: &super::record::UefiRecord,
    wants: &dyn Fn(&str) -> std::result::Result<(), String>,
) -> std::result::Result<String, String> {
    let esp = Esp::open(&p.device).map_err(|e| e.to_string())?;
    for f in &u.files {
        let data = esp
            .read(&f.path)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} is missing on the ESP", f.path))?;
        match f.origin {
            efi::Origin::StubConfig => {
                wants(&String::from_utf8_lossy(&data)).map_err(|e| format!("{} {e}", f.path))?
            }
            efi::Origin::BuiltGrub => {
                let cfg = grubimage::embedded(&data)
                    .and_then(|e| e.config)
                    .ok_or_else(|| format!("{}: no early config in the GRUB image", f.path))?;
                wants(&cfg).map_err(|e| format!("{}'s early config {e}", f.path))?
            }
            _ => {}
        }
        if sha256(&data) != f.sha256 {
            return Err(format!(
                "{} differs from what abupdate installed (something else replaced it)",
                f.path
            ));
        }
    }
    Ok(format!(
        "{} files on {} ({:?} loader) load grub.cfg from the boot partition",
        u.files.len(),
        esp.describe(),
        u.loader
    ))
}

/// `abupdate verify [--slot X]`: checks the boot chain, the boot partition and the given
/// slot (default: every slot with a menu entry to boot). A refused verification (nothing
/// to verify) is an error; failed checks are in the report (`ok: false`).
pub fn verify(ctx: &Context, slot: Option<SlotId>) -> Result<VerifyReport> {
    verify_with(ctx, slot, true)
}

/// [`verify`], with or without the boot chain's checks (`chain`).
fn verify_with(ctx: &Context, slot: Option<SlotId>, chain: bool) -> Result<VerifyReport> {
    let version = match Cmd::new("grub-fstest").arg("--version").run() {
        Ok(o) => parse_grub_version(&o.stdout_str()).unwrap_or_else(|| o.stdout_str()),
        Err(abupdate_utils::CmdError::Spawn { source, .. }) => {
            return Err(Error::Refused(format!(
                "grub-fstest is needed to read the slots with GRUB's own code: {source} (install grub-common)"
            )))
        }
        Err(e) => return Err(Error::cmd("run grub-fstest --version")(e)),
    };
    let booted = ctx.booted()?;
    let boot = ctx.mount_boot(false)?;
    let (st, _bs, facts) = load_all(ctx, &boot, booted)?;
    let slots: Vec<SlotId> = match slot {
        Some(s) => {
            if facts.state(s) == SlotState::Empty || !st.slots.contains_key(&s) {
                boot.close()?;
                return Err(Error::Refused(format!(
                    "slot {s} holds nothing to boot (state {})",
                    facts.state(s)
                )));
            }
            vec![s]
        }
        None => SlotId::ALL
            .into_iter()
            .filter(|s| facts.state(*s) != SlotState::Empty && st.slots.contains_key(s))
            .collect(),
    };
    let mut checks = Checks(Vec::new());
    let mut notes = Vec::new();
    let grub_cfg_path = boot.root().join("grub/grub.cfg");
    let grub_cfg =
        std::fs::read_to_string(&grub_cfg_path).map_err(Error::io("read", &grub_cfg_path))?;
    let boot_uuid = check_boot(ctx, boot.root(), &mut checks)?;
    let rec = if chain {
        ChainRecord::load(boot.root())?
    } else {
        None
    };
    let mut installed = Vec::new();
    match &rec {
        Some(r) => {
            installed.extend(r.bios.iter().map(|b| format!("i386-pc {}", b.grub_version)));
            installed.extend(
                r.uefi
                    .iter()
                    .map(|u| format!("x86_64-efi {} ({:?})", u.grub_version, u.loader)),
            );
            for v in r
                .bios
                .iter()
                .map(|b| &b.grub_version)
                .chain(r.uefi.iter().map(|u| &u.grub_version))
            {
                if *v != version {
                    notes.push(format!(
                        "the installed GRUB is {v}, this system's grub-fstest is {version}: \
                         the proof used {version}'s filesystem code"
                    ));
                }
            }
            check_chain(ctx, boot.root(), &boot_uuid, r, &mut checks, &mut notes)?;
        }
        None if !chain => {}
        None if ctx.cfg.bootchain.install => checks.add(
            "boot-chain",
            Err(
                "no boot chain recorded on the boot partition: run `abupdate init --chain-only`"
                    .into(),
            ),
        ),
        None => notes.push(
            "bootchain.install is false: GRUB's boot code is the operator's and is not checked"
                .into(),
        ),
    }
    for s in &slots {
        if let Some(r) = st.slots.get(s) {
            check_slot(ctx, *s, r, &grub_cfg, &mut checks)?;
        }
    }
    boot.close()?;
    let ok = checks.0.iter().all(|c| c.ok);
    Ok(VerifyReport {
        ok,
        slots,
        grub_fstest: version,
        installed_grub: installed,
        checks: checks.0,
        notes,
    })
}

/// What `switch` and `rollback` check before their first write, when abupdate owns the boot
/// chain (`bootchain.install`): [`verify`] of the slot they make GRUB boot next and of the
/// boot partition (the chain itself changes only in `init`, which records and `verify`
/// checks it). A failed check refuses the operation (exit 4) with the boot partition
/// untouched.
pub fn before_boot(ctx: &Context, slot: SlotId, op: &str) -> Result<()> {
    if !ctx.cfg.bootchain.install {
        return Ok(());
    }
    let report = verify_with(ctx, Some(slot), false)?;
    if report.ok {
        return Ok(());
    }
    Err(Error::Verification(format!(
        "{op} refused: GRUB could not boot slot {slot}: {}; nothing was changed \
         (`abupdate verify --slot {slot}` shows every check)",
        report.failures()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_by_name() {
        let mut sb = vec![0u8; 1024];
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[92..96].copy_from_slice(&(0x4u32 | 0x1000).to_le_bytes());
        sb[96..100].copy_from_slice(&(0x2u32 | 0x40 | 0x8000).to_le_bytes());
        sb[100..104].copy_from_slice(&0x400u32.to_le_bytes());
        assert_eq!(
            ext_features(&sb).expect("ext"),
            [
                "has_journal",
                "orphan_file",
                "filetype",
                "extent",
                "inline_data",
                "metadata_csum"
            ]
        );
        sb[56] = 0;
        assert_eq!(ext_features(&sb), None);
    }

    #[test]
    fn grub_fstest_answers() {
        assert_eq!(blocklist_sectors("18434+2\n"), Some(2));
        assert_eq!(blocklist_sectors("100+3,200+1"), Some(4));
        assert_eq!(
            blocklist_sectors(""),
            None,
            "unknown filesystem prints nothing"
        );
        assert_eq!(blocklist_sectors("garbage"), None);
        assert_eq!(
            parse_grub_version("grub-fstest (GRUB) 2.06-13+deb12u2\n").as_deref(),
            Some("2.06-13+deb12u2")
        );
        assert_eq!(
            modinfo_version("grub_version=\"2.06\"\ngrub_package_version=\"2.06-13+deb12u2\"\n")
                .as_deref(),
            Some("2.06-13+deb12u2")
        );
    }

    #[test]
    fn report_names_failures() {
        let r = VerifyReport {
            ok: false,
            slots: vec![SlotId::B],
            grub_fstest: "2.06".into(),
            installed_grub: vec![],
            checks: vec![
                Check {
                    name: "grub-cfg".into(),
                    ok: true,
                    detail: "fine".into(),
                },
                Check {
                    name: "slot-b-filesystem".into(),
                    ok: false,
                    detail: "features: inline_data".into(),
                },
            ],
            notes: vec![],
        };
        assert_eq!(r.failures(), "slot-b-filesystem: features: inline_data");
        let text = r.to_string();
        assert!(text.contains("FAIL slot-b-filesystem"), "{text}");
        assert!(text.ends_with("verification failed"), "{text}");
    }
}
