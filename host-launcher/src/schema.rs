//! JSON Schemas for the policy, plan and manifest, generated from the Rust types.
//!
//! The checked-in copies under `manifests/schemas/` are kept current by a test; run
//! `airlock schema --out manifests/schemas` (or `make schemas`) after changing a type.

use crate::plan::Plan;
use crate::policy::document::PolicyDocument;
use airlock_proto::manifest::Manifest;

/// `(file name, pretty JSON)` for every schema.
pub fn all() -> Vec<(&'static str, String)> {
    let render = |s: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&s).expect("schemas serialize");
        text.push('\n');
        text
    };
    vec![
        (
            "policy.schema.json",
            render(schemars::schema_for!(PolicyDocument)),
        ),
        ("plan.schema.json", render(schemars::schema_for!(Plan))),
        (
            "manifest.schema.json",
            render(schemars::schema_for!(Manifest)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn checked_in_schemas_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/schemas");
        for (name, want) in super::all() {
            let path = dir.join(name);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} is stale or missing: run `make schemas` and commit the result",
                path.display()
            );
        }
    }
}
