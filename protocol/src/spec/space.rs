//! `[space.*]`: the parameters a sweep searches, their ranges, choices and conditions.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::FieldProblem;
use crate::ParamValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Float,
    Int,
    Categorical,
}

/// One dimension of the search space. `low`/`high` (and `log`) for float and int,
/// `choices` for categorical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: ParamKind,
    #[serde(default)]
    pub low: Option<f64>,
    #[serde(default)]
    pub high: Option<f64>,
    /// Sample uniformly in log space (requires `low > 0`).
    #[serde(default)]
    pub log: bool,
    #[serde(default)]
    pub choices: Vec<ParamValue>,
    /// `when = { optimizer = "sgd" }`: the parameter applies only where another (categorical)
    /// parameter of the same space applies and takes one of the listed values (protocol 15).
    /// A trial where it does not apply is not given it.
    #[serde(default)]
    pub when: Option<When>,
}

/// A parameter's condition: categorical parameter `param` takes one of `values`.
///
/// Sweep files write it `when = { optimizer = "sgd" }` or `when = { optimizer = ["sgd",
/// "rmsprop"] }`; conditions chain (a parameter's `param` may have a `when` of its own).
#[derive(Debug, Clone, PartialEq)]
pub struct When {
    pub param: String,
    pub values: Vec<ParamValue>,
}

impl When {
    pub fn new(param: &str, values: impl IntoIterator<Item = ParamValue>) -> When {
        When {
            param: param.to_string(),
            values: values.into_iter().collect(),
        }
    }
}

/// [`When`] on the wire (the binary codec cannot read the sweep file's map form).
#[derive(Serialize, Deserialize)]
struct WhenWire {
    param: String,
    values: Vec<ParamValue>,
}

impl Serialize for When {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return WhenWire {
                param: self.param.clone(),
                values: self.values.clone(),
            }
            .serialize(serializer);
        }
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self.values.as_slice() {
            [one] => map.serialize_entry(&self.param, one)?,
            many => map.serialize_entry(&self.param, many)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, SeqAccess, Visitor};
        if !deserializer.is_human_readable() {
            let wire = WhenWire::deserialize(deserializer)?;
            return Ok(When {
                param: wire.param,
                values: wire.values,
            });
        }
        /// One value or a list of them.
        struct Values(Vec<ParamValue>);
        impl<'de> Deserialize<'de> for Values {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ValuesVisitor;
                impl<'de> Visitor<'de> for ValuesVisitor {
                    type Value = Values;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a value or a list of values")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                        let mut values = Vec::new();
                        while let Some(value) = seq.next_element::<ParamValue>()? {
                            values.push(value);
                        }
                        Ok(Values(values))
                    }
                    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Values, E> {
                        Ok(Values(vec![ParamValue::Bool(value)]))
                    }
                    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Values, E> {
                        Ok(Values(vec![ParamValue::Int(value)]))
                    }
                    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Values, E> {
                        i64::try_from(value)
                            .map(|value| Values(vec![ParamValue::Int(value)]))
                            .map_err(|_| E::custom(format!("integer {value} is too large")))
                    }
                    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Values, E> {
                        Ok(Values(vec![ParamValue::Float(value)]))
                    }
                    fn visit_str<E: de::Error>(self, value: &str) -> Result<Values, E> {
                        Ok(Values(vec![ParamValue::Str(value.to_string())]))
                    }
                }
                deserializer.deserialize_any(ValuesVisitor)
            }
        }
        struct WhenVisitor;
        impl<'de> Visitor<'de> for WhenVisitor {
            type Value = When;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table naming one parameter and its value(s), e.g. { optimizer = \"sgd\" }",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<When, A::Error> {
                let Some((param, Values(values))) = map.next_entry::<String, Values>()? else {
                    return Err(de::Error::custom(
                        "`when` names no parameter; write e.g. when = { optimizer = \"sgd\" }",
                    ));
                };
                if let Some((other, _)) = map.next_entry::<String, Values>()? {
                    return Err(de::Error::custom(format!(
                        "`when` may name one parameter, found '{param}' and '{other}'; \
                         chain conditions instead (give '{param}' a `when` of its own)"
                    )));
                }
                Ok(When { param, values })
            }
        }
        deserializer.deserialize_map(WhenVisitor)
    }
}

impl ParamSpec {
    pub fn float(low: f64, high: f64) -> Self {
        ParamSpec {
            kind: ParamKind::Float,
            low: Some(low),
            high: Some(high),
            log: false,
            choices: vec![],
            when: None,
        }
    }
    pub fn log_float(low: f64, high: f64) -> Self {
        ParamSpec {
            log: true,
            ..Self::float(low, high)
        }
    }
    pub fn int(low: i64, high: i64) -> Self {
        ParamSpec {
            kind: ParamKind::Int,
            low: Some(low as f64),
            high: Some(high as f64),
            log: false,
            choices: vec![],
            when: None,
        }
    }
    pub fn categorical(choices: impl IntoIterator<Item = ParamValue>) -> Self {
        ParamSpec {
            kind: ParamKind::Categorical,
            low: None,
            high: None,
            log: false,
            choices: choices.into_iter().collect(),
            when: None,
        }
    }

    /// This parameter, applying only where `when` holds.
    pub fn when(self, when: When) -> Self {
        ParamSpec {
            when: Some(when),
            ..self
        }
    }
}

