//! What the built-in trainers accept and report, as data.
//!
//! The coordinator validates a sweep against these tables when it is submitted (every search
//! space parameter and every `trial.settings` entry must be a hyperparameter the trainer
//! knows, with a value it accepts; the objective and constraints must name metrics it
//! reports), and the agent's trainers read their configuration through the same tables, so
//! the two cannot disagree about a name, a default or a range.

use std::collections::BTreeMap;

use crate::ParamValue;

/// A built-in trainer: its hyperparameters and the metrics it reports.
#[derive(Debug)]
pub struct TrainerSchema {
    pub name: &'static str,
    pub summary: &'static str,
    pub hyperparameters: &'static [Hyperparameter],
    /// Metrics reported every epoch (and at the end).
    pub metrics: &'static [&'static str],
    /// Metrics reported once per class `k`: `class_{k}_{suffix}`.
    pub per_class_metrics: &'static [&'static str],
}

#[derive(Debug)]
pub struct Hyperparameter {
    pub name: &'static str,
    pub kind: HyperKind,
    pub default: DefaultValue,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub enum HyperKind {
    /// A number in `[min, max]`.
    Float {
        min: f64,
        max: f64,
    },
    /// A whole number in `[min, max]`.
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    /// One of the listed words.
    Choice(&'static [&'static str]),
    /// Free text (a path, a URL).
    Text,
}

/// A hyperparameter's default value (a `const`-friendly [`ParamValue`]).
#[derive(Debug, Clone, Copy)]
pub enum DefaultValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(&'static str),
}

impl DefaultValue {
    pub fn value(self) -> ParamValue {
        match self {
            DefaultValue::Float(value) => ParamValue::Float(value),
            DefaultValue::Int(value) => ParamValue::Int(value),
            DefaultValue::Bool(value) => ParamValue::Bool(value),
            DefaultValue::Str(value) => ParamValue::Str(value.to_string()),
        }
    }
}

const fn float(
    name: &'static str,
    min: f64,
    max: f64,
    default: f64,
    help: &'static str,
) -> Hyperparameter {
    Hyperparameter {
        name,
        kind: HyperKind::Float { min, max },
        default: DefaultValue::Float(default),
        help,
    }
}

const fn int(
    name: &'static str,
    min: i64,
    max: i64,
    default: i64,
    help: &'static str,
) -> Hyperparameter {
    Hyperparameter {
        name,
        kind: HyperKind::Int { min, max },
        default: DefaultValue::Int(default),
        help,
    }
}

const fn choice(
    name: &'static str,
    choices: &'static [&'static str],
    default: &'static str,
    help: &'static str,
) -> Hyperparameter {
    Hyperparameter {
        name,
        kind: HyperKind::Choice(choices),
        default: DefaultValue::Str(default),
        help,
    }
}

const fn text(name: &'static str, default: &'static str, help: &'static str) -> Hyperparameter {
    Hyperparameter {
        name,
        kind: HyperKind::Text,
        default: DefaultValue::Str(default),
        help,
    }
}

/// The hyperparameter that bounds a built-in trainer's run, which ASHA's promotion form sets
/// per rung, and the metric that counts it.
pub const BUDGET_HYPERPARAMETER: &str = "epochs";
pub const BUDGET_METRIC: &str = "epoch";

/// A trainer's own hyperparameters followed by the optimisation, data and bookkeeping ones
/// every trainer shares.
macro_rules! with_common {
    ($($own:expr),* $(,)?) => {
        [
            $($own,)*
            float("learning_rate", 1e-7, 10.0, 1e-3, "step size of the optimizer"),
            float("weight_decay", 0.0, 1.0, 0.0, "L2 penalty (adam) or decoupled decay (adamw)"),
            choice("optimizer", &["adam", "adamw"], "adamw", "the optimizer"),
            int("batch_size", 1, 65_536, 64, "samples per gradient step"),
            int("epochs", 1, 100_000, 20, "training epochs"),
            float("grad_clip", 0.0, 1e6, 1.0, "clip the gradient norm to this value (0: off)"),
            int("seed", 0, i64::MAX, 0, "seeds initialisation, data order, augmentation and dropout"),
            int("checkpoint_every", 0, 100_000, 5, "write a checkpoint every N epochs (0: only when stopped)"),
            text("data", "synthetic", "`synthetic` or the path of a CSV file (layout in docs/sdk.md, built-in trainers)"),
            float("val_fraction", 0.01, 0.9, 0.2, "share of the data held out for validation"),
            int("data_seed", 0, i64::MAX, 7, "seeds the synthetic data and the train/validation split"),
            int("samples", 16, 10_000_000, 2_000, "synthetic data: number of samples"),
        ]
    };
}

static LSTM_HYPERPARAMETERS: [Hyperparameter; 24] = with_common![
    int("hidden_size", 2, 4_096, 64, "LSTM hidden units per layer"),
    int("num_layers", 1, 8, 1, "stacked LSTM layers"),
    int(
        "num_heads",
        1,
        64,
        4,
        "attention pooling heads (must divide hidden_size)"
    ),
    float(
        "dropout",
        0.0,
        0.9,
        0.1,
        "dropout between layers and before the classifier"
    ),
    int(
        "pretrain_epochs",
        0,
        100_000,
        0,
        "masked-reconstruction pre-training epochs of the encoder"
    ),
    float(
        "mask_ratio",
        0.01,
        0.9,
        0.15,
        "share of time steps masked in pre-training"
    ),
    float(
        "time_warp_sigma",
        0.0,
        1.0,
        0.0,
        "strength of the on-the-fly time-warp augmentation (0: off)"
    ),
    choice(
        "class_weights",
        &["balanced", "none"],
        "balanced",
        "cross-entropy class weights"
    ),
    int(
        "num_classes",
        2,
        1_000,
        2,
        "number of classes (labels 0..num_classes)"
    ),
    int(
        "seq_len",
        4,
        100_000,
        48,
        "synthetic data: time steps per series"
    ),
    int(
        "features",
        1,
        4_096,
        4,
        "synthetic data: features per time step"
    ),
    float(
        "minority_fraction",
        0.01,
        0.5,
        0.25,
        "synthetic data: share of each class but class 0"
    ),
];

