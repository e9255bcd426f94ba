//! The VM scenarios, one file each, and THE list of them.
//!
//! To add a scenario: write `x_name.rs` here with a `pub const SCENARIO: Scenario` (what
//! it needs: the machine, whether it continues on a shared one, extra HTTP files) and its
//! `run` function, then add its `mod` line and one entry in [`ALL`] (see
//! `xtask/README.md`).

pub mod a_upgrade;
pub mod b_rollback;
mod c_uncommitted_trial;
mod d_broken_slot;
mod e_powercut_staging;
mod f_downtime;
mod g_daemon_commits;
mod h_failed_check;
mod i_hang;
mod j_pre_switch_hook;
mod k_clone_upgrade;
mod l_powercut_matrix;
mod m_uefi_upgrade;
mod n_daemon_polls;
mod o_kexec;
mod p_distro_packages;
mod q_fleet;

use super::scenario::Scenario;

/// Every scenario, in the order a full run executes them (also the default selection).
/// Neighbours that share a machine are kept together (a chain, which `--lanes` never
/// splits): f, a, b, d, e, l on one plain machine (b rolls a's committed B back, so d goes
/// on in A; l finds B staged by e), h, j, g on one daemon machine (g finds B staged by j),
/// i on its own, m on its own UEFI machine, p on its own BIOS machine with the chain
/// `abupdate init` installed, k, c, o on a second plain machine, n on its own daemon
/// machine (it ends in B), q on its own three hosts behind simulated BMCs.
pub const ALL: &[&Scenario] = &[
    &f_downtime::SCENARIO,
    &a_upgrade::SCENARIO,
    &b_rollback::SCENARIO,
    &d_broken_slot::SCENARIO,
    &e_powercut_staging::SCENARIO,
    &l_powercut_matrix::SCENARIO,
    &h_failed_check::SCENARIO,
    &j_pre_switch_hook::SCENARIO,
    &g_daemon_commits::SCENARIO,
    &i_hang::SCENARIO,
    &m_uefi_upgrade::SCENARIO,
    &p_distro_packages::SCENARIO,
    &k_clone_upgrade::SCENARIO,
    &c_uncommitted_trial::SCENARIO,
    &o_kexec::SCENARIO,
    &n_daemon_polls::SCENARIO,
    &q_fleet::SCENARIO,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_unique() {
        let all: Vec<&Scenario> = ALL.to_vec();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.id, b.id, "two scenarios with id {}", a.id);
                assert_ne!(a.name, b.name, "two scenarios named {}", a.name);
            }
        }
    }
}
