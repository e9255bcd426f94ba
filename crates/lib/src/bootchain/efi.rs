//! The EFI system partition abupdate installs (pure parts): which files go where for the
//! signed (shim + the distribution's signed GRUB, Secure Boot) and unsigned (a GRUB image
//! built from the running system's modules) loaders, the stub `grub.cfg` that sends the
//! signed GRUB to abupdate's `grub.cfg`, GRUB's version from an image's SBAT section, the
//! FAT boot sector, and `efibootmgr`'s output.

/// The removable-media path every UEFI firmware boots without an NVRAM entry.
pub const REMOVABLE_DIR: &str = "/EFI/BOOT";
/// The removable-media loader file name on x86-64.
pub const REMOVABLE_LOADER: &str = "BOOTX64.EFI";

/// Where the signed binaries come from on Debian and Ubuntu (packages shim-signed,
/// shim-helpers-amd64-signed and grub-efi-amd64-signed).
pub const SIGNED_SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
/// MokManager, which shim starts when a MOK enrolment is pending.
pub const SIGNED_MOKMANAGER: &str = "/usr/lib/shim/mmx64.efi.signed";
/// The distribution's signed, monolithic GRUB.
pub const SIGNED_GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";

/// Which loader the ESP holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loader {
    /// shim and the distribution's signed GRUB, reading the stub config.
    Signed,
    /// A GRUB image built with `grub-mkimage`, its early config naming the boot partition.
    Unsigned,
}

/// What an ESP file is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// [`SIGNED_SHIM`].
    Shim,
    /// [`SIGNED_MOKMANAGER`].
    MokManager,
    /// [`SIGNED_GRUB`].
    SignedGrub,
    /// The image `grub-mkimage -O x86_64-efi` built.
    BuiltGrub,
    /// [`render_stub`].
    StubConfig,
}

/// The files of the ESP for `loader`, as (path on the ESP, origin), and the path of the
/// loader an NVRAM entry starts. Both the distribution's directory and the removable-media
/// directory get a complete chain, and both get the stub config: a signed GRUB reads it
/// from its own directory, and it is harmless next to an unsigned one.
pub fn plan(
    loader: Loader,
    vendor: &str,
    with_mokmanager: bool,
) -> (Vec<(String, Origin)>, String) {
    let dist = format!("/EFI/{vendor}");
    let mut files = Vec::new();
    let nvram_loader = match loader {
        Loader::Signed => {
            files.push((format!("{dist}/shimx64.efi"), Origin::Shim));
            files.push((format!("{dist}/grubx64.efi"), Origin::SignedGrub));
            files.push((format!("{REMOVABLE_DIR}/{REMOVABLE_LOADER}"), Origin::Shim));
            files.push((format!("{REMOVABLE_DIR}/grubx64.efi"), Origin::SignedGrub));
            if with_mokmanager {
                files.push((format!("{dist}/mmx64.efi"), Origin::MokManager));
                files.push((format!("{REMOVABLE_DIR}/mmx64.efi"), Origin::MokManager));
            }
            format!("{dist}/shimx64.efi")
        }
        Loader::Unsigned => {
            files.push((format!("{dist}/grubx64.efi"), Origin::BuiltGrub));
            files.push((
                format!("{REMOVABLE_DIR}/{REMOVABLE_LOADER}"),
                Origin::BuiltGrub,
            ));
            format!("{dist}/grubx64.efi")
        }
    };
    files.push((format!("{dist}/grub.cfg"), Origin::StubConfig));
    files.push((format!("{REMOVABLE_DIR}/grub.cfg"), Origin::StubConfig));
    (files, nvram_loader)
}

/// The stub `grub.cfg` of the ESP: find the boot partition by filesystem UUID and run
/// abupdate's `grub.cfg` there (what Debian's `grub-install` writes for its signed GRUB,
/// pointed at the boot partition instead of the slot's `/boot/grub`).
pub fn render_stub(boot_fs_uuid: &str) -> String {
    format!(
        "# Written by abupdate init: boot through abupdate's grub.cfg on the boot partition.\n\
         # abupdate verify checks that this file names the boot partition's filesystem UUID.\n\
         search.fs_uuid {boot_fs_uuid} root\n\
         set prefix=($root)/grub\n\
         configfile $prefix/grub.cfg\n"
    )
}