static MLP_HYPERPARAMETERS: [Hyperparameter; 17] = with_common![
    int("hidden_size", 1, 65_536, 64, "units per hidden layer"),
    int("num_layers", 1, 16, 2, "hidden layers"),
    float("dropout", 0.0, 0.9, 0.0, "dropout after each hidden layer"),
    int("features", 1, 4_096, 8, "synthetic data: input features"),
    float(
        "noise",
        0.0,
        10.0,
        0.1,
        "synthetic data: standard deviation of the target noise"
    ),
];

pub static LSTM_CLASSIFIER: TrainerSchema = TrainerSchema {
    name: "lstm_classifier",
    summary: "LSTM encoder + multi-head attention pooling + classifier, class-weighted \
              cross-entropy, optional masked pre-training and time-warp augmentation",
    hyperparameters: &LSTM_HYPERPARAMETERS,
    metrics: &[
        "epoch",
        "train_loss",
        "val_loss",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "samples_per_second",
        "pretrain_loss",
        "gpu_memory_bytes",
    ],
    per_class_metrics: &["accuracy", "precision", "recall", "f1"],
};

pub static MLP_REGRESSOR: TrainerSchema = TrainerSchema {
    name: "mlp_regressor",
    summary: "multi-layer perceptron regressor with mean-squared error",
    hyperparameters: &MLP_HYPERPARAMETERS,
    metrics: &[
        "epoch",
        "train_loss",
        "val_loss",
        "val_rmse",
        "val_mae",
        "val_r2",
        "samples_per_second",
        "gpu_memory_bytes",
    ],
    per_class_metrics: &[],
};

/// Every built-in trainer.
pub static TRAINERS: [&TrainerSchema; 2] = [&LSTM_CLASSIFIER, &MLP_REGRESSOR];

pub fn schema(name: &str) -> Option<&'static TrainerSchema> {
    TRAINERS.iter().copied().find(|schema| schema.name == name)
}

impl TrainerSchema {
    pub fn hyperparameter(&self, name: &str) -> Option<&'static Hyperparameter> {
        self.hyperparameters.iter().find(|h| h.name == name)
    }

    /// The metrics a trial of this trainer reports, given its fixed settings (the number
    /// of classes decides the per-class names; a searched `num_classes` is not allowed).
    pub fn reported_metrics(&self, settings: &BTreeMap<String, ParamValue>) -> Vec<String> {
        let mut names: Vec<String> = self.metrics.iter().map(|m| m.to_string()).collect();
        if !self.per_class_metrics.is_empty() {
            let classes = settings
                .get("num_classes")
                .and_then(ParamValue::as_f64)
                .filter(|n| *n >= 1.0 && *n <= 1_000.0)
                .map_or(2, |n| n as usize);
            for class in 0..classes {
                for suffix in self.per_class_metrics {
                    names.push(format!("class_{class}_{suffix}"));
                }
            }
        }
        names
    }
}

impl Hyperparameter {
    /// Checks one value, describing what is wrong.
    pub fn check(&self, value: &ParamValue) -> Result<(), String> {
        match (self.kind, value) {
            (HyperKind::Float { min, max }, value) => match value.as_f64() {
                Some(number) if matches!(value, ParamValue::Bool(_)) => {
                    Err(format!("expects a number, found the boolean {number}"))
                }
                Some(number) if number.is_finite() && (min..=max).contains(&number) => Ok(()),
                Some(number) => Err(format!("must be within [{min}, {max}], found {number}")),
                None => Err(format!("expects a number, found {value:?}")),
            },
            (HyperKind::Int { min, max }, ParamValue::Int(number)) => {
                if (min..=max).contains(number) {
                    Ok(())
                } else {
                    Err(format!("must be within [{min}, {max}], found {number}"))
                }
            }
            (HyperKind::Int { min, max }, ParamValue::Float(number))
                if number.fract() == 0.0 && number.is_finite() =>
            {
                if (min as f64..=max as f64).contains(number) {
                    Ok(())
                } else {
                    Err(format!("must be within [{min}, {max}], found {number}"))
                }
            }
            (HyperKind::Int { .. }, other) => {
                Err(format!("expects a whole number, found {other:?}"))
            }
            (HyperKind::Bool, ParamValue::Bool(_)) => Ok(()),
            (HyperKind::Bool, other) => Err(format!("expects true or false, found {other:?}")),
            (HyperKind::Choice(choices), ParamValue::Str(word)) => {
                if choices.contains(&word.as_str()) {
                    Ok(())
                } else {
                    Err(format!("must be one of {choices:?}, found \"{word}\""))
                }
            }
            (HyperKind::Choice(choices), other) => {
                Err(format!("must be one of {choices:?}, found {other:?}"))
            }
            (HyperKind::Text, ParamValue::Str(_)) => Ok(()),
            (HyperKind::Text, other) => Err(format!("expects text, found {other:?}")),
        }
    }

    /// The range a searched numeric parameter may span, for checking `low`/`high`.
    pub fn numeric_range(&self) -> Option<(f64, f64)> {
        match self.kind {
            HyperKind::Float { min, max } => Some((min, max)),
            HyperKind::Int { min, max } => Some((min as f64, max as f64)),
            _ => None,
        }
    }
}
