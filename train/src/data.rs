//! Datasets: seeded synthetic generators and CSV loading, a stratified train/validation split
//! and per-feature standardisation.
//!
//! # CSV layouts
//!
//! Plain comma-separated values with a header row.
//!
//! - **Time series** (`lstm_classifier`), long format: one row per time step, columns
//!   `series` (any text naming the series), `step` (0, 1, … within the series), `label`
//!   (an integer class `0..num_classes`, the same on every row of a series), and one numeric
//!   column per feature (every other column, in header order). Every series has the same
//!   number of steps; rows of a series may come in any order.
//! - **Tables** (`mlp_regressor`): one row per sample, a numeric `target` column and one
//!   numeric column per feature (every other column).
//!
//! Every error names the file, the line and the column.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::rng::{Stream, stream};

/// Labelled multivariate time series, `x` laid out `[sample][step][feature]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub seq_len: usize,
    pub features: usize,
    pub num_classes: usize,
    pub x: Vec<f32>,
    pub y: Vec<usize>,
}

/// A regression table, `x` laid out `[sample][feature]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableData {
    pub features: usize,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

/// A problem with a dataset, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct DataError {
    pub file: Option<PathBuf>,
    /// 1-based line in the file (the header is line 1).
    pub line: Option<u64>,
    pub column: Option<String>,
    pub message: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        }
        if let Some(column) = &self.column {
            write!(f, "column '{column}': ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl DataError {
    fn new(file: &Path, line: Option<u64>, column: Option<&str>, message: String) -> Self {
        DataError {
            file: Some(file.to_path_buf()),
            line,
            column: column.map(str::to_string),
            message,
        }
    }

    pub fn plain(message: impl Into<String>) -> Self {
        DataError {
            file: None,
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

impl SeriesData {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Values of one sample, `[step][feature]`.
    pub fn sample(&self, index: usize) -> &[f32] {
        let size = self.seq_len * self.features;
        &self.x[index * size..(index + 1) * size]
    }

    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &label in &self.y {
            counts[label] += 1;
        }
        counts
    }

    /// The samples at `indices`, concatenated `[sample][step][feature]`.
    pub fn gather(&self, indices: &[usize]) -> Vec<f32> {
        let mut x = Vec::with_capacity(indices.len() * self.seq_len * self.features);
        for &index in indices {
            x.extend_from_slice(self.sample(index));
        }
        x
    }

    fn subset(&self, indices: &[usize]) -> SeriesData {
        SeriesData {
            seq_len: self.seq_len,
            features: self.features,
            num_classes: self.num_classes,
            x: self.gather(indices),
            y: indices.iter().map(|&index| self.y[index]).collect(),
        }
    }

    /// Splits off `val_fraction` of every class (at least one sample of each class that has
    /// two or more) for validation, the choice seeded.
    pub fn split(&self, val_fraction: f64, seed: u64) -> (SeriesData, SeriesData) {
        let mut rng = stream(seed, Stream::Split, 0, 0);
        let mut train = Vec::new();
        let mut val = Vec::new();
        for class in 0..self.num_classes {
            let mut members: Vec<usize> = (0..self.len()).filter(|&i| self.y[i] == class).collect();
            members.shuffle(&mut rng);
            let mut take = (members.len() as f64 * val_fraction).round() as usize;
            if take == 0 && members.len() >= 2 {
                take = 1;
            }
            val.extend_from_slice(&members[..take]);
            train.extend_from_slice(&members[take..]);
        }
        train.sort_unstable();
        val.sort_unstable();
        (self.subset(&train), self.subset(&val))
    }
}

impl TableData {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn row(&self, index: usize) -> &[f32] {
        &self.x[index * self.features..(index + 1) * self.features]
    }

    pub fn split(&self, val_fraction: f64, seed: u64) -> (TableData, TableData) {
        let mut rng = stream(seed, Stream::Split, 0, 0);
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut rng);
        let take = ((self.len() as f64 * val_fraction).round() as usize).clamp(1, self.len() - 1);
        let (val, train) = order.split_at(take);
        let subset = |indices: &[usize]| {
            let mut indices = indices.to_vec();
            indices.sort_unstable();
            TableData {
                features: self.features,
                x: indices.iter().flat_map(|&i| self.row(i).to_vec()).collect(),
                y: indices.iter().map(|&i| self.y[i]).collect(),
            }
        };
        (subset(train), subset(val))
    }
}

/// Per-feature standardisation fitted on training data and kept with the model, so
/// inference sees inputs scaled the way training did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    pub fn fit(values: &[f32], features: usize) -> Standardizer {
        let mut sum = vec![0f64; features];
        let mut square = vec![0f64; features];
        let rows = values.len() / features.max(1);
        for row in values.chunks_exact(features) {
            for (feature, &value) in row.iter().enumerate() {
                sum[feature] += f64::from(value);
                square[feature] += f64::from(value) * f64::from(value);
            }
        }
        let n = rows.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = square
            .iter()
            .zip(&mean)
            .map(|(sq, m)| ((sq / n - m * m).max(0.0).sqrt()).max(1e-6) as f32)
            .collect();
        Standardizer {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    pub fn identity(features: usize) -> Standardizer {
        Standardizer {
            mean: vec![0.0; features],
            std: vec![1.0; features],
        }
    }

    /// Scales rows of `self.mean.len()` features in place.
    pub fn apply(&self, values: &mut [f32]) {
        let features = self.mean.len();
        for row in values.chunks_exact_mut(features) {
            for (feature, value) in row.iter_mut().enumerate() {
                *value = (*value - self.mean[feature]) / self.std[feature];
            }
        }
    }
}

/// Settings of the synthetic time-series generator.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSeries {
    pub samples: usize,
    pub seq_len: usize,
    pub features: usize,
    pub num_classes: usize,
    /// Share of the samples in each class but class 0 (the majority).
    pub minority_fraction: f64,
    pub seed: u64,
}

impl SyntheticSeries {
    /// Imbalanced multivariate series with a learnable signal: every feature is a noisy
    /// AR(1) process with a random drift; a sample of class `k ≥ 1` carries, at a random
    /// place, a smooth bump on feature `(k - 1) mod F` followed by a level shift on feature
    /// `k mod F`. Class 0 sometimes carries a weaker decoy bump, so the classes overlap and
    /// accuracy saturates below 100 %.
    pub fn generate(&self) -> SeriesData {
        let mut rng = stream(self.seed, Stream::Data, 0, 0);
        let (t_len, f_len) = (self.seq_len, self.features);
        let mut x = vec![0f32; self.samples * t_len * f_len];
        let mut y = Vec::with_capacity(self.samples);
        let minority = self
            .minority_fraction
            .clamp(0.0, 1.0 / self.num_classes as f64);
        for sample in 0..self.samples {
            let draw: f64 = rng.random();
            let label = if draw < minority * (self.num_classes - 1) as f64 {
                1 + (draw / minority) as usize % (self.num_classes - 1)
            } else {
                0
            };
            let values = &mut x[sample * t_len * f_len..(sample + 1) * t_len * f_len];
            for feature in 0..f_len {
                let drift: f32 = rng.random_range(-0.02..0.02);
                let mut level: f32 = rng.random_range(-0.5..0.5);
                for step in 0..t_len {
                    level = 0.8 * level + 0.5 * normal(&mut rng) + drift;
                    values[step * f_len + feature] = level;
                }
            }
            let width = (t_len / 3).max(2);
            let (amplitude, shift) = if label > 0 {
                (2.0, 1.0)
            } else if rng.random_bool(0.2) {
                (0.8, 0.0)
            } else {
                (0.0, 0.0)
            };
            if amplitude > 0.0 {
                let class = label.max(1);
                let start = rng.random_range(0..=t_len - width);
                let bump_feature = (class - 1) % f_len;
                let shift_feature = class % f_len;
                for offset in 0..width {
                    let phase = std::f32::consts::PI * (offset as f32 + 0.5) / width as f32;
                    values[(start + offset) * f_len + bump_feature] += amplitude * phase.sin();
                }
                for step in start + width..t_len {
                    values[step * f_len + shift_feature] += shift;
                }
            }
            y.push(label);
        }
        SeriesData {
            seq_len: t_len,
            features: f_len,
            num_classes: self.num_classes,
            x,
            y,
        }
    }
}

/// Settings of the synthetic regression generator.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticTable {
    pub samples: usize,
    pub features: usize,
    pub noise: f64,
    pub seed: u64,
}

