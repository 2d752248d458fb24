//! How commands print what they are asked for: an aligned table (the default), JSON, or a
//! template of the JSON fields (`--format '{{.name}}\t{{.state}}'`, as podman users write
//! them). Times are written by [`crate::util::time`].
//!
//! JSON field names are snake_case and times are RFC 3339, in every command.

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use crate::util::output::{out, outln};

/// `--format`: `table`, `json`, or a template such as `{{.name}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Format {
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
    pub(crate) fn choose(format: Option<Format>, json: bool) -> Format {
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
pub(crate) fn print_rows<T: Serialize>(
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
pub(crate) fn print_one<T: Serialize>(
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
pub(crate) fn filter_rows<T: Serialize>(
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn filters_match_fields_aliases_and_refuse_unknown_keys() {
        #[derive(Debug, serde::Serialize)]
        struct Row {
            name: &'static str,
            state: &'static str,
            virtual_size: u64,
        }
        let rows = || {
            vec![
                Row {
                    name: "etcd",
                    state: "running",
                    virtual_size: 10,
                },
                Row {
                    name: "flannel",
                    state: "failed",
                    virtual_size: 20,
                },
            ]
        };
        let names = |r: Vec<Row>| r.iter().map(|r| r.name).collect::<Vec<_>>();
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(filter_rows(rows(), &f(&["state=RUN"]), &[]).unwrap()),
            vec!["etcd"]
        );
        let aliases = [("container", "name"), ("size", "virtual_size")];
        assert_eq!(
            names(filter_rows(rows(), &f(&["container=flan", "size=2"]), &aliases).unwrap()),
            vec!["flannel"]
        );
        assert!(
            filter_rows(rows(), &f(&["VirtualSize=1"]), &[])
                .unwrap()
                .len()
                == 1
        );
        let e = filter_rows(rows(), &f(&["colour=red"]), &aliases).unwrap_err();
        assert!(
            format!("{e:#}").contains("use one of container, name, size, state"),
            "{e:#}"
        );
        assert!(filter_rows(rows(), &f(&["state"]), &[]).is_err());
    }
}
