//! `abupdate`: the command line over `abupdate-lib`. Parses arguments, calls one library
//! function per verb, prints the result (text or `--json`), and maps errors to the exit
//! codes documented in README.md.

mod cli;
mod docs;
mod logging;

fn main() {
    std::process::exit(cli::run(std::env::args_os()));
}
