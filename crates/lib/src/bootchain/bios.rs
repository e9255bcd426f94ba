//! GRUB's i386-pc boot code, installed the way `grub-bios-setup --no-rs-codes` embeds it
//! in a GPT BIOS boot partition (`util/setup.c`), without `grub-install`, which cannot
//! find a GRUB drive for partitions of loop devices. One code path for hosts and tests:
//!
//! - `core.img` (from `grub-mkimage -O i386-pc`, early config naming the boot partition's
//!   filesystem UUID) goes to the first sectors of the BIOS boot partition; its first
//!   sector's blocklist (the 12 bytes before the end of the sector: start LBA, sector
//!   count, load segment) is set to the sectors that follow it;
//! - `boot.img` goes to the MBR, keeping the disk's BPB area (0x03..0x5a) and its disk
//!   signature and partition table (0x1b8..0x1fe), with the core image's first LBA at
//!   0x5c, boot drive 0xff at 0x64, and the drive check (0x66) turned into two NOPs, as
//!   `grub-bios-setup` does for hard disks.
//!
//! `grub-bios-setup` also appends Reed-Solomon redundancy to an embedded core image by
//! default; abupdate does not (`--no-rs-codes`): the image sits in its own partition, not in
//! a gap other software writes to. Everything here is pure code over bytes.

use super::ChainError;

/// Bytes per sector for BIOS disk access.
pub const SECTOR: usize = 512;
const BPB_START: usize = 0x03;
const BPB_END: usize = 0x5a;
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
const WINDOWS_NT_MAGIC: usize = 0x1b8;
const PART_END: usize = 0x1fe;
/// The first (last-in-sector) blocklist entry of `diskboot.img`: start u64, len u16, segment u16.
const BLOCKLIST: usize = SECTOR - 12;
/// Segment the second sector of the core image is loaded at (`GRUB_BOOT_I386_PC_KERNEL_SEG`
/// plus one sector).
const LOAD_SEGMENT: u16 = 0x800 + (SECTOR as u16 >> 4);
/// Largest core image the i386-pc loader can take (sectors between 0x8200 and 0x78000).
pub const MAX_CORE_SECTORS: usize = (0x78000 - 0x8200) / SECTOR;

/// A core image ready to be written at `first_lba`: padded to whole sectors, its
/// blocklist pointing at the sectors after the first.
pub fn patch_core(core: &[u8], first_lba: u64) -> Result<Vec<u8>, ChainError> {
    if core.len() < 2 * SECTOR {
        return Err(ChainError::BadCoreImage(format!(
            "{} bytes is too small for a core image",
            core.len()
        )));
    }
    let sectors = core.len().div_ceil(SECTOR);
    if sectors > MAX_CORE_SECTORS {
        return Err(ChainError::BadCoreImage(format!(
            "{sectors} sectors is more than the {MAX_CORE_SECTORS} the BIOS loader can load"
        )));
    }
    let mut out = core.to_vec();
    out.resize(sectors * SECTOR, 0);
    // grub-bios-setup clears every blocklist entry (from the first, downwards, until one
    // with length 0) before writing its own.
    let mut at = BLOCKLIST;
    while out[at + 8..at + 10] != [0, 0] {
        out[at..at + 12].fill(0);
        at = at.checked_sub(12).filter(|&a| a >= 12).ok_or_else(|| {
            ChainError::BadCoreImage("no blocklist terminator in the first sector".into())
        })?;
    }
    let rest = u16::try_from(sectors - 1)
        .map_err(|_| ChainError::BadCoreImage(format!("{sectors} sectors")))?;
    out[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(first_lba + 1).to_le_bytes());
    out[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&rest.to_le_bytes());
    out[BLOCKLIST + 10..BLOCKLIST + 12].copy_from_slice(&LOAD_SEGMENT.to_le_bytes());
    // The next entry terminates the list.
    out[BLOCKLIST - 12..BLOCKLIST].fill(0);
    Ok(out)
}

/// The number of sectors a core image's first sector says the whole image has (itself plus
/// its blocklist's count); `None` when the blocklist is not one run starting right after it.
pub fn core_sectors(first_sector: &[u8], first_lba: u64) -> Option<usize> {
    let b = first_sector.get(BLOCKLIST..BLOCKLIST + 12)?;
    let start = u64::from_le_bytes(b[..8].try_into().ok()?);
    let len = u16::from_le_bytes([b[8], b[9]]);
    (start == first_lba + 1 && len > 0).then_some(1 + usize::from(len))
}

/// The MBR `grub-bios-setup` writes: `boot_img` with the current MBR's BPB area, disk
/// signature and partition table, loading the core image from `core_lba`.
pub fn patch_mbr(
    boot_img: &[u8],
    current: &[u8; SECTOR],
    core_lba: u64,
) -> Result<[u8; SECTOR], ChainError> {
    let mut mbr: [u8; SECTOR] = boot_img.try_into().map_err(|_| {
        ChainError::BadBootImage(format!("{} bytes instead of {SECTOR}", boot_img.len()))
    })?;
    if mbr[PART_END..] != [0x55, 0xAA] {
        return Err(ChainError::BadBootImage(
            "no 0x55AA boot signature".to_string(),
        ));
    }
    mbr[BPB_START..BPB_END].copy_from_slice(&current[BPB_START..BPB_END]);
    mbr[WINDOWS_NT_MAGIC..PART_END].copy_from_slice(&current[WINDOWS_NT_MAGIC..PART_END]);
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    mbr[BOOT_DRIVE] = 0xFF;
    mbr[DRIVE_CHECK] = 0x90;
    mbr[DRIVE_CHECK + 1] = 0x90;
    Ok(mbr)
}

