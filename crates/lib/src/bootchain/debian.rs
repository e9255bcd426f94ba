//! Keeping a slot's own boot-loader packages from replacing abupdate's chain, the way
//! Debian lets an administrator do it, and refreshing the slot's menu entry when kernels
//! come and go.
//!
//! What runs `grub-install` in a Debian slot (postinst scripts of Debian 12 and 13):
//! - `grub-pc`: when the slot has `/boot/grub/i386-pc/core.img`, for every device in the
//!   debconf answer `grub-pc/install_devices`; an empty answer with
//!   `grub-pc/install_devices_empty` true installs nowhere (the supported "do not install
//!   the boot loader" answer);
//! - `grub-efi-amd64`: Debian 12 when `/boot/efi/EFI/<distributor>` exists, Debian 13 when
//!   `/boot/grub/x86_64-efi/core.efi` exists, with `--no-nvram` if `grub2/update_nvram` is
//!   false and `--force-extra-removable` if `grub2/force_efi_extra_removable` is true; no
//!   debconf answer turns it off;
//! - `shim-signed`: on UEFI firmware when `/boot/efi/EFI/<distributor>` exists.
//!
//! So abupdate sets those debconf answers (nowhere, no NVRAM change, no removable path) and,
//! because the UEFI cases have no off switch, diverts `grub-install` with
//! `dpkg-divert --local` to a script that explains and does nothing; the distribution's
//! program stays at `/usr/sbin/grub-install.distrib`. It also installs the kernel hooks
//! that refresh the slot's menu entry. Everything is idempotent.

use std::path::Path;

use abupdate_utils::Cmd;
use rustix::fs::OFlags;

use crate::chroot::Chroot;
use crate::error::{Error, Result};
use crate::slotfs::SlotRoot;

/// debconf answers: GRUB installs its boot code nowhere, never touches the NVRAM and never
/// writes the removable-media path (`debconf-set-selections` input; marks them seen).
pub const DEBCONF_SELECTIONS: &str = "\
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
grub-pc grub2/update_nvram boolean false
grub-efi-amd64 grub2/update_nvram boolean false
grub-efi-amd64 grub2/force_efi_extra_removable boolean false
";

/// The program diverted away.
pub const GRUB_INSTALL: &str = "/usr/sbin/grub-install";
/// Where the distribution's `grub-install` lives while diverted.
pub const GRUB_INSTALL_DIVERTED: &str = "/usr/sbin/grub-install.distrib";
/// The script installed at [`GRUB_INSTALL`].
pub const GRUB_INSTALL_WRAPPER: &str = include_str!("../../../../config/debian/grub-install");
/// The kernel hook, installed in `/etc/kernel/postinst.d` and `/etc/kernel/postrm.d`.
pub const KERNEL_HOOK: &str = include_str!("../../../../config/kernel/zz-abupdate");
/// Where the kernel hook goes in a Debian slot.
pub const KERNEL_HOOK_PATHS: [&str; 2] = [
    "/etc/kernel/postinst.d/zz-abupdate",
    "/etc/kernel/postrm.d/zz-abupdate",
];
/// The `kernel-install` plugin for RPM distributions.
pub const KERNEL_INSTALL_PLUGIN: &str =
    include_str!("../../../../config/kernel/install.d/90-abupdate.install");
/// Where the plugin goes.
pub const KERNEL_INSTALL_PLUGIN_PATH: &str = "/etc/kernel/install.d/90-abupdate.install";

/// What the guard did in one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GuardReport {
    /// The slot has dpkg (a Debian-family system).
    pub debian: bool,
    /// debconf answers set.
    pub debconf: bool,
    /// `grub-install` was diverted now (`false`: it already was, or no dpkg).
    pub diverted_now: bool,
    /// Files written (wrapper, hooks); unchanged ones are not listed.
    pub written: Vec<String>,
}

impl std::fmt::Display for GuardReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.debian {
            if self.written.is_empty() {
                return write!(
                    f,
                    "no dpkg and no kernel-install in the slot: nothing to change"
                );
            }
            write!(f, "no dpkg in the slot: kernel-install plugin only")?;
        } else {
            write!(
                f,
                "debconf: GRUB installs nowhere, no NVRAM change; grub-install {}",
                if self.diverted_now {
                    "diverted now"
                } else {
                    "already diverted"
                }
            )?;
        }
        if !self.written.is_empty() {
            write!(f, "; wrote {}", self.written.join(", "))?;
        }
        Ok(())
    }
}

