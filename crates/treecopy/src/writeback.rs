//! Starting the writeback of a finished file at once, so that the disk works while the
//! rest of the tree is written and the final `syncfs` waits for little.

use std::os::fd::{AsFd, AsRawFd};

/// Starts writing `file`'s dirty pages to its disk without waiting for them
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Best effort: the `syncfs` that ends an
/// extraction or a clone makes everything durable, so a failure is only logged.
pub(crate) fn start(file: impl AsFd) {
    let fd = file.as_fd();
    // SAFETY: sync_file_range takes integers only and does not touch our memory; `fd` is an
    // open descriptor borrowed for the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "sync_file_range: writeback not started early"
        );
    }
}
