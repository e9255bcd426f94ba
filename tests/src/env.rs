//! The test environment: root, host tools, the binary under test, and serialisation.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{flock, FlockOperation};

/// Host tools the privileged tests need, with the Debian package providing each.
const TOOLS: &[(&str, &str)] = &[
    ("sfdisk", "fdisk"),
    ("losetup", "mount"),
    ("partx", "util-linux"),
    ("blkid", "util-linux"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.ext2", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("tune2fs", "e2fsprogs"),
    ("grub-editenv", "grub-common"),
    ("grub-script-check", "grub-common"),
    ("getfattr", "attr"),
    ("setfattr", "attr"),
    ("getfacl", "acl"),
    ("setfacl", "acl"),
    ("sha256sum", "coreutils"),
    ("zstd", "zstd"),
    ("xz", "xz-utils"),
    ("gzip", "gzip"),
];

static LOCK: Mutex<()> = Mutex::new(());

/// Held by a privileged test for its whole duration: an in-process mutex (cargo runs tests
/// in threads) plus an exclusive `flock` on a host-wide file (other test processes).
pub struct Serial {
    _file: File,
    _guard: MutexGuard<'static, ()>,
}

/// Checks the environment (root, tools, binary) and serialises privileged tests.
///
/// Panics with a clear message when a privileged test cannot run: such tests fail, they
/// never skip silently.
pub fn serial() -> Serial {
    // A test that panicked while holding the lock poisons it; the next test still runs.
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !rustix::process::geteuid().is_root() {
        panic!("privileged test: must run as root (loop devices, mkfs, mount); run `sudo cargo test -p abupdate-tests`");
    }
    let mut missing = Vec::new();
    for (tool, pkg) in TOOLS {
        if which(tool).is_none() {
            missing.push(format!("{tool} (apt-get install {pkg})"));
        }
    }
    if !missing.is_empty() {
        panic!(
            "privileged test: missing host tools: {}",
            missing.join(", ")
        );
    }
    let bin = abupdate_bin();
    if !bin.is_file() {
        panic!(
            "binary under test {} is missing: build it first: cargo build -p abupdate",
            bin.display()
        );
    }
    let path = std::env::temp_dir().join("abupdate-tests.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open test lock {}: {e}", path.display()));
    flock(file.as_fd(), FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("flock test lock {}: {e}", path.display()));
    Serial {
        _file: file,
        _guard: guard,
    }
}

/// The binary under test: `$ABUPDATE_BIN`, or `target/debug/abupdate` of this workspace.
pub fn abupdate_bin() -> PathBuf {
    match std::env::var_os("ABUPDATE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/abupdate"),
    }
}

/// Finds `tool` in `$PATH` or the sbin directories (root's PATH may lack them under sudo).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| PathBuf::from(d).join(tool))
        .find(|p| p.is_file());
    found
}
