//! The metric line format that command trials print on stdout.
//!
//! ```text
//! @flotilla step=3 loss=0.4182 accuracy=0.91
//! ```
//!
//! A line starting with `@flotilla` followed by `name=value` pairs. `step` (a whole number)
//! is optional: without it, the step is one more than the previous line's. Values are
//! decimal numbers; names use letters, digits, `_`, `.` and `/`. Every other line of output
//! is ignored, so a program can log freely.
//!
//! ```text
//! @flotilla checkpoint
//! @flotilla checkpoint step=12 epoch=3
//! ```
//!
//! commits the files in `FLOTILLA_CHECKPOINT_DIR` as the trial's next checkpoint (see
//! [`crate::trial_checkpoint`]); `step` and `epoch` default to the last ones reported.

use std::collections::BTreeMap;

pub const PREFIX: &str = "@flotilla";

/// One parsed metric line.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricLine {
    pub step: Option<u64>,
    pub values: BTreeMap<String, f64>,
}

/// A line a command trial printed for the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Metrics(MetricLine),
    /// Commit the checkpoint directory.
    Checkpoint {
        step: Option<u64>,
        epoch: Option<u32>,
    },
}

/// The word that makes a line a checkpoint commit.
pub const CHECKPOINT: &str = "checkpoint";

/// Parses a line; `None` for ordinary output, `Err` for an `@flotilla` line that is
/// malformed.
pub fn parse(line: &str) -> Option<Result<Line, String>> {
    let rest = line.trim().strip_prefix(PREFIX)?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    if let Some(pairs) = rest.strip_prefix(CHECKPOINT)
        && (pairs.is_empty() || pairs.starts_with(char::is_whitespace))
    {
        return Some(parse_checkpoint(pairs));
    }
    Some(parse_pairs(rest).map(Line::Metrics))
}

fn parse_checkpoint(pairs: &str) -> Result<Line, String> {
    let (mut step, mut epoch) = (None, None);
    for pair in pairs.split_whitespace() {
        match pair.split_once('=') {
            Some(("step", value)) => {
                step = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("checkpoint step '{value}' is not a whole number"))?,
                );
            }
            Some(("epoch", value)) => {
                epoch =
                    Some(value.parse::<u32>().map_err(|_| {
                        format!("checkpoint epoch '{value}' is not a whole number")
                    })?);
            }
            _ => {
                return Err(format!(
                    "'{pair}' after '@flotilla checkpoint' (only step=N and epoch=N may follow)"
                ));
            }
        }
    }
    Ok(Line::Checkpoint { step, epoch })
}

fn parse_pairs(rest: &str) -> Result<MetricLine, String> {
    let mut step = None;
    let mut values = BTreeMap::new();
    for pair in rest.split_whitespace() {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("'{pair}' is not name=value"))?;
        let valid_name = !name.is_empty()
            && name.chars().all(|character| {
                character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '/')
            });
        if !valid_name {
            return Err(format!("'{name}' is not a metric name"));
        }
        if name == "step" {
            step = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| format!("step '{value}' is not a whole number"))?,
            );
            continue;
        }
        let number = value
            .parse::<f64>()
            .map_err(|_| format!("{name}='{value}' is not a number"))?;
        if !number.is_finite() {
            return Err(format!("{name}={value} is not finite"));
        }
        values.insert(name.to_string(), number);
    }
    if values.is_empty() {
        return Err("a metric line needs at least one name=value".into());
    }
    Ok(MetricLine { step, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(text: &str) -> Option<Result<MetricLine, String>> {
        parse(text).map(|line| {
            line.and_then(|line| match line {
                Line::Metrics(metrics) => Ok(metrics),
                other => Err(format!("not metrics: {other:?}")),
            })
        })
    }

    #[test]
    fn parses_checkpoint_lines() {
        assert_eq!(
            parse("@flotilla checkpoint"),
            Some(Ok(Line::Checkpoint {
                step: None,
                epoch: None
            }))
        );
        assert_eq!(
            parse("  @flotilla checkpoint step=12 epoch=3 "),
            Some(Ok(Line::Checkpoint {
                step: Some(12),
                epoch: Some(3)
            }))
        );
        for bad in [
            "@flotilla checkpoint now",
            "@flotilla checkpoint step=x",
            "@flotilla checkpoint loss=1",
        ] {
            assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
        }
        // A metric named like the word is still a metric.
        assert!(metrics("@flotilla checkpoints=2").is_some_and(|line| line.is_ok()));
    }

    #[test]
    fn parses_metric_lines_and_ignores_other_output() {
        let line = metrics("@flotilla step=3 loss=0.25 accuracy=9.1e-1")
            .expect("metric line")
            .expect("valid");
        assert_eq!(line.step, Some(3));
        assert_eq!(line.values["loss"], 0.25);
        assert_eq!(line.values["accuracy"], 0.91);
        assert!(parse("epoch 3: loss 0.25").is_none());
        assert!(parse("@flotillax loss=1").is_none());
        assert_eq!(
            metrics("  @flotilla loss=1")
                .expect("metric")
                .expect("valid")
                .step,
            None
        );
    }

    #[test]
    fn malformed_metric_lines_are_errors() {
        for bad in [
            "@flotilla",
            "@flotilla loss",
            "@flotilla loss=abc",
            "@flotilla step=-1 loss=1",
            "@flotilla loss=nan",
            "@flotilla l$s=1",
        ] {
            assert!(matches!(metrics(bad), Some(Err(_))), "{bad}");
        }
    }
}
