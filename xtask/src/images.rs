//! Debian images built with mmdebstrap from the host's own apt sources, cached under
//! `/var/cache/abupdate-xtask/<key>/` where key = sha256 of every input (suite, packages,
//! files and hooks, a version constant, the host's apt sources), so a changed input rebuilds.
//!
//! - `bookworm.tar`: Debian 12 root filesystem for slot A (with the test ssh key);
//! - `trixie.img.zst`: Debian 13 raw ext4 image, the "new distribution" to stage. It carries
//!   no hostname, ssh host keys, authorized keys or abupdate: those come across with
//!   abupdate's manifest;
//! - `broken.img.zst`: the same with an `/sbin/init` that exits at once (kernel panic).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use abupdate_testkit::LoopDevice;
use abupdate_utils::mount::TempMount;
use abupdate_utils::Cmd;
use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::util;

/// Where everything is cached (outside the repository).
pub const CACHE_ROOT: &str = "/var/cache/abupdate-xtask";
/// Bump to force a rebuild when the recipe changes in a way the hash does not see.
const RECIPE_VERSION: &str = "abupdate-xtask-images-v1";
/// The host's apt sources (deb822); read at run time so no mirror is named in the repo.
const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// Size of the raw Debian 13 ext4 image.
const NEW_IMAGE_MIB: u64 = 900;

const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "libpam-systemd",
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",
    "openssh-server",
    "iproute2",
    "e2fsprogs",
    "kmod",
    "procps",
    // grub-script-check, grub-editenv: abupdate validates the GRUB script it renders.
    "grub-common",
    // abupdate's package installs man pages and a bash completion: the VM tests read them.
    "man-db",
    "bash-completion",
    // `switch --kexec` and `rollback --kexec` load the next slot's kernel with kexec(8);
    // the package's own kexec-on-reboot stays off ([`HOOK_NO_KEXEC_REBOOT`]).
    "kexec-tools",
    // Ansible's modules run in the guest with python3 (scenario q, the fleet): the role's
    // probe and the abupdate module in both Debian 12 and Debian 13.
    "python3",
];

const PATH_EXCLUDES: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
];

/// What dpkg installs although [`PATH_EXCLUDES`] leaves it out (dpkg applies the last
/// matching pattern): abupdate's own man pages, which the VM tests read with `man`.
const PATH_INCLUDES: &[&str] = &[
    "/usr/share/man/man8/abupdate*",
    "/usr/share/man/man5/abupdate*",
];

/// Kernel module trees a virtio guest never loads (relative to `/lib/modules/*/kernel/`);
/// excluded under both `/lib/modules` and `/usr/lib/modules`.
const MODULE_EXCLUDES: &[&str] = &[
    "drivers/gpu/*",
    "drivers/media/*",
    "drivers/net/wireless/*",
    "drivers/net/ethernet/*",
    "drivers/net/usb/*",
    "drivers/net/can/*",
    "drivers/infiniband/*",
    "drivers/staging/*",
    "drivers/bluetooth/*",
    "drivers/iio/*",
    "drivers/usb/*",
    "drivers/comedi/*",
    "drivers/video/*",
    "drivers/platform/*",
    "drivers/isdn/*",
    "drivers/mtd/*",
    "drivers/scsi/*/*",
    "sound/*",
    "net/wireless/*",
    "net/mac80211/*",
    "net/bluetooth/*",
    "fs/nfs/*",
    "fs/nfsd/*",
    "fs/ocfs2/*",
    "fs/xfs/*",
    "fs/btrfs/*",
    "fs/f2fs/*",
    "fs/smb/*",
    "fs/gfs2/*",
    "fs/ceph/*",
    "lib/test_*",
    "arch/x86/kvm/*",
];

/// Every dpkg path filter option, in order (`path-exclude=...`, then `path-include=...`).
/// mmdebstrap also writes them into the image's `/etc/dpkg/dpkg.cfg.d/`, so a package
/// installed later (abupdate's, on every VM disk) is filtered the same way.
fn path_filters() -> Vec<String> {
    let mut v: Vec<String> = PATH_EXCLUDES
        .iter()
        .map(|s| format!("path-exclude={s}"))
        .collect();
    for prefix in ["/lib/modules/*/kernel/", "/usr/lib/modules/*/kernel/"] {
        v.extend(
            MODULE_EXCLUDES
                .iter()
                .map(|m| format!("path-exclude={prefix}{m}")),
        );
    }
    v.extend(PATH_INCLUDES.iter().map(|s| format!("path-include={s}")));
    v
}

