//! The logging convention for operations, so the journal can answer "what did abupdate do".
//!
//! Everything abupdate logs goes through `tracing`. A writing verb (stage, switch, commit,
//! rollback, init, the daemon) runs inside one [`Operation`]: a span whose fields every
//! event logged inside it carries, plus one closing event with the result. The binary sends
//! events to journald with these fields upper-cased, so
//! `journalctl ABUPDATE_OPERATION=switch` lists every switch and
//! `journalctl ABUPDATE_RESULT=failure` every failed operation:
//!
//! | tracing field | journal field | value |
//! |---|---|---|
//! | [`OPERATION`] | `ABUPDATE_OPERATION` | the verb: `stage`, `switch`, `commit`, `rollback`, `init`, `daemon` |
//! | [`SLOT`] | `ABUPDATE_SLOT` | the slot the operation acts on: `a` or `b` |
//! | [`VERSION`] | `ABUPDATE_VERSION` | the OS version of that slot, as `os-release` names it |
//! | [`RESULT`] | `ABUPDATE_RESULT` | on the closing event: `success`, `refused` or `failure` |
//!
//! Use:
//!
//! ```no_run
//! # use abupdate_lib::{disk::SlotId, log::Operation};
//! # fn do_switch() -> abupdate_lib::Result<String> { Ok("done".into()) }
//! let op = Operation::begin("switch");
//! let result = op.in_scope(|| {
//!     op.record_slot(SlotId::B);
//!     op.record_version("Debian GNU/Linux 13 (trixie)");
//!     tracing::info!("grubenv written"); // carries ABUPDATE_OPERATION, _SLOT, _VERSION
//!     do_switch()
//! });
//! match &result {
//!     Ok(message) => op.succeeded(message),
//!     Err(e) => op.failed(e),
//! }
//! ```
//!
//! Levels map to journal priorities: `error!` → err (3), `warn!` → warning (4), `info!` →
//! notice (5), `debug!` → info (6), `trace!` → debug (7). Log what an operator acts on at
//! `warn!` or `error!` (it shows in `journalctl -p warning`), the steps of an operation at
//! `info!`, external commands and details at `debug!`.
//!
//! Closing events use the target [`OUTCOME_TARGET`]: the binary sends them to the journal
//! only, because on a terminal the verb's own output and its error line already say it.

use tracing::field::Empty;

use crate::disk::SlotId;
use crate::error::{Error, EXIT_REFUSED};

/// tracing field naming the operation (journal field `ABUPDATE_OPERATION`).
pub const OPERATION: &str = "abupdate_operation";
/// tracing field naming the slot an operation acts on (journal field `ABUPDATE_SLOT`).
pub const SLOT: &str = "abupdate_slot";
/// tracing field naming that slot's OS version (journal field `ABUPDATE_VERSION`).
pub const VERSION: &str = "abupdate_version";
/// tracing field of an operation's closing event (journal field `ABUPDATE_RESULT`).
pub const RESULT: &str = "abupdate_result";
/// The target of an operation's closing event.
pub const OUTCOME_TARGET: &str = "abupdate::outcome";

/// One operation's span: events logged inside [`Operation::in_scope`] carry its fields.
#[derive(Debug, Clone)]
pub struct Operation {
    name: &'static str,
    span: tracing::Span,
}

impl Operation {
    /// Opens the span of operation `name` (a verb: `stage`, `switch`, ...). Slot and version
    /// are recorded once known.
    pub fn begin(name: &'static str) -> Operation {
        let span = tracing::info_span!(
            "operation",
            abupdate_operation = name,
            abupdate_slot = Empty,
            abupdate_version = Empty,
        );
        Operation { name, span }
    }

    /// The verb.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs `f` inside the span, so the events it logs carry the operation's fields.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        self.span.in_scope(f)
    }

    /// Records the slot the operation acts on (once; a second call adds a second value).
    pub fn record_slot(&self, slot: SlotId) {
        self.span.record(SLOT, slot.as_str());
    }

    /// Records the OS version of that slot (once; a second call adds a second value).
    pub fn record_version(&self, version: &str) {
        self.span.record(VERSION, version);
    }

    /// Logs the closing event of a successful operation (`ABUPDATE_RESULT=success`).
    pub fn succeeded(&self, message: &str) {
        self.in_scope(|| {
            tracing::info!(
                target: OUTCOME_TARGET,
                abupdate_result = "success",
                "{}: {message}",
                self.name
            )
        });
    }

    /// Logs the closing event of a failed operation: `ABUPDATE_RESULT=refused` at warning
    /// priority when a precondition refused it (exit code 3), else `failure` at error
    /// priority; the message is the error with its chain of causes.
    pub fn failed(&self, error: &Error) {
        let code = error.exit_code();
        let chain = error_chain(error);
        self.in_scope(|| {
            if code == EXIT_REFUSED {
                tracing::warn!(
                    target: OUTCOME_TARGET,
                    abupdate_result = "refused",
                    exit_code = code,
                    "{} refused: {chain}",
                    self.name
                )
            } else {
                tracing::error!(
                    target: OUTCOME_TARGET,
                    abupdate_result = "failure",
                    exit_code = code,
                    "{} failed: {chain}",
                    self.name
                )
            }
        });
    }
}

pub use crate::error::chain as error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_journal_fields_lower_cased() {
        for (f, journal) in [
            (OPERATION, "ABUPDATE_OPERATION"),
            (SLOT, "ABUPDATE_SLOT"),
            (VERSION, "ABUPDATE_VERSION"),
            (RESULT, "ABUPDATE_RESULT"),
        ] {
            assert_eq!(f.to_ascii_uppercase(), journal);
        }
    }

    #[test]
    fn chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: inner broke")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner broke")]
        struct Inner(#[source] std::io::Error);
        let e = Outer(Inner(std::io::Error::other("disk on fire")));
        assert_eq!(error_chain(&e), "outer: inner broke: disk on fire");
    }
}
