//! Atomic's template language: Python's `string.Template.substitute`, strictly.
//!
//! `$name` and `${name}` are replaced (identifiers `[_A-Za-z][_A-Za-z0-9]*`), `$$` is a
//! literal `$`, a missing variable is an error, and so is any other `$`. Substitution is one
//! pass: values are never expanded again. The messages match Atomic's, which its users'
//! scripts grep for.

use std::collections::BTreeMap;

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// A variable has no value.
    #[error("The template file '{file}' still contains an unreplaced value for: ''{var}''")]
    Unreplaced { file: String, var: String },
    /// A `$` that is neither `$$` nor a placeholder.
    #[error("Invalid placeholder in string: line {line}, col {col}")]
    InvalidPlaceholder { line: usize, col: usize },
}

/// One piece of a parsed template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
    Dollar,
    Invalid(usize),
}

fn is_start(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphabetic()
}

fn is_cont(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric()
}

fn parse(t: &str) -> Vec<Piece<'_>> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut text_start = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if text_start < i {
            out.push(Piece::Text(&t[text_start..i]));
        }
        let at = i;
        i += 1;
        if i < b.len() && b[i] == b'$' {
            out.push(Piece::Dollar);
            i += 1;
        } else if i < b.len() && is_start(b[i]) {
            let s = i;
            while i < b.len() && is_cont(b[i]) {
                i += 1;
            }
            out.push(Piece::Var(&t[s..i]));
        } else if i < b.len() && b[i] == b'{' {
            let s = i + 1;
            let mut j = s;
            if j < b.len() && is_start(b[j]) {
                while j < b.len() && is_cont(b[j]) {
                    j += 1;
                }
            }
            if j > s && j < b.len() && b[j] == b'}' {
                out.push(Piece::Var(&t[s..j]));
                i = j + 1;
            } else {
                out.push(Piece::Invalid(at));
            }
        } else {
            out.push(Piece::Invalid(at));
        }
        text_start = i;
    }
    if text_start < b.len() {
        out.push(Piece::Text(&t[text_start..]));
    }
    out
}

fn position(t: &str, at: usize) -> (usize, usize) {
    let before = &t[..at];
    let line = before.matches('\n').count() + 1;
    let col = match before.rfind('\n') {
        Some(nl) => at - nl,
        None => at + 1,
    };
    (line, col)
}

/// Renders `template` with `values`. `what` names the template in error messages.
pub(crate) fn substitute(
    template: &str,
    what: &str,
    values: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    render(template, what, values, false)
}

/// Like [`substitute`], for JSON templates: a value that stands inside a JSON string of
/// the template is JSON-escaped, so it stays that string whatever it holds (a quote in a
/// `--set` value cannot add keys, mounts or capabilities). Values outside strings are
/// spliced as they are, as Atomic did (`[${ALL_PROCESS_CAPABILITIES}]`, `$ADDTL_MOUNTS`).
pub(crate) fn substitute_json(
    template: &str,
    what: &str,
    values: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    render(template, what, values, true)
}

/// One pass over the template; with `json`, values inside JSON strings are escaped.
fn render(
    template: &str,
    what: &str,
    values: &BTreeMap<String, String>,
    json: bool,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let (mut in_string, mut backslash) = (false, false);
    for p in parse(template) {
        match p {
            Piece::Text(s) => {
                // Where the template's own text opens and closes JSON strings.
                for c in s.chars().filter(|_| json) {
                    if backslash {
                        backslash = false;
                    } else if in_string && c == '\\' {
                        backslash = true;
                    } else if c == '"' {
                        in_string = !in_string;
                    }
                }
                out.push_str(s);
            }
            Piece::Dollar => out.push('$'),
            Piece::Var(v) => match values.get(v) {
                Some(val) if in_string => {
                    let escaped = serde_json::to_string(val).expect("a string serializes");
                    out.push_str(&escaped[1..escaped.len() - 1]);
                }
                Some(val) => out.push_str(val),
                None => {
                    return Err(TemplateError::Unreplaced {
                        file: what.to_string(),
                        var: v.to_string(),
                    }
                    .into())
                }
            },
            Piece::Invalid(at) => {
                let (line, col) = position(template, at);
                return Err(TemplateError::InvalidPlaceholder { line, col }.into());
            }
        }
    }
    Ok(out)
}

