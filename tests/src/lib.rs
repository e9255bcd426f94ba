//! Fixtures for abupdate's privileged integration tests: real GPT disk images on loop
//! devices, real mkfs and mount, driving the real `abupdate` binary.
//!
//! The disk layout, the HTTP server and the configuration type come from the shared test kit
//! (`abupdate-testkit`); this crate adds the privileged tests' own fixtures on top.
//! Every fixture is an RAII guard: loop devices, mounts, host directories, HTTP servers and
//! child processes are cleaned up when the guard drops, also when a test panics.
//! Privileged tests must hold [`serial`] for their whole duration: they share loop devices,
//! partition labels and the tool lock.

pub mod checks;
pub mod disk;
pub mod env;
pub mod hostile;
pub mod image;
pub mod proc;
pub mod tree;

pub use abupdate_testkit::http::{HttpServer, RequestLog, ServeOptions};
pub use disk::{assert_unchanged, DiskOptions, HostTree, Snapshot, TestDisk};
pub use env::{abupdate_bin, serial, Serial};
pub use image::{compress, make_image, Compression, Image, ImageSpec};
pub use proc::{sha256_file, ChildGuard, Output};
