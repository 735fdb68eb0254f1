//! Training throughput of the built-in LSTM classifier, measured through the same entry point
//! agents call (`flotilla_train::run`): samples per second of the training pass, per epoch.
//! `bench/lstm.sh` runs it next to the PyTorch script with the same sizes.
//!
//! ```text
//! cargo run --release -p flotilla-train --example lstm_throughput -- \
//!     hidden_size=64 num_layers=1 num_heads=4 batch_size=64 seq_len=48 features=4 \
//!     samples=2048 epochs=4 [device=cpu|cuda]
//! ```
//!
//! Every `name=value` is a trainer setting (an integer, a number with `.` or `e`, or text);
//! `device` picks the device. Prints one JSON line: the per-epoch figures and their median
//! over the epochs after the first (which pays for allocation and, on CUDA, kernel builds).

use std::sync::{Arc, Mutex};

use flotilla_protocol::ParamValue;
use flotilla_protocol::messages::{CheckpointRef, MetricPoint, Params};
use flotilla_train::{ArtifactStore, Control, DeviceChoice, Events, Finish, TrainJob};

struct Throughput {
    per_epoch: Arc<Mutex<Vec<f64>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Events for Throughput {
    fn metrics(&mut self, point: MetricPoint) {
        if let Some(value) = point.values.get("samples_per_second") {
            self.per_epoch.lock().expect("lock").push(*value);
        }
    }
    fn checkpoint(&mut self, _checkpoint: CheckpointRef) {}
    fn log(&mut self, line: String) {
        self.log.lock().expect("lock").push(line);
    }
}

fn value(text: &str) -> ParamValue {
    if let Ok(int) = text.parse::<i64>() {
        ParamValue::Int(int)
    } else if let Ok(float) = text.parse::<f64>() {
        ParamValue::Float(float)
    } else {
        ParamValue::Str(text.to_string())
    }
}

fn main() -> anyhow::Result<()> {
    let mut settings = Params::new();
    for (name, text) in [
        ("checkpoint_every", "0"),
        ("time_warp_sigma", "0.0"),
        ("pretrain_epochs", "0"),
        ("dropout", "0.1"),
    ] {
        settings.insert(name.into(), value(text));
    }
    let mut device = DeviceChoice::Cpu;
    for argument in std::env::args().skip(1) {
        let (name, text) = argument
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("expected name=value, got '{argument}'"))?;
        if name == "device" {
            device = text.parse().map_err(|error| anyhow::anyhow!("{error}"))?;
        } else {
            settings.insert(name.into(), value(text));
        }
    }
    let artifacts = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let per_epoch = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut events = Throughput {
        per_epoch: per_epoch.clone(),
        log: log.clone(),
    };
    let job = TrainJob {
        trainer: "lstm_classifier".into(),
        trial: "bench-t0".into(),
        attempt: 0,
        params: Params::new(),
        settings: settings.clone(),
        resume_from: None,
        artifacts: ArtifactStore::open(artifacts.path().to_str().expect("utf-8 path"))?,
        device,
        data_dir: std::env::temp_dir(),
    };
    let control = Control::new();
    let finish = flotilla_train::run(job, &mut events, &control, runtime.handle().clone())?;
    anyhow::ensure!(
        matches!(finish, Finish::Completed { .. }),
        "training did not complete: {finish:?}"
    );
    let per_epoch = per_epoch.lock().expect("lock").clone();
    let mut steady: Vec<f64> = per_epoch.iter().skip(1).copied().collect();
    if steady.is_empty() {
        steady = per_epoch.clone();
    }
    steady.sort_by(f64::total_cmp);
    let middle = steady.len() / 2;
    let median = if steady.len().is_multiple_of(2) {
        (steady[middle - 1] + steady[middle]) / 2.0
    } else {
        steady[middle]
    };
    let settings: serde_json::Map<String, serde_json::Value> = settings
        .iter()
        .map(|(name, value)| (name.clone(), serde_json::to_value(value).expect("json")))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "framework": "burn",
            "backend": log.lock().expect("lock").first().cloned().unwrap_or_default(),
            "settings": settings,
            "samples_per_second_per_epoch": per_epoch,
            "samples_per_second": median,
        })
    );
    Ok(())
}
