//! abupdate's engine: configuration, slot discovery, the boot flow, state and history, and
//! one function per verb (`status`, `stage`, `switch`, `commit`, `rollback`, `history`,
//! `init`). The `abupdate` binary is a thin command line over this crate.
//!
//! Invariants (docs/design.md): nothing writes to the booted slot; the boot configuration changes
//! only in `switch`, `commit`, `rollback` (and the first-time `init`), each change one durable
//! write; a failed operation leaves the booted slot, the data partition and the boot
//! configuration unchanged.

pub mod assess;
pub mod boot;
pub mod chroot;
pub mod config;
pub mod conflicts;
pub mod context;
pub mod disk;
pub mod error;
pub mod fsinfo;
pub mod hooks;
pub mod log;
pub mod manifest;
pub mod ops;
pub mod slotfs;
pub mod stage;
pub mod state;

pub use error::{Error, Result};
