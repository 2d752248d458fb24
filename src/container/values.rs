//! The template values a user gives a container (`--set KEY=VALUE`, `--set-json
//! KEY=JSON`, a host file's `set` tables), and how they carry over between deployments.
//!
//! Given values persist: an update starts from the values of the installed deployment and
//! the new ones win, unless the new ones are all the values (`apply`). Values syscont
//! computes for every deployment (`NAME`, `DESTDIR`, ...) cannot be given.

use anyhow::Result;
use std::collections::BTreeMap;

use crate::container::deploy::Info;
use crate::error::UserError;

/// Values given for a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Values {
    /// `--set`: strings, for `$VAR` and Tera templates.
    pub set: BTreeMap<String, String>,
    /// `--set-json`: structured values, for Tera templates.
    pub json: BTreeMap<String, serde_json::Value>,
}

/// Checks the name of a value: letters, digits and `_`, not starting with a digit.
fn check_key(k: &str, given: &str) -> Result<()> {
    if k.is_empty()
        || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || k.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        return Err(
            UserError::Invalid(format!("invalid variable name {k:?} in --set {given:?}")).into(),
        );
    }
    Ok(())
}

impl Values {
    /// Values from `(key, value)` pairs (later duplicates win) and JSON values; refuses
    /// bad names and values syscont always computes.
    pub(crate) fn new(
        set: impl IntoIterator<Item = (String, String)>,
        json: impl IntoIterator<Item = (String, serde_json::Value)>,
    ) -> Result<Values> {
        let mut out = Values::default();
        for (k, v) in set {
            check_key(&k, &format!("{k}={v}"))?;
            out.set.insert(k, v);
        }
        crate::template::check_settable(out.set.keys())?;
        out.json.extend(json);
        Ok(out)
    }

    /// The values a deployment was made with.
    pub(crate) fn of(info: &Info) -> Values {
        Values {
            set: info.set_values(),
            json: info.syscont.set_json.clone(),
        }
    }

    /// These values over `old`: what an update renders with. With `replace`, these are
    /// all the values and `old` is dropped.
    pub(crate) fn over(self, old: &Values, replace: bool) -> Values {
        if replace {
            return self;
        }
        let mut out = old.clone();
        out.set.extend(self.set);
        out.json.extend(self.json);
        out
    }

    /// Every key given, `--set` and `--set-json`.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.set.keys().chain(self.json.keys())
    }

    /// The `--set` keys whose value differs from `other`'s.
    pub(crate) fn differing_from(&self, other: &BTreeMap<String, String>) -> Vec<String> {
        self.set
            .iter()
            .filter(|(k, v)| other.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_are_checked_and_computed_values_refused() {
        let v = Values::new(pairs(&[("PORT", "1"), ("PORT", "2")]), []).unwrap();
        assert_eq!(v.set["PORT"], "2", "a later value wins");
        for bad in ["", "A-B", "1X", "A B"] {
            let e = Values::new(pairs(&[(bad, "x")]), []).unwrap_err();
            assert!(
                format!("{e:#}").contains("invalid variable name"),
                "{bad:?}"
            );
        }
        let e = Values::new(pairs(&[("NAME", "evil")]), []).unwrap_err();
        assert!(format!("{e:#}").contains("NAME cannot be set"), "{e:#}");
    }

    #[test]
    fn updates_keep_given_values_unless_replaced() {
        let old = Values::new(pairs(&[("PORT", "1"), ("HOST", "a")]), []).unwrap();
        let new = Values::new(pairs(&[("PORT", "2")]), [("J".into(), 1.into())]).unwrap();
        let merged = new.clone().over(&old, false);
        assert_eq!(merged.set["PORT"], "2");
        assert_eq!(merged.set["HOST"], "a");
        assert_eq!(merged.json["J"], 1);
        let replaced = new.clone().over(&old, true);
        assert!(!replaced.set.contains_key("HOST"));
        assert_eq!(new.differing_from(&old.set), vec!["PORT".to_string()]);
    }
}
