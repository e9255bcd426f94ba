//! abupdate's test kit: the fixtures every test level shares, so each exists once.
//!
//! - [`http`]: the HTTP/1.1 server on 127.0.0.1 with fault injection (drop after K bytes,
//!   stall, ignored `Range`/`If-Range`, a changing ETag) and per-path byte counters;
//! - [`disk`]: the GPT disk builder (BIOS boot, ext2 boot, slots, data) on a loop device,
//!   and the minimal "Debian" tree of a slot;
//! - [`hash`]: the SHA-256 of a file or block device;
//! - [`config`] (feature `config`): typed abupdate configurations written by serializing
//!   `abupdate_lib::config::Config`;
//! - [`LoopDevice`]: the one loop-device guard (RAII, explicit fallible `close`), from
//!   `abupdate-utils`.
//!
//! Users: the privileged tests (`tests/`), `abupdate-stream`'s tests, `cargo xtask bench`
//! and the VM harness (`xtask/`). Loop devices and mounts need root.

#[cfg(feature = "config")]
pub mod config;
pub mod disk;
pub mod hash;
pub mod http;

pub use abupdate_utils::loopdev::LoopDevice;
pub use disk::{write_os_tree, Disk, Layout, OsTree, PartSpec, Role};
pub use http::{HttpServer, RequestLog, ServeOptions, ServerBuilder};
