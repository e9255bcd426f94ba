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
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_utils::mount::TempMount;
use abupdate_utils::Cmd;
use anyhow::{bail, Context, Result};

use crate::util::{self, FsLoop};

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
];

const PATH_EXCLUDES: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
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

/// Every dpkg path-exclude pattern.
fn path_excludes() -> Vec<String> {
    let mut v: Vec<String> = PATH_EXCLUDES.iter().map(|s| s.to_string()).collect();
    for prefix in ["/lib/modules/*/kernel/", "/usr/lib/modules/*/kernel/"] {
        v.extend(MODULE_EXCLUDES.iter().map(|m| format!("{prefix}{m}")));
    }
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

/// Files for every suite, copied in after the packages are installed.
fn late_files() -> Vec<OverlayFile> {
    vec![
        OverlayFile {
            path: "etc/initramfs-tools/modules",
            mode: 0o644,
            content: "virtio_pci\nvirtio_blk\nvirtio_scsi\nsd_mod\next4\ncrc32c_generic\n".into(),
        },
        OverlayFile {
            path: "etc/modprobe.d/xtask-no-kvm.conf",
            mode: 0o644,
            content: "blacklist kvm\nblacklist kvm_intel\nblacklist kvm_amd\n".into(),
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

const HOOK_INITRAMFS: &str = "chroot \"$1\" update-initramfs -u -k all";
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
    sources: String,
    early: Vec<OverlayFile>,
    late: Vec<OverlayFile>,
    hooks: Vec<String>,
}

impl Recipe {
    fn key(&self, extra: &str) -> String {
        let mut text = format!("{RECIPE_VERSION}\nsuite={}\n", self.suite);
        text += &format!(
            "packages={}\nexcludes={}\n",
            PACKAGES.join(","),
            path_excludes().join(",")
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
            .arg(format!("--include={}", PACKAGES.join(",")));
        for p in path_excludes() {
            cmd.arg(format!("--dpkgopt=path-exclude={p}"));
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

fn recipes(ssh: &SshKey) -> Result<(Recipe, Recipe)> {
    let host = std::fs::read_to_string(HOST_SOURCES)
        .with_context(|| format!("read the host's apt sources {HOST_SOURCES}"))?;
    let mut old_late = late_files();
    old_late.extend(old_only_files(&ssh.public));
    let mut old_hooks = vec![HOOK_INITRAMFS.to_string()];
    old_hooks.extend(HOOK_OLD.iter().map(|s| s.to_string()));
    let old = Recipe {
        suite: "bookworm",
        sources: sources_for(&host, "bookworm")?,
        early: early_files(),
        late: old_late,
        hooks: old_hooks,
    };
    let mut new_hooks = vec![HOOK_INITRAMFS.to_string()];
    new_hooks.extend(HOOK_NEW.iter().map(|s| s.to_string()));
    let new = Recipe {
        suite: "trixie",
        sources: sources_for(&host, "trixie")?,
        early: early_files(),
        late: late_files(),
        hooks: new_hooks,
    };
    Ok((old, new))
}

/// Builds whatever is missing from the cache and returns the paths.
pub fn ensure() -> Result<Images> {
    let ssh = ssh_key()?;
    let (old, new) = recipes(&ssh)?;
    let old_dir = Path::new(CACHE_ROOT).join(old.key(""));
    let new_dir =
        Path::new(CACHE_ROOT).join(new.key(&format!("image_mib={NEW_IMAGE_MIB}\nbroken=v1\n")));
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

/// Removes cache entries of earlier recipes (16-hex-digit directories not in `keep`).
fn prune_stale(keep: &[&Path]) {
    let Ok(rd) = std::fs::read_dir(CACHE_ROOT) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = name.split('.').next().unwrap_or("");
        let is_key = stem.len() == 16 && stem.chars().all(|c| c.is_ascii_hexdigit());
        if is_key && !keep.iter().any(|k| *k == e.path().as_path()) {
            println!("images: removing stale cache entry {}", e.path().display());
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                eprintln!("warning: remove {}: {err}", e.path().display());
            }
        }
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
    let lo = FsLoop::attach(raw)?;
    let mnt = TempMount::new(lo.path(), "ext4", false)
        .with_context(|| format!("mount {}", raw.display()))?;
    util::extract_tar(tar, mnt.path())?;
    mnt.close()
        .with_context(|| format!("unmount {}", raw.display()))?;
    lo.close()
}

/// Replaces `/sbin/init` in the image by a script that exits at once: the kernel panics.
fn break_init(raw: &Path) -> Result<()> {
    let lo = FsLoop::attach(raw)?;
    let mnt = TempMount::new(lo.path(), "ext4", false)
        .with_context(|| format!("mount {}", raw.display()))?;
    // Resolve /sbin inside the image (merged /usr: /sbin -> usr/sbin), never on the host.
    let sbin = mnt.path().join("sbin");
    let dir = match std::fs::read_link(&sbin) {
        Ok(target) if target.is_relative() => mnt.path().join(target),
        Ok(target) => mnt.path().join(target.strip_prefix("/").unwrap_or(&target)),
        Err(_) => sbin,
    };
    let init = dir.join("init");
    let _ = std::fs::remove_file(&init);
    std::fs::write(
        &init,
        "#!/bin/sh\necho 'xtask: broken init exits'\nexit 1\n",
    )
    .with_context(|| format!("write {}", init.display()))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", init.display()))?;
    mnt.close()
        .with_context(|| format!("unmount {}", raw.display()))?;
    lo.close()
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