/// Whether `rel` exists in the slot (resolved inside it).
fn exists(root: &SlotRoot, rel: &str) -> bool {
    root.open_read(rel, OFlags::PATH).is_ok()
}

/// Whether `rel` already has exactly `data`.
fn same(root: &SlotRoot, rel: &str, data: &str) -> Result<bool> {
    Ok(root.read_to_string(rel)?.as_deref() == Some(data))
}

fn write_if_changed(
    root: &SlotRoot,
    rel: &str,
    data: &str,
    mode: u32,
    out: &mut Vec<String>,
) -> Result<()> {
    if same(root, rel, data)? {
        return Ok(());
    }
    if let Some((dir, _)) = rel.rsplit_once('/') {
        root.create_dir_all(dir)?;
    }
    root.write_file(rel, data.as_bytes(), mode)?;
    out.push(rel.to_string());
    Ok(())
}

/// Runs commands in the slot: directly when the slot is the running system's `/`, else
/// chrooted.
enum Place<'a> {
    Here,
    Chroot(Chroot<'a>),
}

impl Place<'_> {
    fn command(&self, argv: &[&str]) -> Cmd {
        match self {
            Place::Here => Cmd::new(argv[0]).args(&argv[1..]),
            Place::Chroot(c) => c.command(argv),
        }
    }
}

/// Whether `root` is the running system's own root directory.
fn is_running_root(root: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(root).map_err(Error::io("stat", root))?;
    let b = std::fs::metadata("/").map_err(Error::io("stat", "/"))?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// Applies the guard to the slot at `root`: debconf answers, the `grub-install`
/// diversion and wrapper (Debian family), and the kernel hooks.
pub fn guard(root: &SlotRoot) -> Result<GuardReport> {
    let mut report = GuardReport::default();
    let debian = exists(root, "/usr/bin/dpkg-divert");
    report.debian = debian;
    if debian {
        let place = if is_running_root(root.path())? {
            Place::Here
        } else {
            Place::Chroot(Chroot::enter(root)?)
        };
        let result = guard_debian(root, &place, &mut report);
        if let Place::Chroot(c) = place {
            c.close()?;
        }
        result?;
        for p in KERNEL_HOOK_PATHS {
            write_if_changed(root, p, KERNEL_HOOK, 0o755, &mut report.written)?;
        }
    } else if exists(root, "/usr/lib/kernel/install.d") {
        write_if_changed(
            root,
            KERNEL_INSTALL_PLUGIN_PATH,
            KERNEL_INSTALL_PLUGIN,
            0o755,
            &mut report.written,
        )?;
    }
    Ok(report)
}

fn guard_debian(root: &SlotRoot, place: &Place<'_>, report: &mut GuardReport) -> Result<()> {
    if exists(root, "/usr/bin/debconf-set-selections") {
        place
            .command(&["debconf-set-selections"])
            .stdin(DEBCONF_SELECTIONS.as_bytes().to_vec())
            .run()
            .map_err(Error::cmd(format!(
                "set GRUB's debconf answers in {}",
                root.path().display()
            )))?;
        report.debconf = true;
    }
    let listed = place
        .command(&["dpkg-divert", "--list", GRUB_INSTALL])
        .run()
        .map_err(Error::cmd(format!(
            "list the diversions of {GRUB_INSTALL} in {}",
            root.path().display()
        )))?
        .stdout_str();
    if !listed.contains(GRUB_INSTALL_DIVERTED) {
        place
            .command(&[
                "dpkg-divert",
                "--local",
                "--rename",
                "--divert",
                GRUB_INSTALL_DIVERTED,
                "--add",
                GRUB_INSTALL,
            ])
            .run()
            .map_err(Error::cmd(format!(
                "divert {GRUB_INSTALL} in {}",
                root.path().display()
            )))?;
        report.diverted_now = true;
    }
    write_if_changed(
        root,
        GRUB_INSTALL,
        GRUB_INSTALL_WRAPPER,
        0o755,
        &mut report.written,
    )
}

/// Whether this process runs in a chroot: its `/` is not PID 1's, as systemd decides it
/// (`/proc/1/root`); where that link cannot be read (containers), by the device of PID 1's
/// root mount ([`pid1_root_differs`]). Unknown (no `/proc`) counts as a chroot, where
/// nothing must be changed.
pub fn in_chroot() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(ours) = std::fs::metadata("/") else {
        return true;
    };
    if let Ok(pid1) = std::fs::metadata("/proc/1/root/") {
        return (ours.dev(), ours.ino()) != (pid1.dev(), pid1.ino());
    }
    let dev = ours.dev();
    std::fs::read_to_string("/proc/1/mountinfo")
        .ok()
        .and_then(|text| {
            pid1_root_differs(
                &text,
                nix::sys::stat::major(dev) as u32,
                nix::sys::stat::minor(dev) as u32,
            )
        })
        .unwrap_or(true)
}

