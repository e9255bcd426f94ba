//! Privileged tests of `copy_into`: real ownership, ACLs and xattrs on a real filesystem.
//! They must run as root and fail (not skip) otherwise.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_treecopy::{
    copy_into, plan, CopyReport, EntryKind, Error, Manifest, Plan, PlannedEntry,
};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};

mod common;
use common::xattrs;

const PAST_MTIME: (i64, i64) = (1_500_000_000, 123_456_789);
const PAST_ATIME: (i64, i64) = (1_400_000_000, 987_654_321);

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests set owners, ACLs and trusted/security xattrs: run them as root"
    );
}

/// A host tree, a slot tree and a directory outside both, under the target's tmp dir
/// (a real filesystem with xattr support).
struct Fixture {
    _dir: tempfile::TempDir,
    host: PathBuf,
    slot: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("treecopy-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        let host = dir.path().join("host");
        let slot = dir.path().join("slot");
        let outside = dir.path().join("outside");
        for d in [&host, &slot, &outside] {
            fs::create_dir(d).expect("mkdir");
        }
        Self {
            _dir: dir,
            host,
            slot,
            outside,
        }
    }

    fn host(&self, rel: &str) -> PathBuf {
        self.host.join(rel)
    }

    fn slot(&self, rel: &str) -> PathBuf {
        self.slot.join(rel)
    }

    fn plan(&self, include: &[&str], exclude: &[&str]) -> Plan {
        plan(
            &self.host,
            &Manifest {
                include: include.iter().map(|s| s.to_string()).collect(),
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
        )
        .expect("plan")
    }

    fn copy(&self, plan: &Plan) -> Result<CopyReport, Error> {
        copy_into(&self.host, plan, &self.slot)
    }
}

fn write(path: &Path, content: &str, mode: u32) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir -p");
    fs::write(path, content).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = |(s, n)| Timespec {
        tv_sec: s,
        tv_nsec: n,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).expect("lsetxattr");
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Owner, mode, times and xattrs; must be taken before anything reads the file.
#[derive(Debug, PartialEq)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn meta(path: &Path) -> Meta {
    let md = fs::symlink_metadata(path).expect("lstat");
    Meta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        atime: (md.atime(), md.atime_nsec()),
        mtime: (md.mtime(), md.mtime_nsec()),
        xattrs: xattrs(path),
    }
}

/// Everything under `root` except atimes: type, mode, owner, mtime, xattrs, content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).expect("lstat");
        let body = if md.is_dir() {
            for e in fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
            String::from("dir")
        } else if md.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&p).expect("readlink").display())
        } else if md.is_file() {
            String::from_utf8_lossy(&fs::read(&p).expect("read")).into_owned()
        } else {
            String::from("special")
        };
        out.insert(
            p.strip_prefix(root).expect("under root").to_owned(),
            format!(
                "{:o} {}:{} {}.{} {:?} {body}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec(),
                xattrs(&p)
            ),
        );
    }
    out
}

/// A host tree exercising every kind of entry and metadata.
fn build_host(f: &Fixture) {
    fs::create_dir(f.host("etc")).expect("mkdir etc");
    fs::set_permissions(f.host("etc"), fs::Permissions::from_mode(0o751)).expect("chmod");
    lchown(f.host("etc"), Some(0), Some(4)).expect("chown");

    let conf = f.host("etc/app.conf");
    write(&conf, "setting = 1\n", 0o640);
    lchown(&conf, Some(1234), Some(5678)).expect("chown");
    set_xattr(&conf, "user.origin", b"host");
    run("setfacl", &["-m", "u:1000:r", conf.to_str().expect("utf8")]);

    let link = f.host("etc/app.link");
    symlink("app.conf", &link).expect("symlink");
    lchown(&link, Some(1234), Some(5678)).expect("lchown");
    set_xattr(&link, "trusted.abupdate-test", b"on a symlink");

    let dir = f.host("etc/app.d");
    write(&dir.join("a.conf"), "a\n", 0o644);
    write(&dir.join("sub/b.conf"), "b\n", 0o600);
    write(&dir.join("notes.bak"), "excluded\n", 0o644);
    let tool = dir.join("tool");
    write(&tool, "#!/bin/sh\n", 0o755);
    lchown(&tool, Some(0), Some(5678)).expect("chown");
    // After chown, which clears set-id bits.
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o4755)).expect("chmod");
    // VFS_CAP_REVISION_2 | EFFECTIVE, permitted = CAP_NET_BIND_SERVICE.
    let cap: Vec<u8> = [0x0200_0001u32, 1 << 10, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    set_xattr(&tool, "security.capability", &cap);
    rustix::fs::mknodat(
        CWD,
        dir.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o620),
        0,
    )
    .expect("mkfifo");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).expect("chmod");
    lchown(&dir, Some(1234), Some(5678)).expect("chown");
    run(
        "setfacl",
        &["-d", "-m", "u:1000:rx", dir.to_str().expect("utf8")],
    );

    write(&f.host("etc/ssh/ssh_host_rsa_key"), "private\n", 0o600);
    write(&f.host("etc/ssh/ssh_host_rsa_key.pub"), "public\n", 0o644);
    write(&f.host("etc/ssh/sshd_config"), "not included\n", 0o644);

    for p in [
        "etc/app.conf",
        "etc/app.link",
        "etc/app.d/a.conf",
        "etc/app.d/sub/b.conf",
        "etc/app.d/sub",
        "etc/app.d/tool",
        "etc/app.d/fifo",
        "etc/app.d",
        "etc/ssh/ssh_host_rsa_key",
        "etc/ssh",
        "etc",
    ] {
        set_times(&f.host(p), PAST_ATIME, PAST_MTIME);
    }
}

