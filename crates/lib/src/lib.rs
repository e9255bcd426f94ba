//! abupdate's library: configuration, slot discovery, the boot flow, state and history, the
//! transaction engine every boot-state change goes through ([`engine`]), and one function
//! per verb (`status`, `stage`, `switch`, `commit`, `rollback`, `history`, `init`,
//! `daemon`) and the daemon's polling of the release channel ([`poll`]). The `abupdate` binary is a thin command line over this crate.
//!
//! Invariants (docs/design.md): nothing writes to the booted slot; the boot configuration changes only
//! through [`engine`] plans, each write durable, every prefix of a plan safe to boot and
//! settled by the next run; a refused operation leaves the boot partition unchanged (unless
//! it first had to settle an interrupted one).

pub mod assess;
pub mod boot;
pub mod bootchain;
pub mod chroot;
pub mod config;
pub mod conflicts;
pub mod context;
pub mod disk;
pub mod engine;
pub mod error;
pub mod fsinfo;
pub mod fstab;
pub mod hooks;
pub mod log;
pub mod manifest;
pub mod ops;
pub mod poll;
pub mod repair;
pub mod slotfs;
pub mod stage;
pub mod state;
pub mod update;

pub use error::{Error, Result};
