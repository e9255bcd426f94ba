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

/// Assignments tried exhaustively at most; beyond, chains go longest first onto the least
/// loaded lane.
const EXHAUSTIVE_LIMIT: usize = 1 << 16;

/// Spreads the chains over `lanes` lanes so that the most loaded lane (by declared `secs`)
/// is as light as possible: every assignment is tried when there are few (a full run has
/// eight chains on two lanes: 256), else longest first onto the least loaded lane. Each lane
/// keeps list order, the lanes are ordered by their first scenario, empty ones dropped.
pub fn split<'a>(selected: &[&'a Scenario], lanes: usize) -> Vec<Vec<&'a Scenario>> {
    let lanes = lanes.max(1);
    let chains = chains(selected);
    let costs: Vec<u32> = chains
        .iter()
        .map(|c| c.iter().map(|s| s.secs).sum())
        .collect();
    let assignment = best_assignment(&costs, lanes).unwrap_or_else(|| greedy(&costs, lanes));
    let mut out: Vec<Vec<&Scenario>> = vec![Vec::new(); lanes];
    for (chain, lane) in chains.into_iter().zip(assignment) {
        out[lane].extend(chain);
    }
    let order = |sc: &Scenario| selected.iter().position(|s| s.id == sc.id);
    for lane in &mut out {
        lane.sort_by_key(|sc| order(sc));
    }
    out.retain(|l| !l.is_empty());
    // Lane 1 starts with the first selected scenario, and so on.
    out.sort_by_key(|l| l.first().map(|sc| order(sc)));
    out
}

/// The lane of each chain minimising the heaviest lane (then the unevenness of the rest),
/// trying all `lanes^chains` assignments; `None` when there are too many to try.
fn best_assignment(costs: &[u32], lanes: usize) -> Option<Vec<usize>> {
    let count = u32::try_from(costs.len())
        .ok()
        .and_then(|n| lanes.checked_pow(n))
        .filter(|&n| n <= EXHAUSTIVE_LIMIT)?;
    let mut best: Option<((u32, u64), Vec<usize>)> = None;
    for code in 0..count {
        let mut rest = code;
        let mut load = vec![0u32; lanes];
        let mut assignment = Vec::with_capacity(costs.len());
        for &cost in costs {
            let lane = rest % lanes;
            rest /= lanes;
            load[lane] += cost;
            assignment.push(lane);
        }
        // The heaviest lane first; among equals the most even spread (sum of squares).
        let key = (
            load.iter().copied().max().unwrap_or(0),
            load.iter().map(|&l| u64::from(l).pow(2)).sum::<u64>(),
        );
        if best.as_ref().is_none_or(|(b, _)| key < *b) {
            best = Some((key, assignment));
        }
    }
    best.map(|(_, a)| a)
}

/// Longest chain first onto the least loaded lane.
fn greedy(costs: &[u32], lanes: usize) -> Vec<usize> {
    let mut by_cost: Vec<usize> = (0..costs.len()).collect();
    by_cost.sort_by_key(|&i| std::cmp::Reverse(costs[i]));
    let mut load = vec![0u32; lanes];
    let mut assignment = vec![0; costs.len()];
    for i in by_cost {
        let lane = (0..lanes).min_by_key(|&l| load[l]).unwrap_or(0);
        load[lane] += costs[i];
        assignment[i] = lane;
    }
    assignment
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
    fn split_minimises_the_heaviest_lane_and_keeps_list_order() {
        let lanes: Vec<String> = split(LIST, 2).iter().map(|l| ids(l)).collect();
        // Chains pq (200), r (50), s (120), t (30): pq alone against rst (200) is the best;
        // any other split puts at least 230 on one lane.
        assert_eq!(lanes, ["pq", "rst"]);
        assert_eq!(split(LIST, 1).len(), 1);
        // More lanes than chains: no empty lane.
        assert_eq!(split(LIST, 9).len(), 4);
    }

    #[test]
    fn the_best_split_beats_longest_first_where_that_one_is_uneven() {
        // Longest first puts 3+2+2 on one lane (7); 3+3 against 2+2+2 is 6 each.
        let costs = [3, 3, 2, 2, 2];
        let loads = |assignment: &[usize]| {
            let mut load = [0; 2];
            for (c, &l) in costs.iter().zip(assignment) {
                load[l] += c;
            }
            load
        };
        let best = best_assignment(&costs, 2).expect("32 assignments");
        assert_eq!(loads(&best), [6, 6]);
        assert_eq!(loads(&greedy(&costs, 2)).iter().max(), Some(&7));
        let g = greedy(&[8, 7, 4, 3], 2);
        assert_eq!(g, [0, 1, 1, 0]);
        // Too many assignments to try: the caller falls back to longest first.
        assert!(best_assignment(&[1; 40], 2).is_none());
    }

    #[test]
    fn the_real_list_keeps_its_machine_sharing_neighbours_in_one_lane() {
        let lanes: Vec<String> = split(ALL, 2).iter().map(|l| ids(l)).collect();
        // g finds B staged by j.
        assert!(lanes.iter().any(|l| l.contains("jg")), "{lanes:?}");
        assert_eq!(lanes.concat().len(), ALL.len());
    }
}
