//! The built-in MLP regressor's training loop (`mlp_regressor`).

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use flotilla_protocol::messages::Metrics;

use super::{Phase, PhaseEnd, TrainBackend, train_phase};
use crate::checkpoint::Position;
use crate::data::{DataError, Standardizer, TableData};
use crate::metrics::regression;
use crate::model::{MlpRegressor, MlpShape};
use crate::rng::{Stream, stream};
use crate::session::{Optim, Session, load_model, model_bytes};
use crate::{Finish, TrainError};

/// Facts an MLP checkpoint carries for inference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlpFacts {
    #[serde(flatten)]
    pub shape: MlpShape,
    pub standardizer: Standardizer,
}

pub(super) fn mlp<B: TrainBackend>(
    s: &mut Session<'_>,
    device: B::Device,
) -> Result<Finish, TrainError> {
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
