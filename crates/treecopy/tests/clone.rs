//! Privileged tests of `clone_tree`: sparse files stay sparse, hard links stay linked,
//! ACLs, xattrs and owners are kept, mount points and excludes are left empty. They
//! must run as root and fail (not skip) otherwise.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{lchown, symlink, FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_treecopy::{clone_tree, CloneOptions, Error};

mod common;
use common::xattrs;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests set owners, bind-mount and make device nodes: run them as root"
    );
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A bind mount, unmounted on drop (also when the test fails).
struct BindMount(PathBuf);

impl BindMount {
    fn new(from: &Path, at: &Path) -> Self {
        run("mount", &["--bind", s(from), s(at)]);
        Self(at.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.0).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("could not unmount {}: {out:?}", self.0.display());
        }
    }
}

/// Type, mode, owner, mtime, rdev, size, xattrs (content is compared separately).
fn describe(path: &Path) -> String {
    let md = fs::symlink_metadata(path).expect("lstat");
    let target = if md.file_type().is_symlink() {
        fs::read_link(path).expect("readlink").display().to_string()
    } else {
        String::new()
    };
    format!(
        "{:o} {}:{} {}.{} rdev={} len={} {:?} {target}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.mtime(),
        md.mtime_nsec(),
        md.rdev(),
        if md.is_dir() { 0 } else { md.len() },
        xattrs(path),
    )
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).expect("open"), File::open(b).expect("open"));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).expect("read");
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).expect("read");
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
        if na == 0 {
            return fb.read(&mut bb).expect("read") == 0;
        }
    }
}

const SPARSE_LEN: u64 = 100 << 20;

