//! The signed release channel on loop disks: a channel made with `abupdate release init` and
//! `release publish` (the path README shows), served from 127.0.0.1, staged with
//! `stage --channel`; and each way a channel or release is refused: exit 4 (or 5 for an
//! unreachable channel), a message that says why, and nothing written to the target slot,
//! slot A, the data partition or the boot partition.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_tests::checks::{assert_slot_b_staged, slot_status};
use abupdate_tests::{
    abupdate_bin, assert_unchanged, compress, make_image, serial, sha256_file, Compression,
    HttpServer, Image, ImageSpec, Output, ServeOptions, TestDisk,
};
use anyhow::{Context, Result};

/// A channel directory with one Ed25519 key, made by `abupdate release init`.
struct Channel {
    dir: PathBuf,
    key: PathBuf,
}

impl Channel {
    fn init(parent: &Path, name: &str) -> Result<Channel> {
        let dir = parent.join(name);
        let key = parent.join(format!("{name}.pem"));
        let ch = Channel { dir, key };
        ch.release(&["init"], &[])?.assert_ok();
        assert!(
            fs::read_to_string(&ch.key)?.starts_with("-----BEGIN PRIVATE KEY-----"),
            "release init did not write a PEM key"
        );
        Ok(ch)
    }

    /// `abupdate release VERB --channel DIR --key KEY ARGS`.
    fn release(&self, verb: &[&str], args: &[&str]) -> Result<Output> {
        Output::of(
            Command::new(abupdate_bin())
                .arg("release")
                .args(verb)
                .arg("--channel")
                .arg(&self.dir)
                .arg("--key")
                .arg(&self.key)
                .args(args),
        )
    }

    fn publish(&self, image: &Image, version: &str) -> Result<()> {
        let out = Output::of(
            Command::new(abupdate_bin())
                .args(["release", "publish"])
                .arg(&image.path)
                .arg("--channel")
                .arg(&self.dir)
                .arg("--key")
                .arg(&self.key)
                .args(["--version", version])
                .args(["--os-name", "Debian GNU/Linux", "--os-version", "13"]),
        )?;
        out.assert_ok();
        Ok(())
    }

    fn root(&self) -> PathBuf {
        self.dir.join("metadata/root.json")
    }

    /// The one file under `targets/` holding `image` (named `<sha256>.<name>`).
    fn target_file(&self, image: &Image) -> PathBuf {
        let name = image
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.dir
            .join("targets")
            .join(format!("{}.{name}", image.sha256))
    }

    /// Serves every file of `dir` (this channel's or a copy of it) under `/ch/`.
    fn serve(dir: &Path) -> Result<HttpServer> {
        let mut files = Vec::new();
        for sub in ["metadata", "targets"] {
            for e in fs::read_dir(dir.join(sub))? {
                let p = e?.path();
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                files.push((format!("/ch/{sub}/{name}"), p));
            }
        }
        let refs: Vec<(&str, PathBuf)> =
            files.iter().map(|(u, p)| (u.as_str(), p.clone())).collect();
        HttpServer::start(&refs, ServeOptions::default())
    }
}

/// Adds an `update:` section for `channel`, pinned to `root`, to the disk's config.
fn use_channel(disk: &TestDisk, channel: &str, root: &Path) -> Result<()> {
    let text = format!(
        "{}update:\n  channel: {channel}\n  root: {}\n",
        disk.config_text()?,
        root.display()
    );
    fs::write(&disk.config, text).with_context(|| format!("write {}", disk.config.display()))
}

/// Asserts that slot B holds no filesystem.
fn assert_no_filesystem_on_b(disk: &TestDisk) -> Result<()> {
    let out = Output::of(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(disk.slot_b()),
    )?;
    assert!(
        out.stdout.trim().is_empty(),
        "slot B holds a filesystem after a refused stage: {out}"
    );
    Ok(())
}

/// A raw release image for this disk.
fn raw_release_image(disk: &TestDisk, name: &str, random_bytes: usize) -> Result<Image> {
    make_image(
        disk.dir(),
        &ImageSpec {
            name,
            host_root: Some(disk.host.root()),
            random_bytes,
            ..Default::default()
        },
    )
}

