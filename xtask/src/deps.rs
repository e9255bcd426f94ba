//! `cargo xtask deps`: every declared dependency of a workspace member is used.
//!
//! `[dependencies]`: each lib and bin target is checked once more with rustc's
//! `unused_crate_dependencies` lint (`cargo rustc --profile check`, so the flag reaches only
//! that target, nothing is code-generated and the artifacts `cargo test` built stay valid);
//! a dependency is unused when every lib and bin target of its package reports it.
//! `[dev-dependencies]`: the test, bench and example sources and `#[cfg(test)]` code must
//! name the crate (`name::`, `use name`), which the lint cannot judge across many test
//! targets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::util;

#[derive(Debug, Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Package {
    id: String,
    name: String,
    manifest_path: PathBuf,
    dependencies: Vec<Dependency>,
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct Dependency {
    name: String,
    rename: Option<String>,
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

impl Package {
    fn lib_name(&self) -> Option<String> {
        self.targets
            .iter()
            .find(|t| {
                t.kind
                    .iter()
                    .any(|k| k.ends_with("lib") || k == "proc-macro")
            })
            .map(|t| t.name.replace('-', "_"))
    }
}

/// One line of cargo's `--message-format json` output that matters here.
#[derive(Debug, Deserialize)]
struct Message {
    reason: String,
    message: Option<Diagnostic>,
}

#[derive(Debug, Deserialize)]
struct Diagnostic {
    message: String,
    code: Option<DiagnosticCode>,
}

#[derive(Debug, Deserialize)]
struct DiagnosticCode {
    code: String,
}

/// The crates rustc reports as unused in cargo's JSON messages.
fn unused_crates(json_lines: &str) -> BTreeSet<String> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Message>(l).ok())
        .filter(|m| m.reason == "compiler-message")
        .filter_map(|m| m.message)
        .filter(|d| {
            d.code
                .as_ref()
                .is_some_and(|c| c.code == "unused_crate_dependencies")
        })
        // "extern crate `sha2` is unused in crate `abupdate_lib`"
        .filter_map(|d| d.message.split('`').nth(1).map(str::to_owned))
        .collect()
}

