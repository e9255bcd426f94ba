//! Scoped path resolution (`openat2(2)` with `RESOLVE_BENEATH` or `RESOLVE_IN_ROOT`) that
//! survives what else happens on the host.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::path::Arg;

/// How many times a lookup that raced with a mount or a rename is tried again.
const RETRIES: u32 = 1000;

/// `openat2(2)`, tried again while the kernel answers `EAGAIN`.
///
/// A scoped lookup that walks `..` (a relative symlink such as Debian's `/etc/os-release`
/// → `../usr/lib/os-release` counts) fails with `EAGAIN` when a mount or a rename anywhere
/// on the host happened during the walk: the kernel cannot then prove that `..` stayed
/// inside the root. The man page says to retry; nothing was created or opened. Seen when
/// another process mounted loop devices while abupdate read a slot.
pub fn openat2<P: Arg + Copy>(
    dir: impl AsFd,
    path: P,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let dir = dir.as_fd();
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags, mode, resolve) {
            Err(Errno::AGAIN) if tries < RETRIES => tries += 1,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_a_relative_symlink_with_dotdot_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("usr/lib")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        std::fs::write(root.path().join("usr/lib/os-release"), "ID=debian\n").expect("write");
        std::os::unix::fs::symlink("../usr/lib/os-release", root.path().join("etc/os-release"))
            .expect("symlink");
        let dir = std::fs::File::open(root.path()).expect("open root");
        let fd = openat2(
            &dir,
            "etc/os-release",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT,
        )
        .expect("openat2");
        let text = std::io::read_to_string(std::fs::File::from(fd)).expect("read");
        assert_eq!(text, "ID=debian\n");
        // BENEATH refuses the escape an absolute symlink would be.
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/abs")).expect("symlink");
        assert!(openat2(
            &dir,
            "etc/abs",
            OFlags::RDONLY,
            Mode::empty(),
            ResolveFlags::BENEATH
        )
        .is_err());
    }
}
