//! `mem`: available memory and swap use, from `/proc/meminfo`.
//!
//! Settings: none.
//!
//! | check           | target   | unit | default thresholds           |
//! |-----------------|----------|------|------------------------------|
//! | `available_pct` | `memory` | `%`  | warn_lt 10, critical_lt 5    |
//! | `swap_used_pct` | `swap`   | `%`  | warn_ge 80, critical_ge 95   |
//!
//! `available_pct` is MemAvailable (the kernel's estimate of what can be used without
//! swapping) over MemTotal. `swap_used_pct` is only reported when the host has swap.

use super::{Settings, blocking, number, one_default_instance};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Thresholds};
use futures_util::future::BoxFuture;
use tether_host::host::{self, Memory, human_bytes};

pub struct MemPlugin;

impl Plugin for MemPlugin {
    fn name(&self) -> &'static str {
        "mem"
    }

    fn about(&self) -> &'static str {
        "Memory of the host: available memory and swap use from /proc/meminfo"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        Settings::new(self.name(), settings, self.settings_keys())?;
        Ok(Box::new(MemCheck))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn default_instances(&self) -> Vec<toml::Table> {
        one_default_instance()
    }
}

struct MemCheck;

/// The measurements of one `/proc/meminfo` reading.
pub fn measurements(m: &Memory) -> Vec<Measurement> {
    let available_pct = host::pct(m.available_bytes.min(m.total_bytes), m.total_bytes);
    let mut out = vec![number(
        "available_pct",
        "memory",
        available_pct,
        "%",
        format!(
            "{available_pct:.1} % of memory is available ({} of {})",
            human_bytes(m.available_bytes),
            human_bytes(m.total_bytes)
        ),
        Thresholds {
            warn_lt: Some(10.0),
            critical_lt: Some(5.0),
            ..Thresholds::default()
        },
    )];
    if m.swap_total_bytes > 0 {
        let used = m.swap_total_bytes.saturating_sub(m.swap_free_bytes);
        let used_pct = host::pct(used, m.swap_total_bytes);
        out.push(number(
            "swap_used_pct",
            "swap",
            used_pct,
            "%",
            format!(
                "{used_pct:.1} % of swap is used ({} of {})",
                human_bytes(used),
                human_bytes(m.swap_total_bytes)
            ),
            Thresholds {
                warn_ge: Some(80.0),
                critical_ge: Some(95.0),
                ..Thresholds::default()
            },
        ));
    }
    out
}

impl Check for MemCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let m = blocking(host::memory)
                .await?
                .ok_or_else(|| "cannot read MemTotal from /proc/meminfo".to_owned())?;
            Ok(measurements(&m))
        })
    }
}
