//! Module params as a manifest declares them: each param's kind (number, integer, boolean,
//! text, OSC path, block or host reference) with its range, choices or pattern; checking a
//! value against it, whoever sent it (script, `/orchestra/set`, live code); and escaping text
//! for the language of the file it is rendered into.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest text a param may hold.
pub const MAX_TEXT: usize = crate::script::MAX_TEXT_PARAM;

/// What sort of value a param holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    Number,
    Integer,
    Boolean,
    /// Free text (escaped where it is rendered), optionally limited by `choices` or `pattern`.
    Text,
    /// An OSC address such as `/freq`.
    OscPath,
    /// The name of another block of the orchestra.
    Block,
    /// The name of a host of the orchestra.
    Host,
}

impl ParamKind {
    fn of_default(value: &Value) -> Option<ParamKind> {
        match value {
            Value::Number(_) => Some(ParamKind::Number),
            Value::String(_) => Some(ParamKind::Text),
            Value::Bool(_) => Some(ParamKind::Boolean),
            _ => None,
        }
    }

    /// The word errors use, as the model always said it.
    pub fn word(self) -> &'static str {
        match self {
            ParamKind::Number => "number",
            ParamKind::Integer => "whole number",
            ParamKind::Boolean => "boolean",
            ParamKind::Text => "string",
            ParamKind::OscPath => "OSC path",
            ParamKind::Block => "block name",
            ParamKind::Host => "host name",
        }
    }
}

/// One param of a manifest: `"freq": 440` (a number, any value), or
/// `"freq": {"default": 440, "min": 20, "max": 20000, "unit": "Hz"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub default: Value,
    pub kind: ParamKind,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// A slider's step, for controls.
    pub step: Option<f64>,
    pub unit: Option<String>,
    /// For text: the only values allowed.
    pub choices: Option<Vec<String>>,
    /// For text: a regular expression the whole value must match.
    pub pattern: Option<String>,
    /// Sent to the running instance when it changes (same process, no restart), rather than
    /// starting a new instance: see `Launch::live`.
    pub live: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFields {
    default: Value,
    #[serde(rename = "type")]
    kind: Option<ParamKind>,
    min: Option<f64>,
    max: Option<f64>,
    step: Option<f64>,
    unit: Option<String>,
    choices: Option<Vec<String>>,
    pattern: Option<String>,
    #[serde(default)]
    live: bool,
}

impl<'de> Deserialize<'de> for ParamSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        let fields = match value {
            Value::Object(_) => SpecFields::deserialize(value).map_err(D::Error::custom)?,
            plain => SpecFields {
                default: plain,
                kind: None,
                min: None,
                max: None,
                step: None,
                unit: None,
                choices: None,
                pattern: None,
                live: false,
            },
        };
        let kind = match fields.kind {
            Some(kind) => kind,
            None => ParamKind::of_default(&fields.default).ok_or_else(|| {
                D::Error::custom(format!(
                    "a param's default must be a number, string or boolean, not {}",
                    fields.default
                ))
            })?,
        };
        let spec = ParamSpec {
            default: fields.default,
            kind,
            min: fields.min,
            max: fields.max,
            step: fields.step,
            unit: fields.unit,
            choices: fields.choices,
            pattern: fields.pattern,
            live: fields.live,
        };
        // A live value goes to the instance as one OSC number.
        if spec.live && !matches!(spec.kind, ParamKind::Number | ParamKind::Integer) {
            return Err(D::Error::custom(format!(
                "only a number can be \"live\" (sent to the running instance), not a {}",
                spec.kind.word()
            )));
        }
        if let Some(pattern) = &spec.pattern {
            regex::Regex::new(pattern)
                .map_err(|e| D::Error::custom(format!("pattern `{pattern}`: {e}")))?;
        }
        // Reference kinds are checked against the orchestra, which a manifest cannot see.
        if !matches!(spec.kind, ParamKind::Block | ParamKind::Host) {
            spec.check(&spec.default)
                .map_err(|e| D::Error::custom(format!("its default: {e}")))?;
        }
        Ok(spec)
    }
}

