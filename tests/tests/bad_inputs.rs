//! Bad input must fail with a clear message, the documented exit code, and leave slot A, the
//! data partition and the boot partition byte-identical (docs/design.md, invariant 5).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abupdate_tests::checks::{assert_slot_b_staged, slot_status, stage_args};
use abupdate_tests::disk::unique;
use abupdate_tests::hostile;
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
        "--allow-insecure-http",
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

/// `stage --from-tar ARCHIVE --sha256 HEX`.
fn tar_args(archive: &Path, sha256: &str) -> Vec<std::ffi::OsString> {
    vec![
        "stage".into(),
        "--from-tar".into(),
        archive.into(),
        "--sha256".into(),
        sha256.into(),
    ]
}

/// Runs `args` under `/usr/bin/time`, prints its peak RSS and time, checks the failure with
/// `check` and that A, data and boot are unchanged and B not staged.
fn timed_unchanged(
    disk: &TestDisk,
    args: Vec<std::ffi::OsString>,
    what: &str,
    check: impl FnOnce(&Output),
) -> Result<hostile::Timed> {
    let before = disk.snapshot()?;
    let mut cmd = disk.command("a");
    cmd.args(args);
    let t = hostile::timed(&cmd, &disk.dir().join("time.txt"))?;
    eprintln!(
        "{what}: exit {}, peak RSS {} MiB, {:.1} s",
        t.output.code,
        t.peak_rss_kib / 1024,
        t.seconds
    );
    assert_ne!(t.output.code, 0, "{what}: expected failure:\n{}", t.output);
    check(&t.output);
    assert_unchanged(&before, &disk.snapshot()?, what);
    let st = disk.status("a")?;
    assert_ne!(slot_status(&st, "b")["state"], "staged", "{what}: {st:#}");
    Ok(t)
}

/// Peak resident memory allowed for a stage whatever its input (fixed buffers only).
const RSS_BOUND_KIB: u64 = 128 << 10;

#[test]
fn tar_with_a_1gib_pax_header() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let bomb = hostile::pax_bomb(disk.dir(), 1 << 30)?;
    eprintln!("pax bomb: {} bytes", bomb.len()?);
    let t = timed_unchanged(
        &disk,
        tar_args(&bomb.path, &bomb.sha256),
        "1 GiB PAX header",
        |out| {
            out.assert_code(4)
                .assert_mentions_all(&["headers", "exceed 1048576 bytes"]);
        },
    )?;
    assert!(
        t.peak_rss_kib < RSS_BOUND_KIB,
        "peak RSS {} KiB",
        t.peak_rss_kib
    );
    Ok(())
}

#[test]
fn tar_with_a_64gib_sparse_entry() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let bomb = hostile::sparse_bomb(disk.dir(), 64 << 30)?;
    eprintln!("sparse bomb: {} bytes", bomb.len()?);
    for (what, sha, words) in [
        (
            "64 GiB sparse entry, wrong sha256",
            "0".repeat(64),
            ["sha256", "nothing was extracted"],
        ),
        (
            "64 GiB sparse entry",
            bomb.sha256.clone(),
            ["68719476736 bytes", "free in the slot"],
        ),
    ] {
        let t = timed_unchanged(&disk, tar_args(&bomb.path, &sha), what, |out| {
            out.assert_code(4).assert_mentions_all(&words);
        })?;
        assert!(
            t.peak_rss_kib < RSS_BOUND_KIB,
            "peak RSS {} KiB",
            t.peak_rss_kib
        );
    }
    Ok(())
}

#[test]
fn tar_hard_link_to_a_path_outside_the_archive() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let mut tar = hostile::TarWriter::new();
    tar.entry("./etc/", b'5', 0o755, "", b"");
    tar.entry("./etc/shadow-copy", b'1', 0o644, "/etc/shadow", b"");
    let archive = tar.finish(&disk.dir().join("hardlink.tar"))?;
    run_unchanged(
        &disk,
        tar_args(&archive.path, &archive.sha256),
        "absolute hard-link target",
        |out| {
            out.assert_code(4)
                .assert_mentions_all(&["hard link", "/etc/shadow"]);
        },
    )?;
    Ok(())
}

#[test]
fn tar_with_xattrs_the_kernel_refuses() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    for (n, (key, value)) in [
        ("SCHILY.xattr.nonamespace", &b"x"[..]),
        ("SCHILY.xattr.system.posix_acl_access", &b"not an acl"[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut tar = hostile::TarWriter::new();
        tar.pax(&[(key, value)]);
        tar.entry("./file", b'0', 0o644, "", b"x\n");
        let archive = tar.finish(&disk.dir().join(format!("xattr-{n}.tar")))?;
        run_unchanged(
            &disk,
            tar_args(&archive.path, &archive.sha256),
            key,
            |out| {
                out.assert_code(4).assert_mentions_all(&["xattr"]);
            },
        )?;
    }
    Ok(())
}

#[test]
fn missing_sha256_is_a_usage_error() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = image_for(&disk)?;
    let path = image.path.to_string_lossy().into_owned();
    for args in [vec!["stage", &path], vec!["stage", "--from-tar", &path]] {
        run_unchanged(
            &disk,
            args.iter().map(Into::into).collect(),
            "no --sha256",
            |out| {
                out.assert_code(2).assert_mentions_all(&["--sha256"]);
            },
        )?;
    }
    Ok(())
}

