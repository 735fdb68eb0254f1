//! Feedback: `POST /v1/feedback` compares true labels with what a version predicted and
//! counts the result for that version (and its rollout's side).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_rollout::Side;
use flotilla_telemetry::tokens::Scope;
use serde::Deserialize;

use crate::{FEEDBACK_CAPACITY, FEEDBACK_LABELS, FEEDBACK_WINDOW, Shared, json_error};

/// A prediction waiting for its labels.
pub(crate) struct Predicted {
    pub(crate) id: String,
    pub(crate) at: Instant,
    pub(crate) model: String,
    pub(crate) version: String,
    pub(crate) rollout: Option<(u64, Side)>,
    /// Each prediction's label, where it has one feedback can be compared with.
    pub(crate) labels: Vec<Option<Label>>,
}

/// What feedback is compared with: a class (accuracy) or a number (squared error).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Label {
    Class(String),
    Value(f64),
}

/// The label of one prediction in a KServe v1 `predictions` array: an integer, a string or
/// `{"class": …}` is a class; a number with a fraction (or `{"value": x}`) is a value;
/// anything else (a list of scores, an object without either) has none.
pub(crate) fn prediction_label(prediction: &serde_json::Value) -> Option<Label> {
    use serde_json::Value;
    match prediction {
        Value::Number(number) if number.is_f64() => number.as_f64().map(Label::Value),
        Value::Number(number) => Some(Label::Class(number.to_string())),
        Value::String(class) => Some(Label::Class(class.clone())),
        Value::Bool(class) => Some(Label::Class(class.to_string())),
        Value::Object(fields) => match (fields.get("class"), fields.get("value")) {
            (Some(class), _) => match prediction_label(class)? {
                Label::Class(class) => Some(Label::Class(class)),
                Label::Value(value) if value.fract() == 0.0 => {
                    Some(Label::Class(format!("{value:.0}")))
                }
                Label::Value(_) => None,
            },
            (None, Some(Value::Number(value))) => value.as_f64().map(Label::Value),
            _ => None,
        },
        _ => None,
    }
}

/// A feedback label compared with a prediction: `Some(true/false)` for a class, the squared
/// error's inputs for a value; `None` when the two cannot be compared.
enum Judged {
    Class(bool),
    Value { predicted: f64, truth: f64 },
}

fn judge(predicted: &Label, truth: &serde_json::Value) -> Option<Judged> {
    use serde_json::Value;
    match predicted {
        Label::Class(class) => {
            let truth = match truth {
                Value::Number(number) if number.is_f64() => {
                    let value = number.as_f64()?;
                    (value.fract() == 0.0).then(|| format!("{value:.0}"))?
                }
                Value::Number(number) => number.to_string(),
                Value::String(text) => text.clone(),
                Value::Bool(flag) => flag.to_string(),
                Value::Object(_) => match prediction_label(truth)? {
                    Label::Class(class) => class,
                    Label::Value(_) => return None,
                },
                _ => return None,
            };
            Some(Judged::Class(&truth == class))
        }
        Label::Value(value) => {
            let truth = match truth {
                Value::Number(number) => number.as_f64()?,
                Value::Object(fields) => fields.get("value")?.as_f64()?,
                _ => return None,
            };
            Some(Judged::Value {
                predicted: *value,
                truth,
            })
        }
    }
}

/// Predictions awaiting labels, by request id, expiring oldest first.
#[derive(Default)]
pub(crate) struct FeedbackBook {
    by_id: HashMap<String, Predicted>,
    order: VecDeque<(Instant, String)>,
    /// Prediction labels held, over every request (bounds the memory).
    labels: usize,
}

impl FeedbackBook {
    fn remove(&mut self, id: &str) -> Option<Predicted> {
        let removed = self.by_id.remove(id)?;
        self.labels -= removed.labels.len();
        Some(removed)
    }
}

pub(crate) fn remember(shared: &Shared, predicted: Predicted) {
    let mut book = shared.predicted.lock().unwrap_or_else(|p| p.into_inner());
    while book.order.len() >= FEEDBACK_CAPACITY
        || book.labels + predicted.labels.len() > FEEDBACK_LABELS
        || book
            .order
            .front()
            .is_some_and(|(at, _)| at.elapsed() > FEEDBACK_WINDOW)
    {
        let Some((_, id)) = book.order.pop_front() else {
            break;
        };
        book.remove(&id);
    }
    book.order.push_back((predicted.at, predicted.id.clone()));
    book.labels += predicted.labels.len();
    book.by_id.insert(predicted.id.clone(), predicted);
}

