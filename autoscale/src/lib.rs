//! Flotilla's autoscaler: the decision (pure), the providers that carry it out, and the
//! reconciliation step the coordinator's Autoscaler actor runs on a timer.
//!
//! - [`decide`]: demand → desired instances, with scale-out at once, a scale-in window,
//!   an idle grace before zero, and never fewer instances than are busy.
//! - [`provider`]: the [`Provider`] trait; [`aws`] (EC2 Auto Scaling) and [`local`]
//!   (agent processes on this machine).
//! - [`reconcile`]: one step — read the group, decide, set the desired capacity, protect
//!   busy instances from scale-in, drain and release instances held by a termination
//!   lifecycle hook.

pub mod aws;
pub mod decide;
pub mod local;
pub mod provider;
pub mod reconcile;

pub use decide::{Decision, Observation, Policy, Scaler};
pub use provider::{Group, Instance, Lifecycle, Provider, ProviderError};
pub use reconcile::{ClusterView, Reconciler, Step};