/// Hostname of the test machine (slot A; carried to B by the manifest).
pub const HOSTNAME: &str = "abupdate-vm";

/// A file placed into the root filesystem: path, mode, content.
struct OverlayFile {
    path: &'static str,
    mode: u32,
    content: String,
}

/// Files present before any package is installed (read by the kernel's postinst).
fn early_files() -> Vec<OverlayFile> {
    vec![OverlayFile {
        path: "etc/initramfs-tools/conf.d/xtask.conf",
        mode: 0o644,
        content: "MODULES=list\nCOMPRESS=zstd\n".into(),
    }]
}

/// Modules a TCG guest should not load at boot (`/etc/modprobe.d/xtask-tcg.conf`). QEMU's
/// `-cpu max` advertises VT-x, AES-NI, PCLMUL, SHA and AVX, so udev loads the matching
/// modules; kvm cannot work without hardware virtualization, and each crypto module runs its
/// self-tests in emulated vector code, with every module load patching kernel text (which
/// makes TCG throw away translated code on both vCPUs). systemd 257's ssh generator (Debian
/// 13) opens an AF_VSOCK socket, which loads the VMware and virtio vsock transports. The
/// generic code serves the same requests: nothing the guest does changes, and the slow part
/// of Debian 13's boot under TCG goes away (see xtask/README.md).
const TCG_BLACKLIST: &str = "\
# abupdate xtask test guest under QEMU TCG: see xtask/src/images.rs
blacklist kvm
blacklist kvm_intel
blacklist kvm_amd
blacklist aesni_intel
blacklist ghash_clmulni_intel
blacklist polyval_clmulni
blacklist crc32_pclmul
blacklist crct10dif_pclmul
blacklist sha1_ssse3
blacklist sha256_ssse3
blacklist sha512_ssse3
blacklist vsock
blacklist vsock_loopback
blacklist vmw_vsock_vmci_transport
blacklist vmw_vsock_virtio_transport_common
blacklist vmw_vmci
";

