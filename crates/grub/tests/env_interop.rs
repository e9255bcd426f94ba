//! grubenv codec and file I/O against GRUB's own `grub-editenv` (Debian package
//! grub-common). Tests that need the tool fail when it is missing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_grub::env::{BLOCK_SIZE, HEADER};
use abupdate_grub::{create_env, read_env, write_env_in_place, EnvError, Error, GrubEnv};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn editenv(file: &Path, args: &[&str]) -> String {
    let out = Command::new("grub-editenv")
        .arg(file)
        .args(args)
        .output()
        .expect("grub-editenv must be installed (Debian package grub-common)");
    assert!(
        out.status.success(),
        "grub-editenv {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("grub-editenv prints UTF-8")
}

fn pairs(env: &GrubEnv) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn owned(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Values that exercise GRUB's escaping.
const TRICKY: &[(&str, &str)] = &[
    ("ab_default", "a"),
    ("ab_fallback", ""),
    ("ab_trial", "b"),
    ("ab_tries", "111"),
    ("backslash", r"C:\dir\n\\"),
    ("newline", "line one\nline two\n"),
    ("equals", "a=b=c"),
    ("hash", "#not a comment"),
    ("utf8", "slot B — trixie"),
];

fn tricky_env() -> GrubEnv {
    let mut env = GrubEnv::new();
    for (k, v) in TRICKY {
        env.set(k, v);
    }
    env
}

#[test]
fn committed_fixtures_parse() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("debian-created.grubenv", &[]),
        (
            "ab-trial.grubenv",
            &[
                ("ab_default", "a"),
                ("ab_fallback", ""),
                ("ab_trial", "b"),
                ("ab_tries", "111"),
            ],
        ),
        (
            "escapes.grubenv",
            &[
                ("path", r"C:\dir\n"),
                ("two", "line one\nline two"),
                ("eq", "a=b"),
            ],
        ),
        ("after-unset.grubenv", &[("a", "1"), ("c", "3")]),
    ];
    for (name, expected) in cases {
        let env = read_env(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pairs(&env), owned(expected), "{name}");
    }
}

#[test]
fn encoding_is_byte_identical_to_grub_editenv() {
    // grub-editenv's block is ours plus Debian's warning comment line after the header.
    for name in ["ab-trial.grubenv", "escapes.grubenv", "after-unset.grubenv"] {
        let grubs = std::fs::read(fixture(name)).expect("read fixture");
        let warning_end = HEADER.len()
            + grubs[HEADER.len()..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("warning line")
            + 1;
        let mut expected = HEADER.to_vec();
        expected.extend_from_slice(&grubs[warning_end..]);
        expected.resize(BLOCK_SIZE, b'#');
        let ours = GrubEnv::parse(&grubs)
            .expect("parse")
            .to_block()
            .expect("encode");
        assert_eq!(ours, expected, "{name}");
    }
}

#[test]
fn grub_editenv_reads_our_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grubenv");
    create_env(&path, &tricky_env()).expect("create");
    let expected: String = TRICKY.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    assert_eq!(editenv(&path, &["list"]), expected);

    // And after an in-place rewrite.
    let mut env = tricky_env();
    env.set("ab_tries", "1");
    env.remove("hash");
    write_env_in_place(&path, &env).expect("rewrite");
    let listed = editenv(&path, &["list"]);
    assert!(listed.contains("ab_tries=1\n"), "{listed}");
    assert!(!listed.contains("hash="), "{listed}");
}

#[test]
fn we_read_grub_editenv_blocks_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grubenv");
    editenv(&path, &["create"]);
    let sets: Vec<String> = TRICKY.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    editenv(&path, &[&["set"], &sets[..]].concat());
    assert_eq!(pairs(&read_env(&path).expect("read")), owned(TRICKY));

    // grub-editenv edits a block we wrote; we read its change.
    write_env_in_place(&path, &tricky_env()).expect("rewrite");
    editenv(&path, &["set", "ab_tries=11"]);
    editenv(&path, &["unset", "utf8"]);
    let env = read_env(&path).expect("read");
    assert_eq!(env.get("ab_tries"), Some("11"));
    assert_eq!(env.get("utf8"), None);
    assert_eq!(env.get("newline"), Some("line one\nline two\n"));
}

#[test]
fn write_in_place_keeps_inode_and_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grubenv");
    editenv(&path, &["create"]);
    let before = std::fs::metadata(&path).expect("stat");
    write_env_in_place(&path, &tricky_env()).expect("rewrite");
    let after = std::fs::metadata(&path).expect("stat");
    assert_eq!(before.ino(), after.ino());
    assert_eq!(after.len(), BLOCK_SIZE as u64);
    assert_eq!(pairs(&read_env(&path).expect("read")), owned(TRICKY));
}

#[test]
fn write_in_place_refuses_wrong_size_sparse_and_missing_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = tricky_env();
    for len in [0usize, 1023, 1025, 2048] {
        let path = dir.path().join(format!("len{len}"));
        let content = vec![b'#'; len];
        std::fs::write(&path, &content).expect("write");
        let err = write_env_in_place(&path, &env).expect_err("wrong size must be refused");
        assert!(matches!(err, Error::Refused { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{len} bytes")), "{msg}");
        assert_eq!(std::fs::read(&path).expect("read"), content, "unchanged");
    }

    let sparse = dir.path().join("sparse");
    std::fs::File::create(&sparse)
        .and_then(|f| f.set_len(BLOCK_SIZE as u64))
        .expect("make sparse file");
    let err = write_env_in_place(&sparse, &env).expect_err("sparse must be refused");
    assert!(err.to_string().contains("sparse"), "{err}");

    let missing = dir.path().join("missing");
    let err = write_env_in_place(&missing, &env).expect_err("missing must fail");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(
        !missing.exists(),
        "write_env_in_place must never create the file"
    );
}

#[test]
fn write_in_place_refuses_oversized_env_without_touching_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grubenv");
    create_env(&path, &tricky_env()).expect("create");
    let before = std::fs::read(&path).expect("read");
    let mut big = GrubEnv::new();
    big.set("k", &"x".repeat(BLOCK_SIZE));
    let err = write_env_in_place(&path, &big).expect_err("too large");
    assert!(
        matches!(
            err,
            Error::Env {
                source: EnvError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[test]
fn create_is_allocated_and_refuses_existing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grubenv");
    create_env(&path, &tricky_env()).expect("create");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(meta.len(), BLOCK_SIZE as u64);
    assert!(meta.blocks() * 512 >= BLOCK_SIZE as u64, "not sparse");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["grubenv"], "no temp file left");

    let before = std::fs::read(&path).expect("read");
    let err = create_env(&path, &GrubEnv::new()).expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[test]
fn read_errors_name_the_path_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, Vec<u8>, &str)] = &[
        ("short", vec![b'#'; 1000], "1000 bytes"),
        ("noheader", vec![b'#'; BLOCK_SIZE], "header"),
        (
            "zeros",
            {
                let mut b = HEADER.to_vec();
                b.resize(BLOCK_SIZE, 0);
                b
            },
            "NUL",
        ),
    ];
    for (name, content, reason) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let msg = read_env(&path).expect_err(name).to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(reason), "{msg}");
    }
    let msg = read_env(&dir.path().join("absent"))
        .expect_err("absent")
        .to_string();
    assert!(
        msg.contains("absent") && msg.contains("open grubenv"),
        "{msg}"
    );
}
