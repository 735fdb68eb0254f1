//! Flotilla's built-in trainers, written with burn.
//!
//! - [`run`] trains one trial attempt to the end (or until told to stop) on the calling
//!   thread, reporting metrics and checkpoints through [`Events`]. Agents call it on a
//!   dedicated thread, never inside an actor handler.
//! - Trainers: `lstm_classifier` (the seeds' SimpleLSTM with attention pooling, masked
//!   pre-training and time-warp augmentation) and `mlp_regressor`. Their hyperparameters
//!   and metrics are declared in [`flotilla_protocol::trainers`].
//! - [`data`]: synthetic generators and CSV loading; [`checkpoint`]: the checkpoint format
//!   and the artifact store; [`inference`]: load a checkpoint and predict.
//! - Backends: burn's ndarray backend always; CUDA with the `cuda` feature, chosen per
//!   trial by [`DeviceChoice`].

pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod inference;
pub mod lstm_op;
pub mod metrics;
pub mod model;
pub mod rng;
mod session;
mod trainers;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use flotilla_protocol::messages::{CheckpointRef, MetricPoint, Metrics, Params};

pub use checkpoint::{ArtifactStore, CheckpointError};
pub use data::DataError;
pub use device::DeviceChoice;

/// One attempt of a trial to train.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// `lstm_classifier` or `mlp_regressor`.
    pub trainer: String,
    /// The trial's id as text (names checkpoint objects).
    pub trial: String,
    pub attempt: u32,
    /// The search-space point.
    pub params: Params,
    /// The sweep's fixed `trial.settings`.
    pub settings: Params,
    /// URI of the checkpoint to continue from.
    pub resume_from: Option<String>,
    pub artifacts: ArtifactStore,
    pub device: DeviceChoice,
    /// Relative CSV paths are read from here.
    pub data_dir: PathBuf,
}

/// What a running trainer tells its owner. Called on the training thread.
pub trait Events: Send {
    /// Metrics of a finished epoch (step = epochs completed, pre-training included).
    fn metrics(&mut self, point: MetricPoint);
    /// A checkpoint object was written.
    fn checkpoint(&mut self, checkpoint: CheckpointRef);
    /// A checkpoint object of `bytes` was written to the artifact store in `took` (called
    /// before [`Events::checkpoint`]).
    fn checkpoint_written(&mut self, _bytes: u64, _took: std::time::Duration) {}
    /// A line for the trial's log (device choice, fallbacks, progress).
    fn log(&mut self, line: String);
    /// One optimizer step finished (`step` counts every step of the trial).
    fn progress(&mut self, _step: u64) {}
}

/// How a trainer is asked to stop, checked before every batch.
#[derive(Debug, Clone, Default)]
pub struct Control(Arc<AtomicU8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Stop at once; no checkpoint (cancelled, timed out).
    Abort,
    /// Write a checkpoint of the exact position, then stop (drain, preemption).
    Checkpoint,
}

impl Control {
    pub fn new() -> Self {
        Control::default()
    }

    /// Asks the trainer to stop. A checkpoint request is not downgraded by a later abort
    /// and vice versa: the first request wins.
    pub fn request(&self, request: StopRequest) {
        let value = match request {
            StopRequest::Abort => 1,
            StopRequest::Checkpoint => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, value, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn requested(&self) -> Option<StopRequest> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopRequest::Abort),
            2 => Some(StopRequest::Checkpoint),
            _ => None,
        }
    }
}

/// How a training run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// Every epoch ran; `metrics` are the final values (with the confusion matrix for
    /// classifiers); `checkpoint` holds the final model.
    Completed {
        metrics: Metrics,
        checkpoint: Option<CheckpointRef>,
    },
    /// Stopped on request; `checkpoint` is where to continue from, when one was asked for.
    Stopped { checkpoint: Option<CheckpointRef> },
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("unknown trainer '{0}'")]
    UnknownTrainer(String),
    #[error("hyperparameter '{name}': {message}")]
    Hyperparameter { name: String, message: String },
    #[error("data: {0}")]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("model record: {0}")]
    Record(String),
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error("device: {0}")]
    Device(String),
    #[error("the trainer panicked: {0}")]
    Panicked(String),
}

/// Trains one attempt on the calling thread. `runtime` runs the artifact store's I/O.
pub fn run(
    job: TrainJob,
    events: &mut dyn Events,
    control: &Control,
    runtime: tokio::runtime::Handle,
) -> Result<Finish, TrainError> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        trainers::run(job, events, control, runtime)
    }));
    match outcome {
        Ok(result) => result,
        Err(panic) => Err(TrainError::Panicked(panic_message(panic.as_ref()))),
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}
