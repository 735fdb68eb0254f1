//! The harness every multi-process test and benchmark runs on: real `flotilla` coordinator,
//! agent and router processes, a real etcd (one member or three on loopback ports),
//! `moto_server` for S3 and Auto Scaling, network namespaces for partitions, and the CLI to
//! drive them. Any process can be killed (SIGKILL), paused (SIGSTOP), resumed (SIGCONT) and
//! restarted. Everything lives in a temporary directory and every process is killed when its
//! owner is dropped, also when a test fails (a failed cluster test keeps its logs).
//!
//! The processes run the `flotilla` binary built with the workspace
//! (`target/<profile>/flotilla`), or the one named by `FLOTILLA_BIN`.
//!
//! # Layout
//!
//! - [`process`]: the binary under test, free ports, [`wait_until`], and [`Process`], a
//!   child killed and reaped when dropped.
//! - [`cluster`]: [`Cluster`], coordinators with a state file ([`Cluster::standalone`]) or
//!   in etcd ([`Cluster::new`]), agents, routers, and the CLI against them.
//! - [`sweeps`]: sweep files the tests share, and checks of their results.
//! - [`events`]: the run logs logged sweeps write, and the check that no trial ran twice at
//!   once.
//! - [`etcd`], [`moto`], [`netns`]: the outside parts.
//! - [`http`]: plain HTTP on loopback, metric scrapes, headless Chromium.
//! - [`imds`]: a stand-in for EC2's instance metadata service (spot notices).
//! - [`bench`]: measuring helpers of the benchmark programs.

pub mod bench;
pub mod cluster;
pub mod etcd;
pub mod events;
pub mod http;
pub mod imds;
pub mod moto;
pub mod netns;
pub mod process;
pub mod sweeps;

pub use cluster::{Agent, Cluster, Coordinator};
pub use etcd::{Etcd, EtcdMember};
pub use events::{RunEvent, assert_no_trial_ran_twice_at_once, run_events};
pub use http::{chromium, http_get, http_get_with, http_with, scrape, url_encode};
pub use moto::Moto;
pub use netns::Netns;
pub use process::{
    Process, flotilla_bin, free_tcp_port, free_udp_port, processes_with, processes_with_all,
    wait_until,
};
pub use sweeps::{assert_all_succeeded_once, one_trial_sweep, small_lstm_trial, trials};
