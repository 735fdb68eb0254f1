//! Flotilla's tuning algorithms: pure, synchronous, deterministic by seed.
//!
//! # Layout
//!
//! - [`space`]: the search space (float, int, categorical; linear or log; conditional
//!   dimensions) and points in it.
//! - [`sampler`]: the [`Sampler`] trait, what samplers know about earlier trials
//!   ([`Observation`]), and the model-free samplers — [`RandomSampler`], [`GridSampler`] and
//!   [`SobolSampler`].
//! - [`bayes`]: Gaussian-process Bayesian optimization ([`BayesianSampler`]), on
//!   [`gp`] (Matérn-5/2 ARD regression), [`stats`] (log expected improvement) and
//!   [`lbfgs`] (bounded quasi-Newton minimization).
//! - [`tpe`]: the multivariate Tree-structured Parzen Estimator ([`TpeSampler`]).
//! - [`pareto`]: several objectives — dominance, the front, hypervolume, and [`ParEgo`], which
//!   searches the front with any of the samplers above.
//! - [`encode`]: how the model-based samplers see a point.
//! - [`stopping`]: early stopping — ASHA (stopping and promotion forms) and the median rule.
//!
//! Nothing here does I/O, spawns, or reads a clock; the coordinator's Sweep actor (and the
//! CLI's study) own a sampler and ask it for the next point.

pub mod bayes;
pub mod encode;
pub mod gp;
pub mod lbfgs;
pub mod pareto;
pub mod sampler;
pub mod space;
pub mod stats;
pub mod stopping;
pub mod tpe;

pub use bayes::{BayesianSampler, BayesianSettings};
pub use pareto::ParEgo;
pub use sampler::{GridSampler, Observation, Outcome, RandomSampler, Sampler, SobolSampler};
pub use space::{Condition, Dimension, Domain, Point, SearchSpace, SpaceError, Value};
pub use tpe::{TpeSampler, TpeSettings};
