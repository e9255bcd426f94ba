//! The one transaction every boot-state change goes through: the writer lock, the boot
//! partition mounted read-only, the records read into a [`Snapshot`], an interrupted
//! operation settled, then a plan applied (read-write remount, each write durable, its
//! failpoint, the history, unmount, the hooks).

use abupdate_utils::lock::WriterLock;

use crate::boot::BootFlow;
use crate::context::{failpoint, BootPartition, Context};
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::hooks;
use crate::state;

use super::plan::{Plan, Write};
use super::plans::settle;
use super::view::{view, Settings, Snapshot, View};

/// Which records a transaction needs, and what a damaged one means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// state.json and grubenv must exist (the boot partition is set up); an interrupted
    /// operation is settled.
    Required,
    /// Whatever exists is read, nothing is settled (`init`).
    IfPresent,
    /// As `IfPresent`, and records that cannot be read (damaged) count as absent, all of
    /// them (`init --force` starts over).
    DamagedAsAbsent,
}

/// Reads the records from a mounted boot partition.
pub fn read_snapshot(
    ctx: &Context,
    boot: &BootPartition,
    booted: SlotId,
    records: Records,
) -> Result<Snapshot> {
    let fs_uuids = [ctx.slot_fs_uuid(SlotId::A)?, ctx.slot_fs_uuid(SlotId::B)?];
    match read_records(boot, records == Records::Required) {
        Ok((state, grubenv, menu)) => Ok(Snapshot {
            booted,
            state,
            grubenv,
            menu,
            fs_uuids,
        }),
        Err(e) if records == Records::DamagedAsAbsent && crate::repair::is_damage(&e) => {
            tracing::warn!("{}; init --force rewrites it", crate::error::chain(&e));
            Ok(Snapshot {
                booted,
                state: None,
                grubenv: None,
                menu: None,
                fs_uuids,
            })
        }
        Err(e) => Err(e),
    }
}

/// state.json, grubenv and the menu; `need_setup`: a missing state or grubenv is an error
/// telling to run `init`.
fn read_records(
    boot: &BootPartition,
    need_setup: bool,
) -> Result<(
    Option<state::State>,
    Option<crate::boot::BootState>,
    Option<abupdate_grub::script::Menu>,
)> {
    let store = boot.store();
    let flow = boot.flow();
    let state = if need_setup {
        Some(store.load()?)
    } else {
        store.load_if_present()?
    };
    let grubenv = flow.read_state()?;
    if need_setup && grubenv.is_none() {
        return Err(Error::Refused(format!(
            "{} does not exist: the boot partition is not set up; run `abupdate init`",
            flow.env_path().display()
        )));
    }
    Ok((state, grubenv, flow.read_menu()?))
}

/// Plan inputs from the host: the time now and the slots' PARTUUIDs.
pub fn settings(ctx: &Context) -> Settings {
    Settings {
        now: state::now(),
        partuuids: SlotId::ALL.map(|s| ctx.layout.slot(s).partuuid.clone()),
    }
}

/// An open transaction on the boot partition.
#[derive(Debug)]
pub struct Transaction<'a> {
    ctx: &'a Context,
    lock: Option<WriterLock>,
    boot: Option<BootPartition>,
    writable: bool,
    snap: Snapshot,
    settings: Settings,
    settled: Vec<Plan>,
}

