//! The gRPC wire contract (package `airlock.v1`), generated at build time from
//! `proto/airlock/v1/*.proto`.
//!
//! - `launcher_server` / `launcher_client`: orchestrators → host launcher.
//! - `enforcer_server` / `enforcer_client`: host → guest enforcer (over vsock).
//! - `host_server` / `host_client`: guest enforcer → host (asks, logs).

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("airlock.v1");
}

pub use generated::*;

/// Encoded `FileDescriptorSet` of every Airlock proto file (for gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/airlock_descriptor.bin"));

impl From<Verdict> for crate::verdict::Verdict {
    /// `UNSPECIFIED` (a field nobody set) maps to deny: an unset verdict grants nothing.
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => crate::verdict::Verdict::Allow,
            Verdict::Ask => crate::verdict::Verdict::Ask,
            Verdict::Deny | Verdict::Unspecified => crate::verdict::Verdict::Deny,
        }
    }
}

impl From<crate::verdict::Verdict> for Verdict {
    fn from(v: crate::verdict::Verdict) -> Self {
        match v {
            crate::verdict::Verdict::Allow => Verdict::Allow,
            crate::verdict::Verdict::Ask => Verdict::Ask,
            crate::verdict::Verdict::Deny => Verdict::Deny,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_three_services_are_generated_under_their_wire_names() {
        assert_eq!(launcher_server::SERVICE_NAME, "airlock.v1.Launcher");
        assert_eq!(enforcer_server::SERVICE_NAME, "airlock.v1.Enforcer");
        assert_eq!(host_server::SERVICE_NAME, "airlock.v1.Host");
        for name in [
            "Launcher",
            "Enforcer",
            "Host",
            "CreateSession",
            "WatchApprovals",
            "Apply",
            "Ask",
        ] {
            assert!(
                FILE_DESCRIPTOR_SET
                    .windows(name.len())
                    .any(|w| w == name.as_bytes()),
                "{name} missing from the descriptor set"
            );
        }
    }

    #[test]
    fn an_unset_verdict_decodes_as_deny() {
        let d = CapabilityDecision::decode(&[][..]).unwrap();
        assert_eq!(d.verdict(), Verdict::Unspecified);
        assert_eq!(
            crate::verdict::Verdict::from(d.verdict()),
            crate::verdict::Verdict::Deny
        );
        // An unknown future enum value also decodes as UNSPECIFIED, hence deny.
        let bytes = CapabilityDecision {
            verdict: 42,
            ..Default::default()
        }
        .encode_to_vec();
        let d = CapabilityDecision::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            crate::verdict::Verdict::from(d.verdict()),
            crate::verdict::Verdict::Deny
        );
    }

    #[test]
    fn exec_events_round_trip() {
        let e = ExecEvent {
            event: Some(exec_event::Event::Exit(ExitStatus {
                status: Some(exit_status::Status::Signal(9)),
                stopped_by_sandbox: "wall time".into(),
            })),
        };
        assert_eq!(ExecEvent::decode(e.encode_to_vec().as_slice()).unwrap(), e);
    }
}
