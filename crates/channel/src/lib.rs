//! The signed release channel: a TUF repository (root, targets, snapshot, timestamp) served
//! over HTTP(S), read with the `tough` client, whose targets are abupdate releases.
//!
//! - [`client::load`] verifies the channel from the host's pinned root (signature
//!   thresholds, expiry, versions never going back, metadata lengths and hashes) and lists
//!   its releases; the caller keeps the returned datastore and passes it back next time.
//! - [`release::evaluate`] decides, purely, which release a host is offered now and why newer
//!   ones wait (wave, minimum running release, size).
//! - [`publish`] is the operator's side: create a channel, publish a release, re-sign the
//!   timestamp, rotate the timestamp key.
//! - [`window`] and [`wave`] are the maintenance-window and wave arithmetic; [`config`] the
//!   `update:` configuration section.
//!
//! Invariants: no release is listed unless the whole metadata chain verified from the pinned
//! root; the datastore handed back changes only after a successful load; a release's length
//! and sha256 come from signed metadata only. Target bytes are not downloaded here: the
//! caller streams them with the signed length and hash as limits.

pub mod client;
pub mod config;
mod error;
pub mod publish;
pub mod release;
pub mod wave;
pub mod window;

pub use client::{load, Datastore, Verified};
pub use config::{KexecFallback, UpdateConfig};
pub use error::{Error, ErrorKind};
pub use release::{evaluate, HeldBack, HostFacts, Offer, Release, ReleaseMeta, SourceKind};
pub use semver::Version;
pub use window::Window;
