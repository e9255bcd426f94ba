//! Staging over HTTP from 127.0.0.1: resume after a dropped connection, --sha256-url.

use abupdate_tests::checks::assert_slot_b_staged;
use abupdate_tests::{
    compress, make_image, serial, Compression, HttpServer, ImageSpec, ServeOptions, TestDisk,
};
use anyhow::Result;

#[test]
fn stage_http_resumes_after_dropped_connection() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let raw = make_image(
        disk.dir(),
        &ImageSpec {
            host_root: Some(disk.host.root()),
            random_bytes: 8 << 20,
            ..Default::default()
        },
    )?;
    let zst = compress(&raw, Compression::Zstd)?;
    let cut = zst.len()? / 2;
    let srv = HttpServer::start(
        &[("/debian13.img.zst", zst.path.clone())],
        ServeOptions::drop_after("/debian13.img.zst", cut),
    )?;
    let before = disk.snapshot()?;
    let out = disk.run([
        "stage",
        &srv.url("/debian13.img.zst"),
        "--sha256",
        &zst.sha256,
        "--allow-insecure-http",
    ])?;
    let log = srv.requests();
    out.assert_ok();
    let gets: Vec<_> = log.iter().filter(|r| r.method == "GET").collect();
    assert!(
        gets.len() >= 2,
        "expected a second GET after the drop: {log:?}"
    );
    assert!(
        gets[1..]
            .iter()
            .any(|r| r.status == 206 && r.range.as_deref().is_some_and(|rg| rg != "bytes=0-")),
        "expected a resuming Range request after the drop at byte {cut}: {log:?}"
    );
    let after = disk.snapshot()?;
    assert_eq!(before.slot_a, after.slot_a, "stage changed slot A");
    assert_eq!(before.data, after.data, "stage changed the data partition");
    assert!(before.grubenv == after.grubenv, "stage changed grubenv");
    assert_slot_b_staged(&disk)?;
    Ok(())
}

#[test]
fn stage_http_with_sha256_url() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let raw = disk.new_release_image()?;
    let gz = compress(&raw, Compression::Gzip)?;
    let sums = disk.dir().join("SHA256SUMS");
    std::fs::write(&sums, format!("{}  debian13.img.gz\n", gz.sha256))?;
    let srv = HttpServer::start(
        &[("/debian13.img.gz", gz.path.clone()), ("/SHA256SUMS", sums)],
        ServeOptions::default(),
    )?;
    disk.run([
        "stage",
        &srv.url("/debian13.img.gz"),
        "--sha256-url",
        &srv.url("/SHA256SUMS"),
        "--allow-insecure-http",
    ])?
    .assert_ok();
    assert_slot_b_staged(&disk)?;
    Ok(())
}

#[test]
fn stage_http_404_fails_cleanly() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let srv = HttpServer::start(&[], ServeOptions::default())?;
    let before = disk.snapshot()?;
    let url = srv.url("/missing.img.zst");
    let out = disk.run([
        "stage",
        &url,
        "--sha256",
        &"0".repeat(64),
        "--allow-insecure-http",
    ])?;
    assert!(
        out.code != 0 && out.code != 1,
        "expected a documented failure code:\n{out}"
    );
    out.assert_mentions_any(&["404", "not found"]);
    out.assert_mentions_any(&["missing.img.zst"]);
    abupdate_tests::assert_unchanged(&before, &disk.snapshot()?, "stage of a 404 URL");
    Ok(())
}
