//! `abupdate history`: past operations.

use std::fmt;

use serde::Serialize;

use crate::context::Context;
use crate::error::Result;
use crate::state::{self, OpRecord};

/// Output of `history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    /// Oldest first.
    pub entries: Vec<OpRecord>,
}

impl fmt::Display for HistoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return write!(f, "no operations recorded");
        }
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let slot = e.slot.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
            write!(
                f,
                "{}  {:<12} {:<6} {:<4} {}",
                e.time, e.op, e.result, slot, e.detail
            )?;
        }
        Ok(())
    }
}

/// `abupdate history`: the history file, with the state's last operation when a run was
/// cut short before it reached the history.
pub fn history(ctx: &Context) -> Result<HistoryReport> {
    let boot = ctx.mount_boot(false)?;
    let store = boot.store();
    let mut h = store.history()?;
    if let Some(st) = store.load_if_present()? {
        state::with_last_operation(&mut h, &st);
    }
    boot.close()?;
    Ok(HistoryReport { entries: h.entries })
}
