//! The stage sources besides a raw image, driven through the real binary:
//!
//! - `--from-tar`: a GNU tar archive (plain and zstd) of the release tree with hard links,
//!   xattrs of three namespaces, a device node, set-id and private modes, foreign owners and
//!   symlinks, all found again in slot B; archives with a `..` entry or an entry beneath an
//!   absolute symlink are refused and write nothing outside the slot;
//! - `--clone --run`: a prepared tree stands in for the running system
//!   (`ABUPDATE_CLONE_ROOT`); sparse files, ACLs, hard links and a mount point inside it,
//!   the command and the initramfs run chrooted in the copy only;
//! - `--bootstrap`: an installer script fills the mounted target, stage builds the
//!   initramfs chrooted; a failing installer is reported with its stderr.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use abupdate_tests::checks::{assert_slot_b_staged, slot_status};
use abupdate_tests::disk::unique;
use abupdate_tests::proc::run_ok;
use abupdate_tests::tree::{
    fake_initrd_text, prepare_for_chroot, release_tar, release_tree, TreeMount, GNU_TAR_KEEP,
    RELEASE_KERNEL,
};
use abupdate_tests::{
    assert_unchanged, compress, serial, Compression, Image, Output, Snapshot, TestDisk,
};
use anyhow::{Context, Result};

/// Two names of one inode, in different directories (relative to the tree root).
const HARDLINKS: [&str; 2] = ["usr/lib/abupdate-test/hard1", "usr/bin/hard2"];
/// The archived file carrying [`XATTRS`].
const XATTR_FILE: &str = "etc/xattr.conf";
/// Extended attributes of [`XATTR_FILE`]: one per namespace GNU tar records.
const XATTRS: &[(&str, &str)] = &[
    ("user.abupdate", "tar-user-value"),
    ("trusted.abupdate", "tar-trusted-value"),
    ("security.abupdate", "tar-security-value"),
];
/// The archived character device (`mknod c 1 3`).
const DEV_NULL: &str = "dev/null";
/// Archived entries with foreign owners and unusual modes: (path, directory?, uid, gid, mode).
const OWNED: &[(&str, bool, u32, u32, u32)] = &[
    ("home/alice", true, 1001, 1002, 0o700),
    ("home/alice/notes", false, 1001, 1002, 0o600),
    ("usr/bin/suid-tool", false, 0, 0, 0o4755),
    ("var/mail", true, 0, 8, 0o2775),
];
/// The file whose sub-second mtime must survive the archive.
const NOTES: &str = "home/alice/notes";
/// [`NOTES`]'s mtime: seconds and nanoseconds.
const NOTES_MTIME: (u64, u32) = (1_700_000_000, 123_456_789);
/// Archived symlinks: (path, target), one absolute and dangling, one relative.
const SYMLINKS: &[(&str, &str)] = &[
    ("etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),
    ("usr/bin/tool-link", "suid-tool"),
];

/// The clone source's sparse file.
const SPARSE: &str = "var/lib/sparse.img";
/// Its apparent size.
const SPARSE_LEN: u64 = 1 << 30;
/// Its data: (offset, bytes); everything else is a hole.
const SPARSE_DATA: &[(u64, &[u8])] = &[
    (0, b"head"),
    (SPARSE_LEN / 2, b"middle"),
    (SPARSE_LEN - 4, b"tail"),
];
/// Allocation (st_blocks * 512) a copy of [`SPARSE`] may have: a filled copy has 1 GiB.
const SPARSE_MAX_ALLOC: u64 = 1 << 20;
/// A file and a directory (with a default ACL) of the clone source carrying POSIX ACLs.
const ACLS: &[(&str, &str)] = &[
    ("etc/acl-file", "u:4321:rw-,g:4322:r--"),
    ("srv/acl-dir", "u:4321:rwx,d:u:4321:r-x,d:g:4322:r--"),
];
/// The mount point inside the clone source, and the file on the tmpfs mounted there.
const MOUNT_POINT: &str = "mnt/other";
/// See [`MOUNT_POINT`].
const ON_TMPFS: &str = "on-tmpfs";
/// The command `stage --clone --run` runs chrooted in the copy.
const CLONE_RUN: &str = "echo upgraded > /etc/marker";
/// The policy file abupdate writes for the duration of `--run`.
const POLICY_RC_D: &str = "usr/sbin/policy-rc.d";

/// `stage --from-tar <archive> --sha256 <its hash>`.
fn from_tar_args(archive: &Image) -> Vec<OsString> {
    vec![
        "stage".into(),
        "--from-tar".into(),
        archive.path.clone().into_os_string(),
        "--sha256".into(),
        archive.sha256.clone().into(),
    ]
}

/// Adds [`HARDLINKS`], [`XATTRS`], [`DEV_NULL`], [`OWNED`] and [`SYMLINKS`] to a release tree.
fn add_tar_entries(root: &Path) -> Result<()> {
    let first = root.join(HARDLINKS[0]);
    fs::write(&first, "one inode, two names\n")?;
    fs::hard_link(&first, root.join(HARDLINKS[1]))?;
    let x = root.join(XATTR_FILE);
    fs::write(&x, "carries xattrs\n")?;
    for (name, value) in XATTRS {
        run_ok(
            Command::new("setfattr")
                .args(["-n", name, "-v", value])
                .arg(&x),
        )?;
    }
    fs::create_dir_all(root.join("dev"))?;
    run_ok(
        Command::new("mknod")
            .args(["-m", "666"])
            .arg(root.join(DEV_NULL))
            .args(["c", "1", "3"]),
    )?;
    for &(rel, dir, uid, gid, mode) in OWNED {
        let p = root.join(rel);
        if dir {
            fs::create_dir_all(&p)?;
        } else {
            fs::write(&p, format!("{rel}\n"))?;
        }
        // chown clears set-id bits: owner first, then the mode.
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    }
    let (secs, nanos) = NOTES_MTIME;
    fs::File::options()
        .write(true)
        .open(root.join(NOTES))?
        .set_modified(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))?;
    for (rel, target) in SYMLINKS {
        std::os::unix::fs::symlink(target, root.join(rel))?;
    }
    Ok(())
}

