//! Assembles a VM test disk from the cached parts, on the test kit's disk builder: GPT with
//! fixed identifiers, slot A = Debian 12 with abupdate's `.deb` installed by `dpkg -i` in a
//! chroot (binary, unit, man pages, completions as an operator gets them) and the test's
//! config over the package's conffile (a typed `Config`, serialized), an ext2 boot partition, the firmware's boot code, a data
//! partition with a checksummed file. Then the host-built `abupdate init --slot a` writes
//! grub.cfg, grubenv and state: xtask never writes those. BIOS: xtask copies GRUB's modules
//! and writes core.img in the BIOS boot partition and boot.img in the MBR itself (the
//! harness's own GRUB without grub-install, see docs/vm-harness.md). UEFI: `init` installs
//! the chain too (`bootchain.install: true`): GRUB's x86_64-efi modules on the boot
//! partition and its unsigned image as `\EFI\BOOT\BOOTX64.EFI` on the FAT16 ESP, written
//! with mtools on the loop partition (the host has no vfat driver).
//!
//! The e2e harness builds one such disk per [`DiskKind`] and run, keeps it immutable and
//! gives every machine its own qcow2 overlay on it (see `vm::create_overlay`).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use abupdate_testkit::config::{self, Config, EfiLoader, OnFailure};
use abupdate_testkit::disk::{Disk, Layout, Role};
use abupdate_utils::mount::BindMount;
use abupdate_utils::Cmd;
use anyhow::{bail, Context, Result};

use crate::images::Images;
use crate::util;

/// The firmware a test machine boots with; its disk carries the matching boot code
/// ([`layout`], [`install_boot_code`]) and `vm` starts QEMU with the matching firmware
/// (`vm::firmware_args`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// SeaBIOS; GRUB's i386-pc core image in a BIOS boot partition, boot.img in the MBR.
    Bios,
    /// OVMF without Secure Boot; an EFI system partition with the unsigned GRUB image that
    /// `abupdate init` builds and installs itself.
    Uefi,
}

/// What a disk holds besides the common parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskKind {
    /// Firmware and boot code.
    pub firmware: Firmware,
    /// The boot assessment daemon installed and enabled in slot A, with a `health:` section
    /// (short deadline, checks that pass on a healthy Debian 13 guest).
    pub daemon: bool,
    /// `abupdate init` installs the boot chain (`bootchain.install: true`, as on a server:
    /// it also guards slot A's GRUB packages and installs the kernel hooks) instead of the
    /// harness writing BIOS boot code by hand. Always so on UEFI.
    pub chain_by_init: bool,
}

impl DiskKind {
    /// BIOS, no daemon: the disk of the upgrade, rollback and failure scenarios.
    pub const PLAIN: DiskKind = DiskKind {
        firmware: Firmware::Bios,
        daemon: false,
        chain_by_init: false,
    };
    /// BIOS, no daemon, the boot chain installed by `abupdate init` (the distribution
    /// packages scenario).
    pub const BIOS_CHAIN: DiskKind = DiskKind {
        firmware: Firmware::Bios,
        daemon: false,
        chain_by_init: true,
    };
    /// UEFI (the chain is always `abupdate init`'s), no daemon.
    pub const UEFI: DiskKind = DiskKind {
        firmware: Firmware::Uefi,
        daemon: false,
        chain_by_init: true,
    };
    /// BIOS with the boot assessment daemon enabled.
    pub const DAEMON: DiskKind = DiskKind {
        firmware: Firmware::Bios,
        daemon: true,
        chain_by_init: false,
    };

    /// Whether `abupdate init` installs the boot chain: asked for, or UEFI (the harness
    /// writes boot code only for BIOS).
    pub fn init_installs_chain(self) -> bool {
        self.chain_by_init || self.firmware == Firmware::Uefi
    }

    /// A short name for file names and messages, e.g. `bios-daemon`.
    pub fn name(self) -> String {
        let fw = match self.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        let mut name = fw.to_owned();
        if self.init_installs_chain() && self.firmware == Firmware::Bios {
            name += "-chain";
        }
        if self.daemon {
            name += "-daemon";
        }
        name
    }
}

