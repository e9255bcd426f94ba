//! `abupdate commit`: in the trial slot, make it the good default.

use crate::context::Context;
use crate::engine::{plan_commit, Transaction};
use crate::error::{Error, Result};

use super::Outcome;

/// `abupdate commit`.
pub fn commit(ctx: &Context) -> Result<Outcome> {
    let tx = Transaction::begin(ctx)?;
    let plan = plan_commit(tx.snapshot(), tx.settings(), None).map_err(Error::Refused)?;
    Ok(Outcome::of(&tx.apply(plan)?, false))
}
