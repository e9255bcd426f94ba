//! The one disk builder: a sparse GPT image laid out like an abupdate host (an optional BIOS
//! boot partition or FAT EFI system partition, the ext2 boot partition `abboot`, slots `root-a` and `root-b`, `data`),
//! attached to a loop device with its partitions visible, formatted, and the minimal
//! "Debian" tree that stands in for an installed system in a slot.
//!
//! The privileged tests, the stage benchmark and the VM disks build on it; what goes into
//! slot A beyond the formatting (a fake tree, a real root tar, GRUB) is the caller's.

use std::fs;
use std::path::{Path, PathBuf};

use abupdate_utils::loopdev::LoopDevice;
use abupdate_utils::mount::TempMount;
use abupdate_utils::Cmd;
use anyhow::{bail, Context, Result};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// 512-byte sectors per MiB.
const SECTORS_PER_MIB: u64 = 2048;
/// GPT type of a Linux filesystem partition.
pub const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// GPT type of a BIOS boot partition (GRUB's i386-pc core image).
pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
/// GPT type of an EFI system partition.
pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// What a partition is for; its GPT name is what abupdate's config selects it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// BIOS boot partition, no filesystem.
    BiosBoot,
    /// EFI system partition (FAT16, empty; written with mtools: it is never mounted, the
    /// hosts the tests run on may have no vfat driver).
    Esp,
    /// The shared boot partition (ext2).
    Boot,
    /// Root slot A (ext4, filled by the caller).
    SlotA,
    /// Root slot B (left empty: stage fills it).
    SlotB,
    /// The data partition (ext4).
    Data,
}

impl Role {
    /// The GPT partition name (partlabel), also the filesystem label where there is one.
    pub fn partlabel(self) -> &'static str {
        match self {
            Role::BiosBoot => "bios",
            Role::Esp => "esp",
            Role::Boot => "abboot",
            Role::SlotA => "root-a",
            Role::SlotB => "root-b",
            Role::Data => "data",
        }
    }

    /// The mkfs program for the filesystem the builder creates, if any.
    fn mkfs(self) -> Option<&'static str> {
        match self {
            Role::Boot => Some("mkfs.ext2"),
            Role::SlotA | Role::Data => Some("mkfs.ext4"),
            // FAT, formatted apart: mkfs.vfat takes other options.
            Role::Esp | Role::BiosBoot | Role::SlotB => None,
        }
    }

    /// The filesystem type to mount it with.
    pub fn fstype(self) -> &'static str {
        match self {
            Role::Boot => "ext2",
            Role::Esp => "vfat",
            _ => "ext4",
        }
    }
}

/// One partition of a [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSpec {
    /// What it is for.
    pub role: Role,
    /// Size in MiB.
    pub mib: u64,
    /// A fixed PARTUUID (random when `None`).
    pub partuuid: Option<String>,
    /// A fixed filesystem UUID for the filesystem the builder makes (random when `None`).
    pub fs_uuid: Option<String>,
}

impl PartSpec {
    /// A partition of `mib` MiB with random identifiers.
    pub fn new(role: Role, mib: u64) -> PartSpec {
        PartSpec {
            role,
            mib,
            partuuid: None,
            fs_uuid: None,
        }
    }
}

/// A GPT layout: partitions back to back from 1 MiB, 1 MiB spare at the end for the backup
/// table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// A fixed disk GUID (random when `None`).
    pub disk_guid: Option<String>,
    /// The partitions in table order (partition 1 first).
    pub parts: Vec<PartSpec>,
}

impl Layout {
    /// Boot, slot A, slot B and data partitions of the given sizes.
    pub fn abupdate(boot_mib: u64, slot_mib: u64, data_mib: u64) -> Layout {
        Layout {
            disk_guid: None,
            parts: vec![
                PartSpec::new(Role::Boot, boot_mib),
                PartSpec::new(Role::SlotA, slot_mib),
                PartSpec::new(Role::SlotB, slot_mib),
                PartSpec::new(Role::Data, data_mib),
            ],
        }
    }

    /// The same layout behind a 1 MiB BIOS boot partition (partition 1).
    pub fn with_bios_boot(mut self) -> Layout {
        self.parts.insert(0, PartSpec::new(Role::BiosBoot, 1));
        self
    }

    /// The same layout behind an EFI system partition of `mib` MiB (partition 1).
    pub fn with_esp(mut self, mib: u64) -> Layout {
        self.parts.insert(0, PartSpec::new(Role::Esp, mib));
        self
    }

    /// The partition number (1-based) of `role`.
    pub fn number(&self, role: Role) -> Option<u32> {
        let i = self.parts.iter().position(|p| p.role == role)?;
        u32::try_from(i + 1).ok()
    }

