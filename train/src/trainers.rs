//! The training loops of the built-in trainers.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::backend::ndarray::{NdArray, NdArrayDevice};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use flotilla_protocol::messages::Metrics;

use crate::augment::{step_mask, time_warp};
use crate::checkpoint::Position;
use crate::data::{DataError, SeriesData, Standardizer, TableData};
use crate::device::{self, Resolved};
use crate::lstm_op::LstmOps;
use crate::metrics::{Confusion, argmax_rows, regression};
use crate::model::{LstmClassifier, LstmShape, MlpRegressor, MlpShape};
use crate::rng::{Stream, stream};
use crate::session::{Hyper, Optim, Session, load_model, model_bytes};
use crate::{Control, Events, Finish, StopRequest, TrainError, TrainJob};

/// Facts an LSTM checkpoint carries for inference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LstmFacts {
    #[serde(flatten)]
    pub shape: LstmShape,
    pub seq_len: usize,
    pub standardizer: Standardizer,
    pub class_weights: Vec<f32>,
}

/// Facts an MLP checkpoint carries for inference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlpFacts {
    #[serde(flatten)]
    pub shape: MlpShape,
    pub standardizer: Standardizer,
}

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
        "lstm_classifier" => lstm::<B>(session, device),
        "mlp_regressor" => mlp::<B>(session, device),
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