/// A compressed release image for this disk.
fn release_image(disk: &TestDisk, name: &str, random_bytes: usize) -> Result<Image> {
    compress(
        &raw_release_image(disk, name, random_bytes)?,
        Compression::Zstd,
    )
}

/// What a refused channel must leave as it was: slot A, data, boot, GPT, and slot B.
struct Untouched {
    snapshot: abupdate_tests::Snapshot,
    slot_b: String,
}

impl Untouched {
    fn take(disk: &TestDisk) -> Result<Untouched> {
        Ok(Untouched {
            snapshot: disk.snapshot()?,
            slot_b: sha256_file(&disk.slot_b())?,
        })
    }

    #[track_caller]
    fn assert(&self, disk: &TestDisk, what: &str) {
        let after = disk.snapshot().expect("snapshot");
        assert_unchanged(&self.snapshot, &after, what);
        assert_eq!(
            self.snapshot.boot, after.boot,
            "{what}: the boot partition changed"
        );
        assert_eq!(
            self.slot_b,
            sha256_file(&disk.slot_b()).expect("hash slot B"),
            "{what}: slot B was written"
        );
    }
}

#[test]
fn channel_release_is_checked_and_staged() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let ch = Channel::init(disk.dir(), "channel")?;
    let image = release_image(&disk, "debian13.img", 4 << 20)?;
    ch.publish(&image, "13.0.0")?;
    let srv = Channel::serve(&ch.dir)?;
    use_channel(&disk, &srv.url("/ch"), &ch.root())?;

    let out = disk.run(["--json", "check"])?;
    out.assert_ok();
    let check = out.json()?;
    assert_eq!(check["update_available"], true, "{check:#}");
    assert_eq!(check["offered"]["version"], "13.0.0", "{check:#}");
    assert_eq!(
        check["offered"]["sha256"],
        image.sha256.as_str(),
        "{check:#}"
    );
    assert_eq!(check["offered"]["kind"], "image", "{check:#}");
    assert!(check["running"].is_null(), "{check:#}");
    assert!(check["offered_wave_start"].is_string(), "{check:#}");
    // The versions seen are recorded on the boot partition.
    let m = disk.mount_boot()?;
    let seen = fs::read_to_string(m.path().join("abupdate/channel/timestamp.json"))?;
    m.close()?;
    assert!(seen.contains("\"timestamp\""), "{seen}");

    let out = disk.run(["stage", "--channel"])?;
    out.assert_ok()
        .assert_mentions_all(&["release 13.0.0", "slot B staged"]);
    assert_slot_b_staged(&disk)?;
    let st = disk.status("a")?;
    let b = slot_status(&st, "b");
    assert!(
        b["source"].as_str().is_some_and(|s| s.ends_with(&format!("/ch/targets/{}.debian13.img.zst", image.sha256))),
        "B's source: {st:#}"
    );
    // Nothing but metadata and the one target was fetched.
    let gets: Vec<String> = srv.requests().iter().map(|r| r.path.clone()).collect();
    assert!(gets.iter().all(|p| p.starts_with("/ch/")), "{gets:?}");
    Ok(())
}

#[test]
fn channel_signed_by_a_key_not_in_root_is_refused() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let ours = Channel::init(disk.dir(), "ours")?;
    // Someone else's channel at the URL the host trusts: same layout, same release, other keys.
    let theirs = Channel::init(disk.dir(), "theirs")?;
    let image = release_image(&disk, "debian13.img", 1 << 20)?;
    theirs.publish(&image, "13.0.0")?;
    let srv = Channel::serve(&theirs.dir)?;
    use_channel(&disk, &srv.url("/ch"), &ours.root())?;
    let before = Untouched::take(&disk)?;
    let out = disk.run(["stage", "--channel"])?;
    out.assert_code(4)
        .assert_mentions_all(&["not signed by enough of the keys the pinned root trusts"]);
    before.assert(&disk, "metadata signed by another key");
    Ok(())
}