/// Asserts that two paths are hard links of one inode.
#[track_caller]
fn assert_same_inode(a: &Path, b: &Path) -> Result<()> {
    let (ma, mb) = (fs::symlink_metadata(a)?, fs::symlink_metadata(b)?);
    assert_eq!(
        (ma.dev(), ma.ino()),
        (mb.dev(), mb.ino()),
        "{} and {} are no longer hard links of one inode",
        a.display(),
        b.display()
    );
    assert_eq!(ma.nlink(), 2, "link count of {}", a.display());
    Ok(())
}

/// Asserts that what [`add_tar_entries`] put in the archive is in the tree at `b`.
fn assert_tar_entries(b: &Path) -> Result<()> {
    assert_same_inode(&b.join(HARDLINKS[0]), &b.join(HARDLINKS[1]))?;
    let x = b.join(XATTR_FILE);
    for (name, value) in XATTRS {
        let got = run_ok(
            Command::new("getfattr")
                .args(["--only-values", "-n", name])
                .arg(&x),
        )
        .with_context(|| format!("xattr {name} of {}", x.display()))?;
        assert_eq!(&got, value, "xattr {name} of {}", x.display());
    }
    let null = fs::symlink_metadata(b.join(DEV_NULL)).context("lstat B's /dev/null")?;
    assert!(
        null.file_type().is_char_device(),
        "B's /{DEV_NULL}: {null:?}"
    );
    let rdev = null.rdev();
    assert_eq!(
        (rustix::fs::major(rdev), rustix::fs::minor(rdev)),
        (1, 3),
        "device number of B's /{DEV_NULL}"
    );
    assert_eq!(null.mode() & 0o7777, 0o666, "mode of B's /{DEV_NULL}");
    for &(rel, dir, uid, gid, mode) in OWNED {
        let m = fs::symlink_metadata(b.join(rel)).with_context(|| format!("lstat B's /{rel}"))?;
        assert_eq!(m.is_dir(), dir, "type of B's /{rel}");
        assert_eq!((m.uid(), m.gid()), (uid, gid), "owner of B's /{rel}");
        assert_eq!(
            m.mode() & 0o7777,
            mode,
            "mode of B's /{rel}: {:o}",
            m.mode()
        );
    }
    let notes = fs::symlink_metadata(b.join(NOTES))?;
    assert_eq!(
        (notes.mtime() as u64, notes.mtime_nsec() as u32),
        NOTES_MTIME,
        "mtime of B's /{NOTES}"
    );
    for (rel, target) in SYMLINKS {
        let p = b.join(rel);
        let m = fs::symlink_metadata(&p).with_context(|| format!("lstat B's /{rel}"))?;
        assert!(m.file_type().is_symlink(), "B's /{rel} is not a symlink");
        assert_eq!(
            fs::read_link(&p)?,
            Path::new(target),
            "target of B's /{rel}"
        );
    }
    Ok(())
}

