//! The staged slot's fstab (issues 10 and 12): the slot's own root by PARTUUID, so a slot
//! booted by any boot entry (the distribution's own, with `ro`) is remounted read-write;
//! the boot and data partitions by UUID with their mount points escaped as fstab(5)
//! requires; the image's other lines kept.

use std::fs;

use abupdate_tests::checks::stage_args;
use abupdate_tests::{hostile, serial, TestDisk};
use anyhow::Result;

#[test]
fn slot_fstab_names_its_root_and_escapes_mount_points() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let cfg = hostile::config_variant(
        &disk,
        "spaced.yaml",
        "mountpoint: /data",
        "mountpoint: \"/srv/my data\"",
    )?;
    let image = disk.new_release_image()?;
    disk.run_with_config(&cfg, stage_args(&image.path, &image.sha256))?
        .assert_ok();
    let b_partuuid = TestDisk::blkid(&disk.slot_b(), "PART_ENTRY_UUID")?;
    let boot_uuid = TestDisk::blkid(&disk.boot(), "UUID")?;
    let data_uuid = TestDisk::blkid(&disk.data(), "UUID")?;
    let m = disk.mount_b()?;
    let fstab = fs::read_to_string(m.path().join("etc/fstab"))?;
    let data_dir = m.path().join("srv/my data").is_dir();
    m.close()?;
    let entries: Vec<Vec<&str>> = fstab
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    let root: Vec<_> = entries.iter().filter(|e| e.get(1) == Some(&"/")).collect();
    assert_eq!(root.len(), 1, "one root line:\n{fstab}");
    assert_eq!(root[0][0], format!("PARTUUID={b_partuuid}"), "{fstab}");
    assert!(root[0][3].split(',').all(|o| o != "ro"), "{fstab}");
    assert!(
        entries
            .iter()
            .any(|e| e[0] == format!("UUID={boot_uuid}") && e[1] == "/boot/abboot"),
        "{fstab}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e[0] == format!("UUID={data_uuid}") && e[1] == "/srv/my\\040data"),
        "{fstab}"
    );
    assert!(entries.iter().all(|e| e.len() == 6), "{fstab}");
    assert!(data_dir, "the data mount point exists in the slot");
    Ok(())
}