/// Size of each root slot.
const SLOT_MIB: u64 = 1600;
const DISK_LABEL_ID: &str = "5e1f0000-0000-4000-8000-0000000000ff";
/// Partition UUIDs: BIOS boot (or ESP), boot, root-a, root-b, data.
const PART_UUIDS: [&str; 5] = [
    "5e1f0000-0000-4000-8000-000000000001",
    "5e1f0000-0000-4000-8000-000000000002",
    "5e1f0000-0000-4000-8000-000000000003",
    "5e1f0000-0000-4000-8000-000000000004",
    "5e1f0000-0000-4000-8000-000000000005",
];
/// Filesystem uuids (fixed so expectations are simple).
pub const BOOT_FS_UUID: &str = "5e1f0000-0000-4000-8000-0000000000b2";
const ROOT_A_FS_UUID: &str = "5e1f0000-0000-4000-8000-0000000000a3";
const DATA_FS_UUID: &str = "5e1f0000-0000-4000-8000-0000000000d5";
/// The ESP's FAT volume id.
pub const ESP_VOLUME_ID: &str = "5e1f00e1";
/// Size of the ESP: FAT16, room for GRUB's image (a few MiB at most).
const ESP_MIB: u64 = 32;
/// The file on the data partition whose checksum must never change.
pub const DATA_FILE: &str = "/data/testdata.bin";
/// systemd's mount unit for the data partition (`systemd-escape -p --suffix=mount /data`).
pub const DATA_MOUNT_UNIT: &str = "data.mount";
/// Content of `/etc/app.conf`, an application config the manifest carries to the new slot.
pub const APP_CONF: &str = "# application config carried across upgrades by abupdate's manifest\nlisten = 0.0.0.0:8080\nsecret = xtask-3f9a\n";
/// Where slot A's abupdate reads its configuration.
pub const GUEST_CONFIG: &str = "/etc/abupdate/abupdate.yaml";

/// What the tests need to know about a built disk.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// sha256 of [`DATA_FILE`].
    pub data_sha256: String,
}

/// The GPT layout of a disk for `firmware`, with fixed identifiers.
pub fn layout(firmware: Firmware) -> Layout {
    let mut l = match firmware {
        Firmware::Bios => Layout::abupdate(128, SLOT_MIB, 64).with_bios_boot(),
        Firmware::Uefi => Layout::abupdate(128, SLOT_MIB, 64).with_esp(ESP_MIB),
    };
    l.disk_guid = Some(DISK_LABEL_ID.to_owned());
    for (p, uuid) in l.parts.iter_mut().zip(PART_UUIDS) {
        p.partuuid = Some(uuid.to_owned());
        p.fs_uuid = match p.role {
            Role::Boot => Some(BOOT_FS_UUID.to_owned()),
            Role::SlotA => Some(ROOT_A_FS_UUID.to_owned()),
            Role::Data => Some(DATA_FS_UUID.to_owned()),
            Role::Esp => Some(ESP_VOLUME_ID.to_owned()),
            Role::BiosBoot | Role::SlotB => None,
        };
    }
    l
}

/// abupdate's config as installed in slot A of a disk of `kind`: partitions by GPT name, no
/// `disk:`, the manifest and services a real host would carry across. On UEFI disks abupdate
/// owns the boot chain (`bootchain.install: true`, so `stage` guards the new slot's GRUB
/// packages) with the unsigned GRUB image (OVMF runs without Secure Boot) and no NVRAM
/// entry (the firmware boots the removable path `\EFI\BOOT\BOOTX64.EFI`).
pub fn guest_config(kind: DiskKind) -> Result<Config> {
    let daemon = kind.daemon;
    let mut c = config::standard(None)?;
    c.bootchain.install = kind.init_installs_chain();
    if kind.firmware == Firmware::Uefi {
        c.bootchain.efi_loader = EfiLoader::Unsigned;
        c.bootchain.nvram = false;
    }
    // The Debian 13 image has no abupdate: the manifest carries the package's binary (and,
    // with the daemon, its unit) into every staged slot.
    c.manifest.include = [
        "/etc/hostname",
        "/etc/ssh/ssh_host_*",
        "/etc/app.conf",
        "/etc/abupdate/",
        PACKAGE_BINARY,
        "/root/.ssh/",
    ]
    .map(String::from)
    .to_vec();
    c.services = vec!["ssh.service".into(), "systemd-networkd.service".into()];
    if daemon {
        // The daemon's unit travels with the manifest and is enabled in staged slots.
        c.manifest.include.push(PACKAGE_UNIT.into());
        c.services.push("abupdate.service".into());
        c.health.deadline = 240;
        c.health.on_failure = OnFailure::Rollback;
        c.health.allow_degraded = true;
        c.health.checks = vec![
            config::unit_check("ssh.service"),
            config::tcp_check("127.0.0.1:22"),
        ];
    }
    Ok(c)
}

/// Where the package installs the binary.
const PACKAGE_BINARY: &str = "/usr/sbin/abupdate";
/// Where the package installs the boot assessment unit (`/lib` is `/usr/lib` in both
/// images).
const PACKAGE_UNIT: &str = "/usr/lib/systemd/system/abupdate.service";