#[test]
fn channel_with_expired_timestamp_is_refused() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let ch = Channel::init(disk.dir(), "channel")?;
    let image = release_image(&disk, "debian13.img", 1 << 20)?;
    ch.publish(&image, "13.0.0")?;
    ch.release(
        &["refresh"],
        &["--timestamp-expires", "2001-01-01T00:00:00Z"],
    )?
    .assert_ok()
    .assert_mentions_all(&["already expired"]);
    let srv = Channel::serve(&ch.dir)?;
    use_channel(&disk, &srv.url("/ch"), &ch.root())?;
    let before = Untouched::take(&disk)?;
    for args in [&["stage", "--channel"][..], &["check"]] {
        let out = disk.run(args)?;
        out.assert_code(4)
            .assert_mentions_all(&["expired", "timestamp"]);
    }
    before.assert(&disk, "expired timestamp");
    Ok(())
}

#[test]
fn channel_metadata_older_than_seen_is_refused() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let ch = Channel::init(disk.dir(), "channel")?;
    let first = release_image(&disk, "debian13.0.img", 1 << 20)?;
    ch.publish(&first, "13.0.0")?;
    // Keep a copy of the channel as it was after the first release.
    let old = disk.dir().join("old-channel");
    for sub in ["metadata", "targets"] {
        fs::create_dir_all(old.join(sub))?;
        for e in fs::read_dir(ch.dir.join(sub))? {
            let p = e?.path();
            fs::copy(&p, old.join(sub).join(p.file_name().unwrap_or_default()))?;
        }
    }
    let second = release_image(&disk, "debian13.1.img", 1 << 20)?;
    ch.publish(&second, "13.1.0")?;
    let srv = Channel::serve(&ch.dir)?;
    use_channel(&disk, &srv.url("/ch"), &ch.root())?;
    let out = disk.run(["--json", "check"])?;
    out.assert_ok();
    assert_eq!(out.json()?["offered"]["version"], "13.1.0");
    drop(srv);

    // A mirror (or an attacker) now serves the older, still validly signed metadata.
    let srv = Channel::serve(&old)?;
    use_channel(&disk, &srv.url("/ch"), &ch.root())?;
    let before = Untouched::take(&disk)?;
    let out = disk.run(["stage", "--channel"])?;
    out.assert_code(4)
        .assert_mentions_all(&["older than what this host has already seen"]);
    before.assert(&disk, "replayed old metadata");
    Ok(())
}

#[test]
fn channel_target_with_wrong_hash_or_length_is_refused() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let ch = Channel::init(disk.dir(), "channel")?;
    // Raw, so that a changed byte reaches the signed-digest check (a zstd stream's own
    // checksum would catch it first).
    let image = raw_release_image(&disk, "debian13.img", 1 << 20)?;
    ch.publish(&image, "13.0.0")?;
    let target = ch.target_file(&image);
    let good = fs::read(&target)?;
    let srv = Channel::serve(&ch.dir)?;
    use_channel(&disk, &srv.url("/ch"), &ch.root())?;
    // The first check records the metadata; the refused stages below must write nothing.
    disk.run(["check"])?.assert_ok();
    let before = Untouched::take(&disk)?;

    // Same length, one byte changed in the middle: the stream is written (holding back the
    // slot's head), the digest does not match, the slot is left without a filesystem.
    let mut tampered = good.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0xff;
    fs::write(&target, &tampered)?;
    let out = disk.run(["stage", "--channel"])?;
    out.assert_code(4).assert_mentions_all(&["sha256"]);
    assert_unchanged(&before.snapshot, &disk.snapshot()?, "tampered target");
    assert_eq!(
        before.snapshot.boot,
        disk.snapshot()?.boot,
        "boot partition changed"
    );
    assert_no_filesystem_on_b(&disk)?;
    assert_eq!(slot_status(&disk.status("a")?, "b")["state"], "empty");

    // Shorter and longer than signed: refused from the announced length, before a byte of
    // the image reaches the slot.
    for (what, bytes) in [
        ("truncated", good[..good.len() - 4096].to_vec()),
        ("longer", [good.as_slice(), &[0u8; 4096]].concat()),
    ] {
        fs::write(&target, &bytes)?;
        let b = sha256_file(&disk.slot_b())?;
        let out = disk.run(["stage", "--channel"])?;
        out.assert_code(4)
            .assert_mentions_all(&["signed length", &good.len().to_string()]);
        assert_eq!(
            b,
            sha256_file(&disk.slot_b())?,
            "{what} target: slot B was written"
        );
        assert_unchanged(&before.snapshot, &disk.snapshot()?, what);
    }
    Ok(())
}

