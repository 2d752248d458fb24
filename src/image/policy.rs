//! containers-policy.json(5): which images need signatures. skopeo's image proxy before
//! protocol 0.2.6 (Debian 12's skopeo 1.9.3 speaks 0.2.3) does not consult the policy, so
//! syscont does: when the policy asks more than `insecureAcceptAnything` of an image, the
//! image is first copied by `skopeo copy` (which enforces the policy: signatures, `reject`)
//! into a scratch directory, and the pull reads that verified copy. An image the policy
//! refuses is refused before anything is written to the store.

use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;

/// The policy file skopeo reads: the user's own, else the system's.
pub(crate) fn policy_path() -> PathBuf {
    if crate::util::scope::Scope::current().is_user() {
        let own = crate::util::scope::config_home().join("containers/policy.json");
        if own.exists() {
            return own;
        }
    }
    PathBuf::from("/etc/containers/policy.json")
}

/// The scopes of a Docker reference, most specific first, as containers-policy.json(5)
/// matches them: the reference itself, its repository, each parent namespace, the host.
fn scopes(reference: &str) -> Vec<String> {
    let mut out = vec![reference.to_string()];
    // Without tag or digest: the repository.
    let repo = match reference.split_once('@') {
        Some((r, _)) => r.to_string(),
        None => {
            let last_slash = reference.rfind('/').unwrap_or(0);
            match reference[last_slash..].rfind(':') {
                Some(i) => reference[..last_slash + i].to_string(),
                None => reference.to_string(),
            }
        }
    };
    let mut cur = repo.as_str();
    loop {
        if out.last().map(String::as_str) != Some(cur) {
            out.push(cur.to_string());
        }
        match cur.rfind('/') {
            Some(i) => cur = &cur[..i],
            None => break,
        }
    }
    out
}

/// The requirement types that apply to a `docker://` reference (`host/repo:tag`).
fn requirements(policy: &serde_json::Value, reference: &str) -> Vec<String> {
    let types = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["type"].as_str().unwrap_or("unknown").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let docker = &policy["transports"]["docker"];
    for scope in scopes(reference) {
        if let Some(r) = docker.get(&scope) {
            return types(r);
        }
    }
    if let Some(r) = docker.get("") {
        return types(r);
    }
    types(&policy["default"])
}

/// Whether the policy asks more than `insecureAcceptAnything` of `skopeo_ref` (only
/// `docker://` references are checked; local files are the operator's own).
pub(crate) fn needs_verification(skopeo_ref: &str) -> Result<bool> {
    let Some(reference) = skopeo_ref.strip_prefix("docker://") else {
        return Ok(false);
    };
    let path = policy_path();
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("Reading {}", path.display())),
    };
    let policy: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", path.display()))?;
    let reqs = requirements(&policy, reference);
    if reqs.is_empty() {
        // An empty requirement list is invalid in containers-policy.json(5): be strict.
        return Ok(true);
    }
    Ok(reqs.iter().any(|t| t != "insecureAcceptAnything"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_go_from_specific_to_general() {
        assert_eq!(
            scopes("reg.example:5000/ns/app:1"),
            vec![
                "reg.example:5000/ns/app:1",
                "reg.example:5000/ns/app",
                "reg.example:5000/ns",
                "reg.example:5000"
            ]
        );
        assert_eq!(
            scopes("reg/app@sha256:ab"),
            vec!["reg/app@sha256:ab", "reg/app", "reg"]
        );
    }

    #[test]
    fn requirements_follow_the_most_specific_scope() {
        let p: serde_json::Value = serde_json::from_str(
            r#"{"default": [{"type": "insecureAcceptAnything"}],
                "transports": {"docker": {
                    "reg:5000/signed": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k"}],
                    "reg:5000/signed/open": [{"type": "insecureAcceptAnything"}],
                    "bad.example": [{"type": "reject"}]}}}"#,
        )
        .unwrap();
        assert_eq!(requirements(&p, "reg:5000/signed:1"), vec!["signedBy"]);
        assert_eq!(
            requirements(&p, "reg:5000/signed/open:1"),
            vec!["insecureAcceptAnything"]
        );
        assert_eq!(
            requirements(&p, "reg:5000/other:1"),
            vec!["insecureAcceptAnything"]
        );
        assert_eq!(requirements(&p, "bad.example/x/y:2"), vec!["reject"]);
    }
}
