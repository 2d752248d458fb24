//! Placeholder with the agreed API until the real D-Bus client lands.
#![allow(dead_code)]
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub(crate) struct UnitState {
    pub active_state: String,
    pub sub_state: String,
    pub load_state: String,
    pub result: String,
    pub main_pid: u32,
}

#[derive(Debug)]
pub(crate) struct Systemd {}

impl Systemd {
    pub(crate) fn system() -> Result<Systemd> {
        bail!("systemd is not reachable over D-Bus")
    }
    pub(crate) fn reload(&self) -> Result<()> {
        Ok(())
    }
    pub(crate) fn enable(&self, _u: &[&str]) -> Result<()> {
        Ok(())
    }
    pub(crate) fn disable(&self, _u: &[&str]) -> Result<()> {
        Ok(())
    }
    pub(crate) fn start(&self, _u: &str, _t: Duration) -> Result<()> {
        Ok(())
    }
    pub(crate) fn stop(&self, _u: &str, _t: Duration) -> Result<()> {
        Ok(())
    }
    pub(crate) fn unit_state(&self, _u: &str) -> Result<UnitState> {
        Ok(UnitState::default())
    }
    pub(crate) fn unit_states(&self, _u: &[&str]) -> Result<HashMap<String, UnitState>> {
        Ok(HashMap::new())
    }
    pub(crate) fn wait_active(&self, _u: &str, _p: Duration) -> Result<()> {
        Ok(())
    }
    pub(crate) fn reset_failed(&self, _u: &str) -> Result<()> {
        Ok(())
    }
}
