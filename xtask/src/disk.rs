//! Assembles the test disk from the cached parts: GPT with fixed uuids, slot A = Debian 12 +
//! the release abupdate binary and its config, an ext2 boot partition with GRUB's i386-pc
//! modules, GRUB's core.img in the BIOS boot partition and boot.img in the MBR (GRUB without
//! grub-install, see docs/vm-harness.md), a data partition with a checksummed file. Then the host-built
//! `abupdate init --slot a` writes grub.cfg, grubenv and state: xtask never writes those.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use abupdate_utils::loopdev::LoopDevice;
use abupdate_utils::mount::TempMount;
use abupdate_utils::Cmd;
use anyhow::{bail, Context, Result};

use crate::images::Images;
use crate::util;

const MIB_SECTORS: u64 = 2048;
/// Partition table: (number, name, start sector, size in sectors, type, partuuid).
struct Part {
    name: &'static str,
    start: u64,
    size: u64,
    type_guid: &'static str,
    uuid: &'static str,
}

const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const SLOT_MIB: u64 = 1600;

const PARTS: [Part; 5] = [
    Part {
        name: "bios",
        start: MIB_SECTORS,
        size: MIB_SECTORS,
        type_guid: BIOS_BOOT,
        uuid: "5e1f0000-0000-4000-8000-000000000001",
    },
    Part {
        name: "abboot",
        start: 2 * MIB_SECTORS,
        size: 128 * MIB_SECTORS,
        type_guid: LINUX_FS,
        uuid: "5e1f0000-0000-4000-8000-000000000002",
    },
    Part {
        name: "root-a",
        start: 130 * MIB_SECTORS,
        size: SLOT_MIB * MIB_SECTORS,
        type_guid: LINUX_FS,
        uuid: "5e1f0000-0000-4000-8000-000000000003",
    },
    Part {
        name: "root-b",
        start: (130 + SLOT_MIB) * MIB_SECTORS,
        size: SLOT_MIB * MIB_SECTORS,
        type_guid: LINUX_FS,
        uuid: "5e1f0000-0000-4000-8000-000000000004",
    },
    Part {
        name: "data",
        start: (130 + 2 * SLOT_MIB) * MIB_SECTORS,
        size: 64 * MIB_SECTORS,
        type_guid: LINUX_FS,
        uuid: "5e1f0000-0000-4000-8000-000000000005",
    },
];
const DISK_LABEL_ID: &str = "5e1f0000-0000-4000-8000-0000000000ff";
/// Filesystem uuids (fixed so expectations are simple).
pub const BOOT_FS_UUID: &str = "5e1f0000-0000-4000-8000-0000000000b2";
const ROOT_A_FS_UUID: &str = "5e1f0000-0000-4000-8000-0000000000a3";
const DATA_FS_UUID: &str = "5e1f0000-0000-4000-8000-0000000000d5";
/// The file on the data partition whose checksum must never change.
pub const DATA_FILE: &str = "/data/testdata.bin";
/// Content of `/etc/app.conf`, an application config the manifest carries to the new slot.
pub const APP_CONF: &str = "# application config carried across upgrades by abupdate's manifest\nlisten = 0.0.0.0:8080\nsecret = xtask-3f9a\n";

/// What the tests need to know about a built disk.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// sha256 of [`DATA_FILE`].
    pub data_sha256: String,
}

/// abupdate's config as installed in slot A (partitions by GPT name, no `disk:`).
pub fn guest_config() -> String {
    r#"# abupdate config for the xtask test machine
partitions:
  boot:   { partlabel: abboot, mountpoint: /boot/abboot }
  slot_a: { partlabel: root-a }
  slot_b: { partlabel: root-b }
  data:   { partlabel: data, mountpoint: /data }
manifest:
  include: [/etc/hostname, "/etc/ssh/ssh_host_*", /etc/app.conf, /etc/abupdate/, /usr/local/sbin/abupdate, /root/.ssh/]
  exclude: []
services: [ssh.service, systemd-networkd.service]
kernel_cmdline: ""
grub: { timeout: 1, serial: { enabled: true, unit: 0, speed: 115200 } }
trial: { tries: 3, panic_seconds: 5 }
lock_file: /run/abupdate.lock
"#
    .to_string()
}

