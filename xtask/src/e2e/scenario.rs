//! What a VM scenario is: a declaration of what it needs (the machine, whether it may
//! continue on a shared one, extra files served over HTTP) and the function that runs it.
//! One scenario per file in `scenarios/`, listed once in `scenarios::ALL`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::machine::Machine;
use super::Env;
use crate::disk::DiskKind;
use crate::images::Images;

/// The machine a scenario runs on: its disk (firmware, daemon) and its QEMU devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MachineSpec {
    /// What the disk holds; one immutable base disk per kind and run, an overlay per machine.
    pub disk: DiskKind,
    /// An i6300esb watchdog whose expiry powers the machine off (QEMU exits, the harness
    /// sees a reset as an event and powers it on again).
    pub watchdog: bool,
}

impl MachineSpec {
    /// BIOS, no daemon, no watchdog.
    pub const PLAIN: MachineSpec = MachineSpec {
        disk: DiskKind::PLAIN,
        watchdog: false,
    };
    /// BIOS with the boot assessment daemon enabled in slot A.
    pub const DAEMON: MachineSpec = MachineSpec {
        disk: DiskKind::DAEMON,
        watchdog: false,
    };
}

/// Where a scenario starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// On the shared machine of its [`MachineSpec`] if that one is booted in slot A, else on
    /// a fresh machine (booted in A). It should end in A, so the next one can continue.
    InA,
    /// On the shared machine of its spec in whatever state the previous scenario left it
    /// (the scenario checks what it needs), else on a fresh machine booted in A.
    AsLeft,
    /// On a fresh machine (booted in A), thrown away afterwards.
    Fresh,
}

/// A file served to the guest: URL path (`http://10.0.2.100<path>`) and the host file.
pub type Served = (String, PathBuf);

/// Builds a scenario's extra files and says where to serve them.
pub type Serves = fn(&Prep<'_>) -> Result<Vec<Served>>;

/// What a scenario's extra files are made from.
pub struct Prep<'a> {
    /// The cached images.
    pub imgs: &'a Images,
    /// This run's directory (scratch space for built files).
    pub run_dir: &'a Path,
    /// The release `abupdate` built for this run (the operator's `release` verbs).
    pub abupdate: &'a Path,
}

/// One end-to-end scenario.
pub struct Scenario {
    /// Its letter, what `--only` takes (the name works too).
    pub id: &'static str,
    /// Its name; the summary shows `<id>-<name>`.
    pub name: &'static str,
    /// What it shows, one line (`cargo xtask e2e --list`).
    pub about: &'static str,
    /// The machine it needs.
    pub machine: MachineSpec,
    /// Whether it continues on a shared machine.
    pub start: Start,
    /// About how long it runs on the reference machine (2 cores, TCG, beside the other
    /// lane), in seconds, as the last full run measured it; used only to spread the
    /// scenarios over parallel lanes evenly.
    pub secs: u32,
    /// Extra files it needs served over HTTP (built once per run, when it is selected);
    /// the Debian 13 image and its broken variant are always served.
    pub serves: Option<Serves>,
    /// The scenario itself.
    pub run: Run,
}

/// How a scenario runs.
#[derive(Clone, Copy)]
pub enum Run {
    /// On the machine the runner gives it, booted in A (or as left, for [`Start::AsLeft`]).
    OnMachine(fn(&mut Ctx<'_>) -> Result<()>),
    /// On machines it makes itself from the run's [`Env`] (the fleet: several hosts behind
    /// simulated BMCs); the runner powers off its shared machine first. Its
    /// [`Scenario::machine`] names the disk its machines are made of, and it is always
    /// [`Start::Fresh`].
    Own(fn(&mut Env) -> Result<()>),
}

impl Scenario {
    /// `<id>-<name>`, e.g. `a-upgrade`.
    pub fn label(&self) -> String {
        format!("{}-{}", self.id, self.name)
    }

    /// Whether `s` (a letter, a name or a label) names this scenario.
    pub fn is(&self, s: &str) -> bool {
        let s = s.trim();
        s == self.id || s == self.name || s == self.label()
    }
}

/// The downtime measurements of a run (scenarios f and a), printed as ratios at the end.
#[derive(Debug, Default, Clone, Copy)]
pub struct Downtime {
    /// A plain reboot of slot A → ssh.
    pub reboot_a: Option<Duration>,
    /// `abupdate switch` in A → ssh in B.
    pub switch: Option<Duration>,
    /// A plain reboot of slot B → ssh.
    pub reboot_b: Option<Duration>,
}

/// What a running scenario has at hand.
pub struct Ctx<'a> {
    /// Images, the release binary, the HTTP server, the run directory.
    pub env: &'a Env,
    /// The machine, booted in A (or as left).
    pub m: &'a mut Machine,
    /// The run's downtime measurements.
    pub downtime: &'a mut Downtime,
    /// The scenarios of this run, in order.
    pub selected: &'a [&'static Scenario],
}

impl Ctx<'_> {
    /// Whether the scenario `id` is part of this run.
    pub fn selected(&self, id: &str) -> bool {
        self.selected.iter().any(|s| s.is(id))
    }
}
