//! Privileged tests of `extract_tar`: archives made by GNU tar round-trip owners, modes,
//! times, hard links, xattrs, ACLs and device nodes; hostile archives are refused at the
//! offending entry without writing outside the root. They must run as root and fail
//! (not skip) otherwise.

use std::fs::{self, File};
use std::os::unix::fs::{lchown, symlink, FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_treecopy::{extract_tar, extract_tar_with_limits, Error, ExtractReport, TarLimits};
use tar::EntryType;

mod common;
use common::xattrs;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests set owners, make device nodes and set trusted/security xattrs: run \
         them as root"
    );
}

/// A scratch directory on a real filesystem with xattr support.
fn scratch() -> tempfile::TempDir {
    require_root();
    tempfile::Builder::new()
        .prefix("treecopy-tar-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
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

/// Type, mode, owner, mtime, rdev, xattrs and content (or link target) of one entry.
fn describe(path: &Path) -> String {
    let md = fs::symlink_metadata(path).expect("lstat");
    let body = if md.file_type().is_symlink() {
        format!("-> {}", fs::read_link(path).expect("readlink").display())
    } else if md.is_file() {
        String::from_utf8_lossy(&fs::read(path).expect("read")).into_owned()
    } else {
        String::new()
    };
    format!(
        "{:o} {}:{} {}.{} rdev={} {:?} {body}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.mtime(),
        md.mtime_nsec(),
        md.rdev(),
        xattrs(path),
    )
}

const MTIME: &str = "@1500000000.123456789";

/// A tree with every kind of entry GNU tar archives, with owners, set-id, xattrs, ACLs.
fn build_tree(src: &Path) {
    let p = |rel: &str| src.join(rel);
    fs::create_dir_all(p("sub/deeper")).expect("mkdir");
    fs::create_dir(p("dev")).expect("mkdir");
    fs::write(p("sub/deeper/file"), "deep\n").expect("write");
    fs::write(p("pair1"), "linked\n").expect("write");
    fs::hard_link(p("pair1"), p("sub/pair2")).expect("link");
    lchown(p("pair1"), Some(1234), Some(5678)).expect("chown");

    fs::write(p("acl"), "acl\n").expect("write");
    rustix::fs::lsetxattr(
        p("acl"),
        "user.x",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr");
    run("setfacl", &["-m", "u:1000:r,g:2000:rw", s(&p("acl"))]);

    fs::write(p("suid"), "#!/bin/sh\n").expect("write");
    lchown(p("suid"), Some(0), Some(5678)).expect("chown");
    fs::set_permissions(p("suid"), fs::Permissions::from_mode(0o4750)).expect("chmod");
    // VFS_CAP_REVISION_2 | EFFECTIVE, permitted = CAP_NET_BIND_SERVICE.
    let cap: Vec<u8> = [0x0200_0001u32, 1 << 10, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    rustix::fs::lsetxattr(
        p("suid"),
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setcap");

    run("mknod", &["-m", "0666", s(&p("dev/null")), "c", "1", "3"]);
    run("mkfifo", &["-m", "0620", s(&p("fifo"))]);
    lchown(p("fifo"), Some(1234), Some(5678)).expect("chown");
    symlink("sub/deeper/file", p("link")).expect("symlink");
    lchown(p("link"), Some(1234), Some(5678)).expect("lchown");

    // Mostly zeros: extraction leaves the zero blocks as holes.
    let zeros = File::create(p("zeros")).expect("create");
    zeros.set_len(4 << 20).expect("set_len");
    zeros.write_all_at(b"end", (4 << 20) - 3).expect("write");

    fs::set_permissions(p("sub"), fs::Permissions::from_mode(0o750)).expect("chmod");
    lchown(p("sub"), Some(1234), Some(5678)).expect("chown");
    run("setfacl", &["-d", "-m", "u:1000:rx", s(&p("sub"))]);
    fs::set_permissions(src, fs::Permissions::from_mode(0o755)).expect("chmod");
    // Deepest first, so directory times stay.
    for rel in [
        "sub/deeper/file",
        "sub/deeper",
        "sub/pair2",
        "sub",
        "acl",
        "suid",
        "dev/null",
        "dev",
        "fifo",
        "link",
        "zeros",
        "",
    ] {
        run("touch", &["-h", "-d", MTIME, s(&p(rel))]);
    }
}

const ENTRIES: &[&str] = &[
    "",
    "sub",
    "sub/deeper",
    "sub/deeper/file",
    "sub/pair2",
    "pair1",
    "acl",
    "suid",
    "dev",
    "dev/null",
    "fifo",
    "link",
    "zeros",
];

#[test]
fn gnu_tar_archive_round_trips_metadata() {
    let dir = scratch();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    let archive = dir.path().join("image.tar");
    fs::create_dir(&src).expect("mkdir");
    fs::create_dir(&dst).expect("mkdir");
    build_tree(&src);
    let before: Vec<String> = ENTRIES.iter().map(|e| describe(&src.join(e))).collect();
    run(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
            s(&src),
            "-cf",
            s(&archive),
            ".",
        ],
    );

    let report = extract_tar(File::open(&archive).expect("open"), &dst).expect("extract");
    assert_eq!(
        report,
        ExtractReport {
            files: 5,
            dirs: 4,
            symlinks: 1,
            hardlinks: 1,
            special: 2,
            bytes: ("deep\n".len() + "linked\n".len() + "acl\n".len() + "#!/bin/sh\n".len()) as u64
                + (4 << 20),
        }
    );
    for (entry, want) in ENTRIES.iter().zip(&before) {
        assert_eq!(&describe(&dst.join(entry)), want, "entry {entry:?}");
    }

    let pair1 = fs::metadata(dst.join("pair1")).expect("stat");
    let pair2 = fs::metadata(dst.join("sub/pair2")).expect("stat");
    assert_eq!(pair1.ino(), pair2.ino(), "hard link pair shares one inode");
    assert_eq!(pair1.nlink(), 2);
    assert_eq!((pair1.uid(), pair1.gid()), (1234, 5678));

    let null = fs::symlink_metadata(dst.join("dev/null")).expect("lstat");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(fs::symlink_metadata(dst.join("fifo"))
        .expect("lstat")
        .file_type()
        .is_fifo());
    let suid = fs::metadata(dst.join("suid")).expect("stat");
    assert_eq!(suid.mode() & 0o7777, 0o4750);
    assert!(xattrs(&dst.join("suid")).contains_key("security.capability"));
    assert_eq!(
        xattrs(&dst.join("acl")).get("user.x").map(Vec::as_slice),
        Some(&b"value"[..])
    );
    let getfacl = Command::new("getfacl")
        .args(["-cn", s(&dst.join("acl"))])
        .output()
        .expect("getfacl");
    let acl = String::from_utf8_lossy(&getfacl.stdout);
    assert!(acl.contains("user:1000:r--"), "{acl}");
    assert!(acl.contains("group:2000:rw-"), "{acl}");
    let getfacl = Command::new("getfacl")
        .args(["-cnd", s(&dst.join("sub"))])
        .output()
        .expect("getfacl");
    assert!(String::from_utf8_lossy(&getfacl.stdout).contains("user:1000:r-x"));
    let zeros = fs::metadata(dst.join("zeros")).expect("stat");
    assert_eq!(zeros.len(), 4 << 20);
    assert!(zeros.blocks() * 512 < 64 << 10, "zero blocks left as holes");
}

/// Builds an archive from raw headers: no path checks, like a hostile archive.
struct Raw(tar::Builder<Vec<u8>>);

impl Raw {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn entry(&mut self, path: &str, kind: EntryType, link: &str, data: &[u8]) -> &mut Self {
        let mut header = tar::Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().expect("gnu header");
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_500_000_000);
        header.set_device_major(1).expect("devmajor");
        header.set_device_minor(3).expect("devminor");
        header.set_cksum();
        self.0.append(&header, data).expect("append");
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0
            .append_pax_extensions(records.iter().copied())
            .expect("pax");
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        self.0.finish().expect("finish");
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .expect("into_inner")
    }
}

/// Every path under `root`.
fn listing(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        if p != root {
            out.push(p.strip_prefix(root).expect("under root").to_owned());
        }
        if fs::symlink_metadata(&p).expect("lstat").is_dir() {
            for e in fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out.sort();
    out
}

fn expect_unsafe(result: Result<ExtractReport, Error>, entry: &str) {
    match result {
        Err(Error::UnsafeArchiveEntry { entry: e, reason }) => {
            assert_eq!(e, Path::new(entry), "refused entry (reason: {reason})");
        }
        other => panic!("expected UnsafeArchiveEntry for {entry}, got {other:?}"),
    }
}

#[test]
fn dotdot_entries_are_refused_and_nothing_lands_outside() {
    let dir = scratch();
    let root = dir.path().join("root");
    let sentinel = dir.path().join("sentinel");
    fs::create_dir(&root).expect("mkdir");
    fs::create_dir(&sentinel).expect("mkdir");
    for evil in ["../evil", "../sentinel/evil", "ok/../../sentinel/evil2"] {
        let archive = Raw::new()
            .entry("ok/", EntryType::Directory, "", b"")
            .entry("ok/file", EntryType::Regular, "", b"fine\n")
            .entry(evil, EntryType::Regular, "", b"escaped\n")
            .entry("after", EntryType::Regular, "", b"never\n")
            .finish();
        expect_unsafe(extract_tar(&archive[..], &root), evil);
        assert_eq!(listing(&sentinel), Vec::<PathBuf>::new(), "{evil}");
        assert!(!dir.path().join("evil").exists(), "{evil}");
        assert!(!root.join("after").exists(), "stops at the refused entry");
    }
    // A hard link may not reach outside either.
    let archive = Raw::new()
        .entry("ok/file", EntryType::Regular, "", b"fine\n")
        .entry("stolen", EntryType::Link, "../sentinel/secret", b"")
        .finish();
    fs::write(sentinel.join("secret"), "secret\n").expect("write");
    expect_unsafe(extract_tar(&archive[..], &root), "stolen");
    assert!(!root.join("stolen").exists());
    assert_eq!(
        fs::metadata(sentinel.join("secret")).expect("stat").nlink(),
        1
    );
}

#[test]
fn absolute_entries_are_taken_relative_to_the_root() {
    let dir = scratch();
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    let archive = Raw::new()
        .entry("/abs/file", EntryType::Regular, "", b"inside\n")
        .entry("/abs/hard", EntryType::Link, "/abs/file", b"")
        .finish();
    let report = extract_tar(&archive[..], &root).expect("extract");
    assert_eq!((report.files, report.hardlinks), (1, 1));
    assert_eq!(
        fs::read_to_string(root.join("abs/file")).expect("read"),
        "inside\n"
    );
    assert_eq!(
        fs::metadata(root.join("abs/hard")).expect("stat").ino(),
        fs::metadata(root.join("abs/file")).expect("stat").ino()
    );
}

#[test]
fn entries_beneath_an_archive_symlink_are_refused() {
    let dir = scratch();
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    let outside = tempfile::Builder::new()
        .prefix("abupdate-tar-target-")
        .tempdir_in(std::env::temp_dir())
        .expect("tempdir in /tmp");
    let target = outside.path().to_str().expect("utf8").to_owned();

    let archive = Raw::new()
        .entry("etc", EntryType::Symlink, &target, b"")
        .entry(
            "etc/passwd",
            EntryType::Regular,
            "",
            b"root::0:0::/:/bin/sh\n",
        )
        .finish();
    expect_unsafe(extract_tar(&archive[..], &root), "etc/passwd");
    assert_eq!(listing(outside.path()), Vec::<PathBuf>::new());
    assert_eq!(
        fs::read_link(root.join("etc")).expect("readlink"),
        outside.path()
    );

    // Not even a directory entry, nor a deeper path, nor a hard link through it.
    fs::write(outside.path().join("secret"), "secret\n").expect("write");
    for (entry, kind, link) in [
        ("etc/sub/", EntryType::Directory, ""),
        ("etc/a/b/c", EntryType::Regular, ""),
        ("etc/dev", EntryType::Char, ""),
        ("stolen", EntryType::Link, "etc/secret"),
    ] {
        let root = dir.path().join(format!("root-{}", entry.replace('/', "_")));
        fs::create_dir(&root).expect("mkdir");
        let archive = Raw::new()
            .entry("etc", EntryType::Symlink, &target, b"")
            .entry(entry, kind, link, b"")
            .finish();
        expect_unsafe(extract_tar(&archive[..], &root), entry);
        assert_eq!(
            listing(outside.path()),
            vec![PathBuf::from("secret")],
            "{entry}"
        );
        assert_eq!(
            fs::metadata(outside.path().join("secret"))
                .expect("stat")
                .nlink(),
            1
        );
    }
}

#[test]
fn truncated_archive_is_an_error() {
    let dir = scratch();
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    let archive = Raw::new()
        .entry("file", EntryType::Regular, "", &[7u8; 4096])
        .finish();
    match extract_tar(&archive[..1024], &root) {
        Err(Error::Archive { entry, .. }) => assert_eq!(entry, Path::new("file")),
        other => panic!("expected Archive error, got {other:?}"),
    }
}

#[test]
fn text_acl_records_are_refused_with_advice() {
    let dir = scratch();
    let src = dir.path().join("src");
    let root = dir.path().join("root");
    fs::create_dir(&src).expect("mkdir");
    fs::create_dir(&root).expect("mkdir");
    fs::write(src.join("acl"), "acl\n").expect("write");
    run("setfacl", &["-m", "u:1000:r", s(&src.join("acl"))]);
    let archive = dir.path().join("acls.tar");
    run(
        "tar",
        &[
            "--acls",
            "--xattrs",
            "-C",
            s(&src),
            "-cf",
            s(&archive),
            "./acl",
        ],
    );
    let file = fs::File::open(&archive).expect("open archive");
    match extract_tar(file, &root) {
        Err(Error::UnsupportedArchiveEntry { entry, reason }) => {
            assert_eq!(entry, Path::new("./acl"));
            assert!(reason.contains("--xattrs-include"), "{reason}");
        }
        other => panic!("expected UnsupportedArchiveEntry for ./acl, got {other:?}"),
    }
    assert!(!root.join("acl").exists());
}

fn limits(entry: u64, total: u64, header: u64) -> TarLimits {
    TarLimits {
        max_entry_bytes: entry,
        max_total_bytes: total,
        max_header_bytes: header,
    }
}

fn expect_limit(result: Result<ExtractReport, Error>, entry: &str, words: &str) {
    match result {
        Err(Error::ArchiveLimit { entry: e, reason }) => {
            assert_eq!(e, Path::new(entry), "{reason}");
            assert!(reason.contains(words), "{reason}");
        }
        other => panic!("expected ArchiveLimit at {entry}, got {other:?}"),
    }
}

#[test]
fn entries_and_headers_are_bounded_before_they_are_read() {
    let dir = scratch();
    let archive = Raw::new()
        .entry("small", EntryType::Regular, "", &[1u8; 1000])
        .entry("big", EntryType::Regular, "", &[2u8; 5000])
        .entry("after", EntryType::Regular, "", b"never\n")
        .finish();
    let root = dir.path().join("each");
    fs::create_dir(&root).expect("mkdir");
    expect_limit(
        extract_tar_with_limits(&archive[..], &root, &limits(4096, 1 << 20, 1 << 20)),
        "big",
        "free in the slot",
    );
    assert!(root.join("small").exists() && !root.join("big").exists());
    let root = dir.path().join("total");
    fs::create_dir(&root).expect("mkdir");
    expect_limit(
        extract_tar_with_limits(&archive[..], &root, &limits(1 << 20, 5500, 1 << 20)),
        "big",
        "6000 bytes",
    );
    // PAX records larger than the header budget are refused before the tar crate holds them.
    let big_value = vec![b'x'; 64 << 10];
    let archive = Raw::new()
        .entry("first", EntryType::Regular, "", b"1\n")
        .pax(&[("comment", &big_value)])
        .entry("second", EntryType::Regular, "", b"2\n")
        .finish();
    let root = dir.path().join("header");
    fs::create_dir(&root).expect("mkdir");
    expect_limit(
        extract_tar_with_limits(&archive[..], &root, &limits(1 << 20, 1 << 20, 16 << 10)),
        "first",
        "exceed 16384 bytes",
    );
    assert!(!root.join("second").exists());
    // Within the budget the same archive extracts.
    let root = dir.path().join("fits");
    fs::create_dir(&root).expect("mkdir");
    extract_tar_with_limits(&archive[..], &root, &limits(1 << 20, 1 << 20, 1 << 20))
        .expect("extract");
    assert_eq!(fs::read(root.join("second")).expect("read"), b"2\n");
}

#[test]
fn sparse_entries_count_their_holes() {
    let dir = scratch();
    let src = dir.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    let f = File::create(src.join("sparse")).expect("create");
    f.write_all_at(b"start", 0).expect("write");
    f.set_len(8 << 30).expect("set_len");
    let archive = dir.path().join("sparse.tar");
    run(
        "tar",
        &[
            "--format=gnu",
            "--sparse",
            "-C",
            s(&src),
            "-cf",
            s(&archive),
            "sparse",
        ],
    );
    assert!(fs::metadata(&archive).expect("stat").len() < 64 << 10);
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    let started = std::time::Instant::now();
    expect_limit(
        extract_tar_with_limits(
            File::open(&archive).expect("open"),
            &root,
            &limits(1 << 30, 1 << 30, 1 << 20),
        ),
        "sparse",
        "8589934592 bytes",
    );
    assert!(!root.join("sparse").exists(), "refused before it was made");
    eprintln!("refused in {:?}", started.elapsed());
}

#[test]
fn hard_link_to_a_path_not_in_the_archive_is_bad_input() {
    let dir = scratch();
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    for target in ["/etc/passwd", "etc/passwd", "/"] {
        let archive = Raw::new()
            .entry("etc/", EntryType::Directory, "", b"")
            .entry("stolen", EntryType::Link, target, b"")
            .finish();
        expect_unsafe(extract_tar(&archive[..], &root), "stolen");
        assert!(!root.join("stolen").exists());
    }
}

#[test]
fn xattrs_the_kernel_would_refuse_are_bad_input() {
    let dir = scratch();
    for (name, value) in [
        ("SCHILY.xattr.nonamespace", &b"v"[..]),
        ("SCHILY.xattr.user.", &b"v"[..]),
        ("SCHILY.xattr.system.posix_acl_access", &b"garbage"[..]),
        ("SCHILY.xattr.system.nfs4_acl", &b"x"[..]),
    ] {
        let root = dir.path().join(format!("root-{}", name.replace('.', "_")));
        fs::create_dir(&root).expect("mkdir");
        let archive = Raw::new()
            .pax(&[(name, value)])
            .entry("file", EntryType::Regular, "", b"x\n")
            .finish();
        match extract_tar(&archive[..], &root) {
            Err(Error::UnsupportedArchiveEntry { entry, reason }) => {
                assert_eq!(entry, Path::new("file"), "{name}");
                assert!(reason.contains("xattr"), "{name}: {reason}");
            }
            other => panic!("{name}: expected UnsupportedArchiveEntry, got {other:?}"),
        }
    }
}