/// Asserts that a successful stage wrote nothing on the disk but slot B and the state
/// record: slot A, the data partition, the GPT, grubenv, grub.cfg and every other file of
/// the boot partition are as `before`.
#[track_caller]
fn assert_only_state_recorded(before: &Snapshot, after: &Snapshot, what: &str) {
    let changed: Vec<&String> = after
        .boot_files
        .iter()
        .filter(|(path, hash)| before.boot_files.get(*path) != Some(hash))
        .map(|(path, _)| path)
        .collect();
    assert!(
        changed.iter().any(|p| p.ends_with("/state.json")),
        "{what}: the state record was not written; changed boot files: {changed:?}"
    );
    assert!(
        changed
            .iter()
            .all(|p| p.ends_with("/state.json") || p.ends_with("/history.json")),
        "{what}: boot files besides the state record changed: {changed:?}"
    );
    assert!(
        before
            .boot_files
            .keys()
            .all(|p| after.boot_files.contains_key(p)),
        "{what}: boot files vanished: before {:?}, after {:?}",
        before.boot_files.keys(),
        after.boot_files.keys()
    );
    let expected = Snapshot {
        boot: after.boot.clone(),
        boot_files: after.boot_files.clone(),
        ..before.clone()
    };
    assert_unchanged(&expected, after, what);
}

/// Asserts that `status --json` records slot B as staged from `source`, with the
/// filesystem UUID blkid reads from slot B.
fn assert_b_recorded(disk: &TestDisk, source: &str) -> Result<()> {
    let st = disk.status("a")?;
    let b = slot_status(&st, "b");
    assert_eq!(b["state"], "staged", "{st:#}");
    assert_eq!(b["source"], source, "source of slot B: {st:#}");
    assert_eq!(
        b["fs_uuid"],
        TestDisk::blkid(&disk.slot_b(), "UUID")?,
        "slot B's filesystem UUID in status vs blkid: {st:#}"
    );
    Ok(())
}

/// Runs a stage command that must fail and asserts what a failure leaves: slot A, data
/// and boot partitions and the GPT byte-identical, slot B neither recorded as staged nor
/// holding a filesystem.
fn stage_refused(disk: &TestDisk, cmd: &mut Command, what: &str) -> Result<Output> {
    let before = disk.snapshot()?;
    let out = Output::of(cmd)?;
    assert_ne!(out.code, 0, "{what}: expected failure:\n{out}");
    assert_unchanged(&before, &disk.snapshot()?, what);
    let st = disk.status("a")?;
    assert_eq!(slot_status(&st, "b")["state"], "empty", "{what}: {st:#}");
    assert_eq!(st["default"], "a", "{what}: {st:#}");
    let fs_type = Output::of(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(disk.slot_b()),
    )?;
    assert!(
        fs_type.stdout.trim().is_empty(),
        "{what}: slot B was left with a filesystem:\n{fs_type}"
    );
    Ok(out)
}

