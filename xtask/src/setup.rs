//! Host setup: the Debian packages the harness needs, installed with apt-get when missing.

use abupdate_utils::Cmd;
use anyhow::{Context, Result};

/// Host packages used by the harness (see docs/vm-harness.md) and the package build.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    // qemu-img: every VM boots a qcow2 overlay of an immutable base disk.
    "qemu-utils",
    "grub-pc-bin",
    "grub-common",
    "grub2-common",
    "mmdebstrap",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "fdisk",
    "gdisk",
    "util-linux",
    "socat",
    "zstd",
    "openssh-client",
    "debian-archive-keyring",
    "time",
    "dpkg-dev",
    "acl",
    "attr",
    "xz-utils",
    "ansible-core",
    "ipmitool",
    "openipmi",
    // The boot chain abupdate init installs (UEFI GRUB, signed shim and GRUB) and OVMF.
    "grub-efi-amd64-bin",
    "ovmf",
    "shim-signed",
    "grub-efi-amd64-signed",
    "debhelper",
    "lintian",
];

fn installed(pkg: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .run()
        .map(|o| o.stdout_str().contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the missing host packages; runs `apt-get update` only when something is missing.
pub fn ensure_host_packages() -> Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "setup: installing missing host packages: {}",
        missing.join(" ")
    );
    Cmd::new("apt-get")
        .arg("update")
        .run()
        .context("setup: apt-get update")?;
    Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("setup: apt-get install {}", missing.join(" ")))?;
    Ok(())
}