const INCLUDE: &[&str] = &[
    "/etc/app.conf",
    "/etc/app.link",
    "/etc/app.d",
    "/etc/ssh/ssh_host_*",
];
const EXCLUDE: &[&str] = &["/etc/app.d/*.bak"];

#[test]
fn copies_owner_mode_times_xattrs_acls_symlinks_and_trees() {
    let f = Fixture::new();
    build_host(&f);
    let plan = f.plan(INCLUDE, EXCLUDE);
    let planned: Vec<_> = plan.entries.iter().map(|e| e.path.clone()).collect();
    assert!(!planned.contains(&PathBuf::from("/etc/app.d/notes.bak")));
    assert!(!planned.contains(&PathBuf::from("/etc/ssh/sshd_config")));

    let checked = [
        "etc/app.conf",
        "etc/app.link",
        "etc/app.d",
        "etc/app.d/a.conf",
        "etc/app.d/sub",
        "etc/app.d/sub/b.conf",
        "etc/app.d/tool",
        "etc/app.d/fifo",
        "etc/ssh/ssh_host_rsa_key",
        "etc",
    ];
    let before: Vec<Meta> = checked.iter().map(|p| meta(&f.host(p))).collect();

    let report = f.copy(&plan).expect("copy");
    assert_eq!(
        report,
        CopyReport {
            files: 6,
            // app.d and app.d/sub, plus the missing parents etc and etc/ssh.
            dirs: 4,
            symlinks: 1,
            special: 1,
            bytes: ("setting = 1\n".len()
                + "a\n".len()
                + "b\n".len()
                + "#!/bin/sh\n".len()
                + "private\n".len()
                + "public\n".len()) as u64,
        }
    );

    // Copying does not touch the host's atimes (O_NOATIME): a read-only pass over it.
    assert_eq!(meta(&f.host("etc/app.conf")), before[0]);
    assert_eq!(meta(&f.host("etc/app.d/sub")), before[4]);
    for (p, host_meta) in checked.iter().zip(&before) {
        assert_eq!(&meta(&f.slot(p)), host_meta, "metadata of {p}");
    }
    let conf_xattrs = &before[0].xattrs;
    assert!(conf_xattrs.contains_key("system.posix_acl_access"));
    assert!(before[2].xattrs.contains_key("system.posix_acl_default"));
    assert!(before[6].xattrs.contains_key("security.capability"));
    assert_eq!(before[6].mode & 0o7777, 0o4755);

    assert_eq!(
        fs::read_link(f.slot("etc/app.link")).expect("readlink"),
        Path::new("app.conf")
    );
    assert_eq!(
        fs::read_to_string(f.slot("etc/app.d/sub/b.conf")).expect("read"),
        "b\n"
    );
    assert!(fs::symlink_metadata(f.slot("etc/app.d/fifo"))
        .expect("lstat")
        .file_type()
        .is_fifo());
    assert!(!f.slot("etc/app.d/notes.bak").exists());
    assert!(!f.slot("etc/ssh/sshd_config").exists());
    assert!(f.slot("etc/ssh/ssh_host_rsa_key.pub").exists());
    let getfacl = Command::new("getfacl")
        .args(["-cn", f.slot("etc/app.conf").to_str().expect("utf8")])
        .output()
        .expect("getfacl");
    assert!(String::from_utf8_lossy(&getfacl.stdout).contains("user:1000:r--"));

    // No temporary names are left behind.
    for dir in ["etc", "etc/app.d", "etc/ssh"] {
        for e in fs::read_dir(f.slot(dir)).expect("readdir") {
            let name = e.expect("entry").file_name();
            assert!(!name.as_bytes().starts_with(b".abupdate-"), "{name:?}");
        }
    }
}