/// Deterministic content for the data file.
fn data_file_content() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..(4usize << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Builds the disk image of `kind` at `out` (overwritten): slot A gets the package `deb`;
/// `abupdate` (the same build, run on the host) writes the boot partition.
pub fn build(
    imgs: &Images,
    abupdate: &Path,
    deb: &Path,
    out: &Path,
    kind: DiskKind,
) -> Result<DiskInfo> {
    let config = guest_config(kind)?;
    let start = std::time::Instant::now();
    let layout = layout(kind.firmware);
    let disk = Disk::create(out, &layout)?;

    // Slot A: Debian 12 + the abupdate package + the test's config (an edited conffile) +
    // the application config.
    let root = disk.mount(Role::SlotA)?;
    util::extract_tar(&imgs.bookworm_tar, root.path())?;
    install_package(root.path(), deb, kind.daemon)?;
    install_file(
        root.path(),
        &GUEST_CONFIG[1..],
        config::to_yaml(&config)?.as_bytes(),
        0o644,
    )?;
    install_file(root.path(), "etc/app.conf", APP_CONF.as_bytes(), 0o644)?;
    // The same form `abupdate stage` writes for the new slot.
    let fstab = format!(
        "# slot A (xtask): root comes from root=PARTUUID= on the kernel command line\n\
         UUID={BOOT_FS_UUID} /boot/abboot auto defaults,nofail 0 2\n\
         UUID={DATA_FS_UUID} /data auto defaults,nofail 0 2\n"
    );
    install_file(root.path(), "etc/fstab", fstab.as_bytes(), 0o644)?;
    for d in ["boot/abboot", "data"] {
        std::fs::create_dir_all(root.path().join(d))
            .with_context(|| format!("create slot A /{d}"))?;
    }
    let kernel = find_kernel(root.path())?;
    root.close().context("unmount slot A")?;

    // Data partition: one file with a known checksum.
    let data = disk.mount(Role::Data)?;
    let content = data_file_content();
    install_file(data.path(), "testdata.bin", &content, 0o644)?;
    data.close().context("unmount the data partition")?;

    // Boot partition: GRUB's modules for BIOS (grub.cfg and grubenv are abupdate's, and so
    // is everything of the UEFI chain).
    if !kind.init_installs_chain() {
        let boot = disk.mount(Role::Boot)?;
        copy_grub_modules(boot.path())?;
        boot.close().context("unmount the boot partition")?;
    }

    abupdate_init(abupdate, &disk, &config)?;
    disk.close()?;

    install_boot_code(kind, &layout, out)?;
    println!(
        "disk: {} ({}) assembled in {:.1?} (kernel {kernel})",
        out.display(),
        kind.name(),
        start.elapsed()
    );
    Ok(DiskInfo {
        data_sha256: util::sha256_bytes(&content),
    })
}

/// Installs the package `deb` into the extracted root `root` with `dpkg -i` chrooted there
/// (the image's dpkg path filters apply: abupdate's man pages are kept). The package enables
/// abupdate.service; without the daemon it is disabled again as an operator would
/// (`systemctl disable`; the package's upgrade re-enables only a unit that was enabled).
fn install_package(root: &Path, deb: &Path, daemon: bool) -> Result<()> {
    let rel = "tmp/abupdate-xtask.deb";
    let inside = root.join(rel);
    std::fs::copy(deb, &inside)
        .with_context(|| format!("copy {} to {}", deb.display(), inside.display()))?;
    // The slot is mounted nodev: the maintainer scripts get the host's /dev.
    let dev = BindMount::new(Path::new("/dev"), &root.join("dev"))
        .context("bind-mount /dev into slot A")?;
    let chroot = |args: &[&str]| {
        Cmd::new("chroot")
            .arg(root)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .with_context(|| format!("{} chrooted in slot A", args.join(" ")))
    };
    let installed = chroot(&["dpkg", "-i", &format!("/{rel}")]).and_then(|out| {
        if let Some(l) = out
            .stdout_str()
            .lines()
            .find(|l| l.starts_with("Setting up"))
        {
            println!("  dpkg: {l}");
        }
        if !daemon {
            chroot(&["systemctl", "disable", "--quiet", "abupdate.service"])?;
        }
        Ok(())
    });
    let closed = dev.close().context("unmount slot A's /dev");
    std::fs::remove_file(&inside).with_context(|| format!("remove {}", inside.display()))?;
    installed?;
    closed?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants/abupdate.service");
    if wants.symlink_metadata().is_ok() != daemon {
        bail!(
            "abupdate.service should be {} in slot A after the installation",
            if daemon { "enabled" } else { "disabled" }
        );
    }
    Ok(())
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("read {}", p.display()))
}

