//! The built-in LSTM classifier's training loop (`lstm_classifier`).

use burn::module::{AutodiffModule, Module};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use flotilla_protocol::messages::Metrics;

use super::{Phase, PhaseEnd, TrainBackend, scalar, train_phase};
use crate::augment::{step_mask, time_warp};
use crate::checkpoint::Position;
use crate::data::{DataError, SeriesData, Standardizer};
use crate::lstm_op::LstmOps;
use crate::metrics::{Confusion, argmax_rows};
use crate::model::{LstmClassifier, LstmShape};
use crate::rng::{Stream, stream};
use crate::session::{Optim, Session, load_model, model_bytes};
use crate::{Finish, TrainError};

/// Facts an LSTM checkpoint carries for inference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LstmFacts {
    #[serde(flatten)]
    pub shape: LstmShape,
    pub seq_len: usize,
    pub standardizer: Standardizer,
    pub class_weights: Vec<f32>,
}

/// The LSTM classifier: an optional masked-reconstruction pretraining phase (0), then
/// classification (1), each resumable at any batch from a checkpoint.
pub(super) fn lstm<B: TrainBackend>(
    s: &mut Session<'_>,
    device: B::Device,
) -> Result<Finish, TrainError> {
    let data = Prepared::load(s)?;
    let facts_json = serde_json::to_value(&data.facts).unwrap_or_default();
    let mut model = LstmClassifier::<B>::new(
        data.facts.shape,
        &mut stream(s.seed, Stream::Init, 0, 0),
        &device,
    );
    s.events.log(format!(
        "lstm_classifier: {} parameters, {} training / {} validation series of {} steps × {} features, class counts {:?}",
        model.num_params(),
        data.train.len(),
        data.val.len(),
        data.train.seq_len,
        data.train.features,
        data.counts
    ));
    let pretrain_epochs = s.hyper.usize("pretrain_epochs") as u32;
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
    let batches = Batches::<B> {
        data: &data,
        seed: s.seed,
        batch_size: s.hyper.usize("batch_size"),
        learning_rate: s.hyper.f64("learning_rate"),
        sigma: s.hyper.f64("time_warp_sigma"),
        facts: &facts_json,
        device: &device,
    };
    if s.position.phase == 0 {
        match pretrain(s, &batches, model, optimizer_state.take(), pretrain_epochs)? {
            PhaseEnd::Done(trained) => model = trained,
            PhaseEnd::Stopped(finish) => return Ok(finish),
        }
        s.position = Position {
            phase: 1,
            epoch: 0,
            batch: 0,
        };
    }
    classify(s, &batches, model, optimizer_state, pretrain_epochs)
}

/// An LSTM trial's data, split and standardized, with the facts its checkpoints carry.
struct Prepared {
    train: SeriesData,
    val: SeriesData,
    /// Training series per class.
    counts: Vec<usize>,
    facts: LstmFacts,
}

impl Prepared {
    fn load(s: &mut Session<'_>) -> Result<Prepared, TrainError> {
        let data = s.load_series()?;
        let (mut train, mut val) =
            data.split(s.hyper.f64("val_fraction"), s.hyper.u64("data_seed"));
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
            class_weights,
        };
        Ok(Prepared {
            train,
            val,
            counts,
            facts,
        })
    }
}

/// What both phases' batches are made from.
struct Batches<'a, B: Backend> {
    data: &'a Prepared,
    seed: u64,
    batch_size: usize,
    learning_rate: f64,
    /// Time-warp strength (0: none).
    sigma: f64,
    facts: &'a serde_json::Value,
    device: &'a B::Device,
}

impl<B: Backend> Batches<'_, B> {
    /// One batch of training series on the host, time-warped from the batch's own stream.
    fn augmented(&self, indices: &[usize], key: u64, batch: u64) -> Vec<f32> {
        let train = &self.data.train;
        let (seq_len, features) = (train.seq_len, train.features);
        let mut x = train.gather(indices);
        if self.sigma > 0.0 {
            let mut rng = stream(self.seed, Stream::Augment, key, batch);
            for series in x.chunks_exact_mut(seq_len * features) {
                time_warp(series, seq_len, features, self.sigma, &mut rng);
            }
        }
        x
    }

    fn plan(&self, phase: u8, epochs: u32, offset: u32) -> Phase {
        Phase {
            phase,
            epochs,
            samples: self.data.train.len(),
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            offset,
            checkpoint_last: phase == 0,
        }
    }

    fn optimizer(
        &self,
        s: &Session<'_>,
        state: Option<Vec<u8>>,
    ) -> Result<Optim<B, LstmClassifier<B>>, TrainError>
    where
        B: AutodiffBackend,
    {
        let optim = Optim::<B, LstmClassifier<B>>::new(&s.hyper);
        match state {
            Some(state) => optim.load_bytes(state, self.device),
            None => Ok(optim),
        }
    }
}

