//! Canary rollout decisions for Flotilla.
//!
//! - [`stats`]: what the router counts per model version ([`Arm`]) and the mixture
//!   sequential test that compares two versions from those counts, valid at every look.
//! - [`decide`]: the [`Policy`] (stages, error rates, margins) and the pure [`decide()`]
//!   function: hold, advance, promote, or roll back, with the evidence for it.

pub mod decide;
pub mod stats;

pub use decide::{Check, Decision, Evidence, Pair, Policy, PolicyError, Stage, Verdict, decide};
pub use stats::{Arm, Metric};