/// The boot assessment unit installed (and enabled) in slot A when the daemon is wanted.
const DAEMON_UNIT: &str = include_str!("../../config/systemd/abupdate.service");

/// [`guest_config`] with the boot assessment daemon: its unit carried by the manifest and
/// enabled in staged slots, and a `health:` section (short deadline, checks that pass on a
/// healthy Debian 13 guest).
pub fn guest_config_daemon() -> String {
    guest_config()
        .replace(
            "/usr/local/sbin/abupdate, /root/.ssh/]",
            "/usr/local/sbin/abupdate, /root/.ssh/, /etc/systemd/system/abupdate.service]",
        )
        .replace(
            "services: [ssh.service, systemd-networkd.service]",
            "services: [ssh.service, systemd-networkd.service, abupdate.service]",
        )
        + "health:\n  deadline: 240\n  on_failure: rollback\n  allow_degraded: true\n  checks:\n    - { unit: ssh.service }\n    - { tcp: \"127.0.0.1:22\" }\n"
}

fn sfdisk_script() -> String {
    let mut s = format!("label: gpt\nlabel-id: {DISK_LABEL_ID}\nunit: sectors\nfirst-lba: 2048\n");
    for p in &PARTS {
        s += &format!(
            "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
            p.start, p.size, p.type_guid, p.uuid, p.name
        );
    }
    s
}

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

/// Builds the disk image at `out` (overwritten).
pub fn build(imgs: &Images, abupdate: &Path, out: &Path) -> Result<DiskInfo> {
    build_with(imgs, abupdate, out, false)
}

/// [`build`], with the boot assessment daemon installed and enabled in slot A when `daemon`.
pub fn build_with(imgs: &Images, abupdate: &Path, out: &Path, daemon: bool) -> Result<DiskInfo> {
    let config = if daemon {
        guest_config_daemon()
    } else {
        guest_config()
    };
    let start = std::time::Instant::now();
    let last = PARTS.iter().map(|p| p.start + p.size).max().unwrap_or(0);
    let size = (last + MIB_SECTORS) * 512;
    {
        let f = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
        f.set_len(size)
            .with_context(|| format!("size {}", out.display()))?;
    }
    Cmd::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(sfdisk_script())
        .run()
        .with_context(|| format!("partition {}", out.display()))?;

    let lo = LoopDevice::attach(out).with_context(|| format!("attach {}", out.display()))?;
    let p = |n: u32| lo.partition(n);
    mkfs("mkfs.ext2", "abboot", BOOT_FS_UUID, &p(2))?;
    mkfs("mkfs.ext4", "root-a", ROOT_A_FS_UUID, &p(3))?;
    mkfs("mkfs.ext4", "data", DATA_FS_UUID, &p(5))?;

    // Slot A: Debian 12 + abupdate + its config + the application config.
    let root = TempMount::new(&p(3), "ext4", false).context("mount slot A")?;
    util::extract_tar(&imgs.bookworm_tar, root.path())?;
    install_file(
        root.path(),
        "usr/local/sbin/abupdate",
        &read(abupdate)?,
        0o755,
    )?;
    install_file(
        root.path(),
        "etc/abupdate/abupdate.yaml",
        config.as_bytes(),
        0o644,
    )?;
    if daemon {
        install_file(
            root.path(),
            "etc/systemd/system/abupdate.service",
            DAEMON_UNIT.as_bytes(),
            0o644,
        )?;
        let wants = root
            .path()
            .join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).with_context(|| format!("create {}", wants.display()))?;
        let link = wants.join("abupdate.service");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/etc/systemd/system/abupdate.service", &link)
            .with_context(|| format!("enable {}", link.display()))?;
    }
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
    let data = TempMount::new(&p(5), "ext4", false).context("mount the data partition")?;
    let content = data_file_content();
    install_file(data.path(), "testdata.bin", &content, 0o644)?;
    data.close().context("unmount the data partition")?;

    // Boot partition: GRUB's modules (grub.cfg and grubenv are abupdate's).
    let boot = TempMount::new(&p(2), "ext2", false).context("mount the boot partition")?;
    copy_grub_modules(boot.path())?;
    boot.close().context("unmount the boot partition")?;

    abupdate_init(abupdate, lo.path(), out, &config)?;
    lo.close()
        .with_context(|| format!("detach {}", out.display()))?;

    install_grub_boot_code(out)?;
    println!(
        "disk: {} assembled in {:.1?} (kernel {kernel})",
        out.display(),
        start.elapsed()
    );
    Ok(DiskInfo {
        data_sha256: util::sha256_bytes(&content),
    })
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("read {}", p.display()))
}

