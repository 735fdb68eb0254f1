//! Canary rollout decisions for Flotilla.
//!
//! - [`stats`]: what the router counts per model version ([`Arm`]) and the mixture
//!   sequential test that compares two versions from those counts, valid at every look.
//! - [`decide`]: the [`Policy`] (stages, error rates, margins) and the pure [`decide()`]
//!   function: hold, advance, promote, or roll back, with the evidence for it.
//! - [`split`]: how the router sends each request to the baseline or the canary ([`Split`]),
//!   sticky per request key and monotone as the canary's weight grows.

pub mod decide;
pub mod split;
pub mod stats;

pub use decide::{Check, Decision, Evidence, Pair, Policy, PolicyError, Stage, Verdict, decide};
pub use split::{Side, Split};
pub use stats::{Arm, Metric};
