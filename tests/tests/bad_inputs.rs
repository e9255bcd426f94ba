//! Bad input must fail with a clear message, the documented exit code, and leave slot A, the
//! data partition and the boot partition byte-identical (DESIGN.md invariant 5).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abupdate_tests::checks::{assert_slot_b_staged, slot_status, stage_args};
use abupdate_tests::disk::unique;
use abupdate_tests::proc::run_ok;
use abupdate_tests::{
    assert_unchanged, compress, make_image, serial, ChildGuard, Compression, HttpServer, Image,
    ImageSpec, Output, ServeOptions, TestDisk,
};
use abupdate_utils::mount::TempMount;
use anyhow::{Context, Result};

fn image_for(disk: &TestDisk) -> Result<Image> {
    disk.new_release_image()
}

/// Runs `args`, lets `check` judge the output (exit code, message), then asserts the failure
/// left A, data and boot untouched.
fn run_unchanged(
    disk: &TestDisk,
    args: Vec<std::ffi::OsString>,
    what: &str,
    check: impl FnOnce(&Output),
) -> Result<Output> {
    let before = disk.snapshot()?;
    let out = disk.run(args)?;
    assert_ne!(out.code, 0, "{what}: expected failure:\n{out}");
    check(&out);
    let after = disk.snapshot()?;
    assert_unchanged(&before, &after, what);
    let st = disk.status("a")?;
    assert_ne!(
        slot_status(&st, "b")["state"],
        "staged",
        "{what}: B marked staged: {st:#}"
    );
    assert_eq!(st["default"], "a", "{what}: {st:#}");
    Ok(out)
}

#[test]
fn wrong_sha256() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = compress(&image_for(&disk)?, Compression::Zstd)?;
    let wrong = "0123456789abcdef".repeat(4);
    run_unchanged(
        &disk,
        stage_args(&image.path, &wrong),
        "wrong sha256",
        |out| {
            out.assert_code(4)
                .assert_mentions_any(&["sha256", "checksum", "digest"])
                .assert_mentions_any(&["debian13.img.zst"]);
        },
    )?;
    Ok(())
}

#[test]
fn malformed_sha256_argument() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = image_for(&disk)?;
    run_unchanged(
        &disk,
        stage_args(&image.path, "not-hex"),
        "malformed --sha256",
        |out| {
            out.assert_code(2).assert_mentions_any(&["sha256", "hex"]);
        },
    )?;
    Ok(())
}

#[test]
fn truncated_image() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = image_for(&disk)?;
    // The checksum matches the truncated file: the image itself must be judged incomplete.
    let cut = image.truncated("truncated.img", 40 << 20)?;
    run_unchanged(
        &disk,
        stage_args(&cut.path, &cut.sha256),
        "truncated image",
        |out| {
            out.assert_code(4)
                .assert_mentions_any(&["truncat", "short", "incomplete", "smaller", "end of"])
                .assert_mentions_any(&["truncated.img"]);
        },
    )?;
    Ok(())
}

#[test]
fn truncated_zstd_stream() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let zst = compress(&image_for(&disk)?, Compression::Zstd)?;
    let cut = zst.truncated("truncated.img.zst", zst.len()? / 2)?;
    run_unchanged(
        &disk,
        stage_args(&cut.path, &cut.sha256),
        "truncated zstd stream",
        |out| {
            out.assert_code(4).assert_mentions_any(&[
                "truncat",
                "short",
                "incomplete",
                "unexpected end",
                "end of",
                "eof",
            ]);
        },
    )?;
    Ok(())
}

#[test]
fn oversized_image() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let big = make_image(
        disk.dir(),
        &ImageSpec {
            name: "oversized.img",
            size_mib: 300,
            random_bytes: 0,
            host_root: Some(disk.host.root()),
            ..Default::default()
        },
    )?;
    run_unchanged(
        &disk,
        stage_args(&big.path, &big.sha256),
        "oversized raw image",
        |out| {
            assert!(
                out.code == 4 || out.code == 3,
                "expected exit 4 or 3:\n{out}"
            );
            out.assert_mentions_any(&[
                "larger",
                "too big",
                "too large",
                "exceed",
                "does not fit",
                "bigger",
            ]);
        },
    )?;
    // Compressed: the size is only known at the end of the stream.
    let zst = compress(&big, Compression::Zstd)?;
    run_unchanged(
        &disk,
        stage_args(&zst.path, &zst.sha256),
        "oversized zstd image",
        |out| {
            assert!(
                out.code == 4 || out.code == 3,
                "expected exit 4 or 3:\n{out}"
            );
            out.assert_mentions_any(&[
                "larger",
                "too big",
                "too large",
                "exceed",
                "does not fit",
                "bigger",
            ]);
        },
    )?;
    Ok(())
}