#[test]
fn channel_downgrade_needs_allow_downgrade() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let ch = Channel::init(disk.dir(), "channel")?;
    let old = release_image(&disk, "debian13.0.img", 1 << 20)?;
    let new = release_image(&disk, "debian13.1.img", 2 << 20)?;
    ch.publish(&old, "13.0.0")?;
    ch.publish(&new, "13.1.0")?;
    let srv = Channel::serve(&ch.dir)?;
    use_channel(&disk, &srv.url("/ch"), &ch.root())?;

    // `update` checks, stages the newest release into B and switches (no reboot here).
    let out = disk.run(["update", "--no-reboot"])?;
    out.assert_ok()
        .assert_mentions_all(&["offered: release 13.1.0", "slot B staged"]);
    assert_eq!(
        disk.grubenv()?.get("ab_trial").map(String::as_str),
        Some("b")
    );
    disk.run_as("b", ["commit"])?.assert_ok();

    // Running 13.1.0 in B: nothing newer, and 13.0.0 only with --allow-downgrade.
    let check = disk.run_as("b", ["--json", "check"])?;
    check.assert_ok();
    let check = check.json()?;
    assert_eq!(check["running"], "13.1.0", "{check:#}");
    assert_eq!(check["update_available"], false, "{check:#}");
    let before = sha256_file(&disk.slot_a())?;
    let out = disk.run_as("b", ["stage", "--channel", "--version", "13.0.0"])?;
    out.assert_code(4).assert_mentions_all(&[
        "13.0.0",
        "not newer than the running release 13.1.0",
        "--allow-downgrade",
    ]);
    assert_eq!(before, sha256_file(&disk.slot_a())?, "slot A was written");
    let out = disk.run_as(
        "b",
        [
            "stage",
            "--channel",
            "--version",
            "13.0.0",
            "--allow-downgrade",
        ],
    )?;
    out.assert_ok().assert_mentions_all(&["slot A staged"]);
    Ok(())
}

#[test]
fn unreachable_channel_changes_nothing() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let ch = Channel::init(disk.dir(), "channel")?;
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    use_channel(&disk, &format!("http://127.0.0.1:{port}/ch"), &ch.root())?;
    let before = Untouched::take(&disk)?;
    for args in [
        &["check"][..],
        &["stage", "--channel"],
        &["update", "--no-reboot"],
    ] {
        let out = disk.run(args)?;
        out.assert_code(5)
            .assert_mentions_all(&["unreachable", &format!("127.0.0.1:{port}")]);
    }
    before.assert(&disk, "unreachable channel");
    Ok(())
}

/// Adds an `update:` section that lets the daemon stage by itself and switch inside the
/// window `Sat 02:00..04:00`, with its record and metrics in the test's directory.
fn use_channel_polled(disk: &TestDisk, channel: &str, root: &Path) -> Result<()> {
    let text = format!(
        "{}update:\n  channel: {channel}\n  root: {}\n  interval: 6h\n  jitter: 30m\n  \
         stage: auto\n  switch: window\n  window: \"Sat *-*-* 02:00..04:00\"\n  \
         last_check: {}\n  metrics: {}\n",
        disk.config_text()?,
        root.display(),
        disk.dir().join("last-check.json").display(),
        disk.dir().join("prom/abupdate.prom").display(),
    );
    fs::write(&disk.config, text).with_context(|| format!("write {}", disk.config.display()))
}

/// One polling cycle of the daemon in slot A, as if the clock (in UTC) said `now`.
fn poll_once(disk: &TestDisk, now: jiff::Timestamp) -> Result<Output> {
    Output::of(
        disk.command("a")
            .env("ABUPDATE_POLL_NOW", now.to_string())
            .env("TZ", "UTC")
            .arg("daemon"),
    )
}

/// The first Saturday 01:00 UTC at least a day after `t`.
fn saturday_0100_after(t: jiff::Timestamp) -> Result<jiff::Timestamp> {
    use jiff::civil::Weekday;
    let mut d = t.to_zoned(jiff::tz::TimeZone::UTC).date().tomorrow()?;
    while d.weekday() != Weekday::Saturday {
        d = d.tomorrow()?;
    }
    Ok(d.at(1, 0, 0, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)?
        .timestamp())
}

