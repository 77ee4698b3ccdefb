//! Csound `.csd` files written for other setups (the 2015 prototype's modules, say): what
//! their orchestra header sets (`sr`, `kr`, `ksmps`, `nchnls`, `nchnls_i`, each with its line)
//! and their `<CsOptions>` without the flags an engine sets itself on the command line.

use std::collections::BTreeMap;

/// The header statements the engine adapts or checks.
pub const HEADER_NAMES: [&str; 5] = ["sr", "kr", "ksmps", "nchnls", "nchnls_i"];

/// One header statement: where it is and, when it is a plain number, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// 1-based line in the file.
    pub line: usize,
    /// `None` when the right-hand side is not a plain number (an expression, a macro).
    pub value: Option<f64>,
}

/// What the orchestra header of a `.csd` sets (the last statement of each name wins, as in
/// Csound).
pub type Header = BTreeMap<&'static str, Setting>;

/// Read the header statements of the `<CsInstruments>` section, outside `instr … endin`.
pub fn read_header(text: &str) -> Result<Header, String> {
    let section = section_lines(text, "CsInstruments")
        .ok_or("no <CsInstruments> section: the main file of a csound module is a .csd")?;
    let mut header = Header::new();
    let mut in_instr = false;
    let mut in_comment = false;
    for (line_no, line) in section {
        let code = strip_comments(line, &mut in_comment);
        let first = code.split_whitespace().next().unwrap_or("");
        match first {
            "instr" | "opcode" => in_instr = true,
            "endin" | "endop" => in_instr = false,
            _ if !in_instr => {
                if let Some((name, value)) = code.split_once('=') {
                    let name = name.trim();
                    if let Some(known) = HEADER_NAMES.iter().find(|n| **n == name) {
                        header.insert(
                            known,
                            Setting {
                                line: line_no,
                                value: value.trim().parse::<f64>().ok(),
                            },
                        );
                    }
                }
            }
            _ => {}
        }
    }
    Ok(header)
}

/// The lines of `<NAME> … </NAME>` with their 1-based line numbers, or `None` without one.
fn section_lines<'a>(text: &'a str, name: &str) -> Option<Vec<(usize, &'a str)>> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut lines = Vec::new();
    let mut inside = false;
    let mut seen = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim() == open {
            inside = true;
            seen = true;
        } else if line.trim() == close {
            inside = false;
        } else if inside {
            lines.push((i + 1, line));
        }
    }
    seen.then_some(lines)
}