/// An initramfs-tools hook that leaves udev's hardware database out of the initramfs
/// (Debian 13's udev hook copies its 13 MiB; finding and mounting the root needs none of
/// it). Runs after the `udev` hook (`zz-` sorts last).
const NO_HWDB_HOOK: &str = "\
#!/bin/sh
# abupdate xtask test guest: see xtask/src/images.rs
[ \"$1\" = prereqs ] && exit 0
rm -f \"${DESTDIR}/usr/lib/udev/hwdb.bin\" \"${DESTDIR}/etc/udev/hwdb.bin\"
";

/// Files for every suite, copied in after the packages are installed.
fn late_files() -> Vec<OverlayFile> {
    vec![
        OverlayFile {
            path: "etc/initramfs-tools/modules",
            mode: 0o644,
            content: "virtio_pci\nvirtio_blk\nvirtio_scsi\nsd_mod\next4\ncrc32c_generic\n".into(),
        },
        OverlayFile {
            path: "etc/modprobe.d/xtask-tcg.conf",
            mode: 0o644,
            content: TCG_BLACKLIST.into(),
        },
        OverlayFile {
            path: "etc/initramfs-tools/hooks/zz-xtask-no-hwdb",
            mode: 0o755,
            content: NO_HWDB_HOOK.into(),
        },
        OverlayFile {
            path: "etc/systemd/network/20-wired.network",
            mode: 0o644,
            content: "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n".into(),
        },
        OverlayFile {
            path: "etc/ssh/sshd_config.d/xtask.conf",
            mode: 0o644,
            content: "PermitRootLogin prohibit-password\nUseDNS no\n".into(),
        },
    ]
}

/// Files only the old system (slot A's tar) gets.
fn old_only_files(ssh_pub: &str) -> Vec<OverlayFile> {
    vec![
        OverlayFile {
            path: "etc/hostname",
            mode: 0o644,
            content: format!("{HOSTNAME}\n"),
        },
        OverlayFile {
            path: "root/.ssh/authorized_keys",
            mode: 0o600,
            content: format!("{}\n", ssh_pub.trim()),
        },
    ]
}

/// The man page section directories abupdate's package installs into: the path-exclude of
/// `/usr/share/man/*` leaves them out too, a path-include brings files only, and dpkg does
/// not create a directory it filtered (`dpkg -i` of the package then fails, as it did in a
/// Debian 13 slot). Debian's own slim images keep them the same way.
const HOOK_MAN_DIRS: &str = "mkdir -p \"$1\"/usr/share/man/man5 \"$1\"/usr/share/man/man8";

const HOOK_INITRAMFS: &str = "chroot \"$1\" update-initramfs -u -k all";
/// Records that the image's caches are up to date (`/etc/.updated`, `/var/.updated`), as the
/// first boot of an installed system does: the package scripts already built `ld.so.cache`
/// and the journal catalog. Without it Debian 13 rebuilds both (`ldconfig.service`,
/// `systemd-journal-catalog-update.service`, ordered before `sysinit.target`) on the first
/// boot of every slot staged from the image. Debian 12 has no such units.
const HOOK_UPDATE_DONE: &str = "[ ! -x \"$1\"/usr/lib/systemd/systemd-update-done ] || chroot \"$1\" /usr/lib/systemd/systemd-update-done";
/// man-db's daily timer would rebuild the manual's index on a guest's first boot (the timer
/// is persistent), in emulated code while a test runs: `man` finds pages without it.
const HOOK_NO_MANDB_TIMER: &str = "[ ! -e \"$1\"/usr/lib/systemd/system/man-db.timer ] || chroot \"$1\" systemctl disable man-db.timer";
/// kexec-tools answers its own debconf question "handle reboots?" with yes: every reboot would
/// load the default kernel and jump to it, skipping firmware and GRUB. Off, so a reboot is a
/// reboot and only abupdate's `--kexec` uses kexec (`LOAD_KEXEC` is read at each shutdown;
/// the package's config script keeps the file's answer on a reconfiguration).
const HOOK_NO_KEXEC_REBOOT: &str = "[ ! -e \"$1\"/etc/default/kexec ] || sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=false/' \"$1\"/etc/default/kexec";
/// Slot A as the Debian installer leaves a BIOS server: `grub-pc` installed, its debconf
/// answer naming the disk, GRUB's modules and a `core.img` in the slot's own `/boot/grub`
/// (what `grub-install /dev/vda` writes there) and a `grub.cfg` (which makes every kernel
/// and GRUB package change run `update-grub`). The harness's `abupdate init` then guards
/// the slot; scenario p reinstalls the package and updates the kernel on real boots.
const HOOK_INSTALLER_GRUB: &[&str] = &[
    "echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | chroot \"$1\" debconf-set-selections",
    "mkdir -p \"$1\"/boot/grub/i386-pc && cp \"$1\"/usr/lib/grub/i386-pc/*.mod \"$1\"/usr/lib/grub/i386-pc/*.lst \"$1\"/boot/grub/i386-pc/",
    "chroot \"$1\" grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -p '(hd0,gpt3)/boot/grub' biosdisk part_gpt ext2",
    "echo '# written by update-grub when the system was installed' > \"$1\"/boot/grub/grub.cfg",
];

/// [`PACKAGES`] with the kernel of `suite`'s point release (`linux-image-amd64/<suite>`,
/// not the security suite's), so that scenario p has a newer kernel package to install in
/// each slot.
fn packages_with_point_release_kernel(suite: &str) -> Vec<String> {
    PACKAGES
        .iter()
        .map(|p| match *p {
            "linux-image-amd64" => format!("{p}/{suite}"),
            p => p.to_string(),
        })
        .collect()
}

/// Debian 12's packages: the point release's kernel, and `grub-pc` (see
/// [`HOOK_INSTALLER_GRUB`]).
fn old_packages() -> Vec<String> {
    let mut v = packages_with_point_release_kernel("bookworm");
    v.push("grub-pc".into());
    v
}

const HOOK_OLD: &[&str] = &["chroot \"$1\" systemctl enable systemd-networkd.service"];
/// The new image has no identity of its own: hostname and keys come from the manifest.
const HOOK_NEW: &[&str] = &[
    "rm -f \"$1\"/etc/ssh/ssh_host_* \"$1\"/etc/hostname",
    "rm -rf \"$1\"/root/.ssh",
];

/// The test ssh key pair, generated once into the cache.
#[derive(Debug, Clone)]
pub struct SshKey {
    /// Private key file (mode 0600).
    pub private: PathBuf,
    /// Public key line.
    pub public: String,
}

/// The cached build products.
#[derive(Debug, Clone)]
pub struct Images {
    /// Debian 12 rootfs tar for slot A.
    pub bookworm_tar: PathBuf,
    /// Debian 13 raw ext4 image, zstd-compressed.
    pub trixie_zst: PathBuf,
    /// Its sha256 (hex).
    pub trixie_sha256: String,
    /// The broken variant (init exits at once), zstd-compressed.
    pub broken_zst: PathBuf,
    /// Its sha256 (hex).
    pub broken_sha256: String,
    /// The ssh key pair to log into the guest.
    pub ssh: SshKey,
}

impl fmt::Display for Images {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "bookworm rootfs: {}", self.bookworm_tar.display())?;
        writeln!(
            f,
            "trixie image:    {} sha256 {}",
            self.trixie_zst.display(),
            self.trixie_sha256
        )?;
        writeln!(
            f,
            "broken image:    {} sha256 {}",
            self.broken_zst.display(),
            self.broken_sha256
        )?;
        write!(f, "ssh key:         {}", self.ssh.private.display())
    }
}