#[test]
fn daemon_stages_when_the_wave_comes_and_switches_inside_the_window() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let ch = Channel::init(disk.dir(), "channel")?;
    let image = release_image(&disk, "debian13.img", 1 << 20)?;
    // Every host starts within ten days of the publication, each at its own time.
    let out = ch.release(
        &["publish"],
        &[
            &image.path.to_string_lossy(),
            "--version",
            "13.0.0",
            "--os-name",
            "Debian GNU/Linux",
            "--os-version",
            "13",
            "--wave",
            "240h:100",
        ],
    )?;
    out.assert_ok();
    let srv = Channel::serve(&ch.dir)?;
    use_channel_polled(&disk, &srv.url("/ch"), &ch.root())?;
    // This host's place in the wave, as `check` reports it (held back, or offered at once
    // when its seed is the fleet's first).
    let check = disk.run(["--json", "check"])?;
    check.assert_ok();
    let check = check.json()?;
    let wave: jiff::Timestamp = check["held_back"][0]["starts_at"]
        .as_str()
        .or(check["offered_wave_start"].as_str())
        .context("no wave start in check --json")?
        .parse()?;

    // Before the wave: checked, nothing staged.
    let before_wave = wave - jiff::SignedDuration::from_mins(1);
    let untouched = Untouched::take(&disk)?;
    let out = poll_once(&disk, before_wave)?;
    out.assert_ok()
        .assert_mentions_all(&["check: release 13.0.0 waits", "this host's wave starts at"]);
    untouched.assert(&disk, "a poll before the host's wave");
    let st = disk.status("a")?;
    assert_eq!(st["update"]["last_check_result"], "waiting", "{st:#}");
    assert_eq!(st["update"]["next"]["step"], "check", "{st:#}");

    // After the wave, outside the window: staged, not switched.
    let saturday = saturday_0100_after(wave)?;
    let out = poll_once(&disk, saturday)?;
    out.assert_ok().assert_mentions_all(&[
        "check: release 13.0.0 offered",
        "stage: release 13.0.0 staged in slot B",
        "next: switch release 13.0.0 at",
        "waits for the window",
    ]);
    assert_slot_b_staged(&disk)?;
    let env = disk.grubenv()?;
    assert!(
        env.get("ab_trial").is_none_or(|t| t.is_empty()),
        "switched outside the window: {env:?}"
    );
    let st = disk.status("a")?;
    assert_eq!(st["update"]["last_check_result"], "offered", "{st:#}");
    assert_eq!(st["update"]["last_check"]["offered"]["version"], "13.0.0");
    let prom = fs::read_to_string(disk.dir().join("prom/abupdate.prom"))?;
    for line in [
        "abupdate_staged_release_info{slot=\"b\",version=\"13.0.0\",",
        "abupdate_last_check_success 1\n",
        "abupdate_update_available 1\n",
        "abupdate_trial_pending 0\n",
        "abupdate_next_step_timestamp_seconds{step=\"switch\"}",
    ] {
        assert!(prom.contains(line), "no {line:?} in the textfile:\n{prom}");
    }

    // Still outside the window a little later: nothing happens.
    let grubenv = disk.grubenv_bytes()?;
    let out = poll_once(&disk, saturday + jiff::SignedDuration::from_mins(30))?;
    out.assert_ok()
        .assert_mentions_all(&["next: switch release 13.0.0"]);
    assert_eq!(
        grubenv,
        disk.grubenv_bytes()?,
        "grubenv changed outside the window"
    );

    // Inside the window: the switch (the trial of B).
    let out = poll_once(&disk, saturday + jiff::SignedDuration::from_mins(90))?;
    out.assert_ok()
        .assert_mentions_all(&["switch: release 13.0.0", "slot B"]);
    assert_eq!(
        disk.grubenv()?.get("ab_trial").map(String::as_str),
        Some("b")
    );
    // A trial is pending: the next cycle does nothing but say so.
    let out = poll_once(&disk, saturday + jiff::SignedDuration::from_mins(100))?;
    out.assert_ok();
    let st = disk.status("a")?;
    assert!(
        st["update"]["next"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("trial of slot B is pending")),
        "{st:#}"
    );
    Ok(())
}
