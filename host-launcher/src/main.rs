//! `airlock`: the command-line interface over `airlock_launcher`.
//!
//! Exit codes: 0 success / all allowed / valid; 1 invalid input or failed check;
//! 2 usage error; 3 needs approval; 4 denied; 141 stdout was closed before all the
//! output was written (`airlock … | head`; see `cli::output`).
//!
//! Each subcommand lives in its own module under `cli/`; this file parses the command
//! line, dispatches, and turns the result into the exit code.

mod cli;

use clap::Parser;
use cli::output::{clap_exit, errln};
use cli::{Cli, Command, Failure};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| clap_exit(&e));
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            errln!("airlock: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cmd: Command) -> Result<u8, Failure> {
    match cmd {
        Command::Policy(c) => cli::policy::exec(c),
        Command::Plan { policy, plan, json } => cli::plan::exec(&policy, &plan, json),
        Command::Keygen { out, force } => cli::keygen::exec(out, force),
        Command::Manifest(c) => cli::manifest::exec(c),
        Command::Image(c) => cli::image::exec(c),
        Command::Run(a) => cli::run::exec(a),
        Command::Serve(a) => cli::serve::exec(a),
        Command::Mcp(a) => cli::mcp::exec(a),
        Command::SshEntry(a) => cli::ssh_entry::exec(a),
        Command::Approvals(c) => cli::approvals::exec(c),
        Command::Audit(c) => cli::audit::exec(c),
        Command::Schema { out } => cli::schema::exec(&out),
    }
}