#[test]
fn plain_http_needs_the_opt_in() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let zst = compress(&image_for(&disk)?, Compression::Zstd)?;
    let sums = disk.dir().join("SHA256SUMS");
    fs::write(&sums, format!("{}  debian13.img.zst\n", zst.sha256))?;
    let srv = HttpServer::start(
        &[
            ("/debian13.img.zst", zst.path.clone()),
            ("/SHA256SUMS", sums),
        ],
        ServeOptions::default(),
    )?;
    let url = srv.url("/debian13.img.zst");
    let sums_url = srv.url("/SHA256SUMS");
    for (what, args) in [
        ("http image", vec!["stage", &url, "--sha256", &zst.sha256]),
        (
            "http SHA256SUMS",
            vec!["stage", &url, "--sha256-url", &sums_url],
        ),
        (
            "http archive",
            vec!["stage", "--from-tar", &url, "--sha256", &zst.sha256],
        ),
    ] {
        run_unchanged(&disk, args.iter().map(Into::into).collect(), what, |out| {
            out.assert_code(2)
                .assert_mentions_all(&["plain http", "--allow-insecure-http"]);
        })?;
    }
    assert!(
        srv.requests().is_empty(),
        "nothing may be requested over plain http without the opt-in: {:?}",
        srv.requests()
    );
    Ok(())
}

#[test]
fn config_values_that_would_break_grub_cfg_or_fstab() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let before = disk.snapshot()?;
    for (name, from, to, key) in [
        (
            "brace.yaml",
            "kernel_cmdline: ''",
            "kernel_cmdline: \"quiet {x}\"",
            "kernel_cmdline",
        ),
        (
            "tab.yaml",
            "kernel_cmdline: ''",
            "kernel_cmdline: \"quiet\\tsplash\"",
            "kernel_cmdline",
        ),
        (
            "newline.yaml",
            "mountpoint: /data",
            "mountpoint: \"/data\\nUUID=x / ext4 defaults 0 0\"",
            "partitions.data.mountpoint",
        ),
        (
            "unit.yaml",
            "services: []",
            "services: [\"ssh.service; reboot\"]",
            "services[0]",
        ),
    ] {
        let cfg = hostile::config_variant(&disk, name, from, to)?;
        for args in [vec!["status"], vec!["switch", "--no-reboot"]] {
            let out = disk.run_with_config(&cfg, &args)?;
            out.assert_code(2)
                .assert_mentions_all(&[name, key, "line ", "column "]);
        }
    }
    assert_unchanged(&before, &disk.snapshot()?, "config value errors");
    Ok(())
}

#[test]
fn nul_byte_in_grubenv_padding_is_read_past_and_mended() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let mut env = disk.grubenv_bytes()?;
    env[1000] = 0;
    hostile::damage_boot_file(&disk, "grub/grubenv", &env)?;
    // status reads it as GRUB does and says GRUB could not save into it.
    let before = disk.snapshot()?;
    let out = disk.run(["status"])?;
    out.assert_ok().assert_mentions_all(&["grubenv", "repair"]);
    let out = disk.run(["repair", "--dry-run"])?;
    out.assert_ok()
        .assert_mentions_all(&["grubenv", "default slot a", "nothing was written"]);
    assert_unchanged(&before, &disk.snapshot()?, "status and repair --dry-run");
    // The next write of abupdate (here repair) rewrites the whole block.
    disk.run(["repair"])?.assert_ok();
    let mended = disk.grubenv_bytes()?;
    assert_eq!(mended.len(), 1024);
    assert!(!mended.contains(&0), "NUL byte left in grubenv");
    assert_eq!(
        disk.grubenv()?.get("ab_default").map(String::as_str),
        Some("a")
    );
    let out = disk.run(["status"])?;
    out.assert_ok();
    assert!(!out.stderr.contains("warning"), "{out}");
    Ok(())
}

#[test]
fn damaged_records_are_explained_and_repaired() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    // A zero-filled grubenv and a truncated state.json: status explains, repair rebuilds.
    hostile::damage_boot_file(&disk, "grub/grubenv", &[0u8; 1024])?;
    hostile::damage_boot_file(
        &disk,
        "abupdate/state.json",
        b"{\"schema_version\": 1, \"sl",
    )?;
    let before = disk.snapshot()?;
    let out = disk.run(["status"])?;
    out.assert_ok().assert_mentions_all(&[
        "grub/grubenv",
        "abupdate/state.json",
        "abupdate repair",
    ]);
    let out = disk.run(["--json", "status"])?;
    out.assert_ok();
    assert_eq!(
        out.json()?["damaged"].as_array().map(Vec::len),
        Some(2),
        "{out}"
    );
    for args in [vec!["commit"], vec!["switch", "--no-reboot"]] {
        let out = disk.run(&args)?;
        assert!(out.code != 0 && out.code != 1, "{args:?}: {out}");
    }
    assert_unchanged(&before, &disk.snapshot()?, "status on damaged records");
    let out = disk.run(["repair"])?;
    out.assert_ok()
        .assert_mentions_all(&["rewrite state.json", "rewrite grubenv", "slot a good"]);
    let st = disk.status("a")?;
    assert_eq!(st["default"], "a", "{st:#}");
    assert_eq!(slot_status(&st, "a")["state"], "good", "{st:#}");
    // The damaged files are kept beside the new ones, and abupdate works again.
    let m = disk.mount_boot()?;
    assert!(m.path().join("abupdate/state.json.damaged").exists());
    assert!(m.path().join("grub/grubenv.damaged").exists());
    m.close()?;
    let image = image_for(&disk)?;
    disk.run(stage_args(&image.path, &image.sha256))?
        .assert_ok();
    assert_slot_b_staged(&disk)?;
    // init --force also mends a damaged grubenv.
    hostile::damage_boot_file(&disk, "grub/grubenv", &[0u8; 1024])?;
    disk.run(["init", "--slot", "a", "--force"])?.assert_ok();
    assert_eq!(
        disk.grubenv()?.get("ab_default").map(String::as_str),
        Some("a")
    );
    Ok(())
}
