//! Policy loading must never panic: any bytes either compile into a policy (which then
//! lints and decides without panicking) or produce a located error.
#![no_main]

use airlock_launcher::policy::capability::Capability;
use airlock_launcher::policy::{lint::lint, Policy, PolicyError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml("fuzz.toml", text) {
        Ok(policy) => {
            let _ = lint(&policy);
            for probe in [
                "fs rw /home/a/work/x",
                "net github.com:443",
                "tool git -C /w -c core.pager=x push origin",
                "resources vcpus=2",
            ] {
                for cap in Capability::parse_text(probe).expect("probes parse") {
                    assert_eq!(policy.decide(&cap), policy.decide_linear(&cap), "{cap}");
                }
            }
        }
        Err(PolicyError::At { line, col, .. }) => assert!(line >= 1 && col >= 1),
        Err(e) => panic!("unexpected error kind for in-memory text: {e}"),
    }
});
