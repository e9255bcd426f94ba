//! The slots' entries as GRUB will run them, read back from the rendered `grub.cfg` (pure):
//! which filesystem GRUB searches for each slot and which kernel and initrd it loads.
//! `verify` checks them; `status` can show them.

use crate::disk::SlotId;

/// One slot's menu entry in `grub.cfg`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MenuEntry {
    /// The slot (`--id slot-<id>`).
    pub slot: SlotId,
    /// Filesystem UUID of `search --fs-uuid --set=root`.
    pub fs_uuid: Option<String>,
    /// Path given to `linux`.
    pub kernel: Option<String>,
    /// `root=PARTUUID=` of the kernel command line.
    pub root_partuuid: Option<String>,
    /// Path given to `initrd`.
    pub initrd: Option<String>,
}

/// The slot entries of a rendered `grub.cfg`, in menu order.
pub fn entries(cfg: &str) -> Vec<MenuEntry> {
    let mut out = Vec::new();
    let mut cur: Option<MenuEntry> = None;
    for line in cfg.lines() {
        let t = line.trim();
        if t.starts_with("menuentry ") {
            let slot = t
                .split_whitespace()
                .skip_while(|w| *w != "--id")
                .nth(1)
                .and_then(|id| id.strip_prefix("slot-"))
                .and_then(SlotId::parse);
            cur = slot.map(|slot| MenuEntry {
                slot,
                fs_uuid: None,
                kernel: None,
                root_partuuid: None,
                initrd: None,
            });
            continue;
        }
        let Some(e) = cur.as_mut() else { continue };
        let words: Vec<&str> = t.split_whitespace().collect();
        match words.first().copied() {
            Some("}") => {
                if let Some(e) = cur.take() {
                    out.push(e);
                }
            }
            Some("search") if words.contains(&"--fs-uuid") => {
                e.fs_uuid = words
                    .iter()
                    .rfind(|w| !w.starts_with('-'))
                    .filter(|w| **w != "search")
                    .map(|w| w.to_string());
            }
            Some("linux") => {
                e.kernel = words.get(1).map(|w| w.to_string());
                e.root_partuuid = words
                    .iter()
                    .find_map(|w| w.strip_prefix("root=PARTUUID="))
                    .map(str::to_string);
            }
            Some("initrd") => e.initrd = words.get(1).map(|w| w.to_string()),
            _ => {}
        }
    }
    out
}

/// The entry of `slot`, if the menu has one.
pub fn entry(cfg: &str, slot: SlotId) -> Option<MenuEntry> {
    entries(cfg).into_iter().find(|e| e.slot == slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "\
set timeout=1
menuentry 'Debian GNU/Linux 12 (bookworm) - slot A' --id slot-a {
\techo \"abupdate: loading slot a\"
\tinsmod part_gpt
\tinsmod ext2
\tsearch --no-floppy --fs-uuid --set=root 5e1f0000-0000-4000-8000-0000000000a3
\tlinux /boot/vmlinuz-6.1.0-28-amd64 root=PARTUUID=5e1f0000-0000-4000-8000-000000000003 rw abupdate.slot=a console=ttyS0,115200 $ab_args_a
\tinitrd /boot/initrd.img-6.1.0-28-amd64
}

menuentry 'Debian GNU/Linux 13 (trixie) - slot B' --id slot-b {
\tsearch --no-floppy --fs-uuid --set=root 1b2c0000-0000-4000-8000-0000000000b4
\tlinux /boot/vmlinuz-6.12.0-1-amd64 root=PARTUUID=5e1f0000-0000-4000-8000-000000000004 rw $ab_args_b
}
menuentry 'something else' {
\tlinux /vmlinuz
}
";

    #[test]
    fn reads_both_slot_entries() {
        let e = entries(CFG);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].slot, SlotId::A);
        assert_eq!(
            e[0].fs_uuid.as_deref(),
            Some("5e1f0000-0000-4000-8000-0000000000a3")
        );
        assert_eq!(e[0].kernel.as_deref(), Some("/boot/vmlinuz-6.1.0-28-amd64"));
        assert_eq!(
            e[0].initrd.as_deref(),
            Some("/boot/initrd.img-6.1.0-28-amd64")
        );
        assert_eq!(
            e[0].root_partuuid.as_deref(),
            Some("5e1f0000-0000-4000-8000-000000000003")
        );
        let b = entry(CFG, SlotId::B).expect("slot b");
        assert_eq!(b.initrd, None);
        assert_eq!(b.kernel.as_deref(), Some("/boot/vmlinuz-6.12.0-1-amd64"));
        assert_eq!(entry("set timeout=1\n", SlotId::A), None);
    }

    #[test]
    fn reads_the_rendered_template() {
        use abupdate_grub::config::{render, GrubConfig, MenuSlot, TEMPLATE};
        let cfg = GrubConfig {
            slots: vec![MenuSlot {
                id: "b".into(),
                title: "Test - slot B".into(),
                fs_uuid: "11111111-2222-3333-4444-555555555555".into(),
                partuuid: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
                kernel: "/boot/vmlinuz-6.12.0-1-amd64".into(),
                initrd: Some("/boot/initrd.img-6.12.0-1-amd64".into()),
            }],
            default_slot: "b".into(),
            timeout_secs: 1,
            serial: None,
            extra_cmdline: String::new(),
            trial_panic_secs: 5,
        };
        let text = render(TEMPLATE, &cfg).expect("render");
        let e = entry(&text, SlotId::B).expect("entry");
        assert_eq!(
            e.fs_uuid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(e.initrd.as_deref(), Some("/boot/initrd.img-6.12.0-1-amd64"));
    }
}
