//! `syscont images info`: an image's labels and the template variables of its `/exports`,
//! split as Atomic split them (with a default, and without one).

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};

use crate::container::Host;
use crate::store::{ImageRecord, Store};

/// The template variables an image's `/exports/*.template` files use, split as Atomic's
/// `images info` split them: with a default (manifest `defaultValues` and the values the OS
/// provides) and without one (they must be given with `--set`).
fn template_variables(
    store: &Store,
    img: &ImageRecord,
) -> Result<(BTreeMap<String, String>, BTreeSet<String>)> {
    use crate::template::{FORCED_VALUES as FORCED, OS_VALUES as SET_BY_OS};
    let mut with_default: BTreeMap<String, String> = BTreeMap::new();
    if let Some(m) = store.read_image_file(img, "/exports/manifest.json")? {
        let v: serde_json::Value = serde_json::from_slice(&m)
            .with_context(|| format!("Invalid manifest.json file in image: {}", img.name))?;
        if let Some(d) = v.get("defaultValues").and_then(|d| d.as_object()) {
            for (k, v) in d {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                with_default.insert(k.clone(), s);
            }
        }
    }
    for k in SET_BY_OS {
        with_default.insert(k.to_string(), "{SET_BY_OS}".into());
    }
    let mut without = BTreeSet::new();
    for f in [
        "config.json.template",
        "service.template",
        "tmpfiles.template",
    ] {
        if let Some(t) = store.read_image_file(img, &format!("/exports/{f}"))? {
            for v in crate::template::dollar::variables(&String::from_utf8_lossy(&t)) {
                if !FORCED.contains(&v.as_str()) && !with_default.contains_key(&v) {
                    without.insert(v);
                }
            }
        }
    }
    Ok((with_default, without))
}

/// `images info` (its JSON is the same, field for field).
#[derive(Debug, serde::Serialize)]
pub(crate) struct InfoDoc {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Variables with a default (the manifest's, or `{SET_BY_OS}`): overridable with --set.
    pub with_default: BTreeMap<String, String>,
    /// Variables the templates use that have no default: they must be given with --set.
    pub without_default: Vec<String>,
}

/// `syscont images info`.
pub(crate) fn info(host: &Host, image: &str) -> Result<InfoDoc> {
    let store = host.open_store()?;
    let img = store.resolve_one(image)?;
    let config = store.config(&img)?;
    let labels = config
        .pointer("/config/Labels")
        .and_then(|l| l.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let (with_default, without) = template_variables(store, &img)?;
    let doc = InfoDoc {
        name: img.name.clone(),
        labels,
        with_default,
        without_default: without.into_iter().collect(),
    };
    Ok(doc)
}