impl SyntheticTable {
    /// `y = sin(2 x₀) + x₁² − 0.5 x₂ x₃ + 0.3 Σ wᵢ xᵢ + noise`, inputs standard normal (features
    /// beyond the input count wrap around).
    pub fn generate(&self) -> TableData {
        let mut rng = stream(self.seed, Stream::Data, 1, 0);
        let f_len = self.features;
        let weights: Vec<f32> = (0..f_len).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut x = Vec::with_capacity(self.samples * f_len);
        let mut y = Vec::with_capacity(self.samples);
        for _ in 0..self.samples {
            let row: Vec<f32> = (0..f_len).map(|_| normal(&mut rng)).collect();
            let at = |i: usize| row[i % f_len];
            let linear: f32 = row.iter().zip(&weights).map(|(v, w)| v * w).sum();
            let target = (2.0 * at(0)).sin() + at(1) * at(1) - 0.5 * at(2) * at(3)
                + 0.3 * linear
                + self.noise as f32 * normal(&mut rng);
            x.extend_from_slice(&row);
            y.push(target);
        }
        TableData {
            features: f_len,
            x,
            y,
        }
    }
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

struct CsvTable {
    path: PathBuf,
    header: Vec<String>,
    /// (line, fields)
    rows: Vec<(u64, Vec<String>)>,
}

fn read_csv(path: &Path) -> Result<CsvTable, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|error| DataError::new(path, None, None, format!("cannot read: {error}")))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|error| DataError::new(path, Some(1), None, format!("bad header: {error}")))?
        .iter()
        .map(str::to_string)
        .collect();
    if header.iter().all(String::is_empty) {
        return Err(DataError::new(
            path,
            Some(1),
            None,
            "the file has no header row".into(),
        ));
    }
    for (index, name) in header.iter().enumerate() {
        if name.is_empty() {
            return Err(DataError::new(
                path,
                Some(1),
                None,
                format!("header field {} is empty", index + 1),
            ));
        }
        if header[..index].contains(name) {
            return Err(DataError::new(
                path,
                Some(1),
                Some(name),
                "appears twice in the header".into(),
            ));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| {
            let line = error.position().map(|position| position.line());
            DataError::new(path, line, None, format!("unreadable row: {error}"))
        })?;
        let line = record.position().map_or(0, |position| position.line());
        if record.len() == 1 && record.get(0) == Some("") {
            continue;
        }
        if record.len() != header.len() {
            return Err(DataError::new(
                path,
                Some(line),
                None,
                format!(
                    "the row has {} fields, the header has {}",
                    record.len(),
                    header.len()
                ),
            ));
        }
        rows.push((line, record.iter().map(str::to_string).collect()));
    }
    if rows.is_empty() {
        return Err(DataError::new(
            path,
            None,
            None,
            "the file has a header but no rows".into(),
        ));
    }
    Ok(CsvTable {
        path: path.to_path_buf(),
        header,
        rows,
    })
}