/// Writes `rel` (relative to `root`) with `mode`, creating parent directories.
pub(crate) fn install_file(root: &Path, rel: &str, content: &[u8], mode: u32) -> Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(&path, content).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The kernel version installed in a root filesystem (from /boot/vmlinuz-*).
fn find_kernel(root: &Path) -> Result<String> {
    let boot = root.join("boot");
    for e in std::fs::read_dir(&boot).with_context(|| format!("list {}", boot.display()))? {
        let name = e
            .with_context(|| format!("list {}", boot.display()))?
            .file_name();
        if let Some(v) = name.to_string_lossy().strip_prefix("vmlinuz-") {
            return Ok(v.to_string());
        }
    }
    bail!("no /boot/vmlinuz-* in {}", boot.display())
}

/// GRUB's BIOS platform directory (the UEFI chain is `abupdate init`'s).
const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";

fn copy_grub_modules(boot: &Path) -> Result<()> {
    let src = GRUB_BIOS_DIR;
    let platform = Path::new(src).file_name().unwrap_or_default();
    let dest = boot.join("grub").join(platform);
    std::fs::create_dir_all(&dest).with_context(|| format!("create {}", dest.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("list {src}"))? {
        let path = e.with_context(|| format!("list {src}"))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "mod" || ext == "lst" {
            let to = dest.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &to)
                .with_context(|| format!("copy {} to {}", path.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Runs the host-built abupdate's `init --slot a` against the loop-attached disk, with the
/// guest's configuration pointed at the loop device.
fn abupdate_init(abupdate: &Path, disk: &Disk, guest: &Config) -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory for the init config")?;
    let cfg = dir.path().join("abupdate.yaml");
    let mut host = guest.clone();
    host.disk = Some(disk.device().to_owned());
    // A lock of its own: the host's /run/abupdate.lock belongs to the host, and parallel
    // lanes build their base disks at the same time.
    host.lock_file = dir.path().join("abupdate.lock");
    config::write(&host, &cfg)?;
    println!(
        "disk: abupdate --config <disk: {}> init --slot a",
        disk.device().display()
    );
    let mut cmd = Cmd::new(abupdate);
    if guest.bootchain.install {
        // Installing the chain also guards slot A's boot-loader packages, which init does
        // in the booted slot: on the host building the disk that is slot A of the loop
        // disk (as in the privileged tests; never set in a guest).
        cmd = cmd.env("ABUPDATE_ASSUME_BOOTED", "a");
    }
    let out = cmd
        .arg("--config")
        .arg(&cfg)
        .args(["init", "--slot", "a"])
        .run()
        .with_context(|| format!("abupdate init --slot a on {}", disk.image().display()))?;
    for l in out.stdout_str().lines() {
        println!("  abupdate: {l}");
    }
    Ok(())
}

/// Writes the firmware's boot code into the (detached) image when the harness owns it (BIOS
/// without [`DiskKind::chain_by_init`]); otherwise `abupdate init` installed it, checked
/// here: the ESP holds `\EFI\BOOT\BOOTX64.EFI`, or the MBR holds GRUB's boot code.
fn install_boot_code(kind: DiskKind, layout: &Layout, image: &Path) -> Result<()> {
    match (kind.firmware, kind.init_installs_chain()) {
        (Firmware::Bios, false) => install_grub_bios(layout, image),
        (Firmware::Bios, true) => check_mbr(image),
        (Firmware::Uefi, _) => check_esp(layout, image),
    }
}

/// The MBR of the detached image carries boot code (GRUB's boot.img says "GRUB" in it).
fn check_mbr(image: &Path) -> Result<()> {
    let mut mbr = [0u8; 440];
    std::fs::File::open(image)
        .and_then(|mut f| f.read_exact(&mut mbr))
        .with_context(|| format!("read the MBR of {}", image.display()))?;
    if !mbr.windows(4).any(|w| w == b"GRUB") {
        bail!(
            "abupdate init left no GRUB boot code in the MBR of {}",
            image.display()
        );
    }
    Ok(())
}

/// Lists `\EFI\BOOT` on the detached image's ESP with mtools: `BOOTX64.EFI` must be there.
fn check_esp(layout: &Layout, image: &Path) -> Result<()> {
    let start = layout
        .start_sector(Role::Esp)
        .context("the UEFI layout has no EFI system partition")?;
    let out = Cmd::new("mdir")
        .arg("-i")
        .arg(format!("{}@@{}", image.display(), start * 512))
        .args(["-b", "::/EFI/BOOT"])
        .run()
        .with_context(|| format!("list the ESP of {} with mdir", image.display()))?;
    let list = out.stdout_str();
    if !list.to_uppercase().contains("BOOTX64.EFI") {
        bail!("abupdate init left no \\EFI\\BOOT\\BOOTX64.EFI on the ESP: {list}");
    }
    Ok(())
}

/// GRUB i386-pc boot code without grub-install: core.img into the BIOS boot partition with
/// its blocklist pointing at itself, boot.img's code into the MBR pointing at core.img.
fn install_grub_bios(layout: &Layout, image: &Path) -> Result<()> {
    let grub = GRUB_BIOS_DIR;
    let (Some(bios_start), Some(bios)) = (
        layout.start_sector(Role::BiosBoot),
        layout.part(Role::BiosBoot),
    ) else {
        bail!("the BIOS layout has no BIOS boot partition");
    };
    let dir = tempfile::tempdir().context("temporary directory for core.img")?;
    let early = dir.path().join("early.cfg");
    std::fs::write(
        &early,
        format!("search.fs_uuid {BOOT_FS_UUID} root\nset prefix=($root)/grub\n"),
    )
    .with_context(|| format!("write {}", early.display()))?;
    let core_path: PathBuf = dir.path().join("core.img");
    Cmd::new("grub-mkimage")
        .args(["-O", "i386-pc", "-d", grub, "-c"])
        .arg(&early)
        .args(["-p", "/grub", "-o"])
        .arg(&core_path)
        .args(["biosdisk", "part_gpt", "ext2", "search_fs_uuid"])
        .run()
        .context("grub-mkimage core.img")?;
    let mut core = read(&core_path)?;
    if core.len() as u64 > bios.mib << 20 || core.len() < 512 {
        bail!(
            "core.img is {} bytes, does not fit the BIOS boot partition",
            core.len()
        );
    }
    core[500..508].copy_from_slice(&(bios_start + 1).to_le_bytes());
    let boot_img = read(&Path::new(grub).join("boot.img"))?;
    if boot_img.len() < 512 {
        bail!("{grub}/boot.img is too short");
    }

    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("open {}", image.display()))?;
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr)
        .with_context(|| format!("read the MBR of {}", image.display()))?;
    mbr[..440].copy_from_slice(&boot_img[..440]);
    mbr[0x5c..0x64].copy_from_slice(&bios_start.to_le_bytes());
    mbr[0x66] = 0x90;
    mbr[0x67] = 0x90;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&mbr))
        .and_then(|_| f.seek(SeekFrom::Start(bios_start * 512)))
        .and_then(|_| f.write_all(&core))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write GRUB boot code into {}", image.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bios_layout_keeps_the_fixed_identifiers() {
        let l = layout(Firmware::Bios);
        assert_eq!(l.number(Role::BiosBoot), Some(1));
        assert_eq!(l.start_sector(Role::BiosBoot), Some(2048));
        assert_eq!(l.start_sector(Role::SlotA), Some(130 * 2048));
        let s = l.sfdisk_script();
        assert!(s.contains("name=\"root-b\", uuid=5e1f0000-0000-4000-8000-000000000004"));
        assert_eq!(
            l.part(Role::Boot).and_then(|p| p.fs_uuid.as_deref()),
            Some(BOOT_FS_UUID)
        );
    }

    #[test]
    fn guest_configs_parse_and_differ_only_by_the_daemon() {
        let plain = config::to_yaml(&guest_config(DiskKind::PLAIN).expect("plain")).expect("yaml");
        let daemon = guest_config(DiskKind::DAEMON).expect("daemon");
        assert!(!plain.contains("abupdate.service"), "{plain}");
        assert!(daemon.services.iter().any(|s| s == "abupdate.service"));
        assert_eq!(daemon.health.checks.len(), 2);
        assert_eq!(daemon.grub.timeout, 0);
        assert!(!daemon.bootchain.install);
    }

    #[test]
    fn uefi_disk_has_an_esp_and_abupdate_owns_its_chain() {
        let l = layout(Firmware::Uefi);
        assert_eq!(l.number(Role::Esp), Some(1));
        assert_eq!(l.number(Role::BiosBoot), None);
        assert!(l
            .sfdisk_script()
            .contains("type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\""));
        let c = guest_config(DiskKind::UEFI).expect("uefi");
        assert!(c.bootchain.install && !c.bootchain.nvram);
        assert_eq!(c.bootchain.efi_loader, EfiLoader::Unsigned);
    }
}