/// Writes `<disk dir>/<name>`, an archive GNU tar makes only when told to store names as
/// given (`-P`): a minimal root tree (`./etc/os-release`, the kernel), then `./link` (a
/// symlink to `link_to`) if given, then a file renamed to `bad` by `--transform`, then
/// `./after`.
fn crafted_tar(disk: &TestDisk, name: &str, bad: &str, link_to: Option<&Path>) -> Result<Image> {
    let tree = disk.dir().join(format!("{name}.tree"));
    fs::create_dir_all(tree.join("etc"))?;
    fs::create_dir_all(tree.join("boot"))?;
    fs::write(
        tree.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"13\"\n",
    )?;
    fs::write(
        tree.join(format!("boot/vmlinuz-{RELEASE_KERNEL}")),
        "kernel\n",
    )?;
    fs::write(tree.join("payload"), "must not be written\n")?;
    fs::write(tree.join("after"), "after the bad entry\n")?;
    let mut members = vec!["./etc", "./boot"];
    if let Some(target) = link_to {
        std::os::unix::fs::symlink(target, tree.join("link"))?;
        members.push("./link");
    }
    members.extend(["./payload", "./after"]);
    let out = disk.dir().join(name);
    run_ok(
        Command::new("tar")
            .arg("-P")
            .arg(format!("--transform=s,^\\./payload$,{bad},S"))
            .arg("-cf")
            .arg(&out)
            .arg("-C")
            .arg(&tree)
            .args(&members),
    )
    .with_context(|| format!("write {} with GNU tar -P --transform", out.display()))?;
    let listing = run_ok(Command::new("tar").arg("-tPf").arg(&out))?;
    assert!(
        listing.lines().any(|l| l == bad),
        "crafted archive lacks the entry {bad}:\n{listing}"
    );
    Image::from_file(out)
}

fn stage_tar_and_check(compression: Option<Compression>) -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let tar = release_tar(&disk, "release.tar", &add_tar_entries)?;
    let archive = match compression {
        Some(c) => compress(&tar, c)?,
        None => tar,
    };
    let before = disk.snapshot()?;
    disk.run(from_tar_args(&archive))?.assert_ok();
    assert_only_state_recorded(&before, &disk.snapshot()?, "stage --from-tar");
    assert_slot_b_staged(&disk)?;
    assert_b_recorded(&disk, &archive.path.display().to_string())?;
    let m = disk.mount_b()?;
    assert_tar_entries(m.path())?;
    m.close()?;
    Ok(())
}

#[test]
fn stage_from_tar() -> Result<()> {
    stage_tar_and_check(None)
}

#[test]
fn stage_from_tar_zstd() -> Result<()> {
    stage_tar_and_check(Some(Compression::Zstd))
}

#[test]
fn tar_entry_with_dotdot_is_refused() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let u = unique();
    // The slot is mounted on /run/abupdate/mnt-*: `..` climbs to /run/abupdate, `../..` to
    // /run; neither, nor / or /tmp, may get the file.
    let entries = [format!("../escape-{u}"), format!("./../../x-{u}")];
    for (n, entry) in entries.iter().enumerate() {
        let archive = crafted_tar(&disk, &format!("dotdot-{n}.tar"), entry, None)?;
        let what = format!("archive entry {entry}");
        let out = stage_refused(
            &disk,
            disk.command("a").args(from_tar_args(&archive)),
            &what,
        )?;
        out.assert_mentions_all(&[entry, "`..`", "extract the archive into the new slot"]);
        assert_eq!(out.code, 4, "{what}: a bad archive exits 4:\n{out}");
        let name = Path::new(entry).file_name().unwrap_or_default();
        for dir in ["/", "/run", "/run/abupdate", "/tmp"] {
            let p = Path::new(dir).join(name);
            assert!(!p.exists(), "{what}: {} was written", p.display());
        }
    }
    Ok(())
}

#[test]
fn tar_entry_beneath_absolute_symlink_is_refused() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let outside = disk.dir().join("outside");
    fs::create_dir(&outside)?;
    let archive = crafted_tar(&disk, "symlink.tar", "./link/file", Some(&outside))?;
    let what = "archive entry beneath an absolute symlink";
    let out = stage_refused(&disk, disk.command("a").args(from_tar_args(&archive)), what)?;
    out.assert_mentions_all(&[
        "./link/file",
        "symlink",
        "extract the archive into the new slot",
    ]);
    assert_eq!(out.code, 4, "{what}: a bad archive exits 4:\n{out}");
    let left: Vec<_> = fs::read_dir(&outside)?.collect::<Result<_, _>>()?;
    assert!(
        left.is_empty(),
        "{what}: {} got {:?}",
        outside.display(),
        left.iter().map(|e| e.file_name()).collect::<Vec<_>>()
    );
    Ok(())
}

