//! `load`: the load average per CPU core, from `/proc/loadavg`.
//!
//! Settings: none.
//!
//! | check            | target   | unit | default thresholds           |
//! |------------------|----------|------|------------------------------|
//! | `load1_per_core` | `system` | ``   | warn_gt 1.5, critical_gt 3   |
//! | `load5_per_core` | `system` | ``   | warn_gt 1.5, critical_gt 3   |
//!
//! The load average counts runnable and uninterruptible (I/O-waiting) tasks host-wide, so it
//! is divided by the host's online CPUs (the `cpuN` lines of `/proc/stat`), not by the CPUs
//! this process may use.

use super::{Settings, blocking, number, one_default_instance, round2};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Thresholds};
use futures_util::future::BoxFuture;
use tether_host::host::{self, Load};

pub struct LoadPlugin;

impl Plugin for LoadPlugin {
    fn name(&self) -> &'static str {
        "load"
    }

    fn about(&self) -> &'static str {
        "Load average (1 and 5 minutes) per CPU core"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        Settings::new(self.name(), settings, self.settings_keys())?;
        Ok(Box::new(LoadCheck))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn default_instances(&self) -> Vec<toml::Table> {
        one_default_instance()
    }
}

struct LoadCheck;

/// Online CPUs: the per-CPU lines of `/proc/stat`, or the CPUs this process may use.
fn online_cpus() -> usize {
    let n = host::cpu_times()
        .iter()
        .filter(|(name, _)| name != "cpu")
        .count();
    if n > 0 { n } else { host::cpu_count() }
}

/// The measurements of one load reading on `cores` CPUs.
pub fn measurements(l: &Load, cores: usize) -> Vec<Measurement> {
    let cores = cores.max(1);
    let defaults = Thresholds {
        warn_gt: Some(1.5),
        critical_gt: Some(3.0),
        ..Thresholds::default()
    };
    [
        ("load1_per_core", l.one, "1"),
        ("load5_per_core", l.five, "5"),
    ]
    .into_iter()
    .map(|(check, load, minutes)| {
        let per_core = round2(load / cores as f64);
        number(
            check,
            "system",
            per_core,
            "",
            format!("{minutes}-minute load is {load:.2} on {cores} cores ({per_core:.2} per core)"),
            defaults.clone(),
        )
    })
    .collect()
}

impl Check for LoadCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let (load, cores) = blocking(|| (host::load(), online_cpus())).await?;
            let load = load.ok_or_else(|| "cannot read /proc/loadavg".to_owned())?;
            Ok(measurements(&load, cores))
        })
    }
}