/// Generates the ssh key pair once.
pub fn ssh_key() -> Result<SshKey> {
    let dir = Path::new(CACHE_ROOT).join("ssh");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let private = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    if !private.is_file() || !public.is_file() {
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(&public);
        Cmd::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "abupdate-xtask",
                "-f",
            ])
            .arg(&private)
            .run()
            .context("generate the test ssh key")?;
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", private.display()))?;
    let public =
        std::fs::read_to_string(&public).with_context(|| format!("read {}", public.display()))?;
    Ok(SshKey { private, public })
}

/// The host's apt sources rewritten for `suite` (every `Suites:` token starting with the
/// host's codename gets the new codename).
fn sources_for(host: &str, suite: &str) -> Result<String> {
    let host_suite = host
        .lines()
        .find_map(|l| l.strip_prefix("Suites:"))
        .and_then(|s| s.split_whitespace().next())
        .context("no Suites: line in the host's apt sources")?
        .to_string();
    let out: Vec<String> = host
        .lines()
        .map(|l| match l.strip_prefix("Suites:") {
            Some(rest) => {
                let suites: Vec<String> = rest
                    .split_whitespace()
                    .map(|s| match s.strip_prefix(host_suite.as_str()) {
                        Some(tail) => format!("{suite}{tail}"),
                        None => s.to_string(),
                    })
                    .collect();
                format!("Suites: {}", suites.join(" "))
            }
            None => l.to_string(),
        })
        .collect();
    Ok(out.join("\n") + "\n")
}

/// One mmdebstrap recipe: everything that goes into the cache key.
struct Recipe {
    suite: &'static str,
    /// What `--include` installs: [`PACKAGES`], adjusted per suite.
    packages: Vec<String>,
    sources: String,
    early: Vec<OverlayFile>,
    late: Vec<OverlayFile>,
    hooks: Vec<String>,
}

impl Recipe {
    fn key(&self, extra: &str) -> String {
        let mut text = format!("{RECIPE_VERSION}\nsuite={}\n", self.suite);
        text += &format!(
            "packages={}\nfilters={}\n",
            self.packages.join(","),
            path_filters().join(",")
        );
        text += &format!("sources=\n{}\n", self.sources);
        for (tag, files) in [("early", &self.early), ("late", &self.late)] {
            for f in files {
                text += &format!("{tag} {} {:o}\n{}\n", f.path, f.mode, f.content);
            }
        }
        for h in &self.hooks {
            text += &format!("hook {h}\n");
        }
        text += extra;
        util::sha256_bytes(text.as_bytes())[..16].to_string()
    }

