//! Classification and regression metrics, named as the trainers report them.

use flotilla_protocol::messages::Metrics;

/// Counts of (true class, predicted class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    pub classes: usize,
    /// Row-major `[true][predicted]`.
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth * self.classes + predicted] += 1;
    }

    pub fn at(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|c| self.at(c, c)).sum();
        ratio(correct, self.total())
    }

    /// Recall of one class: the share of its samples predicted as it (the seeds call this
    /// the class's accuracy).
    pub fn recall(&self, class: usize) -> f64 {
        let actual: u64 = (0..self.classes).map(|p| self.at(class, p)).sum();
        ratio(self.at(class, class), actual)
    }

    pub fn precision(&self, class: usize) -> f64 {
        let predicted: u64 = (0..self.classes).map(|t| self.at(t, class)).sum();
        ratio(self.at(class, class), predicted)
    }

    pub fn f1(&self, class: usize) -> f64 {
        let (p, r) = (self.precision(class), self.recall(class));
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// Accuracy; macro-averaged precision, recall and F1; and per class
    /// `class_{k}_accuracy` (recall), `class_{k}_precision`, `class_{k}_recall`, `class_{k}_f1`.
    pub fn report(&self, metrics: &mut Metrics) {
        metrics.insert("accuracy".into(), self.accuracy());
        let classes = self.classes as f64;
        let mean = |f: &dyn Fn(usize) -> f64| (0..self.classes).map(f).sum::<f64>() / classes;
        metrics.insert("precision".into(), mean(&|c| self.precision(c)));
        metrics.insert("recall".into(), mean(&|c| self.recall(c)));
        metrics.insert("f1".into(), mean(&|c| self.f1(c)));
        for class in 0..self.classes {
            metrics.insert(format!("class_{class}_accuracy"), self.recall(class));
            metrics.insert(format!("class_{class}_precision"), self.precision(class));
            metrics.insert(format!("class_{class}_recall"), self.recall(class));
            metrics.insert(format!("class_{class}_f1"), self.f1(class));
        }
    }

    /// The matrix as metrics `confusion_{true}_{predicted}` (reported at the end).
    pub fn report_matrix(&self, metrics: &mut Metrics) {
        for truth in 0..self.classes {
            for predicted in 0..self.classes {
                metrics.insert(
                    format!("confusion_{truth}_{predicted}"),
                    self.at(truth, predicted) as f64,
                );
            }
        }
    }
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// Index of the largest value of each row of `[rows, classes]` logits.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (index, &value)| {
                    if value > best.1 { (index, value) } else { best }
                })
                .0
        })
        .collect()
}

/// Regression metrics of predictions against targets: `val_rmse`, `val_mae`, `val_r2`.
pub fn regression(predicted: &[f32], target: &[f32], metrics: &mut Metrics) {
    let n = target.len().max(1) as f64;
    let mean = target.iter().map(|&t| f64::from(t)).sum::<f64>() / n;
    let (mut squared, mut absolute, mut total) = (0.0, 0.0, 0.0);
    for (&p, &t) in predicted.iter().zip(target) {
        let error = f64::from(p) - f64::from(t);
        squared += error * error;
        absolute += error.abs();
        total += (f64::from(t) - mean).powi(2);
    }
    metrics.insert("val_rmse".into(), (squared / n).sqrt());
    metrics.insert("val_mae".into(), absolute / n);
    metrics.insert(
        "val_r2".into(),
        if total > 0.0 {
            1.0 - squared / total
        } else {
            0.0
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_and_macro_metrics() {
        let mut confusion = Confusion::new(2);
        // 8 of class 0 (6 right), 2 of class 1 (1 right).
        for _ in 0..6 {
            confusion.add(0, 0);
        }
        confusion.add(0, 1);
        confusion.add(0, 1);
        confusion.add(1, 1);
        confusion.add(1, 0);
        let mut metrics = Metrics::new();
        confusion.report(&mut metrics);
        confusion.report_matrix(&mut metrics);
        assert_eq!(metrics["accuracy"], 0.7);
        assert_eq!(metrics["class_0_accuracy"], 0.75);
        assert_eq!(metrics["class_1_accuracy"], 0.5);
        assert!((metrics["class_1_precision"] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(metrics["confusion_0_1"], 2.0);
        assert_eq!(metrics["recall"], 0.625);
        assert_eq!(argmax_rows(&[0.1, 0.9, 2.0, -1.0], 2), vec![1, 0]);
    }
}
