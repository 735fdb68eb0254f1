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

use std::collections::BTreeMap;

pub const PREFIX: &str = "@flotilla";

/// One parsed metric line.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricLine {
    pub step: Option<u64>,
    pub values: BTreeMap<String, f64>,
}

/// Parses a line; `None` for ordinary output, `Err` for a metric line that is malformed.
pub fn parse(line: &str) -> Option<Result<MetricLine, String>> {
    let rest = line.trim().strip_prefix(PREFIX)?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    Some(parse_pairs(rest))
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

    #[test]
    fn parses_metric_lines_and_ignores_other_output() {
        let line = parse("@flotilla step=3 loss=0.25 accuracy=9.1e-1")
            .expect("metric line")
            .expect("valid");
        assert_eq!(line.step, Some(3));
        assert_eq!(line.values["loss"], 0.25);
        assert_eq!(line.values["accuracy"], 0.91);
        assert!(parse("epoch 3: loss 0.25").is_none());
        assert!(parse("@flotillax loss=1").is_none());
        assert_eq!(
            parse("  @flotilla loss=1")
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
            assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
        }
    }
}