fn lstm<B: TrainBackend>(s: &mut Session<'_>, device: B::Device) -> Result<Finish, TrainError> {
    let data = s.load_series()?;
    let (mut train, mut val) = data.split(s.hyper.f64("val_fraction"), s.hyper.u64("data_seed"));
    if train.len() < 2 || val.is_empty() {
        return Err(DataError::plain(format!(
            "{} series are too few to split into training and validation",
            data.len()
        ))
        .into());
    }
    let standardizer = Standardizer::fit(&train.x, train.features);
    standardizer.apply(&mut train.x);
    standardizer.apply(&mut val.x);
    let classes = data.num_classes;
    let counts = train.class_counts();
    let class_weights: Vec<f32> = if s.hyper.text("class_weights") == "balanced" {
        counts
            .iter()
            .map(|&count| {
                if count == 0 {
                    0.0
                } else {
                    train.len() as f32 / (classes as f32 * count as f32)
                }
            })
            .collect()
    } else {
        vec![1.0; classes]
    };
    let facts = LstmFacts {
        shape: LstmShape {
            features: train.features,
            hidden: s.hyper.usize("hidden_size"),
            layers: s.hyper.usize("num_layers"),
            heads: s.hyper.usize("num_heads"),
            classes,
            dropout: s.hyper.f64("dropout"),
        },
        seq_len: train.seq_len,
        standardizer,
        class_weights: class_weights.clone(),
    };
    let facts_json = serde_json::to_value(&facts).unwrap_or_default();
    let mut model = LstmClassifier::<B>::new(
        facts.shape,
        &mut stream(s.seed, Stream::Init, 0, 0),
        &device,
    );
    s.events.log(format!(
        "lstm_classifier: {} parameters, {} training / {} validation series of {} steps × {} features, class counts {:?}",
        model.num_params(),
        train.len(),
        val.len(),
        train.seq_len,
        train.features,
        counts
    ));
    let pretrain_epochs = s.hyper.usize("pretrain_epochs") as u32;
    let epochs = s.hyper.usize("epochs") as u32;
    s.position = Position {
        phase: if pretrain_epochs > 0 { 0 } else { 1 },
        epoch: 0,
        batch: 0,
    };
    let mut optimizer_state = None;
    if let Some(file) = s.fetch_resume()? {
        model = load_model(model, file.model, &device)?;
        s.restore(&file.header);
        optimizer_state = Some(file.optimizer);
    }
    let batch_size = s.hyper.usize("batch_size");
    let learning_rate = s.hyper.f64("learning_rate");
    let sigma = s.hyper.f64("time_warp_sigma");
    let mask_ratio = s.hyper.f64("mask_ratio");
    let (seq_len, features) = (train.seq_len, train.features);
    let seed = s.seed;

    // Augmented batch on the host: time-warped series, from the batch's own stream.
    let augmented = |indices: &[usize], key: u64, batch: u64| {
        let mut x = train.gather(indices);
        if sigma > 0.0 {
            let mut rng = stream(seed, Stream::Augment, key, batch);
            for series in x.chunks_exact_mut(seq_len * features) {
                time_warp(series, seq_len, features, sigma, &mut rng);
            }
        }
        x
    };

    if s.position.phase == 0 {
        let mut optim = Optim::<B, LstmClassifier<B>>::new(&s.hyper);
        if let Some(state) = optimizer_state.take() {
            optim = optim.load_bytes(state, &device)?;
        }
        let plan = Phase {
            phase: 0,
            epochs: pretrain_epochs,
            samples: train.len(),
            batch_size,
            learning_rate,
            offset: 0,
            checkpoint_last: true,
        };
        let mut batch_loss = |model: &LstmClassifier<B>,
                              indices: &[usize],
                              key: u64,
                              batch: u64| {
            let x = augmented(indices, key, batch);
            let rows = indices.len();
            let mask = step_mask(
                rows,
                seq_len,
                mask_ratio,
                &mut stream(seed, Stream::Mask, key, batch),
            );
            let mut hidden_input = x.clone();
            for (step_values, &masked) in hidden_input.chunks_exact_mut(features).zip(&mask) {
                if masked > 0.0 {
                    step_values.fill(0.0);
                }
            }
            let target =
                Tensor::<B, 3>::from_data(TensorData::new(x, [rows, seq_len, features]), &device);
            let input = Tensor::<B, 3>::from_data(
                TensorData::new(hidden_input, [rows, seq_len, features]),
                &device,
            );
            let masked_count: f32 = mask.iter().sum();
            let mask =
                Tensor::<B, 3>::from_data(TensorData::new(mask, [rows, seq_len, 1]), &device);
            let mut noise = Some(stream(seed, Stream::Dropout, key, batch));
            let error = model.reconstruct(input, &mut noise) - target;
            Ok((error.clone() * error * mask).sum() / (masked_count * features as f32))
        };
        let mut epoch_end =
            |s: &mut Session<'_>, _: &LstmClassifier<B>, epoch: u32, loss: f64, per_second: f64| {
                let mut metrics = Metrics::new();
                metrics.insert("pretrain_loss".into(), loss);
                metrics.insert("samples_per_second".into(), per_second);
                s.report(u64::from(epoch + 1), metrics);
                Ok(())
            };
        match train_phase(
            s,
            &plan,
            model,
            &mut optim,
            &facts_json,
            &mut batch_loss,
            &mut epoch_end,
        )? {
            PhaseEnd::Done(trained) => model = trained,
            PhaseEnd::Stopped(finish) => return Ok(finish),
        }
        s.position = Position {
            phase: 1,
            epoch: 0,
            batch: 0,
        };
    }

    let mut optim = Optim::<B, LstmClassifier<B>>::new(&s.hyper);
    if let Some(state) = optimizer_state.take() {
        optim = optim.load_bytes(state, &device)?;
    }
    let plan = Phase {
        phase: 1,
        epochs,
        samples: train.len(),
        batch_size,
        learning_rate,
        offset: pretrain_epochs,
        checkpoint_last: false,
    };
    let weights_for = |labels: &[usize]| -> Vec<f32> {
        labels.iter().map(|&label| class_weights[label]).collect()
    };
    let mut batch_loss = |model: &LstmClassifier<B>, indices: &[usize], key: u64, batch: u64| {
        let rows = indices.len();
        let x = augmented(indices, key, batch);
        let labels: Vec<usize> = indices.iter().map(|&i| train.y[i]).collect();
        let input =
            Tensor::<B, 3>::from_data(TensorData::new(x, [rows, seq_len, features]), &device);
        let mut noise = Some(stream(seed, Stream::Dropout, key, batch));
        let logits = model.forward(input, &mut noise);
        Ok(weighted_cross_entropy(
            logits,
            &labels,
            &weights_for(&labels),
            classes,
            &device,
        ))
    };
    let mut last = Metrics::new();
    let mut confusion = Confusion::new(classes);
    let mut epoch_end =
        |s: &mut Session<'_>, model: &LstmClassifier<B>, epoch: u32, loss: f64, per_second: f64| {
            let (val_loss, matrix) =
                evaluate_lstm::<B::InnerBackend>(&model.valid(), &val, &class_weights, &device);
            let mut metrics = Metrics::new();
            metrics.insert("epoch".into(), f64::from(epoch + 1));
            metrics.insert("train_loss".into(), loss);
            metrics.insert("val_loss".into(), val_loss);
            metrics.insert("samples_per_second".into(), per_second);
            matrix.report(&mut metrics);
            s.epochs_done = epoch + 1;
            s.report(u64::from(pretrain_epochs + epoch + 1), metrics.clone());
            last = metrics;
            confusion = matrix;
            Ok(())
        };
    match train_phase(
        s,
        &plan,
        model,
        &mut optim,
        &facts_json,
        &mut batch_loss,
        &mut epoch_end,
    )? {
        PhaseEnd::Done(trained) => model = trained,
        PhaseEnd::Stopped(finish) => return Ok(finish),
    }
    if last.is_empty() {
        // Resumed from the final checkpoint: nothing left to train, measure once more.
        let (val_loss, matrix) =
            evaluate_lstm::<B::InnerBackend>(&model.valid(), &val, &class_weights, &device);
        last.insert("epoch".into(), f64::from(epochs));
        last.insert("val_loss".into(), val_loss);
        matrix.report(&mut last);
        confusion = matrix;
    }
    confusion.report_matrix(&mut last);
    let checkpoint = s.save(model_bytes::<B, _>(&model)?, optim.to_bytes()?, facts_json)?;
    Ok(Finish::Completed {
        metrics: last,
        checkpoint: Some(checkpoint),
    })
}