impl CsvTable {
    fn column(&self, name: &str) -> Result<usize, DataError> {
        self.header.iter().position(|h| h == name).ok_or_else(|| {
            DataError::new(
                &self.path,
                Some(1),
                Some(name),
                format!(
                    "missing from the header (found: {})",
                    self.header.join(", ")
                ),
            )
        })
    }

    /// Every column but `named`, in header order; an error when there is none.
    fn feature_columns(&self, named: &[usize], what: &str) -> Result<Vec<usize>, DataError> {
        let columns: Vec<usize> = (0..self.header.len())
            .filter(|column| !named.contains(column))
            .collect();
        if columns.is_empty() {
            return Err(DataError::new(
                &self.path,
                Some(1),
                None,
                format!("no feature columns (every column but {what} is a feature)"),
            ));
        }
        Ok(columns)
    }

    fn number(&self, line: u64, column: usize, text: &str) -> Result<f32, DataError> {
        let value: f32 = text.parse().map_err(|_| {
            DataError::new(
                &self.path,
                Some(line),
                Some(&self.header[column]),
                format!("'{text}' is not a number"),
            )
        })?;
        if !value.is_finite() {
            return Err(DataError::new(
                &self.path,
                Some(line),
                Some(&self.header[column]),
                format!("'{text}' is not a finite number"),
            ));
        }
        Ok(value)
    }
}

