//! Flotilla's wire protocol: everything two Flotilla processes must agree on.
//!
//! # Layout
//!
//! - [`ids`]: identifiers that travel on the wire (sweeps, trials, attempts, agents, epochs).
//! - [`spec`]: the sweep specification (the TOML sweep file and the SDK builder produce it),
//!   with one `validate()` that reports every problem with its field path.
//! - [`messages`]: the frames exchanged by agents, clients and the coordinator.
//! - [`models`]: the model registry, serving and canary rollouts (protocol 9).
//! - [`codec`]: the one place that knows the byte encoding (bincode 1.3, frozen).
//! - [`framing`]: length-prefixed frames over any async byte stream (QUIC streams in practice),
//!   with the maximum frame size enforced before anything is allocated.
//! - [`tls`]: the cluster CA, role-carrying certificates and the QUIC/TLS configurations.
//! - [`trainers`]: the built-in trainers' hyperparameters and metrics, as data.
//! - [`handshake`]: `Hello`/`Welcome` version negotiation shared by both ends.

pub mod codec;
pub mod etcd_pki;
pub mod framing;
pub mod handshake;
pub mod https;
pub mod ids;
pub mod messages;
pub mod models;
pub mod revocation;
pub mod spec;
pub mod tls;
pub mod trainers;
pub mod value;

pub use ids::{AgentId, AttemptId, Epoch, SweepId, TrialId};
pub use value::ParamValue;