/// The filesystem UUID an early or stub config searches for as `root`
/// (`search.fs_uuid UUID root` or `search --fs-uuid --set=root UUID`).
pub fn config_uuid(config: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["search.fs_uuid", uuid, "root", ..] => Some(uuid.to_string()),
            ["search", rest @ ..]
                if rest.contains(&"--fs-uuid") && rest.contains(&"--set=root") =>
            {
                rest.iter()
                    .rfind(|a| !a.starts_with('-'))
                    .map(|s| s.to_string())
            }
            _ => None,
        }
    })
}

/// The prefix a config sets (`set prefix=...`).
pub fn config_prefix(config: &str) -> Option<String> {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("set prefix="))
        .map(|p| p.trim().to_string())
}

/// GRUB's package version from the SBAT section of a signed image: the version of the
/// distribution's `grub.<vendor>` line, else of the upstream `grub` line.
pub fn sbat_grub_version(image: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(image);
    let mut upstream = None;
    for line in text.split(['\n', '\0']) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 6 || f[1].parse::<u32>().is_err() {
            continue;
        }
        if f[0].starts_with("grub.") {
            return Some(f[4].to_string());
        }
        if f[0] == "grub" && upstream.is_none() {
            upstream = Some(f[4].to_string());
        }
    }
    upstream
}

/// A FAT filesystem's boot sector, as far as abupdate needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatInfo {
    /// `FAT12`, `FAT16` or `FAT32`.
    pub kind: String,
    /// Volume serial, as `XXXX-XXXX` (what `blkid` shows as UUID).
    pub serial: String,
}

/// Parses the first sector of a partition; `None` if it holds no FAT filesystem.
pub fn fat_info(sector: &[u8]) -> Option<FatInfo> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let bps = u16::from_le_bytes([sector[11], sector[12]]);
    let spc = sector[13];
    if !bps.is_power_of_two() || !(512..=4096).contains(&bps) || !spc.is_power_of_two() {
        return None;
    }
    let (kind_at, serial_at) = if &sector[82..87] == b"FAT32" {
        (82, 67)
    } else if sector[54..57] == *b"FAT" {
        (54, 39)
    } else {
        return None;
    };
    let kind = String::from_utf8_lossy(&sector[kind_at..kind_at + 8])
        .trim()
        .to_string();
    let s = u32::from_le_bytes(sector[serial_at..serial_at + 4].try_into().ok()?);
    Some(FatInfo {
        kind,
        serial: format!("{:04X}-{:04X}", s >> 16, s & 0xffff),
    })
}

/// One boot entry of `efibootmgr -v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// `Boot####` number (hex).
    pub num: String,
    /// Whether it is active (`*`).
    pub active: bool,
    /// Its label.
    pub label: String,
    /// GPT partition UUID of its `HD(...)` node, lowercase.
    pub partuuid: Option<String>,
    /// The loader path (`\EFI\debian\shimx64.efi`).
    pub loader: Option<String>,
}

/// What `efibootmgr -v` lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootConfig {
    /// `BootOrder`, as numbers.
    pub order: Vec<String>,
    /// Every `Boot####` entry.
    pub entries: Vec<BootEntry>,
}

/// Parses `efibootmgr -v` (both efibootmgr 17's `/File(\path)` and 18's `/\path`).
pub fn parse_efibootmgr(text: &str) -> BootConfig {
    let mut cfg = BootConfig::default();
    for line in text.lines() {
        if let Some(order) = line.strip_prefix("BootOrder:") {
            cfg.order = order
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            continue;
        }
        let Some(rest) = line.strip_prefix("Boot") else {
            continue;
        };
        let num: String = rest.chars().take(4).collect();
        if num.len() != 4 || !num.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let rest = &rest[4..];
        let active = rest.starts_with('*');
        let rest = rest.trim_start_matches('*').trim_start();
        let (label, path) = match rest.split_once('\t') {
            Some((l, p)) => (l.trim(), p.trim()),
            None => match rest.find(" HD(") {
                Some(i) => (rest[..i].trim(), rest[i..].trim()),
                None => (rest.trim(), ""),
            },
        };
        let mut partuuid = None;
        let mut loader = None;
        if let Some(hd) = path.find("HD(") {
            let inner = &path[hd + 3..];
            if let Some(close) = inner.find(')') {
                let fields: Vec<&str> = inner[..close].split(',').collect();
                if fields.len() >= 3 && fields[1].eq_ignore_ascii_case("GPT") {
                    partuuid = Some(fields[2].to_ascii_lowercase());
                }
                let after = inner[close + 1..].trim_start_matches('/');
                loader = if let Some(f) = after.strip_prefix("File(") {
                    f.split_once(')').map(|(p, _)| p.to_string())
                } else {
                    after
                        .split_whitespace()
                        .next()
                        .filter(|p| p.starts_with('\\'))
                        .map(str::to_string)
                };
            }
        }
        cfg.entries.push(BootEntry {
            num,
            active,
            label: label.to_string(),
            partuuid,
            loader,
        });
    }
    cfg
}

