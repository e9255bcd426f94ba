//! The slot's `/etc/fstab`: parsing and rendering (pure, escaped as fstab(5) requires) and
//! the one write into a staged slot.
//!
//! abupdate owns three lines of a staged slot's fstab: the slot's own root (by PARTUUID, so
//! that a slot booted by any boot entry — the distribution's own with `ro` included — is
//! remounted read-write by `systemd-remount-fs`), the shared boot partition and the data
//! partition (by filesystem UUID). The image's other lines are kept as they were.
//!
//! A field holding a space, tab, newline or backslash is written with octal escapes
//! (`\040`, `\011`, `\012`, `\134`), which libmount and the kernel read back; no value can
//! add a line or a field.

use std::path::Path;

use crate::config::Config;
use crate::disk::{Layout, PartitionInfo, SlotId};
use crate::error::{Error, Result};
use crate::fsinfo;
use crate::slotfs::SlotRoot;

/// One fstab line's six fields, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What is mounted (`UUID=…`, `PARTUUID=…`, a device, `tmpfs`).
    pub spec: String,
    /// Where (the mount point).
    pub file: String,
    /// Filesystem type.
    pub vfstype: String,
    /// Mount options.
    pub options: String,
    /// Dump frequency.
    pub freq: u32,
    /// fsck pass number.
    pub passno: u32,
}

impl Entry {
    /// The entry as one line of fstab, fields escaped, with its newline.
    pub fn render(&self) -> String {
        format!(
            "{} {} {} {} {} {}\n",
            escape(&self.spec),
            escape(&self.file),
            escape(&self.vfstype),
            escape(&self.options),
            self.freq,
            self.passno
        )
    }
}

/// Escapes a field as fstab(5) requires: space, tab, newline, backslash and every other
/// control character as a three-digit octal escape. An empty field becomes `none`.
pub fn escape(field: &str) -> String {
    if field.is_empty() {
        return "none".into();
    }
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        if c == '\\' || c.is_ascii_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:03o}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads the octal escapes of a field back (`\040` → space); anything else is kept as is.
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| field.to_string())
}

/// Parses one line: `None` for blank lines and comments, else the entry (missing trailing
/// fields take fstab's defaults: `defaults 0 0`).
pub fn parse_line(line: &str) -> Option<Entry> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let mut f = t.split_ascii_whitespace();
    let spec = unescape(f.next()?);
    let file = unescape(f.next().unwrap_or("none"));
    let vfstype = unescape(f.next().unwrap_or("auto"));
    let options = unescape(f.next().unwrap_or("defaults"));
    let freq = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let passno = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    Some(Entry {
        spec,
        file,
        vfstype,
        options,
        freq,
        passno,
    })
}

/// What abupdate puts into a slot's fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed<'a> {
    /// PARTUUID of the slot itself, mounted on `/`.
    pub root_partuuid: &'a str,
    /// Filesystem UUID and mount point of the boot partition.
    pub boot: (&'a str, &'a Path),
    /// Filesystem UUID and mount point of the data partition, if any.
    pub data: Option<(&'a str, &'a Path)>,
}

impl Managed<'_> {
    /// abupdate's entries, root first.
    pub fn entries(&self) -> Vec<Entry> {
        let shared = |uuid: &str, mp: &Path| Entry {
            spec: format!("UUID={uuid}"),
            file: mp.to_string_lossy().into_owned(),
            vfstype: "auto".into(),
            options: "defaults,nofail".into(),
            freq: 0,
            passno: 2,
        };
        let mut v = vec![Entry {
            spec: format!("PARTUUID={}", self.root_partuuid),
            file: "/".into(),
            vfstype: "ext4".into(),
            options: "defaults,errors=remount-ro".into(),
            freq: 0,
            passno: 1,
        }];
        v.push(shared(self.boot.0, self.boot.1));
        if let Some((uuid, mp)) = self.data {
            v.push(shared(uuid, mp));
        }
        v
    }

    /// Whether the image's `entry` is replaced by one of ours (same mount point).
    fn replaces(&self, entry: &Entry) -> bool {
        let file = Path::new(&entry.file);
        file == Path::new("/") || file == self.boot.1 || self.data.is_some_and(|(_, mp)| file == mp)
    }
}

/// abupdate's lines for a slot's fstab (pure).
pub fn fstab_lines(managed: &Managed<'_>) -> String {
    let mut s = String::from(
        "# Written by abupdate stage: this slot's root by PARTUUID (so that any boot entry\n\
         # gets it read-write), the boot and data partitions shared by both slots by UUID.\n",
    );
    for e in managed.entries() {
        s.push_str(&e.render());
    }
    s
}