#[test]
fn copy_is_idempotent() {
    let f = Fixture::new();
    build_host(&f);
    let plan = f.plan(INCLUDE, EXCLUDE);
    // Parents that are not in the plan get a new mtime when an entry is renamed into
    // them, like with any copy; everything the plan names must be identical.
    let planned = |snap: BTreeMap<PathBuf, String>| -> BTreeMap<PathBuf, String> {
        snap.into_iter()
            .filter(|(p, _)| {
                plan.entries
                    .iter()
                    .any(|e| e.path == Path::new("/").join(p))
            })
            .collect()
    };
    f.copy(&plan).expect("first copy");
    let first = snapshot(&f.slot);
    f.copy(&plan).expect("second copy");
    let second = snapshot(&f.slot);
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    assert_eq!(planned(second), planned(first));
}

/// The image has `/etc/app.conf` as a symlink to `link_target`; the host has a file.
fn assert_final_symlink_refused(link_target: &str, escaped_to: &Path) {
    let f = Fixture::new();
    write(
        &f.host("etc/aaa.conf"),
        "copied first if not plan-first\n",
        0o644,
    );
    write(&f.host("etc/app.conf"), "secret\n", 0o600);
    write(&f.host("zzz/new.conf"), "new\n", 0o644);
    fs::create_dir(f.slot("etc")).expect("mkdir");
    write(&f.slot("etc/other.conf"), "image\n", 0o644);
    symlink(link_target, f.slot("etc/app.conf")).expect("symlink");
    let before = snapshot(&f.slot);

    let plan = f.plan(&["/etc/aaa.conf", "/etc/app.conf", "/zzz"], &[]);
    let err = f.copy(&plan).expect_err("must refuse");
    match &err {
        Error::UnsafeDestination {
            path,
            link_target: t,
        } => {
            assert_eq!(path, Path::new("/etc/app.conf"));
            assert_eq!(t, Path::new(link_target));
        }
        other => panic!("expected UnsafeDestination, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("/etc/app.conf") && msg.contains(link_target),
        "{msg}"
    );

    assert!(
        fs::symlink_metadata(escaped_to).is_err(),
        "{} was written",
        escaped_to.display()
    );
    assert_eq!(snapshot(&f.slot), before, "the slot changed");
    assert_eq!(
        fs::read_dir(&f.outside).expect("readdir").count(),
        0,
        "outside changed"
    );
}

#[test]
fn refuses_image_symlink_escaping_with_dotdot() {
    let name = format!("abupdate-treecopy-outside-{}", std::process::id());
    let target = format!("{}tmp/{name}", "../".repeat(16));
    assert_final_symlink_refused(&target, &Path::new("/tmp").join(&name));
}

#[test]
fn refuses_image_symlink_to_absolute_path() {
    let dir = tempfile::Builder::new()
        .prefix("treecopy-abs-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let escaped = dir.path().join("outside-target");
    assert_final_symlink_refused(escaped.to_str().expect("utf8"), &escaped);
}

#[test]
fn refuses_image_with_symlinked_parent_directory() {
    let f = Fixture::new();
    write(&f.host("etc/app.conf"), "secret\n", 0o600);
    write(&f.host("etc/deep/x.conf"), "x\n", 0o600);
    symlink(&f.outside, f.slot("etc")).expect("symlink");
    let before = snapshot(&f.slot);

    let plan = f.plan(&["/etc/app.conf", "/etc/deep"], &[]);
    match f.copy(&plan) {
        Err(Error::UnsafeDestination { path, link_target }) => {
            assert_eq!(path, Path::new("/etc"));
            assert_eq!(link_target, f.outside);
        }
        other => panic!("expected UnsafeDestination, got {other:?}"),
    }
    assert_eq!(snapshot(&f.slot), before);
    assert_eq!(fs::read_dir(&f.outside).expect("readdir").count(), 0);

    // The same with a deeper relative link: /etc is real, /etc/deep points up and out.
    let g = Fixture::new();
    write(&g.host("etc/deep/x.conf"), "x\n", 0o600);
    fs::create_dir(g.slot("etc")).expect("mkdir");
    symlink("../../outside", g.slot("etc/deep")).expect("symlink");
    let before = snapshot(&g.slot);
    match g.copy(&g.plan(&["/etc/deep/x.conf"], &[])) {
        Err(Error::UnsafeDestination { path, .. }) => assert_eq!(path, Path::new("/etc/deep")),
        other => panic!("expected UnsafeDestination, got {other:?}"),
    }
    assert_eq!(snapshot(&g.slot), before);
    assert_eq!(fs::read_dir(&g.outside).expect("readdir").count(), 0);
}

#[test]
fn image_symlink_is_replaced_by_host_symlink() {
    let f = Fixture::new();
    fs::create_dir(f.host("etc")).expect("mkdir");
    symlink("/usr/share/zoneinfo/Europe/Paris", f.host("etc/localtime")).expect("symlink");
    lchown(f.host("etc/localtime"), Some(1234), Some(5678)).expect("lchown");
    set_times(&f.host("etc/localtime"), PAST_ATIME, PAST_MTIME);
    fs::create_dir(f.slot("etc")).expect("mkdir");
    symlink(&f.outside, f.slot("etc/localtime")).expect("symlink");

    let report = f.copy(&f.plan(&["/etc/localtime"], &[])).expect("copy");
    assert_eq!(report.symlinks, 1);
    assert_eq!(
        fs::read_link(f.slot("etc/localtime")).expect("readlink"),
        Path::new("/usr/share/zoneinfo/Europe/Paris")
    );
    let m = meta(&f.slot("etc/localtime"));
    assert_eq!((m.uid, m.gid, m.mtime), (1234, 5678, PAST_MTIME));
    assert_eq!(fs::read_dir(&f.outside).expect("readdir").count(), 0);
}

#[test]
fn overwrites_existing_file_with_new_content_and_metadata() {
    let f = Fixture::new();
    write(&f.host("etc/app.conf"), "new content\n", 0o640);
    lchown(f.host("etc/app.conf"), Some(1234), Some(5678)).expect("chown");
    set_xattr(&f.host("etc/app.conf"), "user.origin", b"host");
    set_times(&f.host("etc/app.conf"), PAST_ATIME, PAST_MTIME);
    let host_meta = meta(&f.host("etc/app.conf"));

    write(
        &f.slot("etc/app.conf"),
        "old image content, longer\n",
        0o666,
    );
    set_xattr(&f.slot("etc/app.conf"), "user.stale", b"image");
    // A default ACL on the image's directory must not leak onto the copied file.
    run(
        "setfacl",
        &[
            "-d",
            "-m",
            "u:1000:rwx",
            f.slot("etc").to_str().expect("utf8"),
        ],
    );
    let slot_etc_before = meta(&f.slot("etc"));

    let report = f.copy(&f.plan(&["/etc/app.conf"], &[])).expect("copy");
    assert_eq!((report.files, report.dirs), (1, 0));
    assert_eq!(meta(&f.slot("etc/app.conf")), host_meta);
    assert_eq!(
        fs::read_to_string(f.slot("etc/app.conf")).expect("read"),
        "new content\n"
    );
    // The existing parent is not in the manifest: its metadata is the image's.
    let after = meta(&f.slot("etc"));
    assert_eq!(
        (after.mode, after.uid, after.gid, after.xattrs),
        (
            slot_etc_before.mode,
            slot_etc_before.uid,
            slot_etc_before.gid,
            slot_etc_before.xattrs
        )
    );
}

#[test]
fn refuses_type_conflicts_before_writing() {
    let f = Fixture::new();
    write(&f.host("etc/aaa.conf"), "a\n", 0o644);
    write(&f.host("etc/app"), "host has a file\n", 0o644);
    fs::create_dir_all(f.slot("etc/app")).expect("mkdir");
    let before = snapshot(&f.slot);
    match f.copy(&f.plan(&["/etc/aaa.conf", "/etc/app"], &[])) {
        Err(Error::DestinationConflict { path, .. }) => assert_eq!(path, Path::new("/etc/app")),
        other => panic!("expected DestinationConflict, got {other:?}"),
    }
    assert_eq!(snapshot(&f.slot), before);

    // A regular file of the image where a parent directory is needed.
    let g = Fixture::new();
    write(&g.host("etc/app/x.conf"), "x\n", 0o644);
    write(&g.slot("etc/app"), "image file\n", 0o644);
    let before = snapshot(&g.slot);
    match g.copy(&g.plan(&["/etc/app/x.conf"], &[])) {
        Err(Error::DestinationConflict { path, .. }) => assert_eq!(path, Path::new("/etc/app")),
        other => panic!("expected DestinationConflict, got {other:?}"),
    }
    assert_eq!(snapshot(&g.slot), before);
}

#[test]
fn hand_built_plan_with_dotdot_is_refused() {
    let f = Fixture::new();
    write(&f.host("etc/app.conf"), "x\n", 0o644);
    let plan = Plan {
        entries: vec![PlannedEntry {
            path: PathBuf::from("/etc/../../app.conf"),
            kind: EntryKind::File,
        }],
        missing: vec![],
    };
    assert!(matches!(f.copy(&plan), Err(Error::BadManifestEntry { .. })));
    assert_eq!(fs::read_dir(&f.slot).expect("readdir").count(), 0);
}
