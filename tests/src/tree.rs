//! Root trees for the archive, bootstrap and clone stage sources: the release tree of
//! [`make_image`] archived with GNU tar or copied into a directory, made ready for chrooted
//! commands (a shell, a fake `update-initramfs`, a kernel without an initrd), and a tmpfs
//! mounted inside a tree.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_utils::mount::{BindMount, TempMount};
use anyhow::{bail, Context, Result};

use crate::disk::TestDisk;
use crate::image::{make_image, Customize, Image, ImageSpec};
use crate::proc::run_ok;

/// The kernel version of [`make_image`]'s release tree (`/boot/vmlinuz-<this>`).
pub const RELEASE_KERNEL: &str = abupdate_testkit::disk::DEBIAN_13.kernel;

/// Present only in trees made by [`prepare_for_chroot`]: the fake `update-initramfs`
/// refuses to run where it is missing, so an initrd proves the tool ran chrooted in the slot.
pub const CHROOT_MARKER: &str = "etc/abupdate-test-tree";

/// What the fake `update-initramfs` writes into `/boot/initrd.img-<version>`.
pub fn fake_initrd_text(version: &str) -> String {
    format!("fake initramfs for {version}, built chrooted\n")
}

/// `tar` options that keep everything the stage sources must carry: owners as numbers,
/// modes with set-id bits, xattrs of every namespace (POSIX ACLs among them) and ACLs.
pub const GNU_TAR_KEEP: &[&str] = &[
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--numeric-owner",
];

/// Archives the tree at `root` with GNU tar ([`GNU_TAR_KEEP`], `-cpf`, entries `./...`)
/// into `out`.
pub fn gnu_tar(root: &Path, out: &Path) -> Result<Image> {
    run_ok(
        Command::new("tar")
            .args(GNU_TAR_KEEP)
            .arg("-cpf")
            .arg(out)
            .arg("-C")
            .arg(root)
            .arg("."),
    )
    .with_context(|| format!("archive {} with GNU tar", root.display()))?;
    Image::from_file(out.to_owned())
}

/// Runs [`make_image`] for `disk` (the release tree [`TestDisk::new_release_image`] stages,
/// manifest files included) and calls `keep` on the finished tree before it is discarded;
/// the ext4 image itself is left unused.
fn with_release_tree(disk: &TestDisk, keep: Customize<'_>) -> Result<()> {
    make_image(
        disk.dir(),
        &ImageSpec {
            name: "release-tree.img",
            host_root: Some(disk.host.root()),
            customize: Some(keep),
            ..Default::default()
        },
    )
    .context("build the release tree")?;
    Ok(())
}

/// The release tree of [`TestDisk::new_release_image`], changed by `edit`, as a GNU tar
/// archive `<disk dir>/<name>`.
pub fn release_tar(disk: &TestDisk, name: &str, edit: Customize<'_>) -> Result<Image> {
    let out = disk.dir().join(name);
    with_release_tree(disk, &|root| {
        edit(root)?;
        gnu_tar(root, &out).map(drop)
    })?;
    Image::from_file(out)
}

/// The release tree of [`TestDisk::new_release_image`], changed by `edit`, copied with
/// `cp -a` (owners, modes, xattrs, hard links, device nodes) into the new directory `dest`.
pub fn release_tree(disk: &TestDisk, dest: &Path, edit: Customize<'_>) -> Result<()> {
    fs::create_dir(dest).with_context(|| format!("create {}", dest.display()))?;
    with_release_tree(disk, &|root| {
        edit(root)?;
        let mut src = root.as_os_str().to_owned();
        src.push("/.");
        run_ok(Command::new("cp").arg("-a").arg(src).arg(dest))
            .with_context(|| format!("copy the release tree to {}", dest.display()))
            .map(drop)
    })
}

/// Makes a release tree able to run the slot's chrooted commands: removes its initrd (so
/// stage must build one), installs the host's `dash` as `/bin/sh` with its libraries, a
/// fake `/usr/sbin/update-initramfs` and [`CHROOT_MARKER`].
pub fn prepare_for_chroot(root: &Path) -> Result<()> {
    let initrd = root.join(format!("boot/initrd.img-{RELEASE_KERNEL}"));
    fs::remove_file(&initrd).with_context(|| format!("remove {}", initrd.display()))?;
    install_shell(root)?;
    install_fake_update_initramfs(root)?;
    fs::write(root.join(CHROOT_MARKER), "tree of the abupdate tests\n")?;
    Ok(())
}