#[test]
fn corrupt_zstd_stream() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let zst = compress(&image_for(&disk)?, Compression::Zstd)?;
    let bad = zst.corrupted("corrupt.img.zst", zst.len()? / 2, 4096)?;
    run_unchanged(
        &disk,
        stage_args(&bad.path, &bad.sha256),
        "corrupt zstd stream",
        |out| {
            out.assert_code(4)
                .assert_mentions_any(&["zstd", "decompress", "corrupt"])
                .assert_mentions_any(&["corrupt.img.zst"]);
        },
    )?;
    Ok(())
}

#[test]
fn not_an_ext4_image() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let path = disk.dir().join("random.img");
    let data: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&path, data)?;
    let img = Image::from_file(path)?;
    run_unchanged(
        &disk,
        stage_args(&img.path, &img.sha256),
        "not an ext4 image",
        |out| {
            out.assert_code(4)
                .assert_mentions_any(&["ext4", "superblock", "filesystem"]);
        },
    )?;
    Ok(())
}

/// A host directory that a malicious image's symlinks point into; it must stay empty.
struct EscapeDir(PathBuf);

impl EscapeDir {
    fn new() -> Result<EscapeDir> {
        let p = PathBuf::from(format!("/var/tmp/abupdate-escape-{}", unique()));
        fs::create_dir_all(p.join("ssh"))?;
        Ok(EscapeDir(p))
    }

    fn assert_untouched(&self) {
        let mut found = Vec::new();
        walk(&self.0, &mut found);
        assert_eq!(
            found,
            vec![self.0.join("ssh")],
            "stage wrote outside the slot through an image symlink"
        );
    }
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            out.push(e.path());
            walk(&e.path(), out);
        }
    }
}

impl Drop for EscapeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Stages an image whose manifest target was replaced by `plant(tree, escape_dir)`.
fn escape_case(what: &str, plant: &dyn Fn(&Path, &Path, &Path) -> Result<()>) -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let escape = EscapeDir::new()?;
    let host_root = disk.host.root().to_owned();
    let esc = escape.0.clone();
    let customize = move |tree: &Path| plant(tree, &host_root, &esc);
    let image = make_image(
        disk.dir(),
        &ImageSpec {
            host_root: Some(disk.host.root()),
            customize: Some(&customize),
            ..Default::default()
        },
    )?;
    let host_before = fs::read(disk.host.path("etc/app.conf"))?;
    let result = run_unchanged(&disk, stage_args(&image.path, &image.sha256), what, |out| {
        escape.assert_untouched();
        assert!(
            out.code != 1,
            "{what}: expected a documented refusal, not an internal error:\n{out}"
        );
        out.assert_mentions_any(&["symlink", "outside", "escape", "link"]);
    });
    escape.assert_untouched();
    assert_eq!(
        host_before,
        fs::read(disk.host.path("etc/app.conf"))?,
        "{what}: host app.conf changed"
    );
    result.map(|_| ())
}

fn in_tree(tree: &Path, host_root: &Path, rel: &str) -> PathBuf {
    tree.join(host_root.strip_prefix("/").unwrap_or(host_root))
        .join(rel)
}

#[test]
fn manifest_target_relative_symlink_escaping_slot() -> Result<()> {
    escape_case(
        "relative ../ symlink in the image",
        &|tree, host_root, esc| {
            let target = in_tree(tree, host_root, "etc/app.conf");
            fs::remove_file(&target)?;
            let up = "../".repeat(16);
            let dest = format!(
                "{up}{}/app.conf",
                esc.strip_prefix("/").unwrap_or(esc).display()
            );
            symlink(dest, &target).context("plant the symlink")
        },
    )
}

#[test]
fn manifest_target_absolute_symlink() -> Result<()> {
    escape_case("absolute symlink in the image", &|tree, host_root, esc| {
        let target = in_tree(tree, host_root, "etc/app.conf");
        fs::remove_file(&target)?;
        symlink(esc.join("app.conf"), &target)?;
        fs::remove_file(tree.join("etc/hostname"))?;
        symlink(esc.join("hostname"), tree.join("etc/hostname")).context("plant the symlink")
    })
}

#[test]
fn manifest_parent_directory_symlink() -> Result<()> {
    escape_case(
        "symlinked parent directory in the image",
        &|tree, host_root, esc| {
            let ssh = in_tree(tree, host_root, "etc/ssh");
            fs::remove_dir_all(&ssh)?;
            symlink(esc.join("ssh"), &ssh).context("plant the symlink")
        },
    )
}