    /// The spec of `role`'s partition.
    pub fn part(&self, role: Role) -> Option<&PartSpec> {
        self.parts.iter().find(|p| p.role == role)
    }

    /// The mutable spec of `role`'s partition (to fix its identifiers).
    pub fn part_mut(&mut self, role: Role) -> Option<&mut PartSpec> {
        self.parts.iter_mut().find(|p| p.role == role)
    }

    /// The first sector of `role`'s partition.
    pub fn start_sector(&self, role: Role) -> Option<u64> {
        let mut at = SECTORS_PER_MIB;
        for p in &self.parts {
            if p.role == role {
                return Some(at);
            }
            at += p.mib * SECTORS_PER_MIB;
        }
        None
    }

    /// The image size in bytes.
    pub fn size_bytes(&self) -> u64 {
        (1 + self.parts.iter().map(|p| p.mib).sum::<u64>() + 1) * MIB
    }

    /// The `sfdisk` script of this layout.
    pub fn sfdisk_script(&self) -> String {
        let mut s = String::from("label: gpt\n");
        if let Some(g) = &self.disk_guid {
            s += &format!("label-id: {g}\n");
        }
        s += "unit: sectors\nfirst-lba: 2048\n";
        let mut at = SECTORS_PER_MIB;
        for p in &self.parts {
            let ty = match p.role {
                Role::BiosBoot => BIOS_BOOT,
                Role::Esp => ESP,
                _ => LINUX_FS,
            };
            s += &format!(
                "start={at}, size={}, type={ty}, name=\"{}\"",
                p.mib * SECTORS_PER_MIB,
                p.role.partlabel()
            );
            if let Some(u) = &p.partuuid {
                s += &format!(", uuid={u}");
            }
            s.push('\n');
            at += p.mib * SECTORS_PER_MIB;
        }
        s
    }
}

/// A disk image built from a [`Layout`], attached to a loop device: the boot partition is
/// ext2 with an empty `/grub`, slot A and data are empty ext4 filesystems labelled by their
/// role, an ESP is an empty FAT16, slot B and the BIOS boot partition are left as zeros. Detached on drop or `close`.
#[derive(Debug)]
pub struct Disk {
    layout: Layout,
    image: PathBuf,
    lo: LoopDevice,
}

impl Disk {
    /// Creates the sparse image `image` (overwritten), partitions, attaches and formats it.
    pub fn create(image: &Path, layout: &Layout) -> Result<Disk> {
        let f = fs::File::create(image).with_context(|| format!("create {}", image.display()))?;
        f.set_len(layout.size_bytes())
            .with_context(|| format!("size {}", image.display()))?;
        drop(f);
        Cmd::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(image)
            .stdin(layout.sfdisk_script())
            .run()
            .with_context(|| format!("partition {} with sfdisk", image.display()))?;
        let lo =
            LoopDevice::attach(image).with_context(|| format!("attach {}", image.display()))?;
        let disk = Disk {
            layout: layout.clone(),
            image: image.to_owned(),
            lo,
        };
        for p in &disk.layout.parts {
            let dev = disk.partition(p.role)?;
            if !dev.exists() {
                bail!(
                    "partx -a did not create {} (no devtmpfs node?)",
                    dev.display()
                );
            }
            if p.role == Role::Esp {
                // FAT16 (FAT32 wants 32 MiB or more); a fixed fs_uuid is the volume id
                // (8 hex digits, e.g. `5E1F00E1`).
                let mut cmd = Cmd::new("mkfs.vfat").args(["-F", "16", "-n", "ESP"]);
                if let Some(u) = &p.fs_uuid {
                    cmd = cmd.args(["-i", &u.replace('-', "")]);
                }
                cmd.arg(&dev)
                    .run()
                    .with_context(|| format!("mkfs.vfat {}", dev.display()))?;
            } else if let Some(mkfs) = p.role.mkfs() {
                let mut cmd = Cmd::new(mkfs).args(["-q", "-F", "-L", p.role.partlabel()]);
                if let Some(u) = &p.fs_uuid {
                    cmd = cmd.args(["-U", u]);
                }
                cmd.arg(&dev)
                    .run()
                    .with_context(|| format!("{mkfs} {}", dev.display()))?;
            }
        }
        let boot = disk.mount(Role::Boot)?;
        let grub = boot.path().join("grub");
        fs::create_dir_all(&grub).with_context(|| format!("create {}", grub.display()))?;
        boot.close().context("unmount the boot partition")?;
        Ok(disk)
    }

    /// The layout it was built from.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The whole-disk loop device.
    pub fn device(&self) -> &Path {
        self.lo.path()
    }