    /// Runs mmdebstrap into `out_tar`, with logs in `work`.
    fn build(&self, work: &Path, out_tar: &Path) -> Result<()> {
        let sources = work.join(format!("{}.sources", self.suite));
        std::fs::write(&sources, &self.sources)
            .with_context(|| format!("write {}", sources.display()))?;
        let early = work.join(format!("{}-early", self.suite));
        let late = work.join(format!("{}-late", self.suite));
        write_overlay(&early, &self.early)?;
        write_overlay(&late, &self.late)?;
        let mut cmd = Command::new("mmdebstrap");
        cmd.arg("--variant=minbase")
            .arg(format!("--include={}", self.packages.join(",")));
        for p in path_filters() {
            cmd.arg(format!("--dpkgopt={p}"));
        }
        cmd.arg(format!("--essential-hook=sync-in {} /", early.display()))
            .arg(format!("--customize-hook=sync-in {} /", late.display()));
        for h in &self.hooks {
            cmd.arg(format!("--customize-hook={h}"));
        }
        cmd.arg(self.suite).arg(out_tar).arg(&sources);
        let log = work.join(format!("mmdebstrap-{}.log", self.suite));
        println!(
            "images: mmdebstrap {} (a few minutes; log {})",
            self.suite,
            log.display()
        );
        util::run_logged(&mut cmd, &log, &format!("mmdebstrap {}", self.suite))
    }
}

/// Writes overlay files into `dir` with directories 0755 (0700 for root's home).
fn write_overlay(dir: &Path, files: &[OverlayFile]) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for f in files {
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&path, &f.content).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    // Directory modes are copied onto the target tree by sync-in: make them the usual ones.
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let rel = d.strip_prefix(dir).unwrap_or(Path::new(""));
        let mode = if rel.starts_with("root") {
            0o700
        } else {
            0o755
        };
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", d.display()))?;
        for e in std::fs::read_dir(&d).with_context(|| format!("list {}", d.display()))? {
            let e = e.with_context(|| format!("list {}", d.display()))?;
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                dirs.push(e.path());
            }
        }
    }
    Ok(())
}

/// The host's apt sources (deb822) with its suites renamed to `suite`'s (`trixie`,
/// `trixie-updates`, `trixie-security`): the same mirror, another release.
pub fn host_sources(suite: &str) -> Result<String> {
    let host = std::fs::read_to_string(HOST_SOURCES)
        .with_context(|| format!("read the host's apt sources {HOST_SOURCES}"))?;
    sources_for(&host, suite)
}

fn recipes(ssh: &SshKey) -> Result<(Recipe, Recipe)> {
    let mut old_late = late_files();
    old_late.extend(old_only_files(&ssh.public));
    let mut old_hooks = vec![HOOK_INITRAMFS.to_string()];
    old_hooks.extend(HOOK_OLD.iter().map(|s| s.to_string()));
    old_hooks.push(HOOK_NO_MANDB_TIMER.to_string());
    old_hooks.push(HOOK_MAN_DIRS.to_string());
    old_hooks.push(HOOK_NO_KEXEC_REBOOT.to_string());
    old_hooks.push(HOOK_UPDATE_DONE.to_string());
    old_hooks.extend(HOOK_INSTALLER_GRUB.iter().map(|s| s.to_string()));
    let old = Recipe {
        suite: "bookworm",
        packages: old_packages(),
        sources: host_sources("bookworm")?,
        early: early_files(),
        late: old_late,
        hooks: old_hooks,
    };
    let mut new_hooks = vec![HOOK_INITRAMFS.to_string()];
    new_hooks.extend(HOOK_NEW.iter().map(|s| s.to_string()));
    new_hooks.push(HOOK_NO_MANDB_TIMER.to_string());
    new_hooks.push(HOOK_MAN_DIRS.to_string());
    new_hooks.push(HOOK_NO_KEXEC_REBOOT.to_string());
    new_hooks.push(HOOK_UPDATE_DONE.to_string());
    let new = Recipe {
        suite: "trixie",
        packages: packages_with_point_release_kernel("trixie"),
        sources: host_sources("trixie")?,
        early: early_files(),
        late: late_files(),
        hooks: new_hooks,
    };
    Ok((old, new))
}

