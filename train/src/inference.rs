//! Load a trained checkpoint and predict batches: the path model serving uses.

use burn::backend::NdArray;
use burn::backend::ndarray::NdArrayDevice;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};

use crate::checkpoint::{CheckpointFile, fetch, fetch_verified};
use crate::model::{LstmClassifier, MlpRegressor};
use crate::rng::{Stream, stream};
use crate::session::load_model;
use crate::trainers::{LstmFacts, MlpFacts};
use crate::{DataError, TrainError};

/// A model ready to predict on the CPU.
#[derive(Debug)]
pub enum Predictor {
    Lstm {
        model: Box<LstmClassifier<NdArray>>,
        facts: LstmFacts,
    },
    Mlp {
        model: Box<MlpRegressor<NdArray>>,
        facts: MlpFacts,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Class {
        class: usize,
        probabilities: Vec<f32>,
    },
    Value(f32),
}

impl Predictor {
    /// Reads a checkpoint by URI (`file:///…` or `s3://…`; S3 settings from the environment).
    pub async fn load(uri: &str) -> Result<Predictor, TrainError> {
        let bytes = fetch(uri).await?;
        Predictor::from_bytes(&bytes, uri)
    }

    /// As [`load`](Self::load), refusing an artifact whose SHA-256 is not `sha256` (a
    /// registered model version's digest) before anything is decoded.
    pub async fn load_verified(uri: &str, sha256: &str) -> Result<Predictor, TrainError> {
        let bytes = fetch_verified(uri, sha256).await?;
        Predictor::from_bytes(&bytes, uri)
    }

    pub fn from_bytes(bytes: &[u8], uri: &str) -> Result<Predictor, TrainError> {
        let file = CheckpointFile::decode(bytes, uri)?;
        let device = NdArrayDevice::Cpu;
        // The weights come from the checkpoint; the initial draw is only a shape.
        let mut rng = stream(0, Stream::Init, 0, 0);
        let facts_error =
            |error: serde_json::Error| TrainError::Record(format!("{uri}: model facts: {error}"));
        match file.header.trainer.as_str() {
            "lstm_classifier" => {
                let facts: LstmFacts =
                    serde_json::from_value(file.header.model).map_err(facts_error)?;
                let model = LstmClassifier::new(facts.shape, &mut rng, &device);
                let model = load_model(model, file.model, &device)?;
                Ok(Predictor::Lstm {
                    model: Box::new(model),
                    facts,
                })
            }
            "mlp_regressor" => {
                let facts: MlpFacts =
                    serde_json::from_value(file.header.model).map_err(facts_error)?;
                let model = MlpRegressor::new(facts.shape, &mut rng, &device);
                let model = load_model(model, file.model, &device)?;
                Ok(Predictor::Mlp {
                    model: Box::new(model),
                    facts,
                })
            }
            other => Err(TrainError::UnknownTrainer(other.to_string())),
        }
    }

    /// Every weight of the model, in the model's parameter order (for comparing models).
    pub fn weights(&self) -> Vec<f32> {
        struct Collect(Vec<f32>);
        impl ModuleVisitor<NdArray> for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<NdArray, D>>) {
                self.0
                    .extend(param.val().into_data().to_vec::<f32>().unwrap_or_default());
            }
        }
        let mut collect = Collect(Vec::new());
        match self {
            Predictor::Lstm { model, .. } => model.visit(&mut collect),
            Predictor::Mlp { model, .. } => model.visit(&mut collect),
        }
        collect.0
    }

    /// Values one input must have: steps × features for the LSTM (step-major), features for
    /// the MLP.
    pub fn input_len(&self) -> usize {
        match self {
            Predictor::Lstm { facts, .. } => facts.seq_len * facts.shape.features,
            Predictor::Mlp { facts, .. } => facts.shape.features,
        }
    }

    /// Predicts a batch of raw (unscaled) inputs.
    pub fn predict(&self, inputs: &[Vec<f32>]) -> Result<Vec<Prediction>, TrainError> {
        let expected = self.input_len();
        for (index, input) in inputs.iter().enumerate() {
            if input.len() != expected {
                return Err(DataError::plain(format!(
                    "input {index} has {} values, the model takes {expected}",
                    input.len()
                ))
                .into());
            }
            if let Some(position) = input.iter().position(|v| !v.is_finite()) {
                return Err(DataError::plain(format!(
                    "input {index} value {position} is not finite"
                ))
                .into());
            }
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let device = NdArrayDevice::Cpu;
        let rows = inputs.len();
        let mut x: Vec<f32> = inputs.concat();
        match self {
            Predictor::Lstm { model, facts } => {
                facts.standardizer.apply(&mut x);
                let input = Tensor::<NdArray, 3>::from_data(
                    TensorData::new(x, [rows, facts.seq_len, facts.shape.features]),
                    &device,
                );
                let probabilities = softmax(model.forward(input, &mut None), 1)
                    .into_data()
                    .to_vec::<f32>()
                    .map_err(|error| TrainError::Record(format!("{error:?}")))?;
                Ok(probabilities
                    .chunks_exact(facts.shape.classes)
                    .map(|row| Prediction::Class {
                        class: crate::metrics::argmax_rows(row, facts.shape.classes)[0],
                        probabilities: row.to_vec(),
                    })
                    .collect())
            }
            Predictor::Mlp { model, facts } => {
                facts.standardizer.apply(&mut x);
                let input = Tensor::<NdArray, 2>::from_data(
                    TensorData::new(x, [rows, facts.shape.features]),
                    &device,
                );
                let values = model
                    .forward(input, &mut None)
                    .into_data()
                    .to_vec::<f32>()
                    .map_err(|error| TrainError::Record(format!("{error:?}")))?;
                Ok(values.into_iter().map(Prediction::Value).collect())
            }
        }
    }
}