/// Whether Rust source `text` names crate `krate` as a path root.
fn names_crate(text: &str, krate: &str) -> bool {
    [
        format!("{krate}::"),
        format!("use {krate}"),
        format!("extern crate {krate}"),
        format!("{krate} as _"),
    ]
    .iter()
    .any(|p| {
        text.match_indices(p.as_str()).any(|(i, _)| {
            // Not the tail of a longer identifier (`my_tempfile::`).
            !text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

/// The names under `[workspace.dependencies]` of a workspace manifest.
fn workspace_dependencies(manifest: &str) -> Vec<&str> {
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.dependencies]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(util::workspace_root());
    c
}

/// Checks every workspace member; fails listing the unused dependencies.
pub fn run() -> Result<()> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Metadata = serde_json::from_slice(&out.stdout).context("parse cargo metadata")?;
    // Extern crate names are lib names (md-5's is md5) or renames (yaml_serde as serde_yaml).
    let lib_names: BTreeMap<&str, String> = meta
        .packages
        .iter()
        .filter_map(|p| p.lib_name().map(|l| (p.name.as_str(), l)))
        .collect();
    let extern_name = |d: &Dependency| {
        d.rename
            .clone()
            .or_else(|| lib_names.get(d.name.as_str()).cloned())
            .unwrap_or_else(|| d.name.replace('-', "_"))
    };

    // The dependencies' metadata for the checks below, built in parallel once (the
    // per-target `cargo rustc` runs are sequential).
    let status = cargo()
        .args([
            "check",
            "--quiet",
            "--locked",
            "--workspace",
            "--lib",
            "--bins",
        ])
        .status()
        .context("run cargo check")?;
    if !status.success() {
        bail!("cargo check --workspace --lib --bins failed ({status})");
    }
    let mut problems = Vec::new();
    for pkg in meta
        .packages
        .iter()
        .filter(|p| meta.workspace_members.contains(&p.id))
    {
        // [dependencies]: unused in every lib and bin target.
        let mut unused: Option<BTreeSet<String>> = None;
        for t in pkg
            .targets
            .iter()
            .filter(|t| t.kind.iter().any(|k| k == "lib" || k == "bin"))
        {
            let sel = if t.kind.iter().any(|k| k == "lib") {
                vec!["--lib".to_owned()]
            } else {
                vec!["--bin".to_owned(), t.name.clone()]
            };
            let out = cargo()
                .args([
                    "rustc",
                    "--quiet",
                    "--message-format=json",
                    "--profile",
                    "check",
                ])
                .args(["--locked", "-p", &pkg.name])
                .args(&sel)
                .args(["--", "-W", "unused-crate-dependencies"])
                .output()
                .with_context(|| format!("cargo rustc -p {} {}", pkg.name, sel.join(" ")))?;
            if !out.status.success() {
                bail!(
                    "cargo rustc -p {} {} failed: {}",
                    pkg.name,
                    sel.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let here = unused_crates(&String::from_utf8_lossy(&out.stdout));
            unused = Some(match unused {
                None => here,
                Some(u) => u.intersection(&here).cloned().collect(),
            });
        }
        for d in pkg.dependencies.iter().filter(|d| d.kind.is_none()) {
            if unused.as_ref().is_some_and(|u| u.contains(&extern_name(d))) {
                problems.push(format!("{}: dependency {} is unused", pkg.name, d.name));
            }
        }

        // [dev-dependencies]: named somewhere in the package's sources.
        let dir = pkg.manifest_path.parent().unwrap_or(Path::new("."));
        let mut files = Vec::new();
        for sub in ["src", "tests", "benches", "examples"] {
            rust_files(&dir.join(sub), &mut files);
        }
        let text: String = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect::<Vec<_>>()
            .join("\n");
        for d in pkg
            .dependencies
            .iter()
            .filter(|d| d.kind.as_deref() == Some("dev"))
        {
            if !names_crate(&text, &extern_name(d)) {
                problems.push(format!("{}: dev-dependency {} is unused", pkg.name, d.name));
            }
        }
    }
    // [workspace.dependencies] entries no member takes.
    let root_manifest = util::workspace_root().join("Cargo.toml");
    let root_text = std::fs::read_to_string(&root_manifest)
        .with_context(|| format!("read {}", root_manifest.display()))?;
    let taken: BTreeSet<&str> = meta
        .packages
        .iter()
        .filter(|p| meta.workspace_members.contains(&p.id))
        .flat_map(|p| p.dependencies.iter())
        .map(|d| d.rename.as_deref().unwrap_or(&d.name))
        .collect();
    for name in workspace_dependencies(&root_text) {
        if !taken.contains(name) {
            problems.push(format!(
                "Cargo.toml: [workspace.dependencies] {name} is taken by no member"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "declared but unused (remove them from the Cargo.toml files):\n  {}",
            problems.join("\n  ")
        );
    }
    println!("deps: every declared dependency is used");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unused_crates_from_cargo_messages() {
        let lines = r#"{"reason":"compiler-artifact","target":{}}
{"reason":"compiler-message","message":{"message":"extern crate `sha2` is unused in crate `abupdate_lib`","code":{"code":"unused_crate_dependencies","explanation":null}}}
{"reason":"compiler-message","message":{"message":"unused variable: `x`","code":{"code":"unused_variables","explanation":null}}}
not json"#;
        assert_eq!(unused_crates(lines), BTreeSet::from(["sha2".to_owned()]));
    }

    #[test]
    fn lists_workspace_dependencies() {
        let m = "[workspace]\nmembers = []\n\n[workspace.dependencies]\nanyhow = \"1\"\nnix = { version = \"0.29\" }\n# c = 1\n\n[workspace.lints.rust]\nx = \"deny\"\n";
        assert_eq!(workspace_dependencies(m), vec!["anyhow", "nix"]);
    }

    #[test]
    fn finds_crates_named_in_source() {
        assert!(names_crate("let d = tempfile::tempdir();", "tempfile"));
        assert!(names_crate("use serde_yaml::Value;", "serde_yaml"));
        assert!(!names_crate("let d = my_tempfile::tempdir();", "tempfile"));
        assert!(!names_crate("// tempfile is nice", "tempfile"));
    }
}
