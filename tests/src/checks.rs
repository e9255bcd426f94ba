//! Assertions about a staged slot B, shared by the stage tests.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::disk::{TestDisk, APP_GID, APP_UID, HOST_APP_CONF};
use crate::image::IMAGE_APP_CONF;
use crate::proc::{run_ok, Output};

/// `stage <path> --sha256 <hex>` arguments.
pub fn stage_args(path: &Path, sha256: &str) -> Vec<std::ffi::OsString> {
    vec![
        "stage".into(),
        path.as_os_str().to_owned(),
        "--sha256".into(),
        sha256.into(),
    ]
}

/// The entry of slot `id` in `status --json`.
pub fn slot_status<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("status --json has no slot {id:?}: {status:#}"))
}

/// Asserts everything a successful stage of the "Debian 13" test image must leave in slot B.
pub fn assert_slot_b_staged(disk: &TestDisk) -> Result<()> {
    let b = disk.slot_b();
    // Each slot gets its own filesystem UUID and the partition's label.
    let label = TestDisk::blkid(&b, "LABEL")?;
    assert_eq!(label, "root-b", "slot B's filesystem label");
    let uuid_a = TestDisk::blkid(&disk.slot_a(), "UUID")?;
    let uuid_b = TestDisk::blkid(&b, "UUID")?;
    assert!(!uuid_b.is_empty(), "slot B has no filesystem UUID");
    assert_ne!(uuid_a, uuid_b, "slots A and B share a filesystem UUID");
    let fsck = Output::of(Command::new("e2fsck").args(["-f", "-n"]).arg(&b))?;
    assert_eq!(fsck.code, 0, "slot B's filesystem is not clean:\n{fsck}");

    let m = disk.mount_b()?;
    let root = m.path();
    let os = fs::read_to_string(root.join("etc/os-release")).context("read B's os-release")?;
    assert!(os.contains("VERSION_ID=\"13\""), "B's os-release:\n{os}");
    assert!(
        root.join("boot/vmlinuz-6.12.0-1-amd64").is_file(),
        "B's kernel is missing"
    );
    assert!(
        root.join("boot/initrd.img-6.12.0-1-amd64").is_file(),
        "B's initrd is missing"
    );
    // A file outside the manifest keeps the image's version.
    assert_eq!(
        fs::read_to_string(root.join("etc/app.conf"))?,
        IMAGE_APP_CONF
    );

    // Manifest: /etc/hostname from the host.
    let host_hostname = fs::read(Path::new("/etc/hostname"))?;
    assert_eq!(
        fs::read(root.join("etc/hostname"))?,
        host_hostname,
        "B's /etc/hostname is not the host's"
    );
    // Manifest: app.conf with content, owner, mode, xattr and ACL.
    let app = disk.host.in_slot(root, "etc/app.conf");
    assert_eq!(
        fs::read_to_string(&app).with_context(|| format!("read {}", app.display()))?,
        HOST_APP_CONF
    );
    let meta = fs::symlink_metadata(&app)?;
    assert_eq!(
        (meta.uid(), meta.gid()),
        (APP_UID, APP_GID),
        "owner of {}",
        app.display()
    );
    assert_eq!(meta.mode() & 0o7777, 0o640, "mode of {}", app.display());
    let xattr = run_ok(
        Command::new("getfattr")
            .args(["--only-values", "-n", "user.test"])
            .arg(&app),
    )?;
    assert_eq!(xattr, "host-xattr", "xattr user.test of {}", app.display());
    let acl = run_ok(Command::new("getfacl").args(["-n", "-p"]).arg(&app))?;
    assert!(
        acl.contains("user:4321:r--"),
        "ACL of {}:\n{acl}",
        app.display()
    );
    // Manifest: the symlink stays a symlink with the same target.
    let link = disk.host.in_slot(root, "etc/app.link");
    let lmeta = fs::symlink_metadata(&link).with_context(|| format!("lstat {}", link.display()))?;
    assert!(
        lmeta.file_type().is_symlink(),
        "{} is no longer a symlink",
        link.display()
    );
    assert_eq!(fs::read_link(&link)?, Path::new("app.conf"));
    // Manifest: the glob brought both keys, the private one still 0600.
    let key = disk.host.in_slot(root, "etc/ssh/ssh_host_ed25519_key");
    assert_eq!(
        fs::read(&key)?,
        fs::read(disk.host.path("etc/ssh/ssh_host_ed25519_key"))?
    );
    assert_eq!(
        fs::metadata(&key)?.mode() & 0o7777,
        0o600,
        "mode of {}",
        key.display()
    );
    let pubkey = disk.host.in_slot(root, "etc/ssh/ssh_host_ed25519_key.pub");
    assert!(pubkey.is_file(), "glob did not copy {}", pubkey.display());

    // fstab: boot and data by filesystem UUID at their mount points.
    let fstab = fs::read_to_string(root.join("etc/fstab")).context("read B's /etc/fstab")?;
    let boot_uuid = TestDisk::blkid(&disk.boot(), "UUID")?;
    let data_uuid = TestDisk::blkid(&disk.data(), "UUID")?;
    let has = |uuid: &str, mnt: &str| {
        fstab.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 2 && f[0] == format!("UUID={uuid}") && f[1] == mnt
        })
    };
    assert!(
        has(&boot_uuid, "/boot/abboot"),
        "B's fstab lacks boot UUID={boot_uuid} /boot/abboot:\n{fstab}"
    );
    assert!(
        has(&data_uuid, "/data"),
        "B's fstab lacks data UUID={data_uuid} /data:\n{fstab}"
    );
    m.close()?;

    // status --json: B staged with the new OS.
    let st = disk.status("a")?;
    let sb = slot_status(&st, "b");
    assert_eq!(sb["state"], "staged", "status of B: {st:#}");
    assert!(
        sb["os_version"].as_str().unwrap_or("").contains("13"),
        "B's os_version: {st:#}"
    );
    assert_eq!(st["booted"], "a", "{st:#}");
    assert_eq!(st["default"], "a", "{st:#}");
    assert_eq!(slot_status(&st, "a")["state"], "good", "{st:#}");
    Ok(())
}
