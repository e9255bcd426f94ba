//! f: the downtime of `abupdate switch` against a plain reboot. Times a plain reboot of A
//! here; the switch (A → ssh in B) and a plain reboot of B are timed by the upgrade
//! scenario, or here when the upgrade is not part of the run. The runner prints the ratios.
//!
//! First, on the disk as built (no extra boot): abupdate is the installed package, and its
//! man pages and bash completion work as an operator uses them.

use anyhow::{ensure, Result};

use crate::e2e::machine::{step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::TRIXIE_URL;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "f",
    name: "downtime",
    about: "abupdate installed from its .deb, man pages and bash completion work; times a plain reboot of A against `switch` → ssh in B (ratio in the summary)",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 104,
    serves: None,
    run: Run::OnMachine(run),
};

/// Loads bash-completion's loader in an interactive bash as a login would, lets it find
/// abupdate's completion, shows `complete -p abupdate` and prints what `abupdate <TAB>`
/// offers, one per line (bash-completion 2.11 in Debian 12).
const COMPLETE_VERBS: &str = r#"bash -ic '. /usr/share/bash-completion/bash_completion
_completion_loader abupdate
complete -p abupdate || exit 1
fn=$(complete -p abupdate | sed -n "s/.* -F \([^ ]*\) .*/\1/p")
COMP_LINE="abupdate "; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(abupdate ""); COMP_CWORD=1
"$fn" abupdate "" abupdate
compgen -W "${COMPREPLY[*]}" --' 2>/dev/null"#;

/// The package, its man pages and its bash completion in the booted slot A.
fn package_works(m: &Machine) -> Result<()> {
    let status = m.vm.ssh_ok(
        "dpkg-query -W -f='${db:Status-Status} ${Version}' abupdate; echo; dpkg -S /usr/sbin/abupdate",
    )?;
    ensure!(
        status.starts_with("installed ") && status.contains("abupdate: /usr/sbin/abupdate"),
        "abupdate should be the installed package owning /usr/sbin/abupdate: {status}"
    );
    step(&format!(
        "package: {}",
        status.lines().next().unwrap_or_default()
    ));
    for (args, title) in [
        ("abupdate", "ABUPDATE(8)"),
        ("abupdate-stage", "ABUPDATE-STAGE(8)"),
        ("5 abupdate.yaml", "ABUPDATE.YAML(5)"),
    ] {
        let page = m.vm.ssh_ok(&format!("MANWIDTH=80 man -P cat {args}"))?;
        ensure!(
            page.to_uppercase().contains(title) && page.contains("NAME"),
            "`man {args}` should print {title}: {page}"
        );
        step(&format!(
            "man {args}: {title}, {} lines",
            page.lines().count()
        ));
    }
    let out = m.vm.ssh_ok(COMPLETE_VERBS)?;
    let mut lines = out.lines();
    let spec = lines.next().unwrap_or_default();
    let verbs: Vec<&str> = lines.collect();
    ensure!(
        spec.starts_with("complete ") && spec.ends_with(" abupdate"),
        "`complete -p abupdate` after loading bash-completion: {out}"
    );
    for verb in ["stage", "switch", "commit", "rollback", "status"] {
        ensure!(
            verbs.contains(&verb),
            "bash completion of `abupdate ` should offer {verb}: {verbs:?}"
        );
    }
    step(&format!(
        "bash: `{spec}`, `abupdate <TAB>` offers {}",
        verbs.join(" ")
    ));
    Ok(())
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    package_works(cx.m)?;
    cx.downtime.reboot_a = Some(cx.m.reboot_time("a")?);
    if !cx.selected("a") {
        // Without the upgrade scenario in this run, measure the switch here.
        cx.m.stage(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
        cx.downtime.switch = Some(cx.m.timed_switch()?);
        cx.downtime.reboot_b = Some(cx.m.reboot_time("b")?);
    }
    Ok(())
}
