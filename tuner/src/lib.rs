//! Flotilla's tuning algorithms: pure, synchronous, deterministic by seed.
//!
//! # Layout
//!
//! - [`space`]: the search space (float, int, categorical; linear or log) and points in it.
//! - [`sampler`]: the [`Sampler`] trait and the samplers — [`RandomSampler`] and
//!   [`GridSampler`].
//!
//! Nothing here does I/O, spawns, or reads a clock; the coordinator's Sweep actor owns a
//! sampler and asks it for the next point.

pub mod sampler;
pub mod space;

pub use sampler::{GridSampler, RandomSampler, Sampler};
pub use space::{Dimension, Domain, Point, SearchSpace, SpaceError, Value};