impl ParamSpec {
    /// The value, normalized (`4.0` for an integer becomes `4`), or why it does not fit. The
    /// reason reads after "param `x` ".
    pub fn check(&self, value: &Value) -> Result<Value, String> {
        let shown = || crate::names::shown(&value.to_string());
        let wrong_kind = || {
            format!(
                "must be a {} (like its default {}), not {}",
                self.kind.word(),
                self.default,
                shown()
            )
        };
        match self.kind {
            ParamKind::Number | ParamKind::Integer => {
                let Some(n) = value.as_f64() else {
                    return Err(wrong_kind());
                };
                if !n.is_finite() {
                    return Err(format!(
                        "must be a finite number, not {}",
                        crate::names::lua_number(n)
                    ));
                }
                if self.kind == ParamKind::Integer && n.fract() != 0.0 {
                    return Err(wrong_kind());
                }
                let below = self.min.is_some_and(|min| n < min);
                let above = self.max.is_some_and(|max| n > max);
                if below || above {
                    return Err(format!("must be {}, not {}", self.range(), shown()));
                }
                Ok(if self.kind == ParamKind::Integer {
                    Value::from(n as i64)
                } else {
                    value.clone()
                })
            }
            ParamKind::Boolean => match value {
                Value::Bool(_) => Ok(value.clone()),
                _ => Err(wrong_kind()),
            },
            ParamKind::Text | ParamKind::OscPath | ParamKind::Block | ParamKind::Host => {
                let Some(text) = value.as_str() else {
                    return Err(wrong_kind());
                };
                self.check_text(text)?;
                Ok(value.clone())
            }
        }
    }

    fn check_text(&self, text: &str) -> Result<(), String> {
        let shown = crate::names::shown(text);
        if text.len() > MAX_TEXT {
            return Err(format!("is longer than {MAX_TEXT} bytes"));
        }
        match self.kind {
            ParamKind::OscPath if !is_osc_path(text) => {
                return Err(format!(
                    "must be an OSC path like `/freq` (`/` then letters, digits, `_.~-`), not `{shown}`"
                ))
            }
            ParamKind::Block | ParamKind::Host if !crate::names::is_valid_name(text) => {
                return Err(crate::names::invalid_name_reason(self.kind.word(), text))
            }
            ParamKind::Text if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
                return Err(format!("may not hold control characters: `{shown}`"))
            }
            _ => {}
        }
        if let Some(choices) = &self.choices {
            if !choices.iter().any(|c| c == text) {
                return Err(format!(
                    "must be one of {}, not `{shown}`{}",
                    choices
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    crate::names::did_you_mean(text, choices.iter().map(String::as_str))
                ));
            }
        }
        if let Some(pattern) = &self.pattern {
            let anchored = format!("^(?:{pattern})$");
            let matches = regex::Regex::new(&anchored).is_ok_and(|re| re.is_match(text));
            if !matches {
                return Err(format!("must match `{pattern}`, not `{shown}`"));
            }
        }
        Ok(())
    }

    /// `from 0 to 1`, `at least 0`, `at most 20000`.
    fn range(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("from {min} to {max}"),
            (Some(min), None) => format!("at least {min}"),
            (None, Some(max)) => format!("at most {max}"),
            (None, None) => "a number".into(),
        }
    }
}

/// `/` followed by path segments of letters, digits and `_.~-`.
pub fn is_osc_path(text: &str) -> bool {
    text.starts_with('/')
        && text.len() <= 256
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.~-".contains(&b))
}

/// The language a rendered file is written in, by its name: how its text values are escaped.
pub fn escape_language(file: &str) -> Option<&'static str> {
    let extension = file.rsplit('.').next()?;
    match extension {
        "csd" | "orc" | "sco" | "udo" | "inc" => Some("csound"),
        "scd" | "sc" => Some("supercollider"),
        "pd" => Some("pd"),
        "ck" => Some("chuck"),
        "json" => Some("json"),
        "lua" => Some("lua"),
        _ => None,
    }
}

