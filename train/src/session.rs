//! What every trainer shares: resolved hyperparameters, the optimizer, epoch bookkeeping,
//! checkpoint writing and reading, stop requests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;

use flotilla_protocol::ParamValue;
use flotilla_protocol::messages::{CheckpointRef, MetricPoint, Metrics, Params};
use flotilla_protocol::trainers::{BUDGET_HYPERPARAMETER, TrainerSchema};

use crate::checkpoint::{self, CheckpointFile, CheckpointHeader, Position};
use crate::data::{self, SeriesData, TableData};
use crate::{Control, Events, StopRequest, TrainError, TrainJob};

/// Hyperparameters with defaults filled in and every value checked against the schema.
#[derive(Debug, Clone)]
pub struct Hyper {
    values: BTreeMap<String, ParamValue>,
    /// Search point and settings as given, recorded in checkpoints.
    pub given: Params,
}

impl Hyper {
    pub fn resolve(
        schema: &TrainerSchema,
        params: &Params,
        settings: &Params,
    ) -> Result<Hyper, TrainError> {
        let mut values = BTreeMap::new();
        for hyper in schema.hyperparameters {
            values.insert(hyper.name.to_string(), hyper.default.value());
        }
        let mut given = Params::new();
        for (name, value) in settings.iter().chain(params.iter()) {
            let hyper = schema
                .hyperparameter(name)
                .ok_or_else(|| TrainError::Hyperparameter {
                    name: name.clone(),
                    message: format!("'{}' has no such hyperparameter", schema.name),
                })?;
            hyper
                .check(value)
                .map_err(|message| TrainError::Hyperparameter {
                    name: name.clone(),
                    message,
                })?;
            values.insert(name.clone(), value.clone());
            given.insert(name.clone(), value.clone());
        }
        Ok(Hyper { values, given })
    }

    pub fn f64(&self, name: &str) -> f64 {
        self.values
            .get(name)
            .and_then(ParamValue::as_f64)
            .unwrap_or(0.0)
    }

    pub fn usize(&self, name: &str) -> usize {
        self.f64(name).max(0.0) as usize
    }

    pub fn u64(&self, name: &str) -> u64 {
        match self.values.get(name) {
            Some(ParamValue::Int(value)) => *value as u64,
            _ => self.f64(name).max(0.0) as u64,
        }
    }

    pub fn text(&self, name: &str) -> String {
        match self.values.get(name) {
            Some(ParamValue::Str(text)) => text.clone(),
            Some(other) => other.exact(),
            None => String::new(),
        }
    }
}

/// Adam or AdamW over a model, with the state saved and restored as bytes.
pub enum Optim<B: AutodiffBackend, M: AutodiffModule<B>> {
    Adam(OptimizerAdaptor<Adam, M, B>),
    AdamW(OptimizerAdaptor<AdamW, M, B>),
}

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Optim<B, M> {
    pub fn new(hyper: &Hyper) -> Self {
        let decay = hyper.f64("weight_decay") as f32;
        let clip = hyper.f64("grad_clip") as f32;
        let clipping = (clip > 0.0).then_some(GradientClippingConfig::Norm(clip));
        if hyper.text("optimizer") == "adam" {
            Optim::Adam(
                AdamConfig::new()
                    .with_weight_decay((decay > 0.0).then(|| WeightDecayConfig::new(decay)))
                    .with_grad_clipping(clipping)
                    .init(),
            )
        } else {
            Optim::AdamW(
                AdamWConfig::new()
                    .with_weight_decay(decay)
                    .with_grad_clipping(clipping)
                    .init(),
            )
        }
    }

    pub fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        match self {
            Optim::Adam(optim) => optim.step(lr, model, grads),
            Optim::AdamW(optim) => optim.step(lr, model, grads),
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let bytes = match self {
            Optim::Adam(optim) => Recorder::<B>::record(&recorder(), optim.to_record(), ()),
            Optim::AdamW(optim) => Recorder::<B>::record(&recorder(), optim.to_record(), ()),
        };
        bytes.map_err(|error| TrainError::Record(error.to_string()))
    }

    pub fn load_bytes(self, bytes: Vec<u8>, device: &B::Device) -> Result<Self, TrainError> {
        let error =
            |error: burn::record::RecorderError| TrainError::Record(format!("optimizer: {error}"));
        Ok(match self {
            Optim::Adam(optim) => {
                Optim::Adam(optim.load_record(recorder().load(bytes, device).map_err(error)?))
            }
            Optim::AdamW(optim) => {
                Optim::AdamW(optim.load_record(recorder().load(bytes, device).map_err(error)?))
            }
        })
    }
}

pub fn model_bytes<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
) -> Result<Vec<u8>, TrainError> {
    Recorder::<B>::record(&recorder(), model.clone().into_record(), ())
        .map_err(|error| TrainError::Record(error.to_string()))
}

pub fn load_model<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    model: M,
    bytes: Vec<u8>,
    device: &B::Device,
) -> Result<M, TrainError> {
    let record = recorder()
        .load(bytes, device)
        .map_err(|error| TrainError::Record(format!("model: {error}")))?;
    Ok(model.load_record(record))
}

/// The running state of one attempt, shared by the trainers' loops.
pub struct Session<'a> {
    pub job: TrainJob,
    pub hyper: Hyper,
    pub events: &'a mut dyn Events,
    pub control: &'a Control,
    pub runtime: tokio::runtime::Handle,
    pub seed: u64,
    pub position: Position,
    pub step: u64,
    pub epochs_done: u32,
    pub epoch_loss_sum: f64,
    pub epoch_samples: u64,
    pub started: Instant,
    /// Set when the run uses a GPU, for `gpu_memory_bytes`.
    pub gpu: Option<usize>,
}

