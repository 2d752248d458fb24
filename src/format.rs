//! How commands print what they are asked for: an aligned table (the default), JSON, or a
//! template of the JSON fields (`--format '{{.name}}\t{{.state}}'`, as podman users write
//! them); and the one way syscont writes times.
//!
//! JSON field names are snake_case and times are RFC 3339, in every command.

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use crate::output::{out, outln};

/// `--format`: `table`, `json`, or a template such as `{{.name}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    /// `{{.field}}` placeholders (a field of the JSON output; case and `_` do not
    /// matter, so `{{.ImageID}}` is `image_id`); `\t` and `\n` are a tab and a newline.
    Template(String),
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            t if t.contains("{{") => Ok(Format::Template(t.to_string())),
            other => Err(format!(
                "unknown format {other:?}: use table, json, or a template such as '{{{{.name}}}}'"
            )),
        }
    }
}

impl Format {
    /// The format asked for with `--format`, or with the older `--json`.
    pub fn choose(format: Option<Format>, json: bool) -> Format {
        match (format, json) {
            (Some(f), _) => f,
            (None, true) => Format::Json,
            (None, false) => Format::Table,
        }
    }
}

fn normalized(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Renders one row of a template from its JSON object.
fn render_template(template: &str, row: &serde_json::Value) -> Result<String> {
    let obj = row
        .as_object()
        .ok_or_else(|| anyhow!("this output has no fields for a template"))?;
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .ok_or_else(|| anyhow!("unclosed {{{{ in the template {template:?}"))?;
        let inner = rest[start + 2..start + end].trim();
        let field = inner.strip_prefix('.').ok_or_else(|| {
            anyhow!("{{{{{inner}}}}} in the template: write a field as {{{{.name}}}}")
        })?;
        let want = normalized(field);
        let value = obj
            .iter()
            .find(|(k, _)| normalized(k) == want)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                let fields: Vec<&str> = obj.keys().map(String::as_str).collect();
                anyhow!(
                    "no field {field:?} in this output; the fields are: {}",
                    fields.join(", ")
                )
            })?;
        match value {
            serde_json::Value::String(s) => out.push_str(s),
            serde_json::Value::Null => {}
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out.replace("\\t", "\t").replace("\\n", "\n"))
}

/// Prints rows: `table` renders them as the command's table, `json` as a JSON array, a
/// template once per row.
pub fn print_rows<T: Serialize>(
    format: &Format,
    rows: &[T],
    table: impl FnOnce(&[T]) -> String,
) -> Result<()> {
    match format {
        Format::Table => out!("{}", table(rows)),
        Format::Json => outln!("{}", serde_json::to_string_pretty(rows)?),
        Format::Template(t) => {
            for r in rows {
                outln!("{}", render_template(t, &serde_json::to_value(r)?)?);
            }
        }
    }
    Ok(())
}

/// Prints one document: `table` as the command's text, `json` as a JSON object, a
/// template once.
pub fn print_one<T: Serialize>(
    format: &Format,
    doc: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<()> {
    match format {
        Format::Table => out!("{}", text(doc)),
        Format::Json => outln!("{}", serde_json::to_string_pretty(doc)?),
        Format::Template(t) => outln!("{}", render_template(t, &serde_json::to_value(doc)?)?),
    }
    Ok(())
}

/// Keeps the rows that match every `KEY=VALUE` filter: the field KEY of the row's JSON
/// (or a name in `aliases`, `(alias, field)`) contains VALUE, ignoring case. An unknown
/// key is an error that lists the known ones.
pub fn filter_rows<T: Serialize>(
    rows: Vec<T>,
    filters: &[String],
    aliases: &[(&str, &str)],
) -> Result<Vec<T>> {
    let mut parsed = Vec::new();
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid filter {f:?}: expected KEY=VALUE"))?;
        let k = k.to_lowercase();
        let k = aliases
            .iter()
            .find(|(a, _)| *a == k)
            .map(|(_, field)| field.to_string())
            .unwrap_or(k);
        parsed.push((normalized(&k), v.to_lowercase()));
    }
    let mut out = Vec::new();
    for row in rows {
        let v = serde_json::to_value(&row)?;
        let obj = v.as_object().cloned().unwrap_or_default();
        let mut keep = true;
        for (k, want) in &parsed {
            let Some((_, field)) = obj.iter().find(|(name, _)| normalized(name) == *k) else {
                let mut known: Vec<&str> = obj.keys().map(String::as_str).collect();
                known.extend(aliases.iter().map(|(a, _)| *a));
                known.sort();
                bail!("unknown filter key {k:?}: use one of {}", known.join(", "));
            };
            let text = match field {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            keep &= text.to_lowercase().contains(want.as_str());
        }
        if keep {
            out.push(row);
        }
    }
    Ok(out)
}

/// (year, month, day, hour, minute, second) in UTC for seconds since the epoch
/// (Howard Hinnant's civil-from-days).
fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem / 60 % 60, rem % 60)
}

/// RFC 3339 in UTC: `2026-11-22T13:55:00Z`.
pub fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// For tables: `2026-11-22 13:55` (UTC).
pub fn table_date(secs: u64) -> String {
    let (y, mo, d, h, mi, _) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// Seconds since the epoch of an RFC 3339 time (`2023-11-14T22:13:20Z`, fractions and
/// offsets allowed), for image configs' `created`.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // The offset after the seconds (and their fraction).
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let offset = match b.get(i) {
        Some(b'Z') | Some(b'z') => 0,
        Some(c @ (b'+' | b'-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from civil (the inverse of `civil`).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if mo > 2 { mo - 3 } else { mo + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(t).ok()
}

/// Refuses a format for a command that has only one way to print.
pub fn require_table(format: &Format, what: &str) -> Result<()> {
    if *format != Format::Table {
        bail!("{what} prints only text");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(table_date(1_700_000_000), "2023-11-14 22:13");
        for t in [0, 1_700_000_000, 951_782_400, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.123456789+01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn templates() {
        let row =
            serde_json::json!({"name": "etcd", "image_id": "abc", "state": "running", "n": 3});
        assert_eq!(
            render_template("{{.name}}\\t{{ .ImageID }} {{.n}}", &row).unwrap(),
            "etcd\tabc 3"
        );
        let e = render_template("{{.nope}}", &row).unwrap_err();
        assert!(format!("{e:#}").contains("the fields are: "), "{e:#}");
        assert!("{{.name}}".parse::<Format>().is_ok());
        assert!("yaml".parse::<Format>().is_err());
    }
}
