//! `cpu_load`: CPU use sampled from `/proc/stat`, load averages and CPU pressure.

use super::{DEFAULT_SAMPLE_MS, json_output, pause};
use crate::host::{self, CpuUsage, Load, Pressure};
use crate::tools::ToolSpec;
use crate::tools::{Tool, ToolContext, ToolOutput, parse_args};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

/// At most this many per-CPU rows are listed.
pub const MAX_CPU_ROWS: usize = 64;

/// What `cpu_load` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CpuLoadReport {
    /// Online CPUs (the `cpuN` lines of `/proc/stat`).
    pub cpus: usize,
    /// CPUs this process may use (affinity and cgroup quota).
    pub cpus_available: usize,
    pub sample_ms: u64,
    /// All CPUs together.
    pub total: CpuUsage,
    /// Each CPU (empty when `per_cpu` was false).
    pub per_cpu: Vec<CpuUsage>,
    /// Whether `per_cpu` was cut at [`MAX_CPU_ROWS`].
    pub truncated: bool,
    pub load: Option<Load>,
    /// The one-minute load average divided by `cpus`.
    pub load_per_cpu: Option<f64>,
    /// `/proc/pressure/cpu`, when the kernel has PSI.
    pub pressure: Option<Pressure>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(default)]
    sample_ms: Option<u64>,
    #[serde(default)]
    per_cpu: Option<bool>,
}

/// Builds the report from two `/proc/stat` readings taken `sample_ms` apart.
pub fn report_from(
    before: &[(String, host::CpuTimes)],
    after: &[(String, host::CpuTimes)],
    sample_ms: u64,
    per_cpu: bool,
) -> Option<CpuLoadReport> {
    let before: HashMap<&str, &host::CpuTimes> =
        before.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut total = None;
    let mut rows = Vec::new();
    let mut cpus = 0;
    for (name, now) in after {
        let Some(then) = before.get(name.as_str()) else {
            continue;
        };
        let usage = host::cpu_usage(name, then, now);
        if name == "cpu" {
            total = Some(usage);
        } else {
            cpus += 1;
            rows.push(usage);
        }
    }
    let total = total?;
    let truncated = per_cpu && rows.len() > MAX_CPU_ROWS;
    if per_cpu {
        rows.truncate(MAX_CPU_ROWS);
    } else {
        rows.clear();
    }
    let cpus = cpus.max(1);
    let load = host::load();
    Some(CpuLoadReport {
        cpus,
        cpus_available: host::cpu_count(),
        sample_ms,
        total,
        per_cpu: rows,
        truncated,
        load_per_cpu: load.as_ref().map(|l| super::round2(l.one / cpus as f64)),
        load,
        pressure: host::pressure("cpu"),
    })
}

pub struct CpuLoad;

impl Tool for CpuLoad {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "cpu_load".into(),
            description: "CPU use of this host, sampled over a short interval from /proc/stat: \
                total and per-CPU usage %, user/system/iowait/steal %, load averages (and load \
                per CPU), CPU count, and CPU pressure (PSI) when available. Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "sample_ms": {"type": "integer", "minimum": 100, "maximum": 5000,
                        "description": "Sampling interval in milliseconds (default 500)."},
                    "per_cpu": {"type": "boolean",
                        "description": "List each CPU (default true)."}
                },
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: Args = match parse_args("cpu_load", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let sample_ms = args.sample_ms.unwrap_or(DEFAULT_SAMPLE_MS).clamp(100, 5000);
            let before = host::cpu_times();
            if before.is_empty() {
                return ToolOutput::error("cannot read /proc/stat");
            }
            if let Err(e) = pause(sample_ms, &ctx.cancel).await {
                return e;
            }
            let after = host::cpu_times();
            match report_from(&before, &after, sample_ms, args.per_cpu.unwrap_or(true)) {
                Some(report) => json_output(&report, true),
                None => ToolOutput::error("/proc/stat has no aggregate `cpu` line"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_computed_from_the_deltas() {
        let before = host::parse_cpu_times(
            "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0\n",
        );
        // +100 ticks each: cpu0 fully busy in user, cpu1 half iowait, half idle.
        let after = host::parse_cpu_times(
            "cpu  200 0 100 850 50 0 0 0 0 0\ncpu0 150 0 50 400 0 0 0 0\ncpu1 50 0 50 450 50 0 0 0\n",
        );
        let r = report_from(&before, &after, 500, true).expect("report");
        assert_eq!(r.cpus, 2);
        assert_eq!(r.total.usage_pct, 50.0);
        assert_eq!(r.total.iowait_pct, 25.0);
        assert_eq!(r.total.idle_pct, 25.0);
        assert_eq!(r.per_cpu[0].usage_pct, 100.0);
        assert_eq!(r.per_cpu[1].iowait_pct, 50.0);
        assert!(!r.truncated);
        let without = report_from(&before, &after, 500, false).expect("report");
        assert!(without.per_cpu.is_empty());
    }
}