/// The distinct variables a template uses, in order of first use (`$$` and invalid
/// placeholders are not variables).
pub(crate) fn variables(template: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in parse(template) {
        if let Piece::Var(v) = p {
            if !out.iter().any(|o| o == v) {
                out.push(v.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn json_strings_keep_their_values_in() {
        let mut v = BTreeMap::new();
        v.insert(
            "R".to_string(),
            r#"x"], "mounts": [{"source": "/"}], "y": ["\"#.to_string(),
        );
        v.insert("CAPS".to_string(), "\"CAP_A\",\n\"CAP_B\"".to_string());
        v.insert("N".to_string(), "0".to_string());
        let t = r#"{"env": ["R=$R", "ESC=\"$R\""], "caps": [$CAPS], "uid": $N, "m": []}"#;
        let out = substitute_json(t, "config.json.template", &v).unwrap();
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["env"][0].as_str().unwrap(), format!("R={}", v["R"]));
        assert_eq!(j["env"].as_array().unwrap().len(), 2);
        assert!(j.get("mounts").is_none() && j.get("y").is_none());
        assert_eq!(j["caps"], serde_json::json!(["CAP_A", "CAP_B"]));
        assert_eq!(j["uid"], 0);
        // Outside JSON strings nothing changes, and errors are the same as Atomic's.
        assert_eq!(substitute_json("$$ $N", "x", &v).unwrap(), "$ 0");
        let e = substitute_json("\"$NOPE\"", "f", &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("''NOPE''"), "{e}");
    }

    #[test]
    fn substitution_table() {
        let v = vals(&[
            ("NAME", "etcd"),
            ("A", "1"),
            ("B", "2"),
            ("AB", "both"),
            ("SECRET", "abc  -"),
            ("DOLLAR", "$B"),
        ]);
        let cases = [
            ("$NAME", "etcd"),
            ("${NAME}", "etcd"),
            ("x${A}B", "x1B"),
            ("$A$B", "12"),
            ("$AB", "both"),
            ("$$NAME", "$NAME"),
            ("cost $$5", "cost $5"),
            ("$SECRET", "abc  -"),
            ("é $NAME ü", "é etcd ü"),
            ("$DOLLAR", "$B"),
            ("$NAME.service", "etcd.service"),
            ("no vars", "no vars"),
            ("", ""),
        ];
        for (t, want) in cases {
            assert_eq!(substitute(t, "f", &v).unwrap(), want, "{t:?}");
        }
    }

    #[test]
    fn missing_variable_message_matches_atomic() {
        let e = substitute(
            "a\n$VAR_WITH_NO_DEFAULT",
            "exports/config.json.template",
            &vals(&[]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "The template file 'exports/config.json.template' still contains an unreplaced value for: ''VAR_WITH_NO_DEFAULT''"
        );
        assert!(matches!(
            e.downcast_ref::<TemplateError>(),
            Some(TemplateError::Unreplaced { .. })
        ));
    }

    #[test]
    fn invalid_placeholders() {
        let v = vals(&[("A", "1")]);
        for (t, line, col) in [
            ("$1", 1, 1),
            ("ab ${A:-b}", 1, 4),
            ("${}", 1, 1),
            ("x\ny $", 2, 3),
            ("$ ", 1, 1),
            ("a\nb\n  ${A", 3, 3),
        ] {
            let e = substitute(t, "f", &v).unwrap_err();
            assert_eq!(
                e.downcast_ref::<TemplateError>(),
                Some(&TemplateError::InvalidPlaceholder { line, col }),
                "{t:?}"
            );
        }
    }

    #[test]
    fn variables_in_order() {
        assert_eq!(
            variables("$B ${A} $$C $B $1 ${D}"),
            vec!["B".to_string(), "A".to_string(), "D".to_string()]
        );
    }
}
