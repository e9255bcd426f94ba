//! `abupdate manifest suggest`: the configuration files the package manager did not install
//! as they are, printed as a manifest section to paste into the config.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::error::Result;

/// Output of `manifest suggest`.
#[derive(Debug, Clone, Serialize)]
pub struct SuggestReport {
    /// The suggestions, sorted by path.
    pub suggestions: Vec<abupdate_suggest::Suggestion>,
}

impl std::fmt::Display for SuggestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(abupdate_suggest::render_manifest(&self.suggestions).trim_end())
    }
}

/// Suggests manifest entries for the system at `root`, scanning `scan_roots` (default: the
/// config's `manifest.suggest_roots`, else `/etc`) and leaving out the config's excludes.
pub fn suggest(
    cfg: Option<&Config>,
    root: PathBuf,
    scan_roots: Vec<String>,
) -> Result<SuggestReport> {
    let scan_roots = if scan_roots.is_empty() {
        cfg.map(|c| c.manifest.suggest_roots.clone())
            .unwrap_or_else(|| vec!["/etc".into()])
    } else {
        scan_roots
    };
    let opts = abupdate_suggest::SuggestOptions {
        root,
        scan_roots,
        exclude: cfg.map(|c| c.manifest.exclude.clone()).unwrap_or_default(),
    };
    Ok(SuggestReport {
        suggestions: abupdate_suggest::suggest(&opts)?,
    })
}
