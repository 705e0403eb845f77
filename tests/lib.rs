//! Workspace-level tests live in `tests/*.rs`; see README "Tests".