/// A line of orchestra code without `;`, `//` and `/* … */` comments (`in_comment` carries a
/// block comment over lines).
fn strip_comments(line: &str, in_comment: &mut bool) -> String {
    let mut out = String::new();
    let mut rest = line;
    loop {
        if *in_comment {
            match rest.find("*/") {
                Some(end) => {
                    *in_comment = false;
                    rest = &rest[end + 2..];
                }
                None => return out,
            }
        }
        let cut = [rest.find(';'), rest.find("//"), rest.find("/*")]
            .into_iter()
            .flatten()
            .min();
        match cut {
            Some(at) if rest[at..].starts_with("/*") => {
                out.push_str(&rest[..at]);
                *in_comment = true;
                rest = &rest[at + 2..];
            }
            Some(at) => {
                out.push_str(&rest[..at]);
                return out;
            }
            None => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// A flag an engine owns, as written in its `owned_csoptions` list: `-b N` takes a value
/// (attached, `-b500`, or the next word), `-+jack_client=` and `--sample-rate=` carry theirs
/// after `=`, anything else (`-n`) is the whole word.
enum Owned<'a> {
    WithValue(&'a str),
    Prefix(&'a str),
    Exact(&'a str),
}

fn owned_flag(spec: &str) -> Owned<'_> {
    if let Some(flag) = spec.strip_suffix(" N") {
        Owned::WithValue(flag)
    } else if spec.ends_with('=') {
        Owned::Prefix(spec)
    } else {
        Owned::Exact(spec)
    }
}

/// `text` with the owned flags left out of its `<CsOptions>` (comments kept), and the flags
/// left out as written (`-b 500`). The text is unchanged when nothing was left out.
pub fn strip_options(text: &str, owned: &[String]) -> (String, Vec<String>) {
    let Some(section) = section_lines(text, "CsOptions") else {
        return (text.to_string(), Vec::new());
    };
    // Every word of the section: (line, its code part split into words).
    let mut words: Vec<(usize, String)> = Vec::new();
    let mut comments: BTreeMap<usize, (String, String)> = BTreeMap::new();
    for (line_no, line) in &section {
        let (code, comment) = match line.find(';') {
            Some(at) => line.split_at(at),
            None => (*line, ""),
        };
        let indent: String = code.chars().take_while(|c| c.is_whitespace()).collect();
        comments.insert(*line_no, (indent, comment.to_string()));
        words.extend(code.split_whitespace().map(|w| (*line_no, w.to_string())));
    }
    let mut kept: Vec<(usize, String)> = Vec::new();
    let mut removed = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i].1;
        let takes_next = owned.iter().find_map(|spec| match owned_flag(spec) {
            Owned::WithValue(flag) if word == flag => Some(true),
            Owned::WithValue(flag) if word.starts_with(flag) => Some(false),
            Owned::Prefix(prefix) if word.starts_with(prefix) => Some(false),
            Owned::Exact(flag) if word == flag => Some(false),
            _ => None,
        });
        match takes_next {
            Some(true) if i + 1 < words.len() => {
                removed.push(format!("{word} {}", words[i + 1].1));
                i += 2;
            }
            Some(_) => {
                removed.push(word.clone());
                i += 1;
            }
            None => {
                kept.push(words[i].clone());
                i += 1;
            }
        }
    }
    if removed.is_empty() {
        return (text.to_string(), removed);
    }
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        match comments.get(&line_no) {
            Some((indent, comment)) => {
                let code: Vec<&str> = kept
                    .iter()
                    .filter(|(l, _)| *l == line_no)
                    .map(|(_, w)| w.as_str())
                    .collect();
                let mut rebuilt = format!("{indent}{}", code.join(" "));
                if !comment.is_empty() {
                    if !code.is_empty() {
                        rebuilt.push(' ');
                    }
                    rebuilt.push_str(comment);
                }
                out.push_str(rebuilt.trim_end());
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    (out, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header and CsOptions of the prototype's lp.csd, in its own layout.
    const PROTOTYPE_LP: &str = "<CsoundSynthesizer>\n<CsOptions>\n; Audio out   Audio in    No messages\n-odac           -iadc     -d  -+rtaudio=jack -+jack_client=csoundlp  -b 500 -B 2000   ;;;RT audio I/O\n</CsOptions>\n<CsInstruments>\n       \tsr = 44100\n\tkr = 441\n\tksmps = 100\n\tnchnls = 1\n\t0dbfs = 1\n\ninstr lp\n\tifreq = p4\nain\tin\naout\tbutterlp ain, ifreq\n\tout aout\nendin\n</CsInstruments>\n<CsScore>\ni\"lp\" 0 360000 1000\n</CsScore>\n</CsoundSynthesizer>\n";

    fn owned() -> Vec<String> {
        [
            "-o N",
            "-i N",
            "-b N",
            "-B N",
            "-+rtaudio=",
            "-+jack_client=",
            "-n",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn reads_the_prototype_header_with_lines() {
        let header = read_header(PROTOTYPE_LP).unwrap();
        let value = |n: &str| header[n].value;
        assert_eq!(value("sr"), Some(44100.0));
        assert_eq!(value("kr"), Some(441.0));
        assert_eq!(value("ksmps"), Some(100.0));
        assert_eq!(value("nchnls"), Some(1.0));
        assert_eq!(header["sr"].line, 7);
        assert!(!header.contains_key("nchnls_i"));
    }

    #[test]
    fn statements_inside_instruments_and_comments_are_not_header() {
        let text = "<CsInstruments>\nsr = 48000 ; the rate\n/* ksmps = 7 */\n; kr = 3\ninstr 1\n ksmps = 4\nendin\nnchnls = giChannels\n</CsInstruments>\n";
        let header = read_header(text).unwrap();
        assert_eq!(header["sr"].value, Some(48000.0));
        assert!(!header.contains_key("ksmps"), "{header:?}");
        assert!(!header.contains_key("kr"));
        assert_eq!(
            header["nchnls"],
            Setting {
                line: 8,
                value: None
            }
        );
    }

    #[test]
    fn a_file_without_instruments_is_an_error() {
        let err = read_header("<CsoundSynthesizer>\n</CsoundSynthesizer>\n").unwrap_err();
        assert!(err.contains("no <CsInstruments>"), "{err}");
    }

    #[test]
    fn owned_flags_leave_the_options_and_the_rest_stays() {
        let (text, removed) = strip_options(PROTOTYPE_LP, &owned());
        assert_eq!(
            removed,
            [
                "-odac",
                "-iadc",
                "-+rtaudio=jack",
                "-+jack_client=csoundlp",
                "-b 500",
                "-B 2000"
            ]
        );
        assert!(
            text.contains("\n-d ;;;RT audio I/O\n"),
            "other flags and the comment stay: {text}"
        );
        assert!(text.contains("; Audio out   Audio in    No messages\n"));
        // Everything outside the options is untouched.
        let after = |t: &str| t.split("</CsOptions>").nth(1).unwrap().to_string();
        assert_eq!(after(&text), after(PROTOTYPE_LP));
    }

    #[test]
    fn values_may_be_attached_or_on_the_next_line() {
        let text = "<CsOptions>\n-b\n500 -B2000 -o dac -m0\n</CsOptions>\n<CsInstruments>\n</CsInstruments>\n";
        let (out, removed) = strip_options(text, &owned());
        assert_eq!(removed, ["-b 500", "-B2000", "-o dac"]);
        assert_eq!(
            out,
            "<CsOptions>\n\n-m0\n</CsOptions>\n<CsInstruments>\n</CsInstruments>\n"
        );
    }

    #[test]
    fn a_file_without_owned_options_is_unchanged() {
        let text = "<CsoundSynthesizer>\n<CsInstruments>\nsr = 48000\n</CsInstruments>\n</CsoundSynthesizer>\n";
        assert_eq!(strip_options(text, &owned()), (text.to_string(), vec![]));
        let text = "<CsOptions>\n-d -m0\n</CsOptions>\n";
        assert_eq!(strip_options(text, &owned()), (text.to_string(), vec![]));
    }
}
