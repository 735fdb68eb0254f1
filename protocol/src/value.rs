//! Parameter values: what a search-space point and a trainer setting are made of.
//!
//! People write them untagged (`lr = 0.01`, `optimizer = "adam"`, `layers = 2`) in TOML and
//! JSON; on the wire they are a tagged enum, because the binary codec cannot guess a type.
//! The serde impls below pick the form by `is_human_readable()`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Float(f64),
    Int(i64),
    Str(String),
    Bool(bool),
}

impl ParamValue {
    /// The value as a number, where it is one (bools count as 0/1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Float(value) => Some(*value),
            ParamValue::Int(value) => Some(*value as f64),
            ParamValue::Bool(value) => Some(f64::from(u8::from(*value))),
            ParamValue::Str(_) => None,
        }
    }

    /// The value as JSON, for `FLOTILLA_PARAMS` and result files.
    /// The value as a program should receive it (environment, `{name}` arguments): floats
    /// in the shortest form that parses back to the same number, never rounded.
    pub fn exact(&self) -> String {
        match self {
            ParamValue::Float(value) => {
                let text = if *value != 0.0 && !(1e-4..1e16).contains(&value.abs()) {
                    format!("{value:e}")
                } else {
                    format!("{value}")
                };
                // A float stays recognisably a float: `3.0`, not `3`.
                if value.is_finite() && !text.contains(['.', 'e']) {
                    format!("{text}.0")
                } else {
                    text
                }
            }
            ParamValue::Int(value) => value.to_string(),
            ParamValue::Str(value) => value.clone(),
            ParamValue::Bool(value) => value.to_string(),
        }
    }

    pub fn to_json_fragment(&self) -> String {
        match self {
            ParamValue::Float(value) if value.is_finite() => {
                let text = format!("{value}");
                if text.contains(['.', 'e', 'E']) {
                    text
                } else {
                    format!("{text}.0")
                }
            }
            ParamValue::Float(_) => "null".to_string(),
            ParamValue::Int(value) => value.to_string(),
            ParamValue::Bool(value) => value.to_string(),
            ParamValue::Str(value) => json_string(value),
        }
    }
}

/// Quotes a string as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            control if (control as u32) < 0x20 => {
                quoted.push_str(&format!("\\u{:04x}", control as u32));
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Float(value) => {
                if value.abs() >= 1e-3 && value.abs() < 1e6 || *value == 0.0 {
                    write!(f, "{}", (value * 1e6).round() / 1e6)
                } else {
                    write!(f, "{value:.4e}")
                }
            }
            ParamValue::Int(value) => write!(f, "{value}"),
            ParamValue::Str(value) => f.write_str(value),
            ParamValue::Bool(value) => write!(f, "{value}"),
        }
    }
}

/// The wire form: an ordinary externally tagged enum.
#[derive(Serialize, Deserialize)]
enum Tagged {
    Float(f64),
    Int(i64),
    Str(String),
    Bool(bool),
}

impl Serialize for ParamValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return match self {
                ParamValue::Float(value) => serializer.serialize_f64(*value),
                ParamValue::Int(value) => serializer.serialize_i64(*value),
                ParamValue::Str(value) => serializer.serialize_str(value),
                ParamValue::Bool(value) => serializer.serialize_bool(*value),
            };
        }
        let tagged = match self {
            ParamValue::Float(value) => Tagged::Float(*value),
            ParamValue::Int(value) => Tagged::Int(*value),
            ParamValue::Str(value) => Tagged::Str(value.clone()),
            ParamValue::Bool(value) => Tagged::Bool(*value),
        };
        tagged.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return Ok(match Tagged::deserialize(deserializer)? {
                Tagged::Float(value) => ParamValue::Float(value),
                Tagged::Int(value) => ParamValue::Int(value),
                Tagged::Str(value) => ParamValue::Str(value),
                Tagged::Bool(value) => ParamValue::Bool(value),
            });
        }
        struct UntaggedVisitor;
        impl Visitor<'_> for UntaggedVisitor {
            type Value = ParamValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, a string or a boolean")
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<ParamValue, E> {
                Ok(ParamValue::Bool(value))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ParamValue, E> {
                Ok(ParamValue::Int(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ParamValue, E> {
                i64::try_from(value)
                    .map(ParamValue::Int)
                    .map_err(|_| E::custom(format!("integer {value} is too large")))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<ParamValue, E> {
                Ok(ParamValue::Float(value))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::Str(value.to_string()))
            }
        }
        deserializer.deserialize_any(UntaggedVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_forms_parse_back_to_the_same_number() {
        for value in [0.1234567891234, 3.0, -2.5e-7, 1e20, 0.0, 123456.789012345] {
            let text = ParamValue::Float(value).exact();
            assert_eq!(text.parse::<f64>().expect("parses"), value, "{text}");
        }
        assert_eq!(ParamValue::Float(1e-7).exact(), "1e-7");
        assert_eq!(ParamValue::Float(0.001).exact(), "0.001");
        assert_eq!(ParamValue::Float(3.0).exact(), "3.0");
    }

    #[test]
    fn json_fragments_are_valid_json_values() {
        assert_eq!(ParamValue::Float(1.0).to_json_fragment(), "1.0");
        assert_eq!(ParamValue::Float(0.001).to_json_fragment(), "0.001");
        assert_eq!(ParamValue::Int(-3).to_json_fragment(), "-3");
        assert_eq!(
            ParamValue::Str("a\"b".into()).to_json_fragment(),
            "\"a\\\"b\""
        );
        assert_eq!(ParamValue::Float(f64::NAN).to_json_fragment(), "null");
    }

    #[test]
    fn toml_reads_untagged_values() {
        #[derive(Deserialize)]
        struct Holder {
            a: ParamValue,
            b: ParamValue,
            c: ParamValue,
            d: ParamValue,
        }
        let holder: Holder =
            toml::from_str("a = 1\nb = 0.5\nc = \"adam\"\nd = true").expect("parses");
        assert_eq!(holder.a, ParamValue::Int(1));
        assert_eq!(holder.b, ParamValue::Float(0.5));
        assert_eq!(holder.c, ParamValue::Str("adam".into()));
        assert_eq!(holder.d, ParamValue::Bool(true));
    }
}