fn mkfs(prog: &str, label: &str, uuid: &str, dev: &Path) -> Result<()> {
    Cmd::new(prog)
        .args(["-q", "-F", "-L", label, "-U", uuid])
        .arg(dev)
        .run()
        .with_context(|| format!("{prog} {}", dev.display()))?;
    Ok(())
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

const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";

fn copy_grub_modules(boot: &Path) -> Result<()> {
    let dest = boot.join("grub/i386-pc");
    std::fs::create_dir_all(&dest).with_context(|| format!("create {}", dest.display()))?;
    for e in std::fs::read_dir(GRUB_DIR).with_context(|| format!("list {GRUB_DIR}"))? {
        let path = e.with_context(|| format!("list {GRUB_DIR}"))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "mod" || ext == "lst" {
            let to = dest.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &to)
                .with_context(|| format!("copy {} to {}", path.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Runs the host-built abupdate's `init --slot a` against the loop-attached disk.
fn abupdate_init(abupdate: &Path, disk_dev: &Path, image: &Path, config: &str) -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory for the init config")?;
    let cfg = dir.path().join("abupdate.yaml");
    let text = format!("disk: {}\n{}", disk_dev.display(), config);
    std::fs::write(&cfg, text).with_context(|| format!("write {}", cfg.display()))?;
    println!(
        "disk: abupdate --config <disk: {}> init --slot a",
        disk_dev.display()
    );
    let out = Cmd::new(abupdate)
        .arg("--config")
        .arg(&cfg)
        .args(["init", "--slot", "a"])
        .run()
        .with_context(|| format!("abupdate init --slot a on {}", image.display()))?;
    for l in out.stdout_str().lines() {
        println!("  abupdate: {l}");
    }
    Ok(())
}

/// GRUB i386-pc boot code without grub-install: core.img into the BIOS boot partition with
/// its blocklist pointing at itself, boot.img's code into the MBR pointing at core.img.
fn install_grub_boot_code(image: &Path) -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory for core.img")?;
    let early = dir.path().join("early.cfg");
    std::fs::write(
        &early,
        format!("search.fs_uuid {BOOT_FS_UUID} root\nset prefix=($root)/grub\n"),
    )
    .with_context(|| format!("write {}", early.display()))?;
    let core_path: PathBuf = dir.path().join("core.img");
    Cmd::new("grub-mkimage")
        .args(["-O", "i386-pc", "-d", GRUB_DIR, "-c"])
        .arg(&early)
        .args(["-p", "/grub", "-o"])
        .arg(&core_path)
        .args(["biosdisk", "part_gpt", "ext2", "search_fs_uuid"])
        .run()
        .context("grub-mkimage core.img")?;
    let mut core = read(&core_path)?;
    let bios = &PARTS[0];
    if core.len() as u64 > bios.size * 512 || core.len() < 512 {
        bail!(
            "core.img is {} bytes, does not fit the BIOS boot partition",
            core.len()
        );
    }
    core[500..508].copy_from_slice(&(bios.start + 1).to_le_bytes());
    let boot_img = read(&Path::new(GRUB_DIR).join("boot.img"))?;
    if boot_img.len() < 512 {
        bail!("{GRUB_DIR}/boot.img is too short");
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
    mbr[0x5c..0x64].copy_from_slice(&bios.start.to_le_bytes());
    mbr[0x66] = 0x90;
    mbr[0x67] = 0x90;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&mbr))
        .and_then(|_| f.seek(SeekFrom::Start(bios.start * 512)))
        .and_then(|_| f.write_all(&core))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write GRUB boot code into {}", image.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_do_not_overlap_and_slots_are_equal() {
        for w in PARTS.windows(2) {
            assert!(
                w[0].start + w[0].size <= w[1].start,
                "{} overlaps {}",
                w[0].name,
                w[1].name
            );
        }
        assert_eq!(PARTS[2].size, PARTS[3].size);
        assert!(sfdisk_script().contains("name=\"root-b\""));
    }
}
