//! The training loops of the built-in trainers: what every trainer shares (the backend
//! chosen, the phase loop with stop checks, metrics and checkpoints) here, each trainer's
//! data, batches and metrics in its own module.

mod lstm;
mod mlp;

pub use lstm::LstmFacts;
pub use mlp::MlpFacts;

use std::time::Instant;

use burn::backend::Autodiff;
use burn::backend::ndarray::{NdArray, NdArrayDevice};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use rand::seq::SliceRandom;

use crate::checkpoint::Position;
use crate::device::{self, Resolved};
use crate::lstm_op::LstmOps;
use crate::rng::{Stream, stream};
use crate::session::{Hyper, Optim, Session, model_bytes};
use crate::{Control, Events, Finish, StopRequest, TrainError, TrainJob};

pub fn run(
    job: TrainJob,
    events: &mut dyn Events,
    control: &Control,
    runtime: tokio::runtime::Handle,
) -> Result<Finish, TrainError> {
    let schema = flotilla_protocol::trainers::schema(&job.trainer)
        .ok_or_else(|| TrainError::UnknownTrainer(job.trainer.clone()))?;
    let hyper = Hyper::resolve(schema, &job.params, &job.settings)?;
    let (resolved, note) = device::resolve(job.device).map_err(TrainError::Device)?;
    if let Some(note) = note {
        events.log(note);
    }
    let seed = hyper.u64("seed");
    let mut session = Session {
        job,
        hyper,
        events,
        control,
        runtime,
        seed,
        position: Position {
            phase: 1,
            epoch: 0,
            batch: 0,
        },
        step: 0,
        epochs_done: 0,
        epoch_loss_sum: 0.0,
        epoch_samples: 0,
        started: Instant::now(),
        gpu: None,
    };
    match resolved {
        Resolved::Cpu => {
            session
                .events
                .log("training on the CPU (burn ndarray backend)".into());
            dispatch::<Autodiff<NdArray>>(&mut session, NdArrayDevice::Cpu)
        }
        #[cfg(feature = "cuda")]
        Resolved::Cuda(index) => {
            session.events.log(format!(
                "training on CUDA device {index} (burn cuda backend)"
            ));
            session.gpu = Some(index);
            dispatch::<Autodiff<burn::backend::Cuda>>(
                &mut session,
                burn::backend::cuda::CudaDevice::new(index),
            )
        }
        #[cfg(not(feature = "cuda"))]
        Resolved::Cuda(index) => Err(TrainError::Device(format!(
            "CUDA device {index} requested but this build has no CUDA support"
        ))),
    }
}

/// A backend the trainers run on: differentiable, with the LSTM layer for training and for
/// validation on its inner backend.
pub trait TrainBackend: AutodiffBackend<InnerBackend: LstmOps> + LstmOps {}

impl<B: AutodiffBackend<InnerBackend: LstmOps> + LstmOps> TrainBackend for B {}

fn dispatch<B: TrainBackend>(
    session: &mut Session<'_>,
    device: B::Device,
) -> Result<Finish, TrainError> {
    match session.job.trainer.as_str() {
        "lstm_classifier" => lstm::lstm::<B>(session, device),
        "mlp_regressor" => mlp::mlp::<B>(session, device),
        other => Err(TrainError::UnknownTrainer(other.to_string())),
    }
}

/// The data order of one epoch of one phase.
fn epoch_order(samples: usize, seed: u64, phase: u8, epoch: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..samples).collect();
    order.shuffle(&mut stream(
        seed,
        Stream::Shuffle,
        u64::from(phase),
        u64::from(epoch),
    ));
    order
}

/// Key of the per-batch random streams: phase and epoch.
fn batch_key(phase: u8, epoch: u32) -> u64 {
    (u64::from(phase) << 32) | u64::from(epoch)
}

fn scalar<B: Backend>(tensor: Tensor<B, 1>) -> f64 {
    tensor.into_scalar().elem::<f64>()
}

