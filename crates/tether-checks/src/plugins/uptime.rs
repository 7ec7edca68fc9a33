//! `uptime`: seconds since boot, from `/proc/uptime` — a low figure means a recent reboot.
//!
//! Settings: none.
//!
//! | check            | target   | unit | default thresholds |
//! |------------------|----------|------|--------------------|
//! | `uptime_seconds` | `system` | `s`  | warn_lt 600        |

use super::{Settings, number, one_default_instance};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Thresholds};
use futures_util::future::BoxFuture;
use std::time::Duration;
use tether_host::host;

pub struct UptimePlugin;

impl Plugin for UptimePlugin {
    fn name(&self) -> &'static str {
        "uptime"
    }

    fn about(&self) -> &'static str {
        "Time since boot; warns after a recent reboot"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        Settings::new(self.name(), settings, self.settings_keys())?;
        Ok(Box::new(UptimeCheck))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn default_instances(&self) -> Vec<toml::Table> {
        one_default_instance()
    }
}

struct UptimeCheck;

/// The measurement for `secs` seconds since boot.
pub fn measurement(secs: u64) -> Measurement {
    number(
        "uptime_seconds",
        "system",
        secs as f64,
        "s",
        format!(
            "up {}",
            humantime::format_duration(Duration::from_secs(secs))
        ),
        Thresholds {
            warn_lt: Some(600.0),
            ..Thresholds::default()
        },
    )
}

impl Check for UptimeCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let secs = host::uptime_sec().ok_or_else(|| "cannot read /proc/uptime".to_owned())?;
            Ok(vec![measurement(secs)])
        })
    }
}
