//! l: the engine's failpoints on real boots. For each point below the real `abupdate` runs in
//! the guest with `ABUPDATE_FAILPOINT=<point>` (it aborts right after that durable write),
//! the harness pulls the plug, powers the machine on, and asserts on the real boot: the slot
//! and mode GRUB printed (trial or default), that `status` says the same (booted, default,
//! trial and its tries, the pending operation, what the next boot does), that the next
//! abupdate command settles the operation as ARCHITECTURE.md's table says, and that the data
//! partition is intact. One trial of B carries the whole walk, so it costs 6 boots and the
//! stage of B (none when the machine already has it staged):
//!
//! 1. `switch.after-intent` (in A): GRUB boots A by default, B still `staged`; the next
//!    `switch` undoes the intent and goes on, to
//! 2. `switch.after-grubenv`: GRUB boots B on trial (one try spent) though state.json has
//!    only the intent; the next `commit` records the trial first, and stops at
//! 3. `commit.after-intent`: the trial goes on (GRUB boots B on trial, one try less); the next
//!    `commit` undoes the intent and commits again, until
//! 4. `commit.after-grubenv`: GRUB boots B by default, no trial; a plain `commit` finishes it;
//! 5. `rollback.after-intent` (from the committed B): GRUB still boots B by default; the next
//!    `rollback` finishes the interrupted one and reboots into A, both slots good.

use anyhow::{ensure, Result};

use crate::e2e::machine::{show_output, step, Machine, Status};
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::{TRIES, TRIXIE_URL};

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "l",
    name: "powercut-matrix",
    about: "abupdate killed at switch/commit/rollback failpoints, power cut, real boot: GRUB, status and the next run agree",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 373,
    serves: None,
    run: Run::OnMachine(run),
};

/// The exit status of a shell command whose process called `abort()` (128 + SIGABRT).
const ABORTED: i32 = 134;

/// Runs `abupdate ARGS` with `ABUPDATE_FAILPOINT=point`, checks that it aborted there with
/// its operation recorded as pending, then cuts the power.
fn cut_at(m: &mut Machine, point: &str, args: &str) -> Result<()> {
    let cmd = format!("ABUPDATE_FAILPOINT={point} abupdate {args}");
    println!("     $ {cmd}");
    // `; exit $?` keeps the remote shell from exec'ing abupdate: the shell reports the
    // abort as 134, where ssh itself would exit 255 for a command killed by a signal.
    let o = m.vm.ssh(&format!("{cmd}; exit $?"))?;
    show_output(&o.stdout);
    show_output(&o.stderr);
    ensure!(
        o.code == ABORTED,
        "`{cmd}` should abort at its failpoint (exit {ABORTED}), exited {}",
        o.code
    );
    let st = m.status()?;
    ensure!(
        st.0["pending"].is_string(),
        "after {point} the interrupted operation must be pending: {}",
        st.summary()
    );
    m.vm.kill();
    step(&format!(
        "abupdate aborted at {point} (pending: {}); power cut",
        st.0["pending"]
    ));
    Ok(())
}

/// Powers on and expects GRUB to boot `slot` as a trial or by default (its marker on the
/// console and `status`'s booted slot); returns the status.
fn boots(m: &mut Machine, slot: &str, trial: bool) -> Result<Status> {
    m.boot_expect(slot)?;
    let mode = if trial { "(trial" } else { "(default)" };
    let marker = format!("abupdate: booting slot {slot} {mode}");
    ensure!(
        m.vm.serial().contains(&marker),
        "expected GRUB's {marker:?} on boot {} ({})",
        m.vm.boots(),
        m.vm.serial_path().display()
    );
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    m.assert_data_intact()?;
    Ok(st)
}

/// Whether `status` says GRUB boots `slot` next, as a trial or not.
fn next_boot_is(st: &Status, slot: &str, trial: bool) -> bool {
    st.0["next_boot"]["slot"] == slot && st.0["next_boot"]["trial"] == trial
}

