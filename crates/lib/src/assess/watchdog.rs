//! The hardware watchdog held while a trial is assessed: fed by a thread until the
//! assessment ends or its deadline passes (then the hardware resets a hung assessment),
//! and disarmed with the magic close (`V`, then close) on every way out: the guard
//! dropped (success, error, a rollback by a human) or SIGTERM/SIGINT/SIGHUP (the reboot a
//! human's `rollback` starts), after which the process exits.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;

use crate::error::{Error, Result};

/// The signals that end the process during an assessment.
fn stop_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        s.add(sig);
    }
    s
}

/// The watchdog's timeout from sysfs (`/sys/class/watchdog/<name>/timeout`), default 30 s.
fn timeout_of(device: &Path) -> Duration {
    let name = std::fs::canonicalize(device)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "watchdog".into());
    let name = if name == "watchdog" {
        "watchdog0".to_string()
    } else {
        name
    };
    std::fs::read_to_string(format!("/sys/class/watchdog/{name}/timeout"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30))
}

/// A held, armed watchdog; disarmed when dropped.
#[derive(Debug)]
pub struct Watchdog {
    device: PathBuf,
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
    old_mask: SigSet,
}

impl Watchdog {
    /// Opens (arms) the watchdog and feeds it every third of its timeout until dropped or
    /// until `until` passes. The stop signals are handled by the feeding thread from now
    /// until the guard is dropped.
    pub fn hold(device: &Path, until: Instant) -> Result<Watchdog> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(device)
            .map_err(Error::io("open watchdog", device))?;
        file.write_all(b"\0")
            .map_err(Error::io("feed watchdog", device))?;
        let interval = (timeout_of(device) / 3).max(Duration::from_secs(1));
        let (stop, stop_rx) =
            UnixStream::pair().map_err(Error::io("create a stop channel for", device))?;
        let signals = stop_signals();
        let mut old_mask = SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&signals),
            Some(&mut old_mask),
        )
        .map_err(|e| Error::io("block the stop signals for", device)(e.into()))?;
        let sfd = match SignalFd::new(&signals) {
            Ok(s) => s,
            Err(e) => {
                restore(&old_mask);
                return Err(Error::io("watch the stop signals for", device)(e.into()));
            }
        };
        let name = device.to_owned();
        let thread = std::thread::spawn(move || feed(file, &name, stop_rx, sfd, interval, until));
        tracing::info!(
            "holding watchdog {} (fed every {interval:?})",
            device.display()
        );
        Ok(Watchdog {
            device: device.to_owned(),
            stop: Some(stop),
            thread: Some(thread),
            old_mask,
        })
    }
}

/// Puts back the signal mask the thread had.
fn restore(mask: &SigSet) {
    if let Err(e) = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None) {
        tracing::warn!("restore the signal mask: {e}");
    }
}

/// Feeds `dev` until told to stop (magic close) or a stop signal arrives (magic close,
/// then the process exits with 128 + the signal number).
fn feed(
    mut dev: File,
    name: &Path,
    mut stop: UnixStream,
    sfd: SignalFd,
    interval: Duration,
    until: Instant,
) {
    let mut fed = true;
    loop {
        let timeout = if fed {
            PollTimeout::try_from(interval).unwrap_or(PollTimeout::MAX)
        } else {
            PollTimeout::NONE
        };
        let mut fds = [
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("wait on watchdog {}: {e}; disarming it", name.display());
                break;
            }
            Ok(_) => {}
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            let signo = sfd.read_signal().ok().flatten().map(|s| s.ssi_signo);
            magic_close(dev, name);
            let code = 128 + signo.map(|s| s as i32).unwrap_or(15);
            tracing::warn!("stopped by signal {signo:?} during the assessment");
            std::process::exit(code);
        }
        if ready(&fds[0]) {
            let mut b = [0u8; 1];
            let _ = stop.read(&mut b);
            break;
        }
        if Instant::now() < until {
            if let Err(e) = dev.write_all(b"\0") {
                tracing::warn!("feed watchdog {}: {e}", name.display());
            }
        } else if fed {
            fed = false;
            tracing::error!("assessment deadline passed: no longer feeding the watchdog");
        }
    }
    magic_close(dev, name);
}

/// Disarms the watchdog (unless its driver is built with `nowayout`) and closes it.
fn magic_close(mut dev: File, name: &Path) {
    if let Err(e) = dev.write_all(b"V").and_then(|()| dev.flush()) {
        tracing::warn!("disarm watchdog {}: {e}", name.display());
    }
    drop(dev);
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(mut s) = self.stop.take() {
            let _ = s.write_all(b"x");
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the watchdog thread of {} panicked", self.device.display());
            }
        }
        restore(&self.old_mask);
        tracing::info!("released watchdog {}", self.device.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_disarms_with_the_magic_close() {
        let d = tempfile::tempdir().expect("tempdir");
        let dev = d.path().join("watchdog");
        std::fs::write(&dev, b"").expect("fake device");
        let wd = Watchdog::hold(&dev, Instant::now() + Duration::from_secs(60)).expect("hold");
        drop(wd);
        let written = std::fs::read(&dev).expect("read");
        assert_eq!(written.first(), Some(&0), "fed at once: {written:?}");
        assert_eq!(written.last(), Some(&b'V'), "magic close last: {written:?}");
    }

    #[test]
    fn a_device_that_cannot_be_opened_is_an_error_naming_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = Watchdog::hold(d.path(), Instant::now())
            .err()
            .map(|e| crate::error::chain(&e))
            .unwrap_or_default();
        assert!(
            e.contains("open watchdog") && e.contains(&d.path().display().to_string()),
            "{e}"
        );
    }
}
