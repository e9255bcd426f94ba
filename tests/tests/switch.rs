//! switch / commit / rollback on the boot partition: grubenv values, grub.cfg validity,
//! refusals.

use abupdate_tests::checks::{slot_status, stage_args};
use abupdate_tests::{compress, serial, Compression, TestDisk};
use anyhow::Result;

fn staged_disk() -> Result<TestDisk> {
    let disk = TestDisk::new()?;
    let image = disk.new_release_image()?;
    let image = compress(&image, Compression::Zstd)?;
    disk.run(stage_args(&image.path, &image.sha256))?
        .assert_ok();
    Ok(disk)
}

#[test]
fn init_writes_valid_boot_config() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let cfg = disk.check_grub_cfg()?;
    assert!(
        cfg.contains("abupdate: booting slot"),
        "grub.cfg lacks the serial banner:\n{cfg}"
    );
    let env = disk.grubenv()?;
    assert_eq!(
        env.get("ab_default").map(String::as_str),
        Some("a"),
        "{env:?}"
    );
    assert!(env.get("ab_trial").is_none_or(|v| v.is_empty()), "{env:?}");
    let bytes = disk.grubenv_bytes()?;
    assert_eq!(bytes.len(), 1024, "grubenv must be exactly 1024 bytes");
    let st = disk.status("a")?;
    assert_eq!(slot_status(&st, "a")["state"], "good", "{st:#}");
    assert_eq!(slot_status(&st, "b")["state"], "empty", "{st:#}");
    assert!(
        slot_status(&st, "a")["os_version"]
            .as_str()
            .unwrap_or("")
            .contains("12"),
        "{st:#}"
    );
    // init is idempotent only with --force.
    let again = disk.run(["init", "--slot", "a"])?;
    assert_eq!(
        again.code, 3,
        "second init without --force must be refused:\n{again}"
    );
    disk.run(["init", "--slot", "a", "--force"])?.assert_ok();
    Ok(())
}

#[test]
fn switch_sets_trial_with_three_tries() -> Result<()> {
    let _s = serial();
    let disk = staged_disk()?;
    disk.run(["switch", "--no-reboot"])?.assert_ok();
    let env = disk.grubenv()?;
    assert_eq!(
        env.get("ab_trial").map(String::as_str),
        Some("b"),
        "{env:?}"
    );
    assert_eq!(
        env.get("ab_tries").map(String::as_str),
        Some("111"),
        "{env:?}"
    );
    assert_eq!(
        env.get("ab_default").map(String::as_str),
        Some("a"),
        "{env:?}"
    );
    assert_eq!(
        disk.grubenv_bytes()?.len(),
        1024,
        "grubenv must stay 1024 bytes"
    );
    let cfg = disk.check_grub_cfg()?;
    let uuid_b = TestDisk::blkid(&disk.slot_b(), "UUID")?;
    assert!(
        cfg.contains(&uuid_b),
        "grub.cfg does not search slot B by fs UUID {uuid_b}:\n{cfg}"
    );
    let st = disk.status("a")?;
    assert_eq!(st["trial"]["slot"], "b", "{st:#}");
    assert_eq!(slot_status(&st, "b")["state"], "trial", "{st:#}");
    assert_eq!(st["default"], "a", "{st:#}");
    Ok(())
}

#[test]
fn switch_with_explicit_tries() -> Result<()> {
    let _s = serial();
    let disk = staged_disk()?;
    disk.run(["switch", "--no-reboot", "--tries", "2"])?
        .assert_ok();
    let env = disk.grubenv()?;
    assert_eq!(
        env.get("ab_tries").map(String::as_str),
        Some("11"),
        "{env:?}"
    );
    Ok(())
}

#[test]
fn switch_without_staged_slot_is_refused() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let before = disk.snapshot()?;
    let out = disk.run(["switch", "--no-reboot"])?;
    out.assert_code(3).assert_mentions_any(&["staged", "empty"]);
    abupdate_tests::assert_unchanged(&before, &disk.snapshot()?, "switch with nothing staged");
    Ok(())
}

#[test]
fn rollback_to_never_booted_slot_is_refused_then_commit_and_rollback() -> Result<()> {
    let _s = serial();
    let disk = staged_disk()?;

    // From A, B is staged but has never booted: nothing good to roll back to.
    let env_before = disk.grubenv_bytes()?;
    let out = disk.run(["rollback", "--no-reboot"])?;
    out.assert_code(3)
        .assert_mentions_any(&["good", "never", "not been", "no slot", "nothing"]);
    assert!(
        env_before == disk.grubenv_bytes()?,
        "a refused rollback changed grubenv"
    );

    // With a pending trial of B, rollback from A cancels the trial (`rollback --help`).
    disk.run(["switch", "--no-reboot"])?.assert_ok();
    disk.run(["rollback", "--no-reboot"])?.assert_ok();
    let env = disk.grubenv()?;
    assert_eq!(
        env.get("ab_default").map(String::as_str),
        Some("a"),
        "{env:?}"
    );
    assert!(
        env.get("ab_trial").is_none_or(|v| v.is_empty()),
        "trial not cancelled: {env:?}"
    );
    let st = disk.status("a")?;
    assert!(st["trial"].is_null(), "{st:#}");

    disk.run(["switch", "--no-reboot"])?.assert_ok();
    let env_before = disk.grubenv_bytes()?;
    // commit from A (not the trial slot) is refused.
    let out = disk.run(["commit"])?;
    out.assert_code(3);
    assert!(
        env_before == disk.grubenv_bytes()?,
        "a refused commit changed grubenv"
    );

    // B booted (trial) and healthy: commit makes it the good default.
    disk.run_as("b", ["commit"])?.assert_ok();
    let env = disk.grubenv()?;
    assert_eq!(
        env.get("ab_default").map(String::as_str),
        Some("b"),
        "{env:?}"
    );
    assert!(env.get("ab_trial").is_none_or(|v| v.is_empty()), "{env:?}");
    let st = disk.status("b")?;
    assert_eq!(st["default"], "b", "{st:#}");
    assert_eq!(slot_status(&st, "b")["state"], "good", "{st:#}");
    assert!(st["trial"].is_null(), "{st:#}");
    // commit again is idempotent.
    disk.run_as("b", ["commit"])?.assert_ok();

    // From B, A is still good: rollback makes A the default.
    disk.run_as("b", ["rollback", "--no-reboot"])?.assert_ok();
    let env = disk.grubenv()?;
    assert_eq!(
        env.get("ab_default").map(String::as_str),
        Some("a"),
        "{env:?}"
    );
    disk.check_grub_cfg()?;
    let st = disk.status("b")?;
    assert_eq!(st["default"], "a", "{st:#}");

    let hist = disk.run(["--json", "history"])?;
    hist.assert_ok();
    let text = hist.text();
    for op in ["stage", "switch", "commit", "rollback"] {
        assert!(text.contains(op), "history lacks {op}:\n{hist}");
    }
    Ok(())
}