/// What the NVRAM needs so that the firmware starts `loader` on the ESP `partuuid` first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum NvramPlan {
    /// An active entry for the loader exists and comes first in `BootOrder`.
    Present {
        /// Its number.
        num: String,
    },
    /// An active entry exists but is not first: put it first.
    Reorder {
        /// Its number.
        num: String,
        /// The new `BootOrder`.
        order: Vec<String>,
    },
    /// No active entry names the loader: create one (efibootmgr puts it first).
    Create,
}

/// Plans the NVRAM change for `loader` (ESP path with `/`) on partition `partuuid` (pure).
pub fn plan_nvram(cfg: &BootConfig, partuuid: &str, loader: &str) -> NvramPlan {
    let want = loader.replace('/', "\\");
    let ours = cfg.entries.iter().find(|e| {
        e.active
            && e.partuuid
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case(partuuid))
            && e.loader
                .as_deref()
                .is_some_and(|l| l.eq_ignore_ascii_case(&want))
    });
    match ours {
        None => NvramPlan::Create,
        Some(e) if cfg.order.first() == Some(&e.num) => NvramPlan::Present { num: e.num.clone() },
        Some(e) => {
            let mut order = vec![e.num.clone()];
            order.extend(cfg.order.iter().filter(|n| **n != e.num).cloned());
            NvramPlan::Reorder {
                num: e.num.clone(),
                order,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EFIBOOTMGR_17: &str = "BootCurrent: 0004\n\
Timeout: 1 seconds\n\
BootOrder: 0000,0004,0001\n\
Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n\
Boot0001* UEFI QEMU HARDDISK QM00001 \tPciRoot(0x0)/Pci(0x1,0x1)/Ata(0,0,0)N.....YM....R,Y.\n\
Boot0004* debian\tHD(2,GPT,F0E5C6B1-9D6A-4A3E-8F6E-2B1F1C8E0A11,0x800,0x100000)/File(\\EFI\\debian\\shimx64.efi)\n\
Boot0005  old\tHD(2,GPT,f0e5c6b1-9d6a-4a3e-8f6e-2b1f1c8e0a11,0x800,0x100000)/File(\\EFI\\debian\\grubx64.efi)\n";

    const EFIBOOTMGR_18: &str = "BootCurrent: 0003\n\
BootOrder: 0003,0000\n\
Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n\
Boot0003* abupdate\tHD(2,GPT,f0e5c6b1-9d6a-4a3e-8f6e-2b1f1c8e0a11,0x800,0x100000)/\\EFI\\debian\\grubx64.efi\n";

    const ESP: &str = "f0e5c6b1-9d6a-4a3e-8f6e-2b1f1c8e0a11";

    #[test]
    fn plans_both_loaders() {
        let (files, nvram) = plan(Loader::Signed, "debian", true);
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/EFI/debian/shimx64.efi",
                "/EFI/debian/grubx64.efi",
                "/EFI/BOOT/BOOTX64.EFI",
                "/EFI/BOOT/grubx64.efi",
                "/EFI/debian/mmx64.efi",
                "/EFI/BOOT/mmx64.efi",
                "/EFI/debian/grub.cfg",
                "/EFI/BOOT/grub.cfg",
            ]
        );
        assert_eq!(nvram, "/EFI/debian/shimx64.efi");
        assert!(files.contains(&("/EFI/BOOT/BOOTX64.EFI".into(), Origin::Shim)));
        let (files, nvram) = plan(Loader::Unsigned, "ubuntu", false);
        assert_eq!(nvram, "/EFI/ubuntu/grubx64.efi");
        assert!(files.contains(&("/EFI/BOOT/BOOTX64.EFI".into(), Origin::BuiltGrub)));
        assert!(!files.iter().any(|(_, o)| *o == Origin::Shim));
    }

    #[test]
    fn stub_config_names_the_boot_partition() {
        let stub = render_stub("5e1f0000-0000-4000-8000-0000000000b2");
        assert_eq!(
            config_uuid(&stub).as_deref(),
            Some("5e1f0000-0000-4000-8000-0000000000b2")
        );
        assert_eq!(config_prefix(&stub).as_deref(), Some("($root)/grub"));
        assert!(stub.ends_with("configfile $prefix/grub.cfg\n"));
        // What Debian's grub-install writes for its signed GRUB is read the same way.
        let debian = "search.fs_uuid 0a1b root hd0,gpt2\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n";
        assert_eq!(config_uuid(debian).as_deref(), Some("0a1b"));
        let long = "search --no-floppy --fs-uuid --set=root 77aa\n";
        assert_eq!(config_uuid(long).as_deref(), Some("77aa"));
        assert_eq!(config_uuid("set root=hd0\n"), None);
    }

    #[test]
    fn sbat_version() {
        let mut image = b"MZ....".to_vec();
        image.extend_from_slice(
            b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n\
grub,5,Free Software Foundation,grub,2.06,https://www.gnu.org/software/grub/\n\
grub.debian,5,Debian,grub2,2.06-13+deb12u2,https://tracker.debian.org/pkg/grub2\n\0\0",
        );
        assert_eq!(
            sbat_grub_version(&image).as_deref(),
            Some("2.06-13+deb12u2")
        );
        assert_eq!(sbat_grub_version(b"no sbat"), None);
    }

    #[test]
    fn fat_boot_sector() {
        let mut s = vec![0u8; 512];
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 4;
        s[39..43].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        s[54..62].copy_from_slice(b"FAT16   ");
        s[510] = 0x55;
        s[511] = 0xAA;
        assert_eq!(
            fat_info(&s),
            Some(FatInfo {
                kind: "FAT16".into(),
                serial: "1234-ABCD".into()
            })
        );
        s[54..62].copy_from_slice(b"        ");
        assert_eq!(fat_info(&s), None, "no FAT type string");
        s[82..90].copy_from_slice(b"FAT32   ");
        assert_eq!(fat_info(&s).map(|f| f.kind), Some("FAT32".into()));
        s[510] = 0;
        assert_eq!(fat_info(&s), None);
    }

    #[test]
    fn efibootmgr_17_and_18() {
        let c = parse_efibootmgr(EFIBOOTMGR_17);
        assert_eq!(c.order, ["0000", "0004", "0001"]);
        assert_eq!(c.entries.len(), 4);
        let deb = &c.entries[2];
        assert_eq!(deb.num, "0004");
        assert!(deb.active);
        assert_eq!(deb.label, "debian");
        assert_eq!(deb.partuuid.as_deref(), Some(ESP));
        assert_eq!(deb.loader.as_deref(), Some("\\EFI\\debian\\shimx64.efi"));
        assert!(!c.entries[3].active);
        assert_eq!(c.entries[1].label, "UEFI QEMU HARDDISK QM00001");
        assert_eq!(c.entries[1].loader, None);
        let c = parse_efibootmgr(EFIBOOTMGR_18);
        assert_eq!(
            c.entries[1].loader.as_deref(),
            Some("\\EFI\\debian\\grubx64.efi")
        );
    }

    #[test]
    fn nvram_plans() {
        let c = parse_efibootmgr(EFIBOOTMGR_17);
        assert_eq!(
            plan_nvram(&c, ESP, "/EFI/debian/shimx64.efi"),
            NvramPlan::Reorder {
                num: "0004".into(),
                order: vec!["0004".into(), "0000".into(), "0001".into()]
            }
        );
        // The inactive entry for grubx64.efi does not count.
        assert_eq!(
            plan_nvram(&c, ESP, "/EFI/debian/grubx64.efi"),
            NvramPlan::Create
        );
        assert_eq!(
            plan_nvram(
                &c,
                "00000000-0000-0000-0000-000000000000",
                "/EFI/debian/shimx64.efi"
            ),
            NvramPlan::Create,
            "another disk's ESP"
        );
        let c = parse_efibootmgr(EFIBOOTMGR_18);
        assert_eq!(
            plan_nvram(&c, ESP, "/EFI/debian/grubx64.efi"),
            NvramPlan::Present { num: "0003".into() }
        );
    }
}