/// Builds whatever is missing from the cache and returns the paths. Several xtask
/// processes (other worktrees) may share the cache: an entry is built under its lock by one
/// of them, marked as used on every run, and removed only when no run used it for
/// [`PRUNE_AFTER`].
pub fn ensure() -> Result<Images> {
    let ssh = ssh_key()?;
    let (old, new) = recipes(&ssh)?;
    let old_dir = Path::new(CACHE_ROOT).join(old.key(""));
    let new_dir =
        Path::new(CACHE_ROOT).join(new.key(&format!("image_mib={NEW_IMAGE_MIB}\nbroken=v1\n")));
    // Always in this order, so two processes never wait on each other's second lock.
    let locks = [lock_entry(&old_dir)?, lock_entry(&new_dir)?];
    let need_old = !old_dir.join("bookworm.tar").is_file();
    let need_new = !new_dir.join("trixie.img.zst.sha256").is_file();
    if need_old || need_new {
        println!("images: building into {CACHE_ROOT} (cached afterwards)");
    }
    // The two mmdebstrap runs are mostly network- and dpkg-bound: run them side by side.
    std::thread::scope(|s| -> Result<()> {
        let h_old = need_old.then(|| s.spawn(|| build_old(&old, &old_dir)));
        let h_new = need_new.then(|| s.spawn(|| build_new(&new, &new_dir)));
        let r_old = h_old.map(|h| {
            h.join()
                .unwrap_or_else(|_| bail!("bookworm build panicked"))
        });
        let r_new = h_new.map(|h| h.join().unwrap_or_else(|_| bail!("trixie build panicked")));
        r_old.transpose()?;
        r_new.transpose()?;
        Ok(())
    })?;
    for d in [&old_dir, &new_dir] {
        mark_used(d)?;
    }
    drop(locks);
    prune_stale(&[&old_dir, &new_dir]);
    let read_sum = |p: &Path| -> Result<String> {
        Ok(std::fs::read_to_string(p)
            .with_context(|| format!("read {}", p.display()))?
            .trim()
            .to_string())
    };
    Ok(Images {
        bookworm_tar: old_dir.join("bookworm.tar"),
        trixie_zst: new_dir.join("trixie.img.zst"),
        trixie_sha256: read_sum(&new_dir.join("trixie.img.zst.sha256"))?,
        broken_zst: new_dir.join("broken.img.zst"),
        broken_sha256: read_sum(&new_dir.join("broken.img.zst.sha256"))?,
        ssh,
    })
}

/// A cache entry unused for this long is removed by the next run of any xtask.
const PRUNE_AFTER: Duration = Duration::from_secs(3 * 24 * 3600);
/// The file whose modification time says when an entry was last used.
const LAST_USED: &str = ".last-used";

/// The lock file of the cache entry `dir` (`<dir>.lock`).
fn lock_path(dir: &Path) -> PathBuf {
    dir.with_extension("lock")
}

/// Takes the exclusive lock of the cache entry `dir`, waiting for a process that builds it.
fn lock_entry(dir: &Path) -> Result<Flock<File>> {
    let path = lock_path(dir);
    std::fs::create_dir_all(CACHE_ROOT).with_context(|| format!("create {CACHE_ROOT}"))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open the cache lock {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("lock the cache entry {}", dir.display()))
}

/// Records that this run uses the cache entry `dir`.
fn mark_used(dir: &Path) -> Result<()> {
    let p = dir.join(LAST_USED);
    std::fs::write(&p, format!("{}\n", std::process::id()))
        .with_context(|| format!("mark {} as used", dir.display()))
}

/// When `entry` was last used: its [`LAST_USED`] file, else its own modification time.
fn last_used(entry: &Path) -> Option<SystemTime> {
    std::fs::metadata(entry.join(LAST_USED))
        .or_else(|_| std::fs::symlink_metadata(entry))
        .and_then(|m| m.modified())
        .ok()
}

/// Whether `name` is a cache entry, a build directory or a lock of one (a 16-hex-digit key
/// with an optional extension).
fn is_cache_key(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("");
    stem.len() == 16 && stem.chars().all(|c| c.is_ascii_hexdigit())
}