#[derive(Deserialize)]
struct FeedbackRequest {
    request_id: String,
    /// One per prediction: a class (integer, string, `{"class": …}`) or a true value
    /// (number), or null when unknown.
    labels: Vec<serde_json::Value>,
}

pub(crate) async fn feedback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = shared.refusal(&headers, Scope::Feedback) {
        return refused;
    }
    let request: FeedbackRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(problem) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not feedback ({{\"request_id\", \"labels\": [class, value or null, …]}}): {problem}"
                ),
            );
        }
    };
    let predicted = {
        let mut book = shared.predicted.lock().unwrap_or_else(|p| p.into_inner());
        match book.by_id.get(&request.request_id) {
            Some(known) if known.at.elapsed() <= FEEDBACK_WINDOW => {
                if known.labels.len() != request.labels.len() {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{} labels for a request with {} predictions",
                            request.labels.len(),
                            known.labels.len()
                        ),
                    );
                }
                book.remove(&request.request_id)
            }
            _ => None,
        }
    };
    let Some(predicted) = predicted else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!(
                "no prediction '{}' awaits feedback (unknown, already labelled, or older than {FEEDBACK_WINDOW:?})",
                request.request_id
            ),
        );
    };
    let mut labelled = 0u64;
    let mut correct = 0u64;
    let mut scored = 0u64;
    let mut squared_error = 0.0f64;
    for (truth, label) in request.labels.iter().zip(&predicted.labels) {
        let Some(judged) = label.as_ref().and_then(|label| judge(label, truth)) else {
            continue;
        };
        let labels = [predicted.model.as_str(), predicted.version.as_str()];
        match judged {
            Judged::Class(right) => {
                labelled += 1;
                correct += u64::from(right);
                shared.count(predicted.rollout, |arm| arm.feedback(right));
                shared
                    .metrics
                    .feedback
                    .with_label_values(&[
                        labels[0],
                        labels[1],
                        if right { "true" } else { "false" },
                    ])
                    .inc();
            }
            Judged::Value {
                predicted: value,
                truth,
            } => {
                let error = (value - truth).powi(2);
                if !error.is_finite() {
                    continue;
                }
                scored += 1;
                squared_error += error;
                shared.count(predicted.rollout, |arm| arm.score(value, truth));
                shared.metrics.scored.with_label_values(&labels).inc();
                shared
                    .metrics
                    .squared_error
                    .with_label_values(&labels)
                    .inc_by(error);
            }
        }
    }
    Json(serde_json::json!({
        "model": predicted.model,
        "version": predicted.version,
        "labelled": labelled,
        "correct": correct,
        "scored": scored,
        "squared_error": squared_error,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn predictions_are_classes_values_or_neither() {
        let class = |text: &str| Some(Label::Class(text.to_string()));
        assert_eq!(prediction_label(&json!(2)), class("2"));
        assert_eq!(prediction_label(&json!("cat")), class("cat"));
        assert_eq!(
            prediction_label(&json!({"class": 1, "probabilities": [0.1, 0.9]})),
            class("1")
        );
        assert_eq!(prediction_label(&json!({"class": "dog"})), class("dog"));
        assert_eq!(prediction_label(&json!(0.25)), Some(Label::Value(0.25)));
        assert_eq!(prediction_label(&json!(3.0)), Some(Label::Value(3.0)));
        assert_eq!(
            prediction_label(&json!({"value": 1.5})),
            Some(Label::Value(1.5))
        );
        assert_eq!(prediction_label(&json!([0.1, 0.9])), None);
        assert_eq!(prediction_label(&json!({"scores": [1]})), None);
        assert_eq!(prediction_label(&json!(null)), None);
    }

    #[test]
    fn feedback_is_compared_with_what_was_predicted() {
        let right = |predicted: &Label, truth: serde_json::Value| match judge(predicted, &truth) {
            Some(Judged::Class(right)) => Some(right),
            _ => None,
        };
        let two = Label::Class("2".into());
        assert_eq!(right(&two, json!(2)), Some(true));
        assert_eq!(right(&two, json!("2")), Some(true));
        assert_eq!(right(&two, json!(2.0)), Some(true));
        assert_eq!(right(&two, json!({"class": 2})), Some(true));
        assert_eq!(right(&two, json!(1)), Some(false));
        assert_eq!(right(&two, json!(null)), None);
        assert_eq!(right(&two, json!(2.5)), None);
        match judge(&Label::Value(1.5), &json!(2)) {
            Some(Judged::Value { predicted, truth }) => {
                assert_eq!((predicted, truth), (1.5, 2.0));
            }
            _ => panic!("a value is scored against a number"),
        }
        assert!(judge(&Label::Value(1.5), &json!("x")).is_none());
    }
}
