//! `abupdate init --slot X`: first-time setup of the boot partition.

use crate::context::{mount_private, Context};
use crate::disk::SlotId;
use crate::engine::{plan_init, plan_note, Transaction, INIT_AFTER_CHAIN};
use crate::error::{Error, Result};
use crate::fsinfo;
use crate::slotfs::{find_kernel, SlotRoot};
use crate::state::{SlotRecord, SlotState};

use super::Outcome;

/// Reads what a slot holds (fs UUID, os-release, kernel) by mounting it read-only.
pub fn inspect_slot(ctx: &Context, slot: SlotId) -> Result<SlotRecord> {
    let dev = &ctx.layout.slot(slot).device;
    let info = fsinfo::read_ext4_info(dev)
        .map_err(Error::io("read superblock of", dev))?
        .ok_or_else(|| {
            Error::Refused(format!(
                "slot {slot} ({}) holds no ext2/3/4 filesystem",
                dev.display()
            ))
        })?;
    let m = mount_private(dev, true)?;
    let root = SlotRoot::open(m.path())?;
    let os = root
        .read_to_string("/etc/os-release")?
        .map(|t| fsinfo::parse_os_release(&t))
        .unwrap_or_default();
    let k = find_kernel(&root)?;
    drop(root);
    m.close()?;
    Ok(SlotRecord {
        state: SlotState::Good,
        fs_uuid: info.uuid,
        os,
        kernel: k.kernel,
        initrd: k.initrd,
        source: None,
        sha256: None,
        staged_at: None,
    })
}

/// `abupdate init --slot X`: first-time setup of the boot partition with `slot` as the good
/// default (its kernel and os-release read from the slot itself).
pub fn init(ctx: &Context, slot: SlotId, force: bool) -> Result<Outcome> {
    let tx = Transaction::begin_init(ctx, slot, force)?;
    if tx.snapshot().state.is_some() && !force {
        return Err(Error::Refused(format!(
            "the boot partition {} is already set up (`init --chain-only` reinstalls the boot chain, `--force` starts over)",
            ctx.layout.boot.device.display()
        )));
    }
    let rec = inspect_slot(ctx, slot)?;
    let chain = crate::bootchain::plan(ctx)?;
    let plan = plan_init(tx.snapshot(), tx.settings(), slot, rec, force).map_err(Error::Refused)?;
    let Some(chain) = chain else {
        return Ok(Outcome::of(&tx.apply(plan)?, false));
    };
    // The records first, then the boot code that reads them: a cut in between leaves the
    // old boot code booting `slot` through the new grub.cfg (`init --chain-only` finishes).
    let (plan, note) = tx.apply_then(plan, |boot, snap, set| {
        let report = crate::bootchain::install(ctx, boot, &chain, slot)?;
        plan_note(
            snap,
            set,
            "init",
            Some(slot),
            report.to_string(),
            INIT_AFTER_CHAIN,
        )
        .map(Some)
        .map_err(Error::Refused)
    })?;
    let mut out = Outcome::of(&plan, false);
    if let Some(note) = note {
        out.message = format!("{}; {}", out.message, note.message);
    }
    Ok(out)
}
