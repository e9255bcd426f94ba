//! Parser for `/proc/self/mountinfo` (pure) and a reader for it.

use std::path::PathBuf;

/// One mount as listed in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Device number `major:minor` of the mounted filesystem.
    pub major: u32,
    /// Minor device number.
    pub minor: u32,
    /// Mount point (octal escapes decoded).
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (device path or pseudo name).
    pub source: String,
}

/// Parses mountinfo text; malformed lines are skipped (the kernel's format is stable).
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let _id = l.next()?;
    let _parent = l.next()?;
    let (major, minor) = l.next()?.split_once(':')?;
    let _root = l.next()?;
    let mount_point = unescape(l.next()?);
    let mut r = right.split(' ');
    let fstype = r.next()?.to_string();
    let source = unescape(r.next()?);
    Some(MountEntry {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point: PathBuf::from(mount_point),
        fstype,
        source,
    })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads and parses `/proc/self/mountinfo`.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 7:1 / /mnt/with\\040space rw,relatime shared:2 - ext2 /dev/loop1p2 rw
40 22 0:5 / /dev rw - devtmpfs udev rw,size=10k
";

    #[test]
    fn parses_entries_and_escapes() {
        let m = parse(FIXTURE);
        assert_eq!(m.len(), 3);
        assert_eq!((m[1].major, m[1].minor), (7, 1));
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[1].source, "/dev/loop1p2");
        assert_eq!(m[0].fstype, "ext4");
    }
}