/// Loads labelled time series in the long layout described in the module docs.
pub fn load_series_csv(path: &Path, num_classes: usize) -> Result<SeriesData, DataError> {
    let table = read_csv(path)?;
    let series_column = table.column("series")?;
    let step_column = table.column("step")?;
    let label_column = table.column("label")?;
    let feature_columns = table.feature_columns(
        &[series_column, step_column, label_column],
        "series, step and label",
    )?;
    struct Series {
        first_line: u64,
        label: usize,
        steps: BTreeMap<usize, (u64, Vec<f32>)>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut by_name: BTreeMap<String, Series> = BTreeMap::new();
    for (line, fields) in &table.rows {
        let line = *line;
        let name = fields[series_column].clone();
        let step_text = &fields[step_column];
        let step: usize = step_text.parse().map_err(|_| {
            DataError::new(
                path,
                Some(line),
                Some("step"),
                format!("'{step_text}' is not a step number (0, 1, …)"),
            )
        })?;
        let label_text = &fields[label_column];
        let label = label_text
            .parse::<usize>()
            .ok()
            .filter(|label| *label < num_classes)
            .ok_or_else(|| {
                DataError::new(
                    path,
                    Some(line),
                    Some("label"),
                    format!(
                        "'{label_text}' is not one of the declared classes 0..{} (num_classes = {num_classes})",
                        num_classes - 1
                    ),
                )
            })?;
        let values = feature_columns
            .iter()
            .map(|&column| table.number(line, column, &fields[column]))
            .collect::<Result<Vec<f32>, _>>()?;
        let series = by_name.entry(name.clone()).or_insert_with(|| {
            order.push(name.clone());
            Series {
                first_line: line,
                label,
                steps: BTreeMap::new(),
            }
        });
        if series.label != label {
            return Err(DataError::new(
                path,
                Some(line),
                Some("label"),
                format!(
                    "series '{name}' has label {} on line {} but {label} here",
                    series.label, series.first_line
                ),
            ));
        }
        if let Some((earlier, _)) = series.steps.insert(step, (line, values)) {
            return Err(DataError::new(
                path,
                Some(line),
                Some("step"),
                format!("series '{name}' already has step {step} (line {earlier})"),
            ));
        }
    }
    let first = &by_name[&order[0]];
    let seq_len = first.steps.len();
    let features = feature_columns.len();
    let mut x = Vec::with_capacity(order.len() * seq_len * features);
    let mut y = Vec::with_capacity(order.len());
    for name in &order {
        let series = &by_name[name];
        if series.steps.len() != seq_len {
            return Err(DataError::new(
                path,
                Some(series.first_line),
                Some("series"),
                format!(
                    "series '{name}' has {} steps, series '{}' has {seq_len}; every series needs the same length",
                    series.steps.len(),
                    order[0]
                ),
            ));
        }
        for (expected, (step, (line, values))) in series.steps.iter().enumerate() {
            if *step != expected {
                return Err(DataError::new(
                    path,
                    Some(*line),
                    Some("step"),
                    format!(
                        "series '{name}' skips step {expected} (steps run 0..{})",
                        seq_len - 1
                    ),
                ));
            }
            x.extend_from_slice(values);
        }
        y.push(series.label);
    }
    Ok(SeriesData {
        seq_len,
        features,
        num_classes,
        x,
        y,
    })
}

/// Loads a regression table: a `target` column and numeric feature columns.
pub fn load_table_csv(path: &Path) -> Result<TableData, DataError> {
    let table = read_csv(path)?;
    let target_column = table.column("target")?;
    let feature_columns = table.feature_columns(&[target_column], "target")?;
    let mut x = Vec::with_capacity(table.rows.len() * feature_columns.len());
    let mut y = Vec::with_capacity(table.rows.len());
    for (line, fields) in &table.rows {
        for &column in &feature_columns {
            x.push(table.number(*line, column, &fields[column])?);
        }
        y.push(table.number(*line, target_column, &fields[target_column])?);
    }
    Ok(TableData {
        features: feature_columns.len(),
        x,
        y,
    })
}