/// Whether `mbr` is `boot_img` as [`patch_mbr`] installs it, and from which LBA it loads
/// the core image.
pub fn mbr_core_lba(mbr: &[u8; SECTOR], boot_img: &[u8]) -> Result<u64, ChainError> {
    let lba = u64::from_le_bytes(
        mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8]
            .try_into()
            .map_err(|_| ChainError::BadBootImage("short MBR".into()))?,
    );
    let expected = patch_mbr(boot_img, mbr, lba)?;
    if &expected != mbr {
        return Err(ChainError::ForeignBootCode(
            "the MBR does not hold the installed GRUB's boot.img".into(),
        ));
    }
    Ok(lba)
}

/// Whether a sector has a protective MBR entry (type 0xEE) for a GPT disk.
pub fn has_protective_mbr(mbr: &[u8; SECTOR]) -> bool {
    mbr[PART_END..] == [0x55, 0xAA] && (0..4).any(|i| mbr[0x1be + 16 * i + 4] == 0xEE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORE: &[u8] = include_bytes!("fixtures/core-2.06.img");
    const BOOT: &[u8] = include_bytes!("fixtures/boot-2.06.img");

    fn protective_mbr() -> [u8; SECTOR] {
        let mut m = [0u8; SECTOR];
        m[BPB_START..BPB_END].fill(0x42); // whatever a previous boot sector left
        m[0x1b8..0x1bc].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        m[0x1be + 4] = 0xEE;
        m[0x1be + 8..0x1be + 12].copy_from_slice(&1u32.to_le_bytes());
        m[PART_END] = 0x55;
        m[PART_END + 1] = 0xAA;
        m
    }

    #[test]
    fn core_blocklist_points_after_the_first_sector() {
        let out = patch_core(CORE, 2048).expect("patch");
        assert_eq!(out.len() % SECTOR, 0);
        assert_eq!(out.len(), CORE.len().div_ceil(SECTOR) * SECTOR);
        assert_eq!(
            &out[..BLOCKLIST],
            &CORE[..BLOCKLIST],
            "code of diskboot.img kept"
        );
        assert_eq!(
            u64::from_le_bytes(out[500..508].try_into().expect("8 bytes")),
            2049
        );
        let sectors = CORE.len().div_ceil(SECTOR);
        assert_eq!(
            u16::from_le_bytes([out[508], out[509]]) as usize,
            sectors - 1
        );
        assert_eq!(u16::from_le_bytes([out[510], out[511]]), 0x820);
        assert_eq!(&out[488..500], &[0u8; 12], "terminator");
        assert_eq!(
            &out[SECTOR..CORE.len()],
            &CORE[SECTOR..],
            "rest of the image kept"
        );
        assert_eq!(core_sectors(&out[..SECTOR], 2048), Some(sectors));
        assert_eq!(core_sectors(&out[..SECTOR], 4096), None);
        // Patching again at another LBA only moves the blocklist.
        let again = patch_core(&out, 4096).expect("patch");
        assert_eq!(core_sectors(&again[..SECTOR], 4096), Some(sectors));
    }

    #[test]
    fn core_image_too_small_or_too_large() {
        assert!(patch_core(&[0u8; 700], 2048).is_err());
        let huge = vec![0u8; (MAX_CORE_SECTORS + 1) * SECTOR];
        let e = patch_core(&huge, 2048).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("BIOS loader"));
    }

    #[test]
    fn mbr_keeps_partition_table_and_bpb() {
        let old = protective_mbr();
        let mbr = patch_mbr(BOOT, &old, 2048).expect("patch");
        assert_eq!(&mbr[..BPB_START], &BOOT[..BPB_START], "jump");
        assert_eq!(
            &mbr[BPB_START..BPB_END],
            &old[BPB_START..BPB_END],
            "BPB kept"
        );
        assert_eq!(
            &mbr[0x1b8..0x200],
            &old[0x1b8..0x200],
            "signature and table kept"
        );
        assert_eq!(
            u64::from_le_bytes(mbr[0x5c..0x64].try_into().expect("8")),
            2048
        );
        assert_eq!(mbr[0x64], 0xff);
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90], "drive check disabled");
        assert_eq!(&mbr[0x68..0x1b8], &BOOT[0x68..0x1b8], "boot code");
        assert!(has_protective_mbr(&mbr));
        assert_eq!(mbr_core_lba(&mbr, BOOT).expect("ours"), 2048);
    }

    #[test]
    fn foreign_mbr_is_detected() {
        let old = protective_mbr();
        assert!(mbr_core_lba(&old, BOOT).is_err(), "no boot code at all");
        let mut mbr = patch_mbr(BOOT, &old, 2048).expect("patch");
        mbr[0x100] ^= 0xff;
        let e = mbr_core_lba(&mbr, BOOT).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("boot.img"));
        assert!(patch_mbr(&BOOT[..100], &old, 1).is_err());
    }

    #[test]
    fn fixture_core_names_its_boot_partition() {
        let payload = super::super::grubimage::i386_pc_payload(CORE, 2848).expect("decompress");
        let e = super::super::grubimage::embedded(&payload).expect("module list");
        assert_eq!(
            e.config.as_deref(),
            Some("search.fs_uuid 11111111-2222-3333-4444-555555555555 root\nset prefix=($root)/grub\n")
        );
        assert_eq!(e.prefix.as_deref(), Some("/grub"));
        assert_eq!(
            e.modules, 5,
            "biosdisk part_gpt ext2 search_fs_uuid and a dependency"
        );
        // The patched image (blocklist, padding) decompresses the same way.
        let patched = patch_core(CORE, 2048).expect("patch");
        let again = super::super::grubimage::i386_pc_payload(&patched, 2848).expect("decompress");
        assert_eq!(again, payload);
    }
}