/// Problems with a search space's parameters, each path starting with `prefix`
/// (`"space."` in a sweep file, `""` in a study's SPACE.json).
pub fn validate_space(space: &BTreeMap<String, ParamSpec>, prefix: &str) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| {
        problems.push(FieldProblem {
            path: path.to_string(),
            message,
        })
    };
    for (name, param) in space {
        let path = format!("{prefix}{name}");
        if !is_param_name(name) {
            problem(
                &path,
                "parameter names use letters, digits and '_' and do not start with a digit \
                 (they become environment variable names)"
                    .into(),
            );
        }
        check_param(&path, param, &mut problem);
        if let Some(when) = &param.when {
            check_when(&format!("{path}.when"), name, when, space, &mut problem);
        }
    }
    if let Some(cycle) = condition_cycle(space) {
        problem(
            prefix.trim_end_matches('.'),
            format!("conditions (`when`) form a cycle: {}", cycle.join(" -> ")),
        );
    }
    problems
}

/// Problems with parameter `name`'s condition, reported under `path`.
fn check_when(
    path: &str,
    name: &str,
    when: &When,
    space: &BTreeMap<String, ParamSpec>,
    problem: &mut impl FnMut(&str, String),
) {
    if when.param == name {
        problem(path, format!("'{name}' cannot depend on itself"));
        return;
    }
    let Some(parent) = space.get(&when.param) else {
        let known: Vec<&str> = space.keys().map(String::as_str).collect();
        problem(
            path,
            format!(
                "unknown parameter '{}' (this space has: {})",
                when.param,
                known.join(", ")
            ),
        );
        return;
    };
    if parent.kind != ParamKind::Categorical {
        problem(
            path,
            format!(
                "'{}' is not categorical; a condition names a categorical parameter and some of \
                 its choices",
                when.param
            ),
        );
        return;
    }
    if when.values.is_empty() {
        problem(path, format!("lists no value of '{}'", when.param));
    }
    for value in &when.values {
        if !parent.choices.contains(value) {
            let choices: Vec<String> = parent
                .choices
                .iter()
                .map(ParamValue::to_json_fragment)
                .collect();
            problem(
                path,
                format!(
                    "{} is not a choice of '{}' ({})",
                    value.to_json_fragment(),
                    when.param,
                    choices.join(", ")
                ),
            );
        }
    }
}

/// The first cycle of conditions in `space` (`a -> b -> a`: a depends on b, b on a).
fn condition_cycle(space: &BTreeMap<String, ParamSpec>) -> Option<Vec<String>> {
    let parent = |name: &str| {
        space
            .get(name)
            .and_then(|param| param.when.as_ref())
            .map(|when| when.param.as_str())
            .filter(|parent| space.contains_key(*parent) && *parent != name)
    };
    for start in space.keys() {
        let mut path: Vec<&str> = vec![start];
        let mut at = start.as_str();
        while let Some(next) = parent(at) {
            if let Some(from) = path.iter().position(|p| *p == next) {
                // Reported once, from its smallest name.
                if path[from..].iter().min() != Some(&start.as_str()) || from != 0 {
                    break;
                }
                let mut cycle: Vec<String> = path[from..].iter().map(|p| p.to_string()).collect();
                cycle.push(next.to_string());
                return Some(cycle);
            }
            path.push(next);
            at = next;
        }
    }
    None
}

fn check_param(path: &str, param: &ParamSpec, problem: &mut impl FnMut(&str, String)) {
    match param.kind {
        ParamKind::Float | ParamKind::Int => {
            let (Some(low), Some(high)) = (param.low, param.high) else {
                problem(path, "numeric parameters need both `low` and `high`".into());
                return;
            };
            if !low.is_finite() {
                problem(&format!("{path}.low"), "must be a finite number".into());
            }
            if !high.is_finite() {
                problem(&format!("{path}.high"), "must be a finite number".into());
            }
            if low >= high {
                problem(
                    &format!("{path}.high"),
                    format!("must be greater than low ({low} >= {high})"),
                );
            }
            if param.log && low <= 0.0 {
                problem(
                    &format!("{path}.low"),
                    format!("a log-scaled range needs low > 0, found {low}"),
                );
            }
            if param.kind == ParamKind::Int && (low.fract() != 0.0 || high.fract() != 0.0) {
                problem(path, "int parameters need whole-number bounds".into());
            }
            if !param.choices.is_empty() {
                problem(
                    &format!("{path}.choices"),
                    "only categorical parameters have choices".into(),
                );
            }
        }
        ParamKind::Categorical => {
            if param.choices.is_empty() {
                problem(
                    &format!("{path}.choices"),
                    "a categorical parameter needs at least one choice".into(),
                );
            }
            if param.low.is_some() || param.high.is_some() || param.log {
                problem(
                    path,
                    "categorical parameters take `choices`, not low/high/log".into(),
                );
            }
            for (index, choice) in param.choices.iter().enumerate() {
                if param.choices[..index].contains(choice) {
                    problem(
                        &format!("{path}.choices[{index}]"),
                        format!("duplicate choice {choice}"),
                    );
                }
            }
        }
    }
}

/// Parameter names: usable as `FLOTILLA_PARAM_<NAME>` and as `{name}` placeholders.
fn is_param_name(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && text
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_')
}