/// Adds what the clone must keep to a source tree: [`SPARSE`], [`ACLS`], [`HARDLINKS`],
/// the empty [`MOUNT_POINT`] and the API file system directories `/dev`, `/proc`, `/sys`.
fn add_clone_entries(src: &Path) -> Result<()> {
    for d in ["dev", "proc", "sys", MOUNT_POINT, ACLS[1].0] {
        fs::create_dir_all(src.join(d))?;
    }
    let sparse = src.join(SPARSE);
    let f = fs::File::create(&sparse)?;
    for (offset, bytes) in SPARSE_DATA {
        f.write_all_at(bytes, *offset)?;
    }
    f.set_len(SPARSE_LEN)?;
    f.sync_all()?;
    let alloc = fs::metadata(&sparse)?.blocks() * 512;
    assert!(
        alloc < SPARSE_MAX_ALLOC,
        "the clone source's file system does not keep {} sparse ({alloc} bytes allocated)",
        sparse.display()
    );
    fs::write(src.join(ACLS[0].0), "carries an ACL\n")?;
    for (rel, acl) in ACLS {
        run_ok(Command::new("setfacl").args(["-m", acl]).arg(src.join(rel)))?;
    }
    let first = src.join(HARDLINKS[0]);
    fs::write(&first, "one inode, two names\n")?;
    fs::hard_link(&first, src.join(HARDLINKS[1]))?;
    Ok(())
}

/// `getfacl -n` of `rel`, run in `root` so the `# file:` line is the same for every root.
fn getfacl(root: &Path, rel: &str) -> Result<String> {
    run_ok(Command::new("getfacl").arg("-n").arg(rel).current_dir(root))
}

/// Asserts that the copy `b` keeps [`add_clone_entries`]'s sparse file, ACLs, hard links
/// and the mount point (empty) of the source `src`.
fn assert_clone_entries(src: &Path, b: &Path) -> Result<()> {
    let sparse = fs::metadata(b.join(SPARSE)).context("stat B's sparse file")?;
    assert_eq!(sparse.len(), SPARSE_LEN, "size of B's /{SPARSE}");
    assert!(
        sparse.blocks() * 512 < SPARSE_MAX_ALLOC,
        "B's /{SPARSE} is no longer sparse: {} bytes allocated",
        sparse.blocks() * 512
    );
    run_ok(
        Command::new("cmp")
            .arg(src.join(SPARSE))
            .arg(b.join(SPARSE)),
    )
    .context("content of the sparse file in B")?;
    for (rel, _) in ACLS {
        let (want, got) = (getfacl(src, rel)?, getfacl(b, rel)?);
        assert!(want.contains("user:4321:"), "source ACL of /{rel}:\n{want}");
        assert_eq!(got, want, "ACL of B's /{rel}");
    }
    assert_same_inode(&b.join(HARDLINKS[0]), &b.join(HARDLINKS[1]))?;
    let mp = b.join(MOUNT_POINT);
    assert!(mp.is_dir(), "B lacks the mount point /{MOUNT_POINT}");
    let inside: Vec<_> = fs::read_dir(&mp)?.collect::<Result<_, _>>()?;
    assert!(
        inside.is_empty(),
        "the clone crossed the mount point /{MOUNT_POINT}: {:?}",
        inside.iter().map(|e| e.file_name()).collect::<Vec<_>>()
    );
    assert!(
        src.join(MOUNT_POINT).join(ON_TMPFS).is_file(),
        "the source's tmpfs lost {ON_TMPFS}"
    );
    Ok(())
}

/// Asserts that B's initramfs was built by the fake tool chrooted in the slot.
fn assert_initrd_built(b: &Path) -> Result<()> {
    let initrd = b.join(format!("boot/initrd.img-{RELEASE_KERNEL}"));
    assert_eq!(
        fs::read_to_string(&initrd).with_context(|| format!("read {}", initrd.display()))?,
        fake_initrd_text(RELEASE_KERNEL),
        "B's initrd was not built by the slot's update-initramfs"
    );
    Ok(())
}

