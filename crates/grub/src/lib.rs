//! abupdate's GRUB side: the `grubenv` codec and its durable I/O ([`env`]), the
//! boot script rendered from `grub-templates/grub.cfg.in` ([`config`]), and a model of that
//! script's decision on each boot ([`script`]).
//!
//! The boot state machine lives in four grubenv variables ([`vars`]) read by the rendered
//! script on every boot; the core engine changes the state only through [`env`].
//!
//! Invariant: parsing and rendering are pure; the only I/O is in [`env::read_env`],
//! [`env::write_env_in_place`], [`env::create_env`] and [`config::check_script`].

use std::path::PathBuf;

pub mod config;
pub mod env;
pub mod script;

pub use config::{
    check_script, render, GrubConfig, MenuSlot, RenderError, SerialConsole, TEMPLATE,
};
pub use env::{create_env, read_env, write_env_in_place, EnvError, GrubEnv};

/// Names of the grubenv variables shared by the boot script and the core engine.
pub mod vars {
    /// Id of the default (good) slot, `a` or `b`.
    pub const DEFAULT: &str = "ab_default";
    /// Id of the other slot if it is good, else empty.
    pub const FALLBACK: &str = "ab_fallback";
    /// Id of the slot on trial, or empty.
    pub const TRIAL: &str = "ab_trial";
    /// Tries left for the trial as a unary counter: `111` is three tries, empty is none.
    pub const TRIES: &str = "ab_tries";
}

/// A failed file or tool operation, naming the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A grubenv block could not be parsed or encoded.
    #[error("{step} {path}: {source}")]
    Env {
        /// What was being done.
        step: &'static str,
        /// The grubenv file.
        path: PathBuf,
        /// What is wrong with the block.
        source: EnvError,
    },
    /// The file is not in a state we may write to (wrong size, sparse, already exists).
    #[error("{step} {path}: refused: {reason}")]
    Refused {
        /// What was being done.
        step: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// `grub-script-check` could not run or rejected the script.
    #[error("check GRUB script {path}: {source}")]
    ScriptCheck {
        /// The script checked.
        path: PathBuf,
        /// The tool's failure, with its stderr.
        source: abupdate_utils::CmdError,
    },
}