/// The slot's fstab: abupdate's lines, then the image's own lines except those for `/` and
/// the shared mount points, kept verbatim (pure).
pub fn merge_fstab(image: &str, managed: &Managed<'_>) -> String {
    let mut out = fstab_lines(managed);
    let kept: Vec<&str> = image
        .lines()
        .filter(|l| parse_line(l).is_some_and(|e| !managed.replaces(&e)))
        .collect();
    if !kept.is_empty() {
        out.push_str("# Kept from the image's fstab:\n");
        for l in kept {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Writes the staged slot's `/etc/fstab` and makes its shared mount points.
pub fn write_fstab(cfg: &Config, layout: &Layout, slot: SlotId, root: &SlotRoot) -> Result<()> {
    let uuid_of = |p: &PartitionInfo| -> Result<String> {
        fsinfo::read_ext4_info(&p.device)
            .map_err(Error::io("read superblock of", &p.device))?
            .map(|i| i.uuid)
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{} holds no ext2/3/4 filesystem to put in fstab",
                    p.device.display()
                ))
            })
    };
    let boot_mp = cfg.boot_mountpoint();
    let boot_uuid = uuid_of(&layout.boot)?;
    let data = match (&layout.data, cfg.data_mountpoint()) {
        (Some(p), Some(mp)) => Some((uuid_of(p)?, mp)),
        _ => None,
    };
    let managed = Managed {
        root_partuuid: &layout.slot(slot).partuuid,
        boot: (&boot_uuid, &boot_mp),
        data: data.as_ref().map(|(u, m)| (u.as_str(), m.as_path())),
    };
    let image = root.read_to_string("/etc/fstab")?.unwrap_or_default();
    root.create_dir_all("/etc")?;
    root.write_file(
        "/etc/fstab",
        merge_fstab(&image, &managed).as_bytes(),
        0o644,
    )?;
    root.create_dir_all(&boot_mp.to_string_lossy())?;
    if let Some((_, mp)) = &data {
        root.create_dir_all(&mp.to_string_lossy())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed<'a>(boot: &'a Path, data: Option<&'a Path>) -> Managed<'a> {
        Managed {
            root_partuuid: "0f6b3c8e-1d2a-4c5b-9e7f-112233445566",
            boot: ("B", boot),
            data: data.map(|d| ("D", d)),
        }
    }

    #[test]
    fn ours_name_the_root_boot_and_data() {
        let m = managed(Path::new("/boot/abboot"), Some(Path::new("/data")));
        let ours = fstab_lines(&m);
        assert!(ours.contains(
            "PARTUUID=0f6b3c8e-1d2a-4c5b-9e7f-112233445566 / ext4 defaults,errors=remount-ro 0 1\n"
        ));
        assert!(ours.contains("UUID=B /boot/abboot auto defaults,nofail 0 2\n"));
        assert!(ours.contains("UUID=D /data auto defaults,nofail 0 2\n"));
    }

    #[test]
    fn the_image_keeps_its_other_lines() {
        let m = managed(Path::new("/boot/abboot"), Some(Path::new("/data")));
        let image = "# comment\nUUID=x / ext4 errors=remount-ro 0 1\nUUID=y /data ext4 defaults 0 2\ntmpfs /tmp tmpfs defaults 0 0\n/dev/sdz1\t/srv/a\\040b ext4 defaults 0 2\n";
        let out = merge_fstab(image, &m);
        assert!(out.contains("tmpfs /tmp"));
        assert!(out.contains("/srv/a\\040b"));
        assert!(!out.contains("UUID=x"));
        assert!(!out.contains("UUID=y"));
        assert_eq!(out.lines().filter(|l| l.contains(" / ")).count(), 1);
    }

    #[test]
    fn spaces_and_newlines_are_escaped() {
        let boot = Path::new("/boot/a b");
        let data = Path::new("/srv/x\ny\tz\\w");
        let out = fstab_lines(&managed(boot, Some(data)));
        assert!(out.contains("UUID=B /boot/a\\040b auto"), "{out}");
        assert!(
            out.contains("UUID=D /srv/x\\012y\\011z\\134w auto"),
            "{out}"
        );
        // Two comment lines and exactly three entries, each of six fields.
        let entries: Vec<Entry> = out.lines().filter_map(parse_line).collect();
        assert_eq!(entries.len(), 3, "{out}");
        assert_eq!(entries[1].file, "/boot/a b");
        assert_eq!(entries[2].file, "/srv/x\ny\tz\\w");
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(l.split_ascii_whitespace().count(), 6, "{l}");
        }
        // A mount point with our own name replaces the image's line after unescaping.
        let merged = merge_fstab(
            "UUID=q /boot/a\\040b ext2 defaults 0 0\n",
            &managed(boot, None),
        );
        assert!(!merged.contains("UUID=q"), "{merged}");
    }

    #[test]
    fn escape_round_trips() {
        for s in [
            "plain",
            "a b",
            "t\tn\nb\\",
            "\\040",
            "ünï code",
            "\u{7f}\u{1}",
        ] {
            assert_eq!(unescape(&escape(s)), s, "{s:?}");
            assert!(!escape(s).contains([' ', '\t', '\n']));
        }
        assert_eq!(escape(""), "none");
        assert_eq!(unescape("\\0"), "\\0");
        assert_eq!(unescape("\\999"), "\\999");
        assert_eq!(unescape("a\\"), "a\\");
    }
}