/// Removes cache entries (16-hex-digit directories other than `keep`) that no run has used
/// for [`PRUNE_AFTER`]; an entry whose lock is held (being built or used) stays.
fn prune_stale(keep: &[&Path]) {
    let Ok(rd) = std::fs::read_dir(CACHE_ROOT) else {
        return;
    };
    let now = SystemTime::now();
    for e in rd.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_cache_key(&name) || name.ends_with(".lock") || keep.contains(&path.as_path()) {
            continue;
        }
        let idle = last_used(&path)
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if idle < PRUNE_AFTER {
            continue;
        }
        let entry = path.with_extension("");
        let Ok(file) = File::open(lock_path(&entry)).or_else(|_| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(lock_path(&entry))
        }) else {
            continue;
        };
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        println!(
            "images: removing cache entry {} (unused for {} days)",
            path.display(),
            idle.as_secs() / 86_400
        );
        if let Err(err) = std::fs::remove_dir_all(&path) {
            eprintln!("warning: remove {}: {err}", path.display());
        } else if !entry.exists() {
            let _ = std::fs::remove_file(lock_path(&entry));
        }
        drop(lock);
    }
}

/// A fresh temporary build directory beside the final one, renamed into place when done.
fn staging_dir(final_dir: &Path) -> Result<PathBuf> {
    let tmp = final_dir.with_extension("building");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    Ok(tmp)
}

fn publish(tmp: &Path, final_dir: &Path) -> Result<()> {
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir)
            .with_context(|| format!("remove {}", final_dir.display()))?;
    }
    std::fs::rename(tmp, final_dir)
        .with_context(|| format!("rename {} to {}", tmp.display(), final_dir.display()))
}

fn build_old(recipe: &Recipe, dir: &Path) -> Result<()> {
    let tmp = staging_dir(dir)?;
    recipe.build(&tmp, &tmp.join("bookworm.tar"))?;
    publish(&tmp, dir)
}

fn build_new(recipe: &Recipe, dir: &Path) -> Result<()> {
    let tmp = staging_dir(dir)?;
    let tar = tmp.join("trixie.tar");
    recipe.build(&tmp, &tar)?;
    let raw = tmp.join("trixie.img");
    make_ext4_image(&tar, &raw)?;
    let broken = tmp.join("broken.img");
    Cmd::new("cp")
        .args(["--sparse=always"])
        .arg(&raw)
        .arg(&broken)
        .run()
        .context("copy the trixie image for the broken variant")?;
    break_init(&broken)?;
    for (img, name) in [(&raw, "trixie.img.zst"), (&broken, "broken.img.zst")] {
        let zst = tmp.join(name);
        println!("images: zstd {}", zst.display());
        Cmd::new("zstd")
            .args(["-q", "-T0", "-f"])
            .arg(img)
            .arg("-o")
            .arg(&zst)
            .run()
            .with_context(|| format!("compress {}", img.display()))?;
        let sum = util::sha256_file(&zst)?;
        let sum_path = tmp.join(format!("{name}.sha256"));
        std::fs::write(&sum_path, format!("{sum}\n"))
            .with_context(|| format!("write {}", sum_path.display()))?;
        std::fs::remove_file(img).with_context(|| format!("remove {}", img.display()))?;
    }
    std::fs::remove_file(&tar).with_context(|| format!("remove {}", tar.display()))?;
    publish(&tmp, dir)
}

/// A raw ext4 filesystem image holding the rootfs tar.
fn make_ext4_image(tar: &Path, raw: &Path) -> Result<()> {
    println!("images: ext4 image {}", raw.display());
    let f = std::fs::File::create(raw).with_context(|| format!("create {}", raw.display()))?;
    f.set_len(NEW_IMAGE_MIB << 20)
        .with_context(|| format!("size {}", raw.display()))?;
    drop(f);
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root-new"])
        .arg(raw)
        .run()
        .with_context(|| format!("mkfs.ext4 {}", raw.display()))?;
    let lo = LoopDevice::attach_filesystem(raw)?;
    let mnt = TempMount::new(lo.path(), "ext4", false)
        .with_context(|| format!("mount {}", raw.display()))?;
    util::extract_tar(tar, mnt.path())?;
    mnt.close()
        .with_context(|| format!("unmount {}", raw.display()))?;
    Ok(lo.close()?)
}

