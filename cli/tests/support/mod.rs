//! Shared by the CLI's test and benchmark crates (benches include it by path).

pub mod cluster;
pub mod imds;