/// The loss of one batch: `(model, sample indices, phase/epoch key, batch index)`.
type BatchLoss<'f, B, M> =
    dyn FnMut(&M, &[usize], u64, u64) -> Result<Tensor<B, 1>, TrainError> + 'f;
/// Called after each epoch: `(session, model, epoch, training loss, samples per second)`.
type EpochEnd<'f, M> =
    dyn FnMut(&mut Session<'_>, &M, u32, f64, f64) -> Result<(), TrainError> + 'f;

/// How one phase's loop ended.
enum PhaseEnd<M> {
    Done(M),
    Stopped(Finish),
}

struct Phase {
    phase: u8,
    epochs: u32,
    samples: usize,
    batch_size: usize,
    learning_rate: f64,
    /// Epochs of earlier phases, so metric steps count every epoch run.
    offset: u32,
    /// Checkpoint after the last epoch here too (the caller writes the final one otherwise).
    checkpoint_last: bool,
}

/// Runs the epochs of one phase from the session's position: batches in a seeded order,
/// a stop check before each, metrics after each epoch, periodic checkpoints.
#[allow(clippy::too_many_arguments)]
fn train_phase<B: AutodiffBackend, M: AutodiffModule<B>>(
    s: &mut Session<'_>,
    plan: &Phase,
    mut model: M,
    optim: &mut Optim<B, M>,
    facts: &serde_json::Value,
    batch_loss: &mut BatchLoss<'_, B, M>,
    epoch_end: &mut EpochEnd<'_, M>,
) -> Result<PhaseEnd<M>, TrainError> {
    while s.position.epoch < plan.epochs {
        let epoch = s.position.epoch;
        let order = epoch_order(plan.samples, s.seed, plan.phase, epoch);
        let batches = order.len().div_ceil(plan.batch_size) as u64;
        let timer = Instant::now();
        let mut seen_here = 0u64;
        while s.position.batch < batches {
            if let Some(request) = s.stop_requested() {
                let checkpoint = match request {
                    StopRequest::Abort => None,
                    StopRequest::Checkpoint => Some(s.save(
                        model_bytes::<B, M>(&model)?,
                        optim.to_bytes()?,
                        facts.clone(),
                    )?),
                };
                return Ok(PhaseEnd::Stopped(Finish::Stopped { checkpoint }));
            }
            let batch = s.position.batch as usize;
            let end = ((batch + 1) * plan.batch_size).min(order.len());
            let indices = &order[batch * plan.batch_size..end];
            let loss = batch_loss(&model, indices, batch_key(plan.phase, epoch), batch as u64)?;
            let value = scalar(loss.clone());
            if !value.is_finite() {
                return Err(TrainError::Diverged(format!(
                    "loss is {value} at epoch {}, batch {batch} (try a lower learning_rate)",
                    epoch + 1
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(plan.learning_rate, model, grads);
            s.step += 1;
            s.position.batch += 1;
            s.events.progress(s.step);
            s.epoch_loss_sum += value * indices.len() as f64;
            s.epoch_samples += indices.len() as u64;
            seen_here += indices.len() as u64;
        }
        let train_loss = s.epoch_loss_sum / s.epoch_samples.max(1) as f64;
        let per_second = seen_here as f64 / timer.elapsed().as_secs_f64().max(1e-9);
        s.position = Position {
            phase: plan.phase,
            epoch: epoch + 1,
            batch: 0,
        };
        s.epoch_loss_sum = 0.0;
        s.epoch_samples = 0;
        epoch_end(s, &model, epoch, train_loss, per_second)?;
        let global = u64::from(plan.offset + epoch + 1);
        let last = epoch + 1 == plan.epochs;
        if s.checkpoint_due(global) && (!last || plan.checkpoint_last) {
            s.save(
                model_bytes::<B, M>(&model)?,
                optim.to_bytes()?,
                facts.clone(),
            )?;
        }
    }
    Ok(PhaseEnd::Done(model))
}
