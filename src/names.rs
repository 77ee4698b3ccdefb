//! Names: what a block, host or module name may look like, and "did you mean" hints.

/// What a block or host name may be is the ids' rule (see `orchestra_protocol::ids`): one
/// rule for the script's names and the wire's.
pub use orchestra_protocol::ids::{is_valid_name, MAX_NAME_LEN};

/// Why `name` is not valid, for error messages.
pub fn invalid_name_reason(kind: &str, name: &str) -> String {
    if name.is_empty() {
        format!("{kind} name is empty")
    } else if name.len() > MAX_NAME_LEN {
        format!(
            "{kind} name `{}` is longer than {MAX_NAME_LEN} characters",
            shown(name)
        )
    } else {
        format!(
            "{kind} name `{}` may only contain letters, digits, `_` and `-`",
            shown(name)
        )
    }
}

/// A number as Lua writes it (`nan`, `inf`, `-inf`): what the script's author typed.
pub fn lua_number(n: f64) -> String {
    match n {
        n if n.is_nan() => "nan".into(),
        n if n.is_infinite() && n > 0.0 => "inf".into(),
        n if n.is_infinite() => "-inf".into(),
        n => n.to_string(),
    }
}

/// Most characters of a user's text quoted in a message.
const SHOWN_CHARS: usize = 60;

/// User text as a message quotes it: at most [`SHOWN_CHARS`] characters, control characters
/// escaped, so a megabyte or a newline in a name cannot flood or forge the terminal.
pub fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().nth(SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// The closest candidate to `name`, if one is close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&name.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score >= 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, c)| c)
}

/// `" (did you mean `x`?)"` or an empty string.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        assert!(is_valid_name("osc_1-a"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a;rm"));
        assert!(!is_valid_name(&"x".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn suggests_close_names_only() {
        let known = ["sine", "noise", "mixer", "lp"];
        assert_eq!(closest("sien", known), Some("sine"));
        assert_eq!(closest("mixr", known), Some("mixer"));
        assert_eq!(closest("granular", known), None);
        assert_eq!(did_you_mean("sine2", known), " (did you mean `sine`?)");
    }
}
