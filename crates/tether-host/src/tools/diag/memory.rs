//! `memory`: `/proc/meminfo` figures and memory pressure.

use super::json_output;
use crate::host::{self, Pressure, pct};
use crate::tools::ToolSpec;
use crate::tools::{Tool, ToolContext, ToolOutput, parse_args};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The `/proc/meminfo` fields copied into [`MemoryReport::meminfo`].
pub const MEMINFO_FIELDS: &[&str] = &[
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapCached",
    "Active",
    "Inactive",
    "SwapTotal",
    "SwapFree",
    "Dirty",
    "Writeback",
    "AnonPages",
    "Mapped",
    "Shmem",
    "Slab",
    "SReclaimable",
    "SUnreclaim",
    "KernelStack",
    "PageTables",
    "CommitLimit",
    "Committed_AS",
    "HugePages_Total",
    "HugePages_Free",
    "Hugepagesize",
];

/// What `memory` prints. Byte figures are `/proc/meminfo` kB × 1024.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemoryReport {
    pub total_bytes: u64,
    /// `MemAvailable` (or `MemFree` on kernels without it).
    pub available_bytes: u64,
    /// total − available.
    pub used_bytes: u64,
    pub used_pct: f64,
    pub available_pct: f64,
    pub free_bytes: u64,
    pub buffers_bytes: u64,
    /// `Cached` (page cache, without `SReclaimable`).
    pub cached_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub swap_used_pct: f64,
    /// Main `/proc/meminfo` fields ([`MEMINFO_FIELDS`]) in bytes; `HugePages_*` are counts.
    pub meminfo: BTreeMap<String, u64>,
    /// `/proc/pressure/memory`, when the kernel has PSI.
    pub pressure: Option<Pressure>,
}

/// Builds the report from a parsed `/proc/meminfo` ([`host::meminfo`]).
pub fn report_from(m: &BTreeMap<String, u64>, pressure: Option<Pressure>) -> Option<MemoryReport> {
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    let total = *m.get("MemTotal")?;
    let available = m
        .get("MemAvailable")
        .copied()
        .unwrap_or_else(|| get("MemFree"))
        .min(total);
    let swap_total = get("SwapTotal");
    let swap_used = swap_total.saturating_sub(get("SwapFree"));
    Some(MemoryReport {
        total_bytes: total,
        available_bytes: available,
        used_bytes: total - available,
        used_pct: pct(total - available, total),
        available_pct: pct(available, total),
        free_bytes: get("MemFree"),
        buffers_bytes: get("Buffers"),
        cached_bytes: get("Cached"),
        swap_total_bytes: swap_total,
        swap_used_bytes: swap_used,
        swap_used_pct: pct(swap_used, swap_total),
        meminfo: MEMINFO_FIELDS
            .iter()
            .filter_map(|k| m.get(*k).map(|v| ((*k).to_owned(), *v)))
            .collect(),
        pressure,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {}

pub struct MemoryTool;

impl Tool for MemoryTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "memory".into(),
            description: "Memory of this host from /proc/meminfo: total, available, used %, \
                free, buffers, page cache, swap total/used, the main meminfo fields (bytes), \
                and memory pressure (PSI) when available. Read-only."
                .into(),
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, _ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            if let Err(e) = parse_args::<Args>("memory", args) {
                return e;
            }
            match report_from(&host::meminfo(), host::pressure("memory")) {
                Some(report) => json_output(&report, true),
                None => ToolOutput::error("cannot read MemTotal from /proc/meminfo"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_meminfo() {
        let m: BTreeMap<String, u64> = [
            ("MemTotal", 1000u64),
            ("MemFree", 100),
            ("MemAvailable", 250),
            ("Buffers", 10),
            ("Cached", 200),
            ("SwapTotal", 400),
            ("SwapFree", 300),
            ("VmallocTotal", 9),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let r = report_from(&m, None).expect("report");
        assert_eq!(r.used_bytes, 750);
        assert_eq!(r.used_pct, 75.0);
        assert_eq!(r.available_pct, 25.0);
        assert_eq!(r.swap_used_bytes, 100);
        assert_eq!(r.swap_used_pct, 25.0);
        assert!(!r.meminfo.contains_key("VmallocTotal"));
        assert_eq!(r.meminfo.get("Cached"), Some(&200));
        assert!(report_from(&BTreeMap::new(), None).is_none());
    }
}
