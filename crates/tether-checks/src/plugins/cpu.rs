//! `cpu`: CPU use of the whole host from `/proc/stat`, between two readings.
//!
//! The check keeps the previous reading between runs, so each run reports the use since the
//! last one; the first run takes two readings 500 ms apart (a cancelled run stops at once).
//!
//! Settings: none.
//!
//! | check        | target | unit | default thresholds            |
//! |--------------|--------|------|-------------------------------|
//! | `usage_pct`  | `cpu`  | `%`  | warn_ge 90                    |
//! | `iowait_pct` | `cpu`  | `%`  | warn_ge 20, critical_ge 50    |
//! | `steal_pct`  | `cpu`  | `%`  | warn_ge 10                    |
//!
//! `usage_pct` is everything but idle and iowait; each is a share of all CPU time elapsed.

use super::{Settings, number, one_default_instance, pause};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Thresholds};
use futures_util::future::BoxFuture;
use std::sync::Mutex;
use std::time::Duration;
use tether_host::host::{self, CpuTimes};

/// The gap between the two readings of a first run.
pub const FIRST_SAMPLE: Duration = Duration::from_millis(500);

const TARGET: &str = "cpu";

pub struct CpuPlugin;

impl Plugin for CpuPlugin {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn about(&self) -> &'static str {
        "CPU use of the host: busy, iowait and steal percentages from /proc/stat"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        Settings::new(self.name(), settings, self.settings_keys())?;
        Ok(Box::new(CpuCheck {
            previous: Mutex::new(None),
        }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn default_instances(&self) -> Vec<toml::Table> {
        one_default_instance()
    }
}

struct CpuCheck {
    previous: Mutex<Option<CpuTimes>>,
}

/// The aggregate `cpu` line of `/proc/stat`.
fn total_times() -> Result<CpuTimes, String> {
    host::cpu_times()
        .into_iter()
        .find(|(name, _)| name == "cpu")
        .map(|(_, t)| t)
        .ok_or_else(|| "cannot read the cpu line of /proc/stat".to_owned())
}

impl CpuCheck {
    fn take_previous(&self) -> Option<CpuTimes> {
        self.previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn store(&self, t: CpuTimes) {
        *self
            .previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t);
    }
}

/// The measurements for the use between two readings.
pub fn measurements(before: &CpuTimes, after: &CpuTimes) -> Vec<Measurement> {
    let u = host::cpu_usage(TARGET, before, after);
    vec![
        number(
            "usage_pct",
            TARGET,
            u.usage_pct,
            "%",
            format!(
                "CPU is {:.1} % busy ({:.1} % user, {:.1} % system)",
                u.usage_pct, u.user_pct, u.system_pct
            ),
            Thresholds {
                warn_ge: Some(90.0),
                ..Thresholds::default()
            },
        ),
        number(
            "iowait_pct",
            TARGET,
            u.iowait_pct,
            "%",
            format!(
                "CPU spends {:.1} % of its time waiting for I/O",
                u.iowait_pct
            ),
            Thresholds {
                warn_ge: Some(20.0),
                critical_ge: Some(50.0),
                ..Thresholds::default()
            },
        ),
        number(
            "steal_pct",
            TARGET,
            u.steal_pct,
            "%",
            format!(
                "{:.1} % of CPU time is stolen by the hypervisor",
                u.steal_pct
            ),
            Thresholds {
                warn_ge: Some(10.0),
                ..Thresholds::default()
            },
        ),
    ]
}

impl Check for CpuCheck {
    fn run<'a>(&'a self, ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let now = total_times()?;
            // A previous reading that has not moved on (runs in quick succession) or went
            // backwards (a counter reset) is no base: sample afresh.
            let base = self
                .take_previous()
                .filter(|p| now.total() > p.total() && now.idle >= p.idle);
            let (before, after) = match base {
                Some(p) => (p, now),
                None => {
                    pause(FIRST_SAMPLE.min(ctx.timeout / 2), &ctx.cancel).await?;
                    (now, total_times()?)
                }
            };
            self.store(after);
            Ok(measurements(&before, &after))
        })
    }
}
