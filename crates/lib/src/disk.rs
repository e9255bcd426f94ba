//! Slot discovery: reads the GPT with the `gpt` crate (read-only), maps partitions to device
//! nodes through sysfs, and finds the booted slot from the device of `/`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, PartitionSpec};
use crate::error::{Error, Result};

/// Environment variable that makes abupdate pretend a slot is booted. TEST ONLY.
pub const ASSUME_BOOTED_ENV: &str = "ABUPDATE_ASSUME_BOOTED";

/// One of the two root slots.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SlotId {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl SlotId {
    /// Both slots, in order.
    pub const ALL: [SlotId; 2] = [SlotId::A, SlotId::B];

    /// `"a"` or `"b"`, as used in grubenv and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotId::A => "a",
            SlotId::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    /// Parses `a`/`b` (any case).
    pub fn parse(s: &str) -> Option<SlotId> {
        match s.trim().to_ascii_lowercase().as_str() {
            "a" => Some(SlotId::A),
            "b" => Some(SlotId::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str().to_ascii_uppercase())
    }
}

/// A partition found on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// 1-based partition number.
    pub number: u32,
    /// Device node, e.g. `/dev/vda3`.
    pub device: PathBuf,
    /// GPT partition GUID, lowercase.
    pub partuuid: String,
    /// GPT partition name.
    pub partlabel: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Device number of the node (`st_rdev`).
    pub rdev: u64,
}

/// The partitions abupdate manages on one disk.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Whole-disk device.
    pub disk: PathBuf,
    /// Shared boot partition.
    pub boot: PartitionInfo,
    /// Slot A.
    pub slot_a: PartitionInfo,
    /// Slot B.
    pub slot_b: PartitionInfo,
    /// Data partition.
    pub data: Option<PartitionInfo>,
}

impl Layout {
    /// The partition of a slot.
    pub fn slot(&self, id: SlotId) -> &PartitionInfo {
        match id {
            SlotId::A => &self.slot_a,
            SlotId::B => &self.slot_b,
        }
    }
}

/// Finds the disk and the configured partitions.
pub fn discover(cfg: &Config) -> Result<Layout> {
    let disk = match &cfg.disk {
        Some(d) => d.clone(),
        None => disk_of_root()?,
    };
    let (parts, block_size) = read_gpt(&disk)?;
    let find = |what: &str, spec: &PartitionSpec| -> Result<PartitionInfo> {
        let found: Vec<&GptEntry> = parts.iter().filter(|p| p.matches(spec)).collect();
        match found.as_slice() {
            [p] => partition_info(&disk, p, block_size),
            [] => Err(Error::Refused(format!(
                "{what} partition ({}) not found in the GPT of {}",
                spec.describe(),
                disk.display()
            ))),
            _ => Err(Error::Refused(format!(
                "{what} partition ({}) is ambiguous: {} GPT entries on {} match",
                spec.describe(),
                found.len(),
                disk.display()
            ))),
        }
    };
    let p = &cfg.partitions;
    Ok(Layout {
        boot: find("boot", &p.boot)?,
        slot_a: find("slot A", &p.slot_a)?,
        slot_b: find("slot B", &p.slot_b)?,
        data: p.data.as_ref().map(|d| find("data", d)).transpose()?,
        disk,
    })
}

/// Which slot is booted: the slot whose partition holds `/`, or `ABUPDATE_ASSUME_BOOTED`.
pub fn booted_slot(layout: &Layout) -> Result<SlotId> {
    if let Ok(v) = std::env::var(ASSUME_BOOTED_ENV) {
        return SlotId::parse(&v)
            .ok_or_else(|| Error::Refused(format!("{ASSUME_BOOTED_ENV}={v:?}: expected a or b")));
    }
    let dev = std::fs::metadata("/")
        .map_err(Error::io("stat", "/"))?
        .dev();
    for id in SlotId::ALL {
        if layout.slot(id).rdev == dev {
            return Ok(id);
        }
    }
    Err(Error::Refused(format!(
        "the root filesystem (device {}:{}) is on neither slot ({} nor {})",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        layout.slot_a.device.display(),
        layout.slot_b.device.display()
    )))
}

/// A used GPT entry as read from the disk (read-only, with the `gpt` crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// 1-based partition number.
    pub number: u32,
    /// Type GUID, lowercase.
    pub type_guid: String,
    /// Partition GUID, lowercase.
    pub partuuid: String,
    /// Partition name.
    pub name: String,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
}

