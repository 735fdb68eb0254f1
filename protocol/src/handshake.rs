//! `Hello`/`Welcome` version negotiation, the same rule on both ends.

use crate::messages::{Hello, Role};

/// Newest protocol version this build speaks. Version 2 added `AgentMessage::Draining` and
/// `AgentInfo::draining`; version 3 added `AgentMessage::TrialCheckpoint` and
/// `TrialRecord::checkpoint`; version 4 added the `bayesian`, `tpe` and `sobol` algorithms
/// (and made `bayesian` the default), `AlgorithmSpec::initial_trials`,
/// `SweepSpec::early_stopping` and `StopReason::EarlyStopped`; version 5 added phases and
/// ASHA's promotion form; version 6 added `ClientRequest::ClusterStatus`, version 7
/// `ClientRequest::SweepDetail`, and version 8 the admin requests `AutoscaleStatus`, `Scale`
/// and `AgentAdmin`, `Command::Drain` and `StopReason::Preempted` (all appended, so version 5
/// peers still understand everything else; a coordinator sends the version-8 command and
/// stop reason only to agents that speak version 8); version 9 added the model registry,
/// serving and rollouts (`Command::Serve`/`SealModel`, `AgentMessage::Serving`/`ModelSealed`,
/// the model, rollout and router requests; all appended); version 10 added
/// `Command::StartAttempt` (the GPUs an attempt gets) and `ClientRequest::AgentGpus` (sent only
/// to peers that speak 10); version 11 added `Role::Router` (appended): `RouterSync` is
/// answered only for router and admin certificates; version 12 added served programs
/// (`SweepSpec::serving`, `ModelVersion::serving`, `ServedModel::serving`,
/// `SealRequest::format`, `ServeState::Restarting`, squared error in the rollout counters,
/// per-stage gates in policies, `ClientRequest::ModelPlacements`); version 13 gave serving
/// replicas resources (`ServingSpec::slots` and `gpus`) and `Placement` the GPUs a replica
/// holds. Versions 12 and 13 changed existing structs, so older peers are refused; stored
/// state of versions 11 and 12 is read and converted (the coordinator's `store::legacy`).
/// Version 14 appended `StoppingRule::Hyperband`. Version 15 added conditional parameters
/// (`ParamSpec::when`) and warm starts (`SweepSpec::warm_start`): sweep specs changed, so
/// older peers are refused; stored state of versions 11 to 14 is read and converted.
/// Version 16 added multi-objective sweeps (`Objective::also`): sweep specs changed again, so
/// older peers are refused; stored state of versions 11 to 15 is read and converted.
/// Version 17 added the sweep's share and team (`SweepSpec::scheduling`): sweep specs changed,
/// so older peers are refused; stored state of versions 11 to 16 is read and converted.
pub const PROTOCOL_VERSION: u16 = 17;
/// Oldest protocol version this build still speaks. Older peers are refused at the
/// handshake with `UnsupportedVersion` rather than failing later on a message they cannot
/// decode.
pub const MIN_PROTOCOL_VERSION: u16 = 17;
/// ALPN identifier; a peer without it fails the TLS handshake.
pub const ALPN: &[u8] = b"flotilla";

/// A `Hello` for this build.
pub fn hello(role: Role, peer_name: impl Into<String>) -> Hello {
    Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        role,
        peer_name: peer_name.into(),
    }
}

/// The version both sides speak: the highest common one, if the ranges overlap.
pub fn negotiate(peer: &Hello) -> Option<u16> {
    let high = peer.max_version.min(PROTOCOL_VERSION);
    let low = peer.min_version.max(MIN_PROTOCOL_VERSION);
    (peer.min_version <= peer.max_version && low <= high).then_some(high)
}

/// Whether a certificate with `certified` may act as `requested`. An admin may act as a
/// client; no other role stands in for another (a router certificate is not a client's).
pub fn role_permits(certified: Role, requested: Role) -> bool {
    match requested {
        Role::Client => matches!(certified, Role::Client | Role::Admin),
        other => certified == other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        let mut peer = hello(Role::Client, "t");
        assert_eq!(negotiate(&peer), Some(PROTOCOL_VERSION));
        peer.max_version = 99;
        assert_eq!(negotiate(&peer), Some(PROTOCOL_VERSION));
        peer.min_version = PROTOCOL_VERSION + 1;
        assert_eq!(negotiate(&peer), None);
        peer.min_version = 5;
        peer.max_version = 2;
        assert_eq!(negotiate(&peer), None);
    }

    #[test]
    fn roles_do_not_cross() {
        assert!(role_permits(Role::Admin, Role::Client));
        assert!(role_permits(Role::Client, Role::Client));
        assert!(!role_permits(Role::Agent, Role::Client));
        assert!(!role_permits(Role::Client, Role::Agent));
        assert!(!role_permits(Role::Client, Role::Admin));
        assert!(role_permits(Role::Router, Role::Router));
        assert!(!role_permits(Role::Router, Role::Client));
        assert!(!role_permits(Role::Client, Role::Router));
    }
}