#[test]
fn stage_clone_with_run() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let src = disk.dir().join("running-root");
    release_tree(&disk, &src, &prepare_for_chroot)?;
    add_clone_entries(&src)?;
    let tmpfs = TreeMount::tmpfs(
        &src.join(MOUNT_POINT),
        &[(ON_TMPFS, "on another file system: not copied\n")],
    )?;
    let before = disk.snapshot()?;
    let out = Output::of(
        disk.command("a")
            .env("ABUPDATE_CLONE_ROOT", &src)
            .args(["stage", "--clone", "--run", CLONE_RUN]),
    )?;
    out.assert_ok();
    assert_only_state_recorded(&before, &disk.snapshot()?, "stage --clone --run");
    assert_slot_b_staged(&disk)?;
    assert_b_recorded(&disk, &format!("clone of slot A, then: {CLONE_RUN}"))?;

    let m = disk.mount_b()?;
    let b = m.path();
    assert_eq!(
        fs::read_to_string(b.join("etc/marker")).context("read B's /etc/marker")?,
        "upgraded\n",
        "--run did not run in the copy"
    );
    assert_initrd_built(b)?;
    assert!(
        !b.join(POLICY_RC_D).exists(),
        "B keeps the /{POLICY_RC_D} written for --run"
    );
    assert_clone_entries(&src, b)?;
    m.close()?;
    for rel in [
        "etc/marker".to_owned(),
        format!("boot/initrd.img-{RELEASE_KERNEL}"),
        POLICY_RC_D.to_owned(),
    ] {
        assert!(
            !src.join(&rel).exists(),
            "stage --clone wrote /{rel} into the source tree"
        );
    }
    tmpfs.close()?;
    Ok(())
}

/// Writes `<disk dir>/<name>`, a `sh` script run as `sh <script> {target}` with `body`
/// after a check that its one argument is the target abupdate also names in
/// `$ABUPDATE_TARGET`; returns the `--bootstrap` command.
fn installer(disk: &TestDisk, name: &str, body: &str) -> Result<String> {
    let script = disk.dir().join(name);
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # installer of the abupdate tests\n\
             set -eu\n\
             if [ \"$#\" -ne 1 ] || [ \"$1\" != \"${{ABUPDATE_TARGET:-}}\" ] || [ ! -d \"$1\" ]; then\n\
             \techo \"installer: expected the target directory \\$ABUPDATE_TARGET, got: $*\" >&2; exit 2\n\
             fi\n\
             {body}\n"
        ),
    )
    .with_context(|| format!("write {}", script.display()))?;
    Ok(format!("sh {} {{target}}", script.display()))
}

#[test]
fn stage_bootstrap() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let rootfs = release_tar(&disk, "rootfs.tar", &prepare_for_chroot)?;
    let command = installer(
        &disk,
        "installer.sh",
        &format!(
            "tar {} -xpf {} -C \"$1\"\necho 'installed by the test installer' > \"$1/etc/installed-by\"",
            GNU_TAR_KEEP
                .iter()
                .map(|o| format!("'{o}'"))
                .collect::<Vec<_>>()
                .join(" "),
            rootfs.path.display()
        ),
    )?;
    let before = disk.snapshot()?;
    disk.run(["stage", "--bootstrap", &command])?.assert_ok();
    assert_only_state_recorded(&before, &disk.snapshot()?, "stage --bootstrap");
    assert_slot_b_staged(&disk)?;
    assert_b_recorded(&disk, &format!("bootstrap: {command}"))?;
    let m = disk.mount_b()?;
    assert_eq!(
        fs::read_to_string(m.path().join("etc/installed-by"))?,
        "installed by the test installer\n"
    );
    assert_initrd_built(m.path())?;
    m.close()?;
    Ok(())
}

#[test]
fn failing_installer_is_reported() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let error = "E: Failed to fetch http://deb.example.invalid/dists/trixie/InRelease";
    let command = installer(
        &disk,
        "installer-fail.sh",
        &format!("echo 'half installed' > \"$1/partial\"\necho '{error}' >&2\nexit 3"),
    )?;
    let out = stage_refused(
        &disk,
        disk.command("a").args(["stage", "--bootstrap", &command]),
        "failing installer",
    )?;
    out.assert_mentions_all(&["installer", error, "exit status: 3"]);
    Ok(())
}