/// The live trial's tries left, if any.
fn tries_left(st: &Status) -> Option<u64> {
    st.0["trial"]["tries_left"].as_u64()
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    m.ensure_staged(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    let tries = u64::from(TRIES);

    // 1. The switch's intent is on disk, grubenv not yet told: GRUB boots A.
    cut_at(m, "switch.after-intent", "switch")?;
    let st = boots(m, "a", false)?;
    ensure!(
        st.default() == "a"
            && st.0["trial"].is_null()
            && st.0["pending"].is_string()
            && st.state("b") == "staged"
            && next_boot_is(&st, "a", false),
        "after switch.after-intent: A default, no trial, B staged, the switch pending: {}",
        st.summary()
    );
    step("switch.after-intent: GRUB booted A, B still staged, the switch pending");

    // 2. grubenv names the trial, state.json only the intent: GRUB boots B on trial.
    cut_at(m, "switch.after-grubenv", "switch")?;
    let st = boots(m, "b", true)?;
    ensure!(
        st.default() == "a"
            && st.state("b") == "trial"
            && tries_left(&st) == Some(tries - 1)
            && st.0["pending"].is_string()
            && next_boot_is(&st, "b", true),
        "after switch.after-grubenv: B on trial with {} tries left, A default: {}",
        tries - 1,
        st.summary()
    );
    step("switch.after-grubenv: GRUB booted B on trial, status agrees");

    // 3. The commit's intent only: the trial goes on, one try less.
    cut_at(m, "commit.after-intent", "commit")?;
    let st = boots(m, "b", true)?;
    ensure!(
        st.default() == "a"
            && st.state("b") == "trial"
            && tries_left(&st) == Some(tries - 2)
            && st.0["pending"].is_string(),
        "after commit.after-intent: the trial of B goes on with {} tries left: {}",
        tries - 2,
        st.summary()
    );
    step("commit.after-intent: GRUB booted B on trial again, one try less");

    // 4. grubenv makes B the default: GRUB boots it without a trial.
    cut_at(m, "commit.after-grubenv", "commit")?;
    let st = boots(m, "b", false)?;
    ensure!(
        st.default() == "b"
            && st.0["trial"].is_null()
            && st.state("b") == "good"
            && st.0["pending"].is_string()
            && next_boot_is(&st, "b", false),
        "after commit.after-grubenv: B the default, no trial, the commit pending: {}",
        st.summary()
    );
    m.abupdate("commit")?;
    let st = m.status()?;
    ensure!(
        st.0["pending"].is_null()
            && st.default() == "b"
            && st.state("b") == "good"
            && st.state("a") == "good",
        "the next commit must finish the interrupted one: {}",
        st.summary()
    );
    step("commit.after-grubenv: GRUB booted B by default; the next commit finished it");

    // 5. The rollback's intent only: GRUB still boots B; the next rollback finishes it.
    cut_at(m, "rollback.after-intent", "rollback")?;
    let st = boots(m, "b", false)?;
    ensure!(
        st.default() == "b"
            && st.0["pending"].is_string()
            && next_boot_is(&st, "b", false)
            && st.state("a") == "good"
            && st.state("b") == "good",
        "after rollback.after-intent: B still the default, both good, the rollback pending: {}",
        st.summary()
    );
    m.rebooting("abupdate rollback")?;
    let st = boots(m, "a", false)?;
    ensure!(
        st.default() == "a"
            && st.0["pending"].is_null()
            && st.0["trial"].is_null()
            && st.state("a") == "good"
            && st.state("b") == "good",
        "the next rollback must finish the interrupted one: A the good default, B good: {}",
        st.summary()
    );
    let v = m.os_version()?;
    ensure!(v.starts_with("12 "), "slot A should run Debian 12: {v}");
    step("rollback.after-intent: GRUB booted B; the next rollback finished it, back in A");
    Ok(())
}