impl<'a> Transaction<'a> {
    /// Takes the writer lock, reads the records and settles an interrupted operation.
    pub fn begin(ctx: &'a Context) -> Result<Transaction<'a>> {
        let lock = ctx.lock()?;
        Transaction::open(ctx, Some(lock))
    }

    /// As [`Transaction::begin`], for a caller that holds the writer lock already (`stage`
    /// holds it from its checks to its record).
    pub fn begin_locked(ctx: &'a Context, _held: &WriterLock) -> Result<Transaction<'a>> {
        Transaction::open(ctx, None)
    }

    /// Takes the writer lock and reads whatever records exist, for `init --slot slot`:
    /// nothing is settled, `init` starts over. It may run on a system booted from neither
    /// slot (a rescue system, a machine preparing the disk): the snapshot then counts
    /// `slot` as booted. With `force`, records that cannot be read (a damaged state.json or
    /// grubenv) count as absent: `init --force` rewrites them.
    pub fn begin_init(ctx: &'a Context, slot: SlotId, force: bool) -> Result<Transaction<'a>> {
        let booted = ctx.booted().unwrap_or(slot);
        let lock = ctx.lock()?;
        let records = if force {
            Records::DamagedAsAbsent
        } else {
            Records::IfPresent
        };
        Transaction::open_as(ctx, Some(lock), booted, records)
    }

    fn open(ctx: &'a Context, lock: Option<WriterLock>) -> Result<Transaction<'a>> {
        let booted = ctx.booted()?;
        Transaction::open_as(ctx, lock, booted, Records::Required)
    }

    fn open_as(
        ctx: &'a Context,
        lock: Option<WriterLock>,
        booted: SlotId,
        records: Records,
    ) -> Result<Transaction<'a>> {
        let boot = ctx.mount_boot(false)?;
        let snap = read_snapshot(ctx, &boot, booted, records)?;
        let mut tx = Transaction {
            ctx,
            lock,
            boot: Some(boot),
            writable: false,
            snap,
            settings: settings(ctx),
            settled: Vec::new(),
        };
        if records == Records::Required {
            tx.settle()?;
        }
        Ok(tx)
    }

    /// Brings the history up to the last operation, finishes or undoes an interrupted
    /// operation and records a trial that ran out of tries.
    fn settle(&mut self) -> Result<()> {
        if let Some(st) = &self.snap.state {
            let mut h = self.boot()?.store().history()?;
            if state::with_last_operation(&mut h, st) {
                let st = st.clone();
                self.writable()?.store().catch_up_history(&st)?;
            }
        }
        for plan in settle(&self.snap, &self.settings) {
            tracing::warn!("{}", plan.message);
            self.write(&plan)?;
            run_hooks(self.ctx, &plan);
            self.settled.push(plan);
        }
        Ok(())
    }

    fn boot(&self) -> Result<&BootPartition> {
        self.boot
            .as_ref()
            .ok_or_else(|| Error::Internal("the boot partition is not mounted".into()))
    }

    fn writable(&mut self) -> Result<&BootPartition> {
        if !self.writable {
            let ro = self
                .boot
                .take()
                .ok_or_else(|| Error::Internal("the boot partition is not mounted".into()))?;
            self.boot = Some(ro.reopen_rw(self.ctx)?);
            self.writable = true;
        }
        self.boot()
    }

    /// The records as read (and settled).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// How abupdate reads them.
    pub fn view(&self) -> View {
        view(&self.snap)
    }

    /// Plan inputs besides the records.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What settling did when the transaction began (finished, undone or recorded
    /// operations), oldest first.
    pub fn settled(&self) -> &[Plan] {
        &self.settled
    }

    fn write(&mut self, plan: &Plan) -> Result<()> {
        if plan.steps.is_empty() {
            return Ok(());
        }
        let settings = crate::ops::menu_settings(self.ctx);
        for step in &plan.steps {
            let boot = self.writable()?;
            match &step.write {
                Write::State(st) => {
                    let store = boot.store();
                    store.save(st)?;
                    store.catch_up_history(st)?;
                }
                Write::Grubenv(b) => boot.flow().write_state(b)?,
                Write::Menu { entries, default } => {
                    boot.flow().install_menu(entries, *default, &settings)?
                }
            }
            failpoint(step.failpoint);
            self.snap.apply(&step.write);
        }
        Ok(())
    }

    /// Applies `plan`, unmounts, releases the lock and runs the plan's hooks (a failing
    /// hook is a warning).
    pub fn apply(mut self, plan: Plan) -> Result<Plan> {
        let ctx = self.ctx;
        self.write(&plan)?;
        self.close()?;
        run_hooks(ctx, &plan);
        Ok(plan)
    }

    /// Applies `plan`, then, with the lock still held and the boot partition mounted
    /// read-write, runs `then` (work outside the records, such as installing GRUB's boot
    /// code) and applies the plan it returns on the records as they now are. Hooks run at
    /// the end, as with [`Transaction::apply`].
    pub fn apply_then<F>(mut self, plan: Plan, then: F) -> Result<(Plan, Option<Plan>)>
    where
        F: FnOnce(&BootPartition, &Snapshot, &Settings) -> Result<Option<Plan>>,
    {
        let ctx = self.ctx;
        self.write(&plan)?;
        self.writable()?;
        let next = then(self.boot()?, &self.snap, &self.settings)?;
        if let Some(next) = &next {
            self.write(next)?;
        }
        self.close()?;
        run_hooks(ctx, &plan);
        if let Some(next) = &next {
            run_hooks(ctx, next);
        }
        Ok((plan, next))
    }

    /// Unmounts the boot partition and releases the lock, reporting failure.
    pub fn close(mut self) -> Result<()> {
        if let Some(boot) = self.boot.take() {
            boot.close()?;
        }
        if let Some(lock) = self.lock.take() {
            lock.release()?;
        }
        Ok(())
    }
}

/// Runs the plan's hooks; a hook that fails or cannot run is a warning.
fn run_hooks(ctx: &Context, plan: &Plan) {
    for h in &plan.hooks {
        if let Err(e) = hooks::run(&ctx.cfg, h.point, &h.env) {
            tracing::warn!(
                "{} hooks after {}: {}",
                h.point.dir_name(),
                plan.op,
                crate::error::chain(&e)
            );
        }
    }
}
