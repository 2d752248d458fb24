//! Placeholder until the real module lands.
use std::collections::BTreeMap;
pub(crate) fn substitute(
    t: &str,
    _w: &str,
    _v: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    Ok(t.to_string())
}
pub(crate) fn variables(_t: &str) -> Vec<String> {
    Vec::new()
}
