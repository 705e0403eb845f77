//! `airlock-shim`: installed under each granted tool's name in the agent's PATH.
//! See `airlock_enforcer::shim`.

use airlock_enforcer::shim::{run, BROKER_SOCKET_ENV, DEFAULT_BROKER_SOCKET};
use std::path::PathBuf;

fn main() {
    let mut argv = Vec::new();
    for a in std::env::args_os() {
        match a.into_string() {
            Ok(s) => argv.push(s),
            Err(a) => {
                eprintln!("airlock-shim: argument {a:?} is not UTF-8; refusing to forward it");
                std::process::exit(airlock_enforcer::broker::EXIT_REFUSED);
            }
        }
    }
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let socket = std::env::var_os(BROKER_SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BROKER_SOCKET));
    std::process::exit(run(argv, env, &socket));
}