impl GptEntry {
    /// Its size with `block_size`-byte logical blocks.
    pub fn size_bytes(&self, block_size: u64) -> u64 {
        (self.last_lba + 1).saturating_sub(self.first_lba) * block_size
    }

    /// Whether this entry is the one `spec` names (by GPT name when it has one, else by
    /// partition GUID, in any case).
    pub fn matches(&self, spec: &PartitionSpec) -> bool {
        match (&spec.partlabel, &spec.partuuid) {
            (Some(l), _) => &self.name == l,
            (None, Some(u)) => self.partuuid.eq_ignore_ascii_case(u),
            _ => false,
        }
    }
}

/// The used entries of `disk`'s GPT and its logical block size in bytes.
pub fn read_gpt(disk: &Path) -> Result<(Vec<GptEntry>, u64)> {
    let lb = logical_block_size(disk);
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(lb)
        .open(disk)
        .map_err(|e| Error::Io {
            step: "read GPT of".into(),
            path: disk.to_owned(),
            source: std::io::Error::other(e),
        })?;
    let parts = gpt
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| GptEntry {
            number: *n,
            type_guid: p.part_type_guid.guid.hyphenated().to_string(),
            partuuid: p.part_guid.hyphenated().to_string(),
            name: p.name.clone(),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
        })
        .collect();
    Ok((parts, lb.into()))
}

pub(crate) fn logical_block_size(disk: &Path) -> gpt::disk::LogicalBlockSize {
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let s = std::fs::read_to_string(format!("/sys/class/block/{name}/queue/logical_block_size"));
    match s.ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(4096) => gpt::disk::LogicalBlockSize::Lb4096,
        _ => gpt::disk::LogicalBlockSize::Lb512,
    }
}

fn partition_info(disk: &Path, e: &GptEntry, block_size: u64) -> Result<PartitionInfo> {
    let device = partition_node(disk, e.number)?;
    let meta = std::fs::metadata(&device).map_err(Error::io("stat", &device))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::Refused(format!(
            "{} is not a block device",
            device.display()
        )));
    }
    Ok(PartitionInfo {
        number: e.number,
        device,
        partuuid: e.partuuid.clone(),
        partlabel: e.name.clone(),
        size_bytes: e.size_bytes(block_size),
        rdev: meta.rdev(),
    })
}

/// The device node of partition `number` of `disk`, found through sysfs
/// (`/sys/class/block/<disk>/<part>/partition`), so sdXN, vdXN, nvme0n1pN and loopNpM all work.
pub(crate) fn partition_node(disk: &Path, number: u32) -> Result<PathBuf> {
    let real = std::fs::canonicalize(disk).map_err(Error::io("resolve", disk))?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = PathBuf::from(format!("/sys/class/block/{name}"));
    let entries = std::fs::read_dir(&sys).map_err(Error::io("list partitions in", &sys))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("list partitions in", &sys))?;
        let part_file = entry.path().join("partition");
        if let Ok(n) = std::fs::read_to_string(&part_file) {
            if n.trim().parse::<u32>().ok() == Some(number) {
                return Ok(Path::new("/dev").join(entry.file_name()));
            }
        }
    }
    Err(Error::Refused(format!(
        "partition {number} of {} has no device node (for a loop device run `partx -a {}`)",
        disk.display(),
        disk.display()
    )))
}

/// The whole disk holding the root filesystem, through `/sys/dev/block/MAJ:MIN`.
fn disk_of_root() -> Result<PathBuf> {
    let dev = std::fs::metadata("/")
        .map_err(Error::io("stat", "/"))?
        .dev();
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    ));
    let real =
        std::fs::canonicalize(&sys).map_err(Error::io("resolve the root device via", &sys))?;
    if !real.join("partition").exists() {
        return Err(Error::Refused(format!(
            "the root filesystem is not on a partition ({}); set `disk:` in the config",
            real.display()
        )));
    }
    let parent = real
        .parent()
        .and_then(|p| p.file_name())
        .ok_or_else(|| Error::Internal(format!("no parent disk for {}", real.display())))?;
    Ok(Path::new("/dev").join(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ids() {
        assert_eq!(SlotId::parse("B"), Some(SlotId::B));
        assert_eq!(SlotId::parse("c"), None);
        assert_eq!(SlotId::A.other(), SlotId::B);
        assert_eq!(SlotId::B.to_string(), "B");
    }
}
