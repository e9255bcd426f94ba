//! Self-tests of the fixtures (disk layout, images, HTTP server), independent of abupdate.

use std::process::Command;

use abupdate_tests::disk::DiskOptions;
use abupdate_tests::proc::run_ok;
use abupdate_tests::{
    compress, make_image, serial, Compression, HttpServer, ImageSpec, ServeOptions, TestDisk,
};
use anyhow::Result;

#[test]
fn disk_layout_and_images() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::with(DiskOptions {
        init: false,
        ..Default::default()
    })?;
    let parts = run_ok(Command::new("sfdisk").arg("--dump").arg(disk.device()))?;
    for name in ["abboot", "root-a", "root-b", "data"] {
        assert!(parts.contains(&format!("name=\"{name}\"")), "{parts}");
    }
    assert_eq!(TestDisk::blkid(&disk.slot_a(), "LABEL")?, "root-a");
    assert_eq!(TestDisk::blkid(&disk.boot(), "TYPE")?, "ext2");
    let image = make_image(disk.dir(), &ImageSpec::default())?;
    assert_eq!(image.len()?, 64 << 20);
    let zst = compress(&image, Compression::Zstd)?;
    assert!(zst.len()? < image.len()?);
    Ok(())
}

#[test]
fn http_server_drop_and_range() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data)?;
    let srv = HttpServer::start(
        &[("/blob", file.clone())],
        ServeOptions::drop_after("/blob", 70_000),
    )?;
    let out = dir.path().join("out");
    // First transfer is cut short; curl reports it (exit 18, partial file).
    let first = abupdate_tests::Output::of(
        Command::new("curl")
            .args(["-sS", "-o"])
            .arg(&out)
            .arg(srv.url("/blob")),
    )?;
    assert_ne!(first.code, 0, "{first}");
    assert_eq!(std::fs::metadata(&out)?.len(), 70_000);
    run_ok(
        Command::new("curl")
            .args(["-sS", "-C", "-", "-o"])
            .arg(&out)
            .arg(srv.url("/blob")),
    )?;
    assert_eq!(std::fs::read(&out)?, data);
    let log = srv.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].status, 206, "{log:?}");
    Ok(())
}

#[test]
fn loop_attach_forgets_stale_partitions() -> Result<()> {
    let _s = serial();
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("gpt.img");
    std::fs::File::create(&image)?.set_len(64 << 20)?;
    abupdate_utils::Cmd::new("sfdisk")
        .arg("-q")
        .arg(&image)
        .stdin(b"label: gpt\n,16M\n,16M\n".to_vec())
        .run()?;
    // What an earlier tool may leave: partitions added, then a bare `losetup -d`.
    let dev = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
    let dev = dev.trim().to_string();
    run_ok(Command::new("partx").arg("-a").arg(&dev))?;
    run_ok(Command::new("losetup").arg("-d").arg(&dev))?;
    let lo = abupdate_utils::loopdev::LoopDevice::attach(&image)?;
    assert_eq!(
        lo.path().to_string_lossy(),
        dev,
        "the test needs the same loop device again (another process took a loop device?)"
    );
    assert!(lo.partition(1).exists() && lo.partition(2).exists());
    lo.close()?;
    Ok(())
}