/// Class-weighted cross-entropy: `Σ wᵢ · −log p(yᵢ) / Σ wᵢ`.
fn weighted_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[usize],
    weights: &[f32],
    classes: usize,
    device: &B::Device,
) -> Tensor<B, 1> {
    let rows = labels.len();
    let mut one_hot = vec![0f32; rows * classes];
    for (row, &label) in labels.iter().enumerate() {
        one_hot[row * classes + label] = 1.0;
    }
    let one_hot = Tensor::<B, 2>::from_data(TensorData::new(one_hot, [rows, classes]), device);
    let weight_sum: f32 = weights.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let weights = Tensor::<B, 2>::from_data(TensorData::new(weights.to_vec(), [rows, 1]), device);
    let nll = (log_softmax(logits, 1) * one_hot).sum_dim(1).neg();
    (nll * weights).sum() / weight_sum
}

/// Validation loss (class-weighted, as trained) and confusion matrix, in batches, without
/// dropout or gradients.
pub(crate) fn evaluate_lstm<B: LstmOps>(
    model: &LstmClassifier<B>,
    data: &SeriesData,
    class_weights: &[f32],
    device: &B::Device,
) -> (f64, Confusion) {
    let mut confusion = Confusion::new(data.num_classes);
    let (mut loss_sum, mut weight_sum) = (0.0, 0.0);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(256) {
        let rows = chunk.len();
        let x = data.gather(chunk);
        let input = Tensor::<B, 3>::from_data(
            TensorData::new(x, [rows, data.seq_len, data.features]),
            device,
        );
        let logits = model.forward(input, &mut None);
        let labels: Vec<usize> = chunk.iter().map(|&i| data.y[i]).collect();
        let weights: Vec<f32> = labels.iter().map(|&label| class_weights[label]).collect();
        let batch_weight: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let loss =
            weighted_cross_entropy(logits.clone(), &labels, &weights, data.num_classes, device);
        loss_sum += scalar(loss) * batch_weight;
        weight_sum += batch_weight;
        let values = logits
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        for (truth, predicted) in labels.iter().zip(argmax_rows(&values, data.num_classes)) {
            confusion.add(*truth, predicted);
        }
    }
    (loss_sum / weight_sum.max(f64::MIN_POSITIVE), confusion)
}