/// `text` made safe inside a string literal of `language` (a Pd atom for `pd`). The quotes
/// are the template's: `"{{ params.path }}"`.
pub fn escape(language: &str, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    match language {
        "pd" => {
            // A Pd atom: separators and `$` escaped, no line breaks.
            for c in text.chars() {
                match c {
                    ' ' | ',' | ';' | '$' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    '\n' | '\r' | '\t' => out.push_str("\\ "),
                    c if c.is_control() => {}
                    c => out.push(c),
                }
            }
        }
        "json" => {
            let quoted = serde_json::to_string(text).expect("strings serialize");
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
        // Csound, SuperCollider, ChucK and Lua strings share C's escapes.
        _ => {
            for c in text.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\'' if language == "lua" => out.push_str("\\'"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => {}
                    c => out.push(c),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(json: Value) -> ParamSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_plain_default_gives_its_kind_and_no_bounds() {
        let freq = spec(json!(440));
        assert_eq!(freq.kind, ParamKind::Number);
        assert_eq!(freq.check(&json!(1e9)).unwrap(), json!(1e9));
        assert_eq!(
            freq.check(&json!("a")).unwrap_err(),
            "must be a number (like its default 440), not \"a\""
        );
        assert_eq!(spec(json!("x")).kind, ParamKind::Text);
    }

    #[test]
    fn ranges_integers_and_choices_are_enforced() {
        let amp = spec(json!({"default": 0.3, "min": 0, "max": 1}));
        assert_eq!(
            amp.check(&json!(-1e9)).unwrap_err(),
            "must be from 0 to 1, not -1000000000.0"
        );
        let inputs = spec(json!({"default": 4, "type": "integer", "min": 1, "max": 64}));
        assert_eq!(inputs.check(&json!(8.0)).unwrap(), json!(8));
        assert!(inputs.check(&json!(2.5)).is_err());
        let mode = spec(json!({"default": "lp", "choices": ["lp", "hp"]}));
        assert_eq!(
            mode.check(&json!("hpp")).unwrap_err(),
            "must be one of `lp`, `hp`, not `hpp` (did you mean `hp`?)"
        );
        let word = spec(json!({"default": "ab", "pattern": "[a-z]+"}));
        assert!(word.check(&json!("abc")).is_ok());
        assert!(word.check(&json!("ab c")).is_err());
    }

    #[test]
    fn osc_paths_refuse_anything_that_could_leave_a_string() {
        let path = spec(json!({"default": "/freq", "type": "osc_path"}));
        assert!(path.check(&json!("/a/b_c.1")).is_ok());
        let attack = "/freq\", \"f\", kval\n ires system_i 1, \"touch /tmp/x\"\n;";
        assert!(path
            .check(&json!(attack))
            .unwrap_err()
            .starts_with("must be an OSC path"));
    }

    #[test]
    fn a_default_outside_its_own_range_is_a_manifest_error() {
        let e = serde_json::from_value::<ParamSpec>(json!({"default": 5, "max": 1})).unwrap_err();
        assert_eq!(e.to_string(), "its default: must be at most 1, not 5");
        assert!(serde_json::from_value::<ParamSpec>(json!({"default": 1, "maxx": 1})).is_err());
    }

    #[test]
    fn text_is_escaped_for_the_language_it_lands_in() {
        let attack = "a\", \"f\"\n system_i 1, \"x\" \\";
        assert_eq!(
            escape("csound", attack),
            "a\\\", \\\"f\\\"\\n system_i 1, \\\"x\\\" \\\\"
        );
        assert_eq!(escape("pd", "a b;c,$1"), "a\\ b\\;c\\,\\$1");
        assert_eq!(escape_language("song.csd"), Some("csound"));
        assert_eq!(escape_language("patch.pd"), Some("pd"));
        assert_eq!(escape_language("notes.txt"), None);
    }
}