#[test]
fn clones_sparse_files_hardlinks_acls_and_stops_at_mounts() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("treecopy-clone-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    let elsewhere = dir.path().join("elsewhere");
    for d in [&src, &dst, &elsewhere] {
        fs::create_dir(d).expect("mkdir");
    }
    let p = |rel: &str| src.join(rel);

    let sparse = File::create(p("sparse")).expect("create");
    sparse.set_len(SPARSE_LEN).expect("truncate");
    for (i, offset) in [0, 1 << 20, 50 << 20, SPARSE_LEN - 4096].iter().enumerate() {
        sparse
            .write_all_at(&[i as u8 + 1; 4096], *offset)
            .expect("write block");
    }
    drop(sparse);

    fs::create_dir_all(p("etc/sub")).expect("mkdir");
    fs::write(p("etc/pair1"), "linked\n").expect("write");
    fs::hard_link(p("etc/pair1"), p("etc/sub/pair2")).expect("link");
    fs::hard_link(p("etc/pair1"), p("pair3")).expect("link");
    lchown(p("etc/pair1"), Some(1234), Some(5678)).expect("chown");
    fs::write(p("etc/acl"), "acl\n").expect("write");
    run("setfacl", &["-m", "u:1000:r", s(&p("etc/acl"))]);
    rustix::fs::lsetxattr(
        p("etc/acl"),
        "user.x",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr");
    fs::write(p("etc/suid"), "#!/bin/sh\n").expect("write");
    fs::set_permissions(p("etc/suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    run("setfacl", &["-d", "-m", "u:1000:rx", s(&p("etc/sub"))]);
    fs::set_permissions(p("etc/sub"), fs::Permissions::from_mode(0o750)).expect("chmod");
    lchown(p("etc/sub"), Some(1234), Some(5678)).expect("chown");
    symlink("../sparse", p("etc/link")).expect("symlink");
    lchown(p("etc/link"), Some(1234), Some(5678)).expect("lchown");
    fs::create_dir(p("dev")).expect("mkdir");
    run("mknod", &["-m", "0666", s(&p("dev/null")), "c", "1", "3"]);
    run("mkfifo", &["-m", "0620", s(&p("dev/fifo"))]);

    fs::create_dir_all(p("var/cache/apt")).expect("mkdir");
    fs::write(p("var/cache/apt/pkg.deb"), "excluded\n").expect("write");
    fs::write(p("var/keep"), "kept\n").expect("write");
    fs::write(p("excluded-file"), "excluded\n").expect("write");

    fs::create_dir(p("mnt")).expect("mkdir");
    fs::write(elsewhere.join("inside"), "other mount\n").expect("write");
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o711)).expect("chmod");
    for rel in [
        "sparse",
        "etc/pair1",
        "etc/acl",
        "etc/suid",
        "etc/link",
        "etc/sub",
        "etc",
        "dev/null",
        "dev/fifo",
        "dev",
        "var",
        "",
    ] {
        run("touch", &["-h", "-d", "@1500000000.123456789", s(&p(rel))]);
    }
    let _mount = BindMount::new(&elsewhere, &p("mnt"));

    let checked = [
        "",
        "sparse",
        "etc",
        "etc/pair1",
        "etc/sub",
        "etc/sub/pair2",
        "pair3",
        "etc/acl",
        "etc/suid",
        "etc/link",
        "dev",
        "dev/null",
        "dev/fifo",
        "var",
        "var/keep",
        "mnt",
        "var/cache/apt",
    ];
    let before: Vec<String> = checked.iter().map(|e| describe(&src.join(e))).collect();

    let opts = CloneOptions {
        exclude: vec![
            PathBuf::from("/var/cache/apt"),
            PathBuf::from("/excluded-file"),
        ],
    };
    let report = clone_tree(&src, &dst, &opts).expect("clone");

    for (entry, want) in checked.iter().zip(&before) {
        assert_eq!(&describe(&dst.join(entry)), want, "entry {entry:?}");
    }
    assert_eq!(report.skipped_mounts, vec![PathBuf::from("/mnt")]);
    assert_eq!(report.sparse_files, 1);
    assert_eq!(report.hardlinks, 2);
    assert_eq!(report.symlinks, 1);
    assert_eq!(report.special, 2);
    // sparse, pair1, acl, suid, var/keep.
    assert_eq!(report.files, 5);
    // etc, etc/sub, dev, var, var/cache, var/cache/apt, mnt.
    assert_eq!(report.dirs, 7);

    let copy = fs::metadata(dst.join("sparse")).expect("stat");
    assert!(
        copy.blocks() * 512 < 1 << 20,
        "sparse copy allocates {} bytes",
        copy.blocks() * 512
    );
    assert!(same_content(&p("sparse"), &dst.join("sparse")));

    let ino = |rel: &str| fs::metadata(dst.join(rel)).expect("stat").ino();
    assert_eq!(ino("etc/pair1"), ino("etc/sub/pair2"));
    assert_eq!(ino("etc/pair1"), ino("pair3"));
    assert_ne!(
        ino("etc/pair1"),
        fs::metadata(p("etc/pair1")).expect("stat").ino()
    );
    assert_eq!(fs::metadata(dst.join("pair3")).expect("stat").nlink(), 3);

    let getfacl = Command::new("getfacl")
        .args(["-cn", s(&dst.join("etc/acl"))])
        .output()
        .expect("getfacl");
    assert!(String::from_utf8_lossy(&getfacl.stdout).contains("user:1000:r--"));
    assert!(fs::symlink_metadata(dst.join("dev/null"))
        .expect("lstat")
        .file_type()
        .is_char_device());
    assert!(fs::symlink_metadata(dst.join("dev/fifo"))
        .expect("lstat")
        .file_type()
        .is_fifo());

    let empty = |rel: &str| {
        fs::read_dir(dst.join(rel))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect::<Vec<_>>()
    };
    assert!(empty("mnt").is_empty(), "the bind mount is not descended");
    assert!(
        empty("var/cache/apt").is_empty(),
        "excluded directory is empty"
    );
    assert!(!dst.join("excluded-file").exists());
    assert_eq!(
        fs::read_to_string(dst.join("var/keep")).expect("read"),
        "kept\n"
    );
}

#[test]
fn bad_excludes_are_refused() {
    require_root();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    for bad in ["relative", "/a/../b", "/"] {
        let opts = CloneOptions {
            exclude: vec![PathBuf::from(bad)],
        };
        match clone_tree(dir.path(), dir.path(), &opts) {
            Err(Error::BadExclude { path, .. }) => assert_eq!(path, Path::new(bad)),
            other => panic!("expected BadExclude for {bad}, got {other:?}"),
        }
    }
}

#[test]
fn a_destination_inside_the_source_is_not_copied_into_itself() {
    require_root();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let src = dir.path();
    fs::write(src.join("file"), "data\n").expect("write");
    let dst = src.join("copy");
    fs::create_dir(&dst).expect("mkdir");
    let report = clone_tree(src, &dst, &CloneOptions::default()).expect("clone");
    assert_eq!((report.files, report.dirs), (1, 1));
    assert_eq!(
        fs::read_to_string(dst.join("file")).expect("read"),
        "data\n"
    );
    assert_eq!(fs::read_dir(dst.join("copy")).expect("readdir").count(), 0);
}
