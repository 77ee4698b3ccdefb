//! Shell words: every remote argument is quoted for a POSIX shell before it is sent.

/// Quote `word` for a POSIX shell: returned as is when it is made only of characters no shell
/// treats specially, else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./,:@%+".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_as_they_are() {
        for word in ["ls", "-la", "/usr/bin/x", "a.b,c:d@e%f+g_h", "10.0.0.1"] {
            assert_eq!(shell_quote(word), word);
        }
    }

    #[test]
    fn anything_else_is_single_quoted() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("c'd"), r"'c'\''d'");
        assert_eq!(shell_quote("$HOME;rm -rf /"), "'$HOME;rm -rf /'");
        assert_eq!(shell_quote("line\nbreak"), "'line\nbreak'");
        assert_eq!(shell_quote("~"), "'~'");
        assert_eq!(shell_quote("a=b"), "'a=b'");
        assert_eq!(shell_quote("'"), r"''\'''");
    }

    #[test]
    fn quoted_words_come_back_verbatim_from_sh() {
        let words = [
            "a b",
            "c'd",
            "$x ${y} `z` $(w)",
            ";|&<>(){}[]*?!#~=",
            "new\nline",
            "tab\there",
            "\"dq\"",
            "",
            "\\back\\slash",
            "ünï",
        ];
        let script = format!(
            "printf '%s\\0' {}",
            words
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success());
        let back: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap()
            .split_terminator('\0')
            .collect();
        assert_eq!(back, words);
    }
}
