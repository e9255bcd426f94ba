//! Pure parsers for what abupdate reads from a slot: the ext4 superblock (UUID, label) and
//! `/etc/os-release`.

/// Offset of the ext2/3/4 superblock on the device.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock abupdate reads.
pub const SUPERBLOCK_LEN: usize = 1024;

/// What abupdate needs from an ext2/3/4 superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    /// Filesystem UUID, lowercase, hyphenated.
    pub uuid: String,
    /// Volume label.
    pub label: String,
    /// Filesystem size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// No journal and no ext3/4-only features: the ext2 driver can mount it.
    pub is_plain_ext2: bool,
    /// Cleanly unmounted: marked valid, no errors recorded, no journal to replay. Such a
    /// filesystem needs no `e2fsck` before `resize2fs`.
    pub clean: bool,
    /// Metadata checksums (`metadata_csum`): they are seeded from the UUID unless
    /// [`Ext4Info::csum_seed`].
    pub metadata_csum: bool,
    /// The checksum seed is stored in the superblock (`metadata_csum_seed`), so the UUID
    /// can change without rewriting every checksum.
    pub csum_seed: bool,
    /// Extended attributes in inodes (`ea_inode`), whose hashes also derive from the UUID.
    pub ea_inode: bool,
}

/// `s_state`: cleanly unmounted.
const STATE_VALID: u16 = 0x1;
/// `s_state`: errors detected.
const STATE_ERROR: u16 = 0x2;
/// Incompat feature `needs_recovery`: the journal holds transactions to replay.
const INCOMPAT_RECOVER: u32 = 0x4;
/// Incompat feature `64bit`.
const INCOMPAT_64BIT: u32 = 0x80;
/// Incompat feature `ea_inode`.
const INCOMPAT_EA_INODE: u32 = 0x400;
/// Incompat feature `metadata_csum_seed`.
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// Ro-compat feature `metadata_csum`.
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// Parses a superblock (the 1024 bytes at offset 1024); `None` if it is not ext2/3/4.
pub fn parse_ext4_superblock(sb: &[u8]) -> Option<Ext4Info> {
    if sb.len() < 256 || u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return None;
    }
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    let blocks_lo = u64::from(le32(4));
    let log_block = le32(24);
    let state = u16::from_le_bytes([sb[58], sb[59]]);
    let compat = le32(92);
    let incompat = le32(96);
    let ro_compat = le32(100);
    // has_journal (compat 0x4); any incompat feature beyond filetype (0x2) is ext3/4-only.
    let is_plain_ext2 = compat & 0x4 == 0 && incompat & !0x2 == 0;
    let blocks_hi = if incompat & INCOMPAT_64BIT != 0 {
        u64::from(le32(0x150))
    } else {
        0
    };
    let block_size = 1024u64.checked_shl(log_block)?;
    let uuid = uuid::Uuid::from_slice(&sb[104..120])
        .ok()?
        .hyphenated()
        .to_string();
    let label_raw = &sb[120..136];
    let end = label_raw.iter().position(|&b| b == 0).unwrap_or(16);
    Some(Ext4Info {
        uuid,
        label: String::from_utf8_lossy(&label_raw[..end]).into_owned(),
        size_bytes: ((blocks_hi << 32) | blocks_lo) * block_size,
        block_size,
        is_plain_ext2,
        clean: state & STATE_VALID != 0
            && state & STATE_ERROR == 0
            && incompat & INCOMPAT_RECOVER == 0,
        metadata_csum: ro_compat & RO_COMPAT_METADATA_CSUM != 0,
        csum_seed: incompat & INCOMPAT_CSUM_SEED != 0,
        ea_inode: incompat & INCOMPAT_EA_INODE != 0,
    })
}

/// Reads the superblock of a device or image; `Ok(None)` if it holds no ext2/3/4.
pub fn read_ext4_info(path: &std::path::Path) -> std::io::Result<Option<Ext4Info>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; SUPERBLOCK_LEN];
    match f.read_exact_at(&mut buf, SUPERBLOCK_OFFSET) {
        Ok(()) => Ok(parse_ext4_superblock(&buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// What abupdate shows of a slot's `/etc/os-release`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OsRelease {
    /// `NAME`.
    pub name: String,
    /// `VERSION` (falls back to `VERSION_ID`).
    pub version: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
}

/// Parses os-release text (shell-style `KEY=value` with optional quotes).
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut r = OsRelease::default();
    let mut version_id = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v)
            .replace("\\\"", "\"")
            // Menu titles and messages are made of these: no control characters, and a
            // bounded length, whatever the image says.
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect::<String>();
        match k {
            "NAME" => r.name = v,
            "VERSION" => r.version = v,
            "VERSION_ID" => version_id = v,
            "PRETTY_NAME" => r.pretty_name = v,
            _ => {}
        }
    }
    if r.version.is_empty() {
        r.version = version_id;
    }
    if r.pretty_name.is_empty() {
        r.pretty_name = format!("{} {}", r.name, r.version).trim().to_string();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_of_debian() {
        let r = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nVERSION=\"13 (trixie)\"\nID=debian\n",
        );
        assert_eq!(r.name, "Debian GNU/Linux");
        assert_eq!(r.version, "13 (trixie)");
        assert_eq!(r.pretty_name, "Debian GNU/Linux 13 (trixie)");
    }

    #[test]
    fn os_release_without_version() {
        let r = parse_os_release("NAME=Arch\nVERSION_ID=rolling\n");
        assert_eq!(r.version, "rolling");
        assert_eq!(r.pretty_name, "Arch rolling");
    }

    #[test]
    fn superblock_fields() {
        let mut sb = vec![0u8; 1024];
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[4..8].copy_from_slice(&1000u32.to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes()); // 4096-byte blocks
        sb[104..120].copy_from_slice(&[0x11; 16]);
        sb[120..126].copy_from_slice(b"root-b");
        let i = parse_ext4_superblock(&sb).expect("ext4");
        assert_eq!(i.label, "root-b");
        assert_eq!(i.size_bytes, 4096 * 1000);
        assert_eq!(i.block_size, 4096);
        assert_eq!(i.uuid, "11111111-1111-1111-1111-111111111111");
        assert!(i.is_plain_ext2);
        assert!(!i.clean, "never unmounted cleanly");
        assert!(!i.metadata_csum && !i.csum_seed && !i.ea_inode);
        sb[96] = 0x42; // filetype + extents: ext4
        assert!(!parse_ext4_superblock(&sb).is_some_and(|i| i.is_plain_ext2));
        sb[58] = 0x1; // valid
        assert!(parse_ext4_superblock(&sb).expect("ext4").clean);
        sb[58] = 0x3; // valid, but errors were found
        assert!(!parse_ext4_superblock(&sb).expect("ext4").clean);
        sb[58] = 0x1;
        sb[96] = 0x46; // + needs_recovery
        assert!(!parse_ext4_superblock(&sb).expect("ext4").clean);
        sb[96] = 0x02;
        sb[101] = 0x04; // metadata_csum
        sb[97] = 0x20 | 0x04; // metadata_csum_seed, ea_inode
        let i = parse_ext4_superblock(&sb).expect("ext4");
        assert!(i.metadata_csum && i.csum_seed && i.ea_inode && i.clean);
        sb[56] = 0;
        assert_eq!(parse_ext4_superblock(&sb), None);
    }
}
