//! Parallel lanes: the selected scenarios split into chains (neighbours that continue on one
//! machine), the chains spread over N child `xtask e2e` processes, each running its share
//! in list order on its own machines, HTTP server and run directory.
//!
//! Each lane's guests get one virtual CPU (one TCG thread), so two lanes on a 2-core
//! machine do not oversubscribe it. The parent builds what the lanes
//! share first (the cached images, the release binary, its package), so no two lanes build the same
//! thing; each lane's output is printed live, every line prefixed with its lane.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::scenario::{Scenario, Start};
use crate::{deb, images, setup, util, vm};

/// Splits `selected` (in list order) into chains: a scenario continues the previous chain
/// when it may continue on the previous one's machine.
pub fn chains<'a>(selected: &[&'a Scenario]) -> Vec<Vec<&'a Scenario>> {
    let mut out: Vec<Vec<&Scenario>> = Vec::new();
    for sc in selected {
        let continues = out.last().and_then(|c| c.last()).is_some_and(|prev| {
            prev.start != Start::Fresh && sc.start != Start::Fresh && prev.machine == sc.machine
        });
        match out.last_mut() {
            Some(chain) if continues => chain.push(sc),
            _ => out.push(vec![sc]),
        }
    }
    out
}

/// Spreads the chains over `lanes` lanes, longest first onto the least loaded lane; each
/// lane keeps list order. Empty lanes are dropped.
pub fn split<'a>(selected: &[&'a Scenario], lanes: usize) -> Vec<Vec<&'a Scenario>> {
    let cost = |c: &[&Scenario]| c.iter().map(|s| s.secs).sum::<u32>();
    let mut chains = chains(selected);
    chains.sort_by_key(|c| std::cmp::Reverse(cost(c)));
    let mut out: Vec<Vec<&Scenario>> = vec![Vec::new(); lanes.max(1)];
    for chain in chains {
        if let Some(lane) = out.iter_mut().min_by_key(|l| cost(l)) {
            lane.extend(chain);
        }
    }
    let order = |sc: &Scenario| selected.iter().position(|s| s.id == sc.id);
    for lane in &mut out {
        lane.sort_by_key(|sc| order(sc));
    }
    out.retain(|l| !l.is_empty());
    out
}

/// Prints every line of `from` prefixed with `tag`.
fn relay(tag: String, from: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            match line {
                Ok(l) => println!("[{tag}] {l}"),
                Err(_) => break,
            }
        }
    })
}

/// Runs each lane of `plan` ([`split`]) in a child process and waits for all of them.
pub fn run(plan: &[Vec<&'static Scenario>], keep: bool) -> Result<()> {
    let total = Instant::now();
    // What every lane needs, built once here.
    setup::ensure_host_packages()?;
    images::ensure()?;
    let bin = util::build_abupdate_release()?;
    let deb = deb::for_run(&bin)?;
    // This very executable, even when `cargo xtask deps` or a build replaced the file
    // since it started (current_exe() then names a deleted path; /proc/self/exe still
    // opens the running image).
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let mut running = Vec::new();
    for (n, lane) in plan.iter().enumerate() {
        let ids: Vec<&str> = lane.iter().map(|s| s.id).collect();
        let secs: u32 = lane.iter().map(|s| s.secs).sum();
        println!(
            "lanes: lane {} runs {} (about {} min)",
            n + 1,
            ids.join(","),
            secs.div_ceil(60)
        );
        let mut cmd = Command::new(&exe);
        cmd.args(["e2e", "--lanes", "1", "--only", &ids.join(",")])
            .env("XTASK_ABUPDATE_BIN", &bin)
            .env(deb::DEB_ENV, &deb)
            .env(vm::VCPUS_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if keep {
            cmd.arg("--keep");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start lane {} ({})", n + 1, exe.display()))?;
        vm::track_lane(child.id());
        let tag = format!("lane {}", n + 1);
        let relays = [
            child.stdout.take().map(|o| relay(tag.clone(), o)),
            child.stderr.take().map(|e| relay(tag.clone(), e)),
        ];
        running.push((n + 1, ids.join(","), child, relays));
    }
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for (n, ids, mut child, relays) in running {
        let status = child.wait().with_context(|| format!("wait for lane {n}"))?;
        vm::untrack_lane(child.id());
        for r in relays.into_iter().flatten() {
            let _ = r.join();
        }
        summary.push(format!("  lane {n} ({ids}): {status}"));
        if !status.success() {
            failed.push(n);
        }
    }
    println!("\n=== e2e lanes (total {:.0?}) ===", total.elapsed());
    for l in &summary {
        println!("{l}");
    }
    if !failed.is_empty() {
        bail!("lane(s) {failed:?} failed; see their summaries above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::scenario::{Ctx, MachineSpec, Run};
    use crate::e2e::scenarios::ALL;

    fn nop(_: &mut Ctx<'_>) -> Result<()> {
        Ok(())
    }

    const fn sc(id: &'static str, machine: MachineSpec, start: Start, secs: u32) -> Scenario {
        Scenario {
            id,
            name: id,
            about: "",
            machine,
            start,
            secs,
            serves: None,
            run: Run::OnMachine(nop),
        }
    }

    const P1: Scenario = sc("p", MachineSpec::PLAIN, Start::InA, 100);
    const P2: Scenario = sc("q", MachineSpec::PLAIN, Start::AsLeft, 100);
    const D1: Scenario = sc("r", MachineSpec::DAEMON, Start::InA, 50);
    const F1: Scenario = sc("s", MachineSpec::PLAIN, Start::Fresh, 120);
    const P3: Scenario = sc("t", MachineSpec::PLAIN, Start::InA, 30);
    const LIST: &[&Scenario] = &[&P1, &P2, &D1, &F1, &P3];

    fn ids(c: &[&Scenario]) -> String {
        c.iter().map(|s| s.id).collect()
    }

    #[test]
    fn chains_break_at_a_new_machine_and_around_fresh_ones() {
        let chains: Vec<String> = chains(LIST).iter().map(|c| ids(c)).collect();
        assert_eq!(chains, ["pq", "r", "s", "t"]);
    }

    #[test]
    fn split_puts_longest_chains_first_on_the_least_loaded_lane_in_list_order() {
        let lanes: Vec<String> = split(LIST, 2).iter().map(|l| ids(l)).collect();
        // pq (200) → lane 1; s (120) → lane 2; r (50) → lane 2; t (30) → lane 2 (200 vs 170).
        assert_eq!(lanes, ["pq", "rst"]);
        assert_eq!(split(LIST, 1).len(), 1);
        // More lanes than chains: no empty lane.
        assert_eq!(split(LIST, 9).len(), 4);
    }

    #[test]
    fn the_real_list_keeps_its_machine_sharing_neighbours_in_one_lane() {
        let lanes: Vec<String> = split(ALL, 2).iter().map(|l| ids(l)).collect();
        // g finds B staged by j.
        assert!(lanes.iter().any(|l| l.contains("jg")), "{lanes:?}");
        assert_eq!(lanes.concat().len(), ALL.len());
    }
}