impl Session<'_> {
    pub fn stop_requested(&self) -> Option<StopRequest> {
        self.control.requested()
    }

    /// Reads and checks the checkpoint to resume from.
    pub fn fetch_resume(&mut self) -> Result<Option<CheckpointFile>, TrainError> {
        let Some(uri) = self.job.resume_from.clone() else {
            return Ok(None);
        };
        let bytes = self.runtime.block_on(checkpoint::fetch(&uri))?;
        let file = CheckpointFile::decode(&bytes, &uri)?;
        let mismatch = |message: String| checkpoint::CheckpointError::Mismatch {
            uri: uri.clone(),
            message,
        };
        if file.header.trainer != self.job.trainer {
            return Err(mismatch(format!("written by trainer '{}'", file.header.trainer)).into());
        }
        // The run's budget may grow (ASHA promotes a paused trial to train further from its
        // checkpoint); every other hyperparameter must be the same.
        let without_budget = |params: &Params| {
            let mut params = params.clone();
            params.remove(BUDGET_HYPERPARAMETER);
            params
        };
        if without_budget(&file.header.hyperparameters) != without_budget(&self.hyper.given) {
            return Err(mismatch("written with other hyperparameters".into()).into());
        }
        let epochs = self.hyper.usize(BUDGET_HYPERPARAMETER) as u32;
        if epochs < file.header.epochs_done {
            return Err(mismatch(format!(
                "{} epochs are done there, more than this run's {BUDGET_HYPERPARAMETER} = {epochs}",
                file.header.epochs_done
            ))
            .into());
        }
        self.events.log(format!(
            "resuming from {uri} (attempt {}, {} optimizer steps, {} epochs done)",
            file.header.attempt, file.header.step, file.header.epochs_done
        ));
        Ok(Some(file))
    }

    /// Takes the bookkeeping of a checkpoint being resumed.
    pub fn restore(&mut self, header: &CheckpointHeader) {
        self.position = header.position;
        self.step = header.step;
        self.epochs_done = header.epochs_done;
        self.epoch_loss_sum = header.epoch_loss_sum;
        self.epoch_samples = header.epoch_samples;
    }

    /// Writes a checkpoint of the current position and reports it.
    pub fn save(
        &mut self,
        model: Vec<u8>,
        optimizer: Vec<u8>,
        facts: serde_json::Value,
    ) -> Result<CheckpointRef, TrainError> {
        let header = CheckpointHeader {
            trainer: self.job.trainer.clone(),
            trial: self.job.trial.clone(),
            attempt: self.job.attempt,
            hyperparameters: self.hyper.given.clone(),
            position: self.position,
            step: self.step,
            epochs_done: self.epochs_done,
            seed: self.seed,
            epoch_loss_sum: self.epoch_loss_sum,
            epoch_samples: self.epoch_samples,
            model: facts,
        };
        let bytes = CheckpointFile {
            header,
            model,
            optimizer,
        }
        .encode();
        let size = bytes.len() as u64;
        let key = checkpoint::checkpoint_key(&self.job.trial, self.job.attempt, self.step, "ckpt");
        let writing = std::time::Instant::now();
        let uri = self
            .runtime
            .block_on(self.job.artifacts.put_new(&key, bytes))
            .map_err(checkpoint::CheckpointError::from)?;
        self.events.checkpoint_written(size, writing.elapsed());
        let reference = CheckpointRef {
            uri,
            attempt: self.job.attempt,
            step: self.step,
            epoch: self.epochs_done,
            bytes: size,
        };
        self.events.checkpoint(reference.clone());
        Ok(reference)
    }

    /// Whether a periodic checkpoint is due after the epoch just finished.
    pub fn checkpoint_due(&self, global_epoch: u64) -> bool {
        let every = self.hyper.u64("checkpoint_every");
        every > 0 && global_epoch.is_multiple_of(every)
    }

    pub fn report(&mut self, step: u64, mut values: Metrics) {
        if let Some(index) = self.gpu
            && let Some(bytes) = crate::device::gpu_memory_bytes(index)
        {
            values.insert("gpu_memory_bytes".into(), bytes as f64);
        }
        self.events.metrics(MetricPoint {
            step,
            values,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        });
    }

    pub fn data_path(&self, data: &str) -> PathBuf {
        let path = PathBuf::from(data);
        if path.is_absolute() {
            path
        } else {
            self.job.data_dir.join(path)
        }
    }

    pub fn load_series(&self) -> Result<SeriesData, TrainError> {
        let data = self.hyper.text("data");
        let classes = self.hyper.usize("num_classes");
        if data == "synthetic" {
            Ok(data::SyntheticSeries {
                samples: self.hyper.usize("samples"),
                seq_len: self.hyper.usize("seq_len"),
                features: self.hyper.usize("features"),
                num_classes: classes,
                minority_fraction: self.hyper.f64("minority_fraction"),
                seed: self.hyper.u64("data_seed"),
            }
            .generate())
        } else {
            Ok(data::load_series_csv(&self.data_path(&data), classes)?)
        }
    }

    pub fn load_table(&self) -> Result<TableData, TrainError> {
        let data = self.hyper.text("data");
        if data == "synthetic" {
            Ok(data::SyntheticTable {
                samples: self.hyper.usize("samples"),
                features: self.hyper.usize("features"),
                noise: self.hyper.f64("noise"),
                seed: self.hyper.u64("data_seed"),
            }
            .generate())
        } else {
            Ok(data::load_table_csv(&self.data_path(&data))?)
        }
    }
}