/// Phase 0: reconstruct the steps a mask hides (`mask_ratio` of them), from what is left.
fn pretrain<B: TrainBackend>(
    s: &mut Session<'_>,
    batches: &Batches<'_, B>,
    model: LstmClassifier<B>,
    optimizer_state: Option<Vec<u8>>,
    epochs: u32,
) -> Result<PhaseEnd<LstmClassifier<B>>, TrainError> {
    let mut optim = batches.optimizer(s, optimizer_state)?;
    let plan = batches.plan(0, epochs, 0);
    let mask_ratio = s.hyper.f64("mask_ratio");
    let (seq_len, features) = (batches.data.train.seq_len, batches.data.train.features);
    let (seed, device) = (batches.seed, batches.device);
    let mut batch_loss = |model: &LstmClassifier<B>, indices: &[usize], key: u64, batch: u64| {
        let x = batches.augmented(indices, key, batch);
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
            Tensor::<B, 3>::from_data(TensorData::new(x, [rows, seq_len, features]), device);
        let input = Tensor::<B, 3>::from_data(
            TensorData::new(hidden_input, [rows, seq_len, features]),
            device,
        );
        let masked_count: f32 = mask.iter().sum();
        let mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [rows, seq_len, 1]), device);
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
    train_phase(
        s,
        &plan,
        model,
        &mut optim,
        batches.facts,
        &mut batch_loss,
        &mut epoch_end,
    )
}

/// Phase 1: class-weighted classification, validated after each epoch; the final metrics
/// (confusion matrix included) and checkpoint.
fn classify<B: TrainBackend>(
    s: &mut Session<'_>,
    batches: &Batches<'_, B>,
    model: LstmClassifier<B>,
    optimizer_state: Option<Vec<u8>>,
    pretrain_epochs: u32,
) -> Result<Finish, TrainError> {
    let epochs = s.hyper.usize("epochs") as u32;
    let mut optim = batches.optimizer(s, optimizer_state)?;
    let plan = batches.plan(1, epochs, pretrain_epochs);
    let (train, val) = (&batches.data.train, &batches.data.val);
    let class_weights = &batches.data.facts.class_weights;
    let classes = batches.data.facts.shape.classes;
    let (seq_len, features) = (train.seq_len, train.features);
    let (seed, device) = (batches.seed, batches.device);
    let mut batch_loss = |model: &LstmClassifier<B>, indices: &[usize], key: u64, batch: u64| {
        let rows = indices.len();
        let x = batches.augmented(indices, key, batch);
        let labels: Vec<usize> = indices.iter().map(|&i| train.y[i]).collect();
        let weights: Vec<f32> = labels.iter().map(|&label| class_weights[label]).collect();
        let input =
            Tensor::<B, 3>::from_data(TensorData::new(x, [rows, seq_len, features]), device);
        let mut noise = Some(stream(seed, Stream::Dropout, key, batch));
        let logits = model.forward(input, &mut noise);
        Ok(weighted_cross_entropy(
            logits, &labels, &weights, classes, device,
        ))
    };
    let mut last = Metrics::new();
    let mut confusion = Confusion::new(classes);
    let mut epoch_end =
        |s: &mut Session<'_>, model: &LstmClassifier<B>, epoch: u32, loss: f64, per_second: f64| {
            let (val_loss, matrix) =
                evaluate_lstm::<B::InnerBackend>(&model.valid(), val, class_weights, device);
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
    let model = match train_phase(
        s,
        &plan,
        model,
        &mut optim,
        batches.facts,
        &mut batch_loss,
        &mut epoch_end,
    )? {
        PhaseEnd::Done(trained) => trained,
        PhaseEnd::Stopped(finish) => return Ok(finish),
    };
    if last.is_empty() {
        // Resumed from the final checkpoint: nothing left to train, measure once more.
        let (val_loss, matrix) =
            evaluate_lstm::<B::InnerBackend>(&model.valid(), val, class_weights, device);
        last.insert("epoch".into(), f64::from(epochs));
        last.insert("val_loss".into(), val_loss);
        matrix.report(&mut last);
        confusion = matrix;
    }
    confusion.report_matrix(&mut last);
    let checkpoint = s.save(
        model_bytes::<B, _>(&model)?,
        optim.to_bytes()?,
        batches.facts.clone(),
    )?;
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
fn evaluate_lstm<B: LstmOps>(
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
