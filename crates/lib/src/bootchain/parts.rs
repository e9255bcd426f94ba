//! The firmware's partitions on the abupdate disk: the BIOS boot partition (GPT type
//! `21686148-6449-6E6F-744E-656564454649`) and the EFI system partition (type
//! `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`), found by the config's `bootchain.bios_boot` /
//! `bootchain.esp` or else by type. The GPT is read with the `gpt` crate, read-only.

use std::path::PathBuf;

use crate::config::PartitionSpec;
use crate::context::Context;
use crate::disk::GptEntry;
use crate::error::{Error, Result};

/// GPT type of a BIOS boot partition.
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6e6f-744e-656564454649";
/// GPT type of an EFI system partition.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

/// A firmware partition found on the disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FwPartition {
    /// 1-based partition number.
    pub number: u32,
    /// Device node.
    pub device: PathBuf,
    /// Partition GUID, lowercase.
    pub partuuid: String,
    /// First LBA, in logical blocks.
    pub first_lba: u64,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// Both firmware partitions, as present.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Firmware {
    /// The whole disk.
    pub disk: PathBuf,
    /// Logical block size of the disk.
    pub block_size: u64,
    /// The BIOS boot partition.
    pub bios_boot: Option<FwPartition>,
    /// The EFI system partition.
    pub esp: Option<FwPartition>,
}

/// Picks the partition for `what`: the one the config names, else the only one of
/// `type_guid` (pure). Several of the type without a config entry is an error, as is a
/// configured one that is missing.
pub fn select<'a>(
    parts: &'a [GptEntry],
    spec: Option<&PartitionSpec>,
    type_guid: &str,
    what: &str,
    key: &str,
) -> std::result::Result<Option<&'a GptEntry>, String> {
    let found: Vec<&GptEntry> = match spec {
        Some(s) => parts.iter().filter(|p| p.matches(s)).collect(),
        None => parts
            .iter()
            .filter(|p| p.type_guid.eq_ignore_ascii_case(type_guid))
            .collect(),
    };
    match (found.as_slice(), spec) {
        ([], None) => Ok(None),
        ([p], _) => Ok(Some(p)),
        ([], Some(s)) => Err(format!(
            "the {what} named by {key} ({}) is not in the GPT",
            s.describe()
        )),
        (many, Some(s)) => Err(format!(
            "{key} ({}) matches {} GPT entries",
            s.describe(),
            many.len()
        )),
        (many, None) => Err(format!(
            "{} GPT entries have the {what} type ({}); choose one with {key}",
            many.len(),
            many.iter()
                .map(|p| format!("#{}", p.number))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Finds the firmware partitions of the abupdate disk.
pub fn discover(ctx: &Context) -> Result<Firmware> {
    let disk = &ctx.layout.disk;
    let (parts, block_size) = crate::disk::read_gpt(disk)?;
    let cfg = &ctx.cfg.bootchain;
    let to_fw = |p: &GptEntry| -> Result<FwPartition> {
        Ok(FwPartition {
            number: p.number,
            device: crate::disk::partition_node(disk, p.number)?,
            partuuid: p.partuuid.clone(),
            first_lba: p.first_lba,
            size_bytes: p.size_bytes(block_size),
        })
    };
    let bios = select(
        &parts,
        cfg.bios_boot.as_ref(),
        BIOS_BOOT_TYPE,
        "BIOS boot partition",
        "bootchain.bios_boot",
    )
    .map_err(Error::Refused)?;
    let esp = select(
        &parts,
        cfg.esp.as_ref(),
        ESP_TYPE,
        "EFI system partition",
        "bootchain.esp",
    )
    .map_err(Error::Refused)?;
    Ok(Firmware {
        disk: disk.clone(),
        block_size,
        bios_boot: bios.map(to_fw).transpose()?,
        esp: esp.map(to_fw).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u32, t: &str, name: &str) -> GptEntry {
        GptEntry {
            number: n,
            type_guid: t.into(),
            partuuid: format!("5e1f0000-0000-4000-8000-00000000000{n}"),
            name: name.into(),
            first_lba: 2048 * u64::from(n),
            last_lba: 2048 * u64::from(n) + 2047,
        }
    }

    #[test]
    fn by_type_or_by_config() {
        let linux = "0fc63daf-8483-4772-8e79-3d69d8477de4";
        let parts = vec![
            part(1, BIOS_BOOT_TYPE, "bios"),
            part(2, &ESP_TYPE.to_uppercase(), "esp"),
            part(3, linux, "abboot"),
        ];
        let pick = |spec: Option<&PartitionSpec>, t: &str| {
            select(&parts, spec, t, "thing", "bootchain.thing").map(|p| p.map(|p| p.number))
        };
        assert_eq!(pick(None, BIOS_BOOT_TYPE), Ok(Some(1)));
        assert_eq!(
            pick(None, ESP_TYPE),
            Ok(Some(2)),
            "type compared case-insensitively"
        );
        assert_eq!(pick(None, "00000000-0000-0000-0000-000000000000"), Ok(None));
        let by_label = PartitionSpec {
            partlabel: Some("abboot".into()),
            partuuid: None,
            mountpoint: None,
        };
        assert_eq!(
            pick(Some(&by_label), ESP_TYPE),
            Ok(Some(3)),
            "config wins over type"
        );
        let missing = PartitionSpec {
            partlabel: Some("nope".into()),
            partuuid: None,
            mountpoint: None,
        };
        let e = pick(Some(&missing), ESP_TYPE).err().unwrap_or_default();
        assert!(
            e.contains("bootchain.thing") && e.contains("partlabel nope"),
            "{e}"
        );
    }

    #[test]
    fn two_of_a_type_need_the_config() {
        let parts = vec![part(1, ESP_TYPE, "esp1"), part(4, ESP_TYPE, "esp2")];
        let e = select(
            &parts,
            None,
            ESP_TYPE,
            "EFI system partition",
            "bootchain.esp",
        )
        .err()
        .unwrap_or_default();
        assert!(e.contains("#1, #4") && e.contains("bootchain.esp"), "{e}");
    }
}