    /// The device node of `role`'s partition, e.g. `/dev/loop3p2`.
    pub fn partition(&self, role: Role) -> Result<PathBuf> {
        let n = self
            .layout
            .number(role)
            .with_context(|| format!("the disk has no {} partition", role.partlabel()))?;
        Ok(self.lo.partition(n))
    }

    /// Mounts `role`'s filesystem read-write on a temporary directory.
    pub fn mount(&self, role: Role) -> Result<TempMount> {
        let dev = self.partition(role)?;
        TempMount::new(&dev, role.fstype(), false)
            .with_context(|| format!("mount {} ({})", dev.display(), role.partlabel()))
    }

    /// Detaches the loop device, reporting failure.
    pub fn close(self) -> Result<()> {
        self.lo
            .close()
            .with_context(|| format!("detach {}", self.image.display()))
    }
}

/// The identity of a minimal Debian tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsTree<'a> {
    /// `VERSION_ID`, e.g. `12`.
    pub version: &'a str,
    /// `VERSION_CODENAME`, e.g. `bookworm`.
    pub codename: &'a str,
    /// Kernel version of the stub `/boot/vmlinuz-*` and `/boot/initrd.img-*`.
    pub kernel: &'a str,
}

/// Debian 12 as the privileged tests and the benchmark put it in slot A.
pub const DEBIAN_12: OsTree<'static> = OsTree {
    version: "12",
    codename: "bookworm",
    kernel: "6.1.0-1-amd64",
};

/// Debian 13 as the test images carry it.
pub const DEBIAN_13: OsTree<'static> = OsTree {
    version: "13",
    codename: "trixie",
    kernel: "6.12.0-1-amd64",
};

/// Writes a minimal Debian tree under `root`: `/etc/os-release`, a stub kernel and initrd in
/// `/boot` (what stage looks for), `/etc/hostname` and the usual top directories.
pub fn write_os_tree(root: &Path, os: &OsTree<'_>, hostname: &str) -> Result<()> {
    for d in ["boot", "etc/ssh", "usr/bin", "var/lib", "tmp"] {
        let p = root.join(d);
        fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
    }
    let OsTree {
        version: v,
        codename: c,
        kernel: k,
    } = os;
    let files = [
        (
            "etc/os-release".to_owned(),
            format!(
                "PRETTY_NAME=\"Debian GNU/Linux {v} ({c})\"\nNAME=\"Debian GNU/Linux\"\n\
                 VERSION_ID=\"{v}\"\nVERSION=\"{v} ({c})\"\nVERSION_CODENAME={c}\nID=debian\n"
            ),
        ),
        (format!("boot/vmlinuz-{k}"), format!("dummy kernel {k}\n")),
        (
            format!("boot/initrd.img-{k}"),
            format!("dummy initrd {k}\n"),
        ),
        ("etc/hostname".to_owned(), format!("{hostname}\n")),
    ];
    for (rel, content) in files {
        let p = root.join(rel);
        fs::write(&p, content).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bios_layout_numbers_and_script() {
        let mut l = Layout::abupdate(128, 1600, 64).with_bios_boot();
        l.disk_guid = Some("5e1f0000-0000-4000-8000-0000000000ff".into());
        if let Some(p) = l.part_mut(Role::SlotB) {
            p.partuuid = Some("5e1f0000-0000-4000-8000-000000000004".into());
        }
        assert_eq!(l.number(Role::BiosBoot), Some(1));
        assert_eq!(l.number(Role::SlotA), Some(3));
        assert_eq!(l.number(Role::Data), Some(5));
        assert_eq!(l.start_sector(Role::Boot), Some(2 * 2048));
        assert_eq!(l.start_sector(Role::SlotA), Some(130 * 2048));
        assert_eq!(l.size_bytes(), (1 + 1 + 128 + 3200 + 64 + 1) * MIB);
        let s = l.sfdisk_script();
        assert!(s.starts_with("label: gpt\nlabel-id: 5e1f0000-0000-4000-8000-0000000000ff\n"));
        assert!(s.contains(&format!(
            "start=2048, size=2048, type={BIOS_BOOT}, name=\"bios\"\n"
        )));
        assert!(s.contains("name=\"root-b\", uuid=5e1f0000-0000-4000-8000-000000000004\n"));
        assert_eq!(s.lines().filter(|l| l.starts_with("start=")).count(), 5);
    }

    #[test]
    fn plain_layout_has_no_bios_partition() {
        let l = Layout::abupdate(64, 256, 32);
        assert_eq!(l.number(Role::BiosBoot), None);
        assert_eq!(l.number(Role::Boot), Some(1));
        assert_eq!(l.number(Role::SlotB), Some(3));
        assert!(!l.sfdisk_script().contains("label-id"));
    }
}
