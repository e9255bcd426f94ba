//! Small, dependency-light building blocks shared by abupdate's crates, its tests and xtask:
//! one external-command runner, RAII guards for loop devices and mounts, the writer lock,
//! durable file writes, a `/proc/self/mountinfo` parser and scoped path resolution that
//! retries a lookup a concurrent mount disturbed.
//!
//! Invariant: nothing here decides policy. Every function does one system-level step and
//! reports failures with the path or device and the step that failed.

pub mod cmd;
pub mod durable;
pub mod lock;
pub mod loopdev;
pub mod mount;
pub mod mountinfo;
pub mod resolve;

pub use cmd::{Cmd, CmdError};