fn mlp<B: TrainBackend>(s: &mut Session<'_>, device: B::Device) -> Result<Finish, TrainError> {
    let data = s.load_table()?;
    if data.len() < 4 {
        return Err(
            DataError::plain(format!("{} rows are too few to train on", data.len())).into(),
        );
    }
    let (mut train, mut val) = data.split(s.hyper.f64("val_fraction"), s.hyper.u64("data_seed"));
    let standardizer = Standardizer::fit(&train.x, train.features);
    standardizer.apply(&mut train.x);
    standardizer.apply(&mut val.x);
    let facts = MlpFacts {
        shape: MlpShape {
            features: train.features,
            hidden: s.hyper.usize("hidden_size"),
            layers: s.hyper.usize("num_layers"),
            dropout: s.hyper.f64("dropout"),
        },
        standardizer,
    };
    let facts_json = serde_json::to_value(&facts).unwrap_or_default();
    let mut model = MlpRegressor::<B>::new(
        facts.shape,
        &mut stream(s.seed, Stream::Init, 0, 0),
        &device,
    );
    s.position = Position {
        phase: 1,
        epoch: 0,
        batch: 0,
    };
    let mut optim = Optim::<B, MlpRegressor<B>>::new(&s.hyper);
    if let Some(file) = s.fetch_resume()? {
        model = load_model(model, file.model, &device)?;
        s.restore(&file.header);
        optim = optim.load_bytes(file.optimizer, &device)?;
    }
    let epochs = s.hyper.usize("epochs") as u32;
    let plan = Phase {
        phase: 1,
        epochs,
        samples: train.len(),
        batch_size: s.hyper.usize("batch_size"),
        learning_rate: s.hyper.f64("learning_rate"),
        offset: 0,
        checkpoint_last: false,
    };
    let seed = s.seed;
    let features = train.features;
    let mut batch_loss = |model: &MlpRegressor<B>, indices: &[usize], key: u64, batch: u64| {
        let rows = indices.len();
        let x: Vec<f32> = indices
            .iter()
            .flat_map(|&i| train.row(i).to_vec())
            .collect();
        let y: Vec<f32> = indices.iter().map(|&i| train.y[i]).collect();
        let input = Tensor::<B, 2>::from_data(TensorData::new(x, [rows, features]), &device);
        let target = Tensor::<B, 1>::from_data(TensorData::new(y, [rows]), &device);
        let mut noise = Some(stream(seed, Stream::Dropout, key, batch));
        let error = model.forward(input, &mut noise) - target;
        Ok((error.clone() * error).mean())
    };
    let mut last = Metrics::new();
    let mut epoch_end =
        |s: &mut Session<'_>, model: &MlpRegressor<B>, epoch: u32, loss: f64, per_second: f64| {
            let metrics = evaluate_mlp::<B::InnerBackend>(
                &model.valid(),
                &val,
                &device,
                epoch + 1,
                loss,
                per_second,
            );
            s.epochs_done = epoch + 1;
            s.report(u64::from(epoch + 1), metrics.clone());
            last = metrics;
            Ok(())
        };
    match train_phase(
        s,
        &plan,
        model,
        &mut optim,
        &facts_json,
        &mut batch_loss,
        &mut epoch_end,
    )? {
        PhaseEnd::Done(trained) => model = trained,
        PhaseEnd::Stopped(finish) => return Ok(finish),
    }
    if last.is_empty() {
        last =
            evaluate_mlp::<B::InnerBackend>(&model.valid(), &val, &device, epochs, f64::NAN, 0.0);
        last.remove("train_loss");
        last.remove("samples_per_second");
    }
    let checkpoint = s.save(model_bytes::<B, _>(&model)?, optim.to_bytes()?, facts_json)?;
    Ok(Finish::Completed {
        metrics: last,
        checkpoint: Some(checkpoint),
    })
}

fn evaluate_mlp<B: Backend>(
    model: &MlpRegressor<B>,
    data: &TableData,
    device: &B::Device,
    epoch: u32,
    train_loss: f64,
    per_second: f64,
) -> Metrics {
    let mut predicted = Vec::with_capacity(data.len());
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(1024) {
        let x: Vec<f32> = chunk.iter().flat_map(|&i| data.row(i).to_vec()).collect();
        let input =
            Tensor::<B, 2>::from_data(TensorData::new(x, [chunk.len(), data.features]), device);
        let output = model.forward(input, &mut None);
        predicted.extend(
            output
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default(),
        );
    }
    let mut metrics = Metrics::new();
    metrics.insert("epoch".into(), f64::from(epoch));
    metrics.insert("train_loss".into(), train_loss);
    metrics.insert("samples_per_second".into(), per_second);
    regression(&predicted, &data.y, &mut metrics);
    let rmse = metrics["val_rmse"];
    metrics.insert("val_loss".into(), rmse * rmse);
    metrics
}