#[test]
fn malformed_yaml_config() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let bad = disk.dir().join("bad.yaml");
    // An unclosed flow sequence inside the partitions mapping.
    let text = disk
        .config_text()?
        .replacen("partitions:\n", "partitions:\n  oops: [\n", 1);
    assert!(
        text.contains("oops: ["),
        "the configuration has no partitions: line"
    );
    fs::write(&bad, text)?;
    let before = disk.snapshot()?;
    for args in [vec!["status"], vec!["switch", "--no-reboot"]] {
        let out = disk.run_with_config(&bad, &args)?;
        out.assert_code(2)
            .assert_mentions_all(&["line", "column", "bad.yaml"]);
    }
    let image = image_for(&disk)?;
    let out = disk.run_with_config(&bad, stage_args(&image.path, &image.sha256))?;
    out.assert_code(2);
    assert_unchanged(&before, &disk.snapshot()?, "malformed YAML");
    Ok(())
}

#[test]
fn unknown_config_key() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let bad = disk.dir().join("unknown.yaml");
    fs::write(&bad, format!("{}bogus_key: 1\n", disk.config_text()?))?;
    let out = disk.run_with_config(&bad, ["status"])?;
    out.assert_code(2).assert_mentions_all(&["bogus_key"]);
    let missing = disk.dir().join("does-not-exist.yaml");
    let out = disk.run_with_config(&missing, ["status"])?;
    out.assert_code(2)
        .assert_mentions_all(&["does-not-exist.yaml"]);
    Ok(())
}

#[test]
fn target_slot_mounted() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    run_ok(
        std::process::Command::new("mkfs.ext4")
            .args(["-F", "-q", "-L", "root-b"])
            .arg(disk.slot_b()),
    )?;
    let m = TempMount::new(&disk.slot_b(), "ext4", true)?;
    let b_before = abupdate_tests::sha256_file(&disk.slot_b())?;
    let image = image_for(&disk)?;
    run_unchanged(
        &disk,
        stage_args(&image.path, &image.sha256),
        "target slot mounted",
        |out| {
            out.assert_code(3).assert_mentions_any(&["mounted"]);
            out.assert_mentions_any(&[
                &disk.slot_b().display().to_string(),
                &m.path().display().to_string(),
                "root-b",
                "slot b",
            ]);
        },
    )?;
    assert_eq!(
        b_before,
        abupdate_tests::sha256_file(&disk.slot_b())?,
        "stage wrote the mounted slot B"
    );
    m.close()?;
    Ok(())
}

#[test]
fn booted_slot_b_empty_refuses_to_overwrite_default_a() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = image_for(&disk)?;
    // Pretend B is booted: the spare would be A, the only good (default) slot.
    let before = disk.snapshot()?;
    let out = disk.run_as("b", stage_args(&image.path, &image.sha256))?;
    out.assert_code(3);
    assert_unchanged(&before, &disk.snapshot()?, "stage over the default slot");
    Ok(())
}

#[test]
fn stage_during_uncommitted_trial_refuses_to_overwrite_fallback() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = image_for(&disk)?;
    disk.run(stage_args(&image.path, &image.sha256))?
        .assert_ok();
    disk.run(["switch", "--no-reboot"])?.assert_ok();
    // Booted into the trial B, not committed: A is the only slot known to boot.
    let before = disk.snapshot()?;
    let out = disk.run_as("b", stage_args(&image.path, &image.sha256))?;
    out.assert_code(3);
    assert_unchanged(
        &before,
        &disk.snapshot()?,
        "stage over the fallback during a trial",
    );
    Ok(())
}

#[test]
fn two_stages_at_once() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let zst = compress(
        &make_image(
            disk.dir(),
            &ImageSpec {
                host_root: Some(disk.host.root()),
                random_bytes: 8 << 20,
                ..Default::default()
            },
        )?,
        Compression::Zstd,
    )?;
    let srv = HttpServer::start(
        &[("/slow.img.zst", zst.path.clone())],
        ServeOptions::stall_after("/slow.img.zst", zst.len()? / 3),
    )?;
    let first = ChildGuard::spawn(disk.command("a").args([
        "stage",
        &srv.url("/slow.img.zst"),
        "--sha256",
        &zst.sha256,
    ]))?;
    srv.wait_stalled(Duration::from_secs(120))?;
    // The first stage is mid-transfer; it must hold the lock with its pid recorded.
    let pid = first.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let content = fs::read_to_string(&disk.lock_file).unwrap_or_default();
        if content.trim() == pid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lock file {} holds {content:?}, expected the first stage's pid {pid}",
            disk.lock_file.display()
        );
        // Polling a condition (the lock file's content), not sleeping as synchronisation.
        std::thread::sleep(Duration::from_millis(10));
    }
    let image = image_for(&disk)?;
    let second = disk.run(stage_args(&image.path, &image.sha256))?;
    second
        .assert_code(3)
        .assert_mentions_all(&[&format!("another abupdate (pid {pid}) is running")]);
    let switch = disk.run(["switch", "--no-reboot"])?;
    switch
        .assert_code(3)
        .assert_mentions_all(&["another abupdate"]);
    srv.release();
    first.wait()?.assert_ok();
    assert_slot_b_staged(&disk)?;
    Ok(())
}
