//! What `init` installed, recorded on the boot partition (`/abupdate/bootchain.json`) so
//! that `verify` can check later that the boot code and the ESP are still abupdate's and
//! still point at the boot partition.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::efi::{Loader, Origin};
use crate::error::{Error, Result};
use crate::state::StateError;

/// Version of the record's format.
pub const RECORD_VERSION: u32 = 1;

/// The BIOS part of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BiosRecord {
    /// GRUB's package version of the i386-pc modules (`2.06-13+deb12u2`).
    pub grub_version: String,
    /// PARTUUID of the BIOS boot partition.
    pub partuuid: String,
    /// Its first LBA, where the core image starts and the MBR points.
    pub first_lba: u64,
    /// Bytes of the core image as written (whole sectors).
    pub core_len: u64,
    /// sha256 of the core image as written.
    pub core_sha256: String,
    /// The early config embedded in the core image.
    pub early_config: String,
    /// sha256 of GRUB's `boot.img` the MBR holds.
    pub boot_img_sha256: String,
    /// GRUB modules directory on the boot partition.
    pub modules_dir: String,
    /// Size of the installed GRUB's `lzma_decompress.img` (to read the core image back).
    pub decompressor_len: u64,
}

/// One file abupdate wrote on the ESP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspFile {
    /// Path on the ESP, `/EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    /// What it is.
    pub origin: Origin,
    /// sha256 of its content.
    pub sha256: String,
}

/// The UEFI part of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UefiRecord {
    /// GRUB's package version of the EFI image (modules or the signed image's SBAT).
    pub grub_version: String,
    /// PARTUUID of the ESP.
    pub partuuid: String,
    /// Signed (shim) or unsigned GRUB.
    pub loader: Loader,
    /// The files written.
    pub files: Vec<EspFile>,
    /// The loader an NVRAM entry starts (`/EFI/debian/shimx64.efi`).
    pub nvram_loader: String,
    /// The NVRAM entry found or created (`0004`), when running on UEFI firmware.
    pub nvram_entry: Option<String>,
    /// The early config of the unsigned image, if any.
    pub early_config: Option<String>,
    /// GRUB modules directory on the boot partition (unsigned loader).
    pub modules_dir: Option<String>,
}

/// The record of an installed boot chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// When it was installed (RFC 3339).
    pub installed_at: String,
    /// Filesystem UUID of the boot partition the chain loads `grub.cfg` from.
    pub boot_fs_uuid: String,
    /// The BIOS boot code, if installed.
    pub bios: Option<BiosRecord>,
    /// The ESP, if installed.
    pub uefi: Option<UefiRecord>,
}

impl ChainRecord {
    /// Path of the record on a mounted boot partition.
    pub fn path(boot_root: &Path) -> PathBuf {
        boot_root.join("abupdate/bootchain.json")
    }

    /// Loads the record; `None` if no chain was installed.
    pub fn load(boot_root: &Path) -> Result<Option<ChainRecord>> {
        let path = Self::path(boot_root);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        let rec: ChainRecord = serde_json::from_slice(&bytes).map_err(|e| Error::State {
            path: path.clone(),
            source: StateError::Json(e),
        })?;
        if rec.version > RECORD_VERSION {
            return Err(Error::State {
                path,
                source: StateError::Newer { found: rec.version },
            });
        }
        Ok(Some(rec))
    }

    /// Writes the record durably.
    pub fn save(&self, boot_root: &Path) -> Result<()> {
        let path = Self::path(boot_root);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        abupdate_utils::durable::write_atomic(&path, &json, 0o644)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_newer_format() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(ChainRecord::load(d.path()).expect("load"), None);
        let rec = ChainRecord {
            version: RECORD_VERSION,
            installed_at: "2025-01-01T00:00:00Z".into(),
            boot_fs_uuid: "11111111-2222-3333-4444-555555555555".into(),
            bios: None,
            uefi: Some(UefiRecord {
                grub_version: "2.06-13+deb12u2".into(),
                partuuid: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
                loader: Loader::Signed,
                files: vec![EspFile {
                    path: "/EFI/BOOT/BOOTX64.EFI".into(),
                    origin: Origin::Shim,
                    sha256: "ab".repeat(32),
                }],
                nvram_loader: "/EFI/debian/shimx64.efi".into(),
                nvram_entry: None,
                early_config: None,
                modules_dir: None,
            }),
        };
        rec.save(d.path()).expect("save");
        assert_eq!(
            ChainRecord::load(d.path()).expect("load"),
            Some(rec.clone())
        );
        let newer = ChainRecord {
            version: RECORD_VERSION + 1,
            ..rec
        };
        newer.save(d.path()).expect("save");
        let e = ChainRecord::load(d.path())
            .err()
            .map(|e| crate::error::chain(&e));
        assert!(e.unwrap_or_default().contains("newer than this abupdate"));
    }
}