/// Copies the host's `/bin/dash` into `root` as `/bin/dash` and `/bin/sh -> dash`, with the
/// shared libraries `ldd` names at the same paths; `/bin`, `/sbin`, `/lib` and `/lib64` are
/// symlinks or directories as on the host (usrmerge).
pub fn install_shell(root: &Path) -> Result<()> {
    for dir in ["bin", "sbin", "lib", "lib64"] {
        let host = Path::new("/").join(dir);
        let inside = root.join(dir);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&host)?;
                fs::create_dir_all(root.join(target.strip_prefix("/").unwrap_or(&target)))?;
                symlink(&target, &inside)
                    .with_context(|| format!("symlink {}", inside.display()))?;
            }
            Ok(m) if m.is_dir() => fs::create_dir_all(&inside)?,
            _ => {}
        }
    }
    let ldd = run_ok(Command::new("ldd").arg("/bin/dash")).context("ldd /bin/dash")?;
    let libs = ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from);
    for file in std::iter::once(PathBuf::from("/bin/dash")).chain(libs) {
        let dest = root.join(file.strip_prefix("/")?);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&file, &dest)
            .with_context(|| format!("copy {} to {}", file.display(), dest.display()))?;
    }
    let sh = root.join("bin/sh");
    symlink("dash", &sh).with_context(|| format!("symlink {}", sh.display()))?;
    Ok(())
}

/// Writes `/usr/sbin/update-initramfs`, a shell-builtins-only script that accepts exactly
/// `-c -k VERSION` (as stage calls it) and writes [`fake_initrd_text`] to
/// `/boot/initrd.img-VERSION`; it fails unless [`CHROOT_MARKER`] and the kernel exist.
pub fn install_fake_update_initramfs(root: &Path) -> Result<()> {
    let sbin = root.join("usr/sbin");
    fs::create_dir_all(&sbin)?;
    let tool = sbin.join("update-initramfs");
    let text = fake_initrd_text("$3");
    fs::write(
        &tool,
        format!(
            "#!/bin/sh\n\
             # fake update-initramfs of the abupdate tests: shell builtins only\n\
             if [ \"$#\" -ne 3 ] || [ \"$1\" != -c ] || [ \"$2\" != -k ]; then\n\
             \techo \"fake update-initramfs: expected -c -k VERSION, got: $*\" >&2; exit 2\n\
             fi\n\
             [ -f /{CHROOT_MARKER} ] || {{ echo 'fake update-initramfs: not chrooted in a test tree' >&2; exit 3; }}\n\
             [ -f \"/boot/vmlinuz-$3\" ] || {{ echo \"fake update-initramfs: no kernel $3\" >&2; exit 4; }}\n\
             echo \"{}\" > \"/boot/initrd.img-$3\"\n",
            text.trim_end()
        ),
    )
    .with_context(|| format!("write {}", tool.display()))?;
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A tmpfs mounted on a directory inside a tree (a bind of a fresh tmpfs), unmounted on
/// drop: a mount point the clone must leave empty.
#[derive(Debug)]
pub struct TreeMount {
    // Field order is drop order: the bind inside the tree goes first.
    bind: BindMount,
    tmpfs: TempMount,
}

impl TreeMount {
    /// Mounts a new tmpfs on the existing empty directory `at`, holding `files` (name,
    /// content).
    pub fn tmpfs(at: &Path, files: &[(&str, &str)]) -> Result<TreeMount> {
        if !at.is_dir() {
            bail!("mount point {} is not a directory", at.display());
        }
        let tmpfs = TempMount::new(Path::new("tmpfs"), "tmpfs", false).context("mount a tmpfs")?;
        for (name, content) in files {
            let p = tmpfs.path().join(name);
            fs::write(&p, content).with_context(|| format!("write {}", p.display()))?;
        }
        let bind = BindMount::new(tmpfs.path(), at)
            .with_context(|| format!("bind the tmpfs onto {}", at.display()))?;
        Ok(TreeMount { bind, tmpfs })
    }

    /// Unmounts, reporting failure.
    pub fn close(self) -> Result<()> {
        self.bind.close()?;
        self.tmpfs.close()?;
        Ok(())
    }
}