/// Replaces `/sbin/init` in the raw ext4 image `raw` by the shell script `init`.
fn replace_init(raw: &Path, init: &str) -> Result<()> {
    let lo = LoopDevice::attach_filesystem(raw)?;
    let mnt = TempMount::new(lo.path(), "ext4", false)
        .with_context(|| format!("mount {}", raw.display()))?;
    // Resolve /sbin inside the image (merged /usr: /sbin -> usr/sbin), never on the host.
    let sbin = mnt.path().join("sbin");
    let dir = match std::fs::read_link(&sbin) {
        Ok(target) if target.is_relative() => mnt.path().join(target),
        Ok(target) => mnt.path().join(target.strip_prefix("/").unwrap_or(&target)),
        Err(_) => sbin,
    };
    let path = dir.join("init");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, init).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))?;
    mnt.close()
        .with_context(|| format!("unmount {}", raw.display()))?;
    Ok(lo.close()?)
}

/// The `/sbin/init` of the broken image: exits at once, so the kernel panics.
const BROKEN_INIT: &str = "#!/bin/sh\necho 'xtask: broken init exits'\nexit 1\n";

/// Replaces `/sbin/init` in the image by a script that exits at once: the kernel panics.
fn break_init(raw: &Path) -> Result<()> {
    replace_init(raw, BROKEN_INIT)
}

/// A variant of the Debian 13 image whose `/sbin/init` is the script `init`, built once
/// beside `trixie.img.zst` in its cache entry as `<name>.img.zst` (rebuilt when `init`
/// changes) with `scratch` as work space. Returns (path, sha256). For scenarios that need a
/// slot that fails in a particular way.
pub fn with_init(
    imgs: &Images,
    name: &str,
    init: &str,
    scratch: &Path,
) -> Result<(PathBuf, String)> {
    let zst = imgs.trixie_zst.with_file_name(format!("{name}.img.zst"));
    let sum_path = imgs
        .trixie_zst
        .with_file_name(format!("{name}.img.zst.sha256"));
    let marker_path = imgs
        .trixie_zst
        .with_file_name(format!("{name}.img.zst.init-sha256"));
    let marker = util::sha256_bytes(init.as_bytes());
    let cached = std::fs::read_to_string(&marker_path).is_ok_and(|m| m.trim() == marker);
    if cached && zst.is_file() {
        if let Ok(sum) = std::fs::read_to_string(&sum_path) {
            return Ok((zst, sum.trim().to_string()));
        }
    }
    let t = std::time::Instant::now();
    let raw = scratch.join(format!("{name}-{}.img", std::process::id()));
    Cmd::new("zstd")
        .args(["-q", "-d", "-f"])
        .arg(&imgs.trixie_zst)
        .arg("-o")
        .arg(&raw)
        .run()
        .with_context(|| format!("decompress the trixie image for the {name} variant"))?;
    let built = replace_init(&raw, init).and_then(|()| {
        // Another xtask process may build the same variant: each writes its own files and
        // renames them into place, the image before its checksum and marker.
        let tmp = zst.with_extension(format!("zst.{}", std::process::id()));
        Cmd::new("zstd")
            .args(["-q", "-T0", "-f"])
            .arg(&raw)
            .arg("-o")
            .arg(&tmp)
            .run()
            .with_context(|| format!("compress the {name} image"))?;
        let sum = util::sha256_file(&tmp)?;
        std::fs::rename(&tmp, &zst).with_context(|| format!("rename to {}", zst.display()))?;
        write_atomic(&sum_path, &format!("{sum}\n"))?;
        write_atomic(&marker_path, &format!("{marker}\n"))?;
        Ok(sum)
    });
    let _ = std::fs::remove_file(&raw);
    let sum = built?;
    println!(
        "images: {name} variant {} built in {:.1?}",
        zst.display(),
        t.elapsed()
    );
    Ok((zst, sum))
}

/// Writes `path` through a temporary file of this process and a rename.
fn write_atomic(path: &Path, content: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, content).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_rewrite_suites_only() {
        let host = "Types: deb\nURIs: http://example.invalid/debian\nSuites: bookworm bookworm-updates\n\nSuites: bookworm-security\n";
        let out = sources_for(host, "trixie").expect("rewrites");
        assert!(out.contains("Suites: trixie trixie-updates\n"), "{out}");
        assert!(out.contains("Suites: trixie-security\n"), "{out}");
        assert!(
            out.contains("URIs: http://example.invalid/debian\n"),
            "{out}"
        );
    }
}
