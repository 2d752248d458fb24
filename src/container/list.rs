//! `containers list`: what is installed, and in which state.
//!
//! The states of every unit come from one D-Bus call. When systemd cannot be reached the
//! containers are still listed, with the state `unknown`, and the caller fails afterwards.
//! A switch in progress (`switching`) or one that was interrupted (`interrupted`) shows
//! before the unit's state.

use anyhow::Result;

use crate::container::units::unit_name;
use crate::container::Host;
use crate::host::systemd::{ActiveState, UnitState};

/// One row of `containers list` (its JSON is the same, field for field).
#[derive(Debug, serde::Serialize)]
pub(crate) struct ContainerRow {
    /// The image ID (manifest digest without `sha256:`).
    pub id: String,
    pub image: String,
    pub name: String,
    pub command: String,
    /// When this deployment was made (RFC 3339).
    pub created: String,
    /// `running`, `inactive`, `failed`, `activating`, …, `no service`, `switching`,
    /// `interrupted`, or `unknown` when systemd cannot be asked.
    pub state: String,
    pub backend: String,
    pub runtime: String,
}

impl ContainerRow {
    /// Whether the list shows the row without `--all`: it runs, or needs a look.
    pub(crate) fn listed_by_default(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "switching" | "interrupted" | "unknown"
        )
    }
}

/// Every installed container; `Err` beside the rows when systemd could not be asked.
pub(crate) struct Listing {
    pub rows: Vec<ContainerRow>,
    pub unreachable: Option<anyhow::Error>,
}

/// What a container is doing, as the list says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    None,
    /// A syscont command is switching it now.
    Running,
    /// A switch was interrupted (the next command on it completes it).
    Interrupted,
}

fn state_word(
    switch: Switch,
    has_service: bool,
    unreachable: bool,
    unit: Option<&UnitState>,
) -> String {
    match switch {
        Switch::Running => return "switching".into(),
        Switch::Interrupted => return "interrupted".into(),
        Switch::None => {}
    }
    if !has_service {
        return "no service".into();
    }
    if unreachable {
        return "unknown".into();
    }
    match unit.map(|u| &u.active_state) {
        Some(ActiveState::Active) => "running".into(),
        Some(s) => s.to_string(),
        None => "inactive".into(),
    }
}

/// The installed containers, sorted by name.
pub(crate) fn list(host: &Host) -> Result<Listing> {
    let deps = &host.deps;
    let mut infos = Vec::new();
    for n in deps.names()? {
        if let Some(s) = deps.active_slot(&n) {
            if let Ok(i) = deps.read_info(&n, s) {
                infos.push((n, s, i));
            }
        }
    }
    let units: Vec<String> = infos.iter().map(|(n, _, _)| unit_name(n)).collect();
    let unit_refs: Vec<&str> = units.iter().map(String::as_str).collect();
    let (states, unreachable) = if unit_refs.is_empty() {
        (Default::default(), None)
    } else {
        match host.systemd().and_then(|sd| sd.unit_states(&unit_refs)) {
            Ok(s) => (s, None),
            Err(e) => (Default::default(), Some(e)),
        }
    };
    let mut rows = Vec::new();
    for (n, s, info) in infos {
        let switch = match crate::container::switch::pending(deps, &n) {
            None => Switch::None,
            Some(_) if deps.is_locked(&n) => Switch::Running,
            Some(_) => Switch::Interrupted,
        };
        let state = state_word(
            switch,
            info.has_container_service,
            unreachable.is_some(),
            states.get(&unit_name(&n)),
        );
        let command = std::fs::read(deps.slot_dir(&n, s).join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.pointer("/process/args").cloned())
            .and_then(|a| serde_json::from_value::<Vec<String>>(a).ok())
            .map(|a| a.join(" "))
            .unwrap_or_default();
        rows.push(ContainerRow {
            id: info.revision.clone(),
            image: if info.syscont.image_name.is_empty() {
                info.image.clone()
            } else {
                info.syscont.image_name.clone()
            },
            name: n,
            command,
            created: crate::util::time::rfc3339(info.created),
            state,
            backend: "ostree".into(),
            runtime: info.runtime.clone(),
        });
    }
    Ok(Listing { rows, unreachable })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(s: ActiveState) -> UnitState {
        UnitState {
            active_state: s,
            ..Default::default()
        }
    }

    #[test]
    fn states_say_what_needs_a_look_first() {
        let active = unit(ActiveState::Active);
        assert_eq!(
            state_word(Switch::None, true, false, Some(&active)),
            "running"
        );
        assert_eq!(
            state_word(Switch::Running, true, false, Some(&active)),
            "switching"
        );
        assert_eq!(
            state_word(Switch::Interrupted, true, true, None),
            "interrupted"
        );
        assert_eq!(state_word(Switch::None, false, true, None), "no service");
        assert_eq!(
            state_word(Switch::None, true, true, Some(&active)),
            "unknown"
        );
        assert_eq!(
            state_word(Switch::None, true, false, Some(&unit(ActiveState::Failed))),
            "failed"
        );
        assert_eq!(state_word(Switch::None, true, false, None), "inactive");
        let row = |state: &str| ContainerRow {
            id: String::new(),
            image: String::new(),
            name: String::new(),
            command: String::new(),
            created: String::new(),
            state: state.into(),
            backend: String::new(),
            runtime: String::new(),
        };
        assert!(row("running").listed_by_default());
        assert!(row("unknown").listed_by_default());
        assert!(!row("inactive").listed_by_default());
        assert!(!row("no service").listed_by_default());
    }
}
