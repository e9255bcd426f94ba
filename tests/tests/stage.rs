//! Staging a local image file: plain and compressed, dry run, restaging.

use abupdate_tests::checks::{assert_slot_b_staged, stage_args};
use abupdate_tests::{compress, serial, sha256_file, Compression, TestDisk};
use anyhow::Result;

fn stage_and_check(compression: Option<Compression>) -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let raw = disk.new_release_image()?;
    let image = match compression {
        Some(c) => compress(&raw, c)?,
        None => raw,
    };
    let before = disk.snapshot()?;
    disk.run(stage_args(&image.path, &image.sha256))?
        .assert_ok();
    let after = disk.snapshot()?;
    assert_eq!(before.slot_a, after.slot_a, "stage changed slot A");
    assert_eq!(before.data, after.data, "stage changed the data partition");
    assert!(before.grubenv == after.grubenv, "stage changed grubenv");
    assert!(before.grub_cfg == after.grub_cfg, "stage changed grub.cfg");
    assert!(before.gpt == after.gpt, "stage changed the GPT");
    assert_slot_b_staged(&disk)?;
    Ok(())
}

#[test]
fn stage_plain_image() -> Result<()> {
    stage_and_check(None)
}

#[test]
fn stage_zstd_image() -> Result<()> {
    stage_and_check(Some(Compression::Zstd))
}

#[test]
fn stage_xz_image() -> Result<()> {
    stage_and_check(Some(Compression::Xz))
}

#[test]
fn stage_gzip_image() -> Result<()> {
    stage_and_check(Some(Compression::Gzip))
}

#[test]
fn stage_twice_is_idempotent() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = disk.new_release_image()?;
    let image = compress(&image, Compression::Zstd)?;
    disk.run(stage_args(&image.path, &image.sha256))?
        .assert_ok();
    disk.run(stage_args(&image.path, &image.sha256))?
        .assert_ok();
    assert_slot_b_staged(&disk)?;
    Ok(())
}

#[test]
fn dry_run_writes_nothing() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = disk.new_release_image()?;
    let b_before = sha256_file(&disk.slot_b())?;
    let before = disk.snapshot()?;
    let mut args = stage_args(&image.path, &image.sha256);
    args.push("--dry-run".into());
    disk.run(args)?.assert_ok();
    assert_eq!(
        b_before,
        sha256_file(&disk.slot_b())?,
        "--dry-run wrote slot B"
    );
    abupdate_tests::assert_unchanged(&before, &disk.snapshot()?, "stage --dry-run");
    let st = disk.status("a")?;
    assert_eq!(
        abupdate_tests::checks::slot_status(&st, "b")["state"],
        "empty",
        "after --dry-run: {st:#}"
    );
    Ok(())
}