/// Whether PID 1's root mount (the last mount on `/` in its mountinfo) is another device
/// than `major:minor`; `None` if the mountinfo lists no root mount (pure).
pub fn pid1_root_differs(mountinfo: &str, major: u32, minor: u32) -> Option<bool> {
    abupdate_utils::mountinfo::parse(mountinfo)
        .into_iter()
        .rfind(|m| m.mount_point == Path::new("/"))
        .map(|m| (m.major, m.minor) != (major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debconf_answers_name_every_trigger() {
        let lines: Vec<Vec<&str>> = DEBCONF_SELECTIONS
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        // owner question type [value]
        assert!(lines.iter().all(|w| w.len() == 3 || w.len() == 4));
        let get = |q: &str| {
            lines
                .iter()
                .find(|w| w[1] == q)
                .map(|w| w.get(3).copied().unwrap_or(""))
        };
        assert_eq!(get("grub-pc/install_devices"), Some(""), "install nowhere");
        assert_eq!(get("grub-pc/install_devices_empty"), Some("true"));
        assert_eq!(get("grub2/update_nvram"), Some("false"));
        assert_eq!(get("grub2/force_efi_extra_removable"), Some("false"));
    }

    #[test]
    fn scripts_are_shell_and_do_not_fail_the_package_operation() {
        for (name, text) in [
            ("grub-install", GRUB_INSTALL_WRAPPER),
            ("zz-abupdate", KERNEL_HOOK),
            ("90-abupdate.install", KERNEL_INSTALL_PLUGIN),
        ] {
            assert!(text.starts_with("#!/bin/sh\n"), "{name}");
            assert!(text.trim_end().ends_with("exit 0"), "{name} must exit 0");
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", text])
                .output()
                .expect("sh -n");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(KERNEL_HOOK.contains("abupdate refresh-menu --hook"));
    }

    #[test]
    fn chroot_by_the_device_of_pid1_root() {
        let info = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    31 27 8:3 / /run/abupdate/mnt-x rw - ext4 /dev/sda3 rw\n";
        assert_eq!(
            pid1_root_differs(info, 254, 0),
            Some(false),
            "the host's root"
        );
        assert_eq!(
            pid1_root_differs(info, 8, 3),
            Some(true),
            "chrooted in a mounted slot"
        );
        // A later mount on / hides the first one.
        let stacked = format!("{info}40 27 8:2 / / rw - ext4 /dev/sda2 rw\n");
        assert_eq!(pid1_root_differs(&stacked, 8, 2), Some(false));
        assert_eq!(pid1_root_differs("", 8, 2), None);
    }

    #[test]
    fn guard_writes_hooks_and_wrapper_once() {
        // A slot tree without dpkg: only the kernel-install plugin, when kernel-install is there.
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("usr/lib/kernel/install.d")).expect("mkdir");
        let root = SlotRoot::open(d.path()).expect("open");
        let r = guard(&root).expect("guard");
        assert!(!r.debian);
        assert_eq!(r.written, [KERNEL_INSTALL_PLUGIN_PATH]);
        let again = guard(&root).expect("guard");
        assert!(again.written.is_empty(), "idempotent: {again:?}");
        assert_eq!(
            std::fs::read_to_string(d.path().join(&KERNEL_INSTALL_PLUGIN_PATH[1..])).expect("read"),
            KERNEL_INSTALL_PLUGIN
        );
    }
}
