//! Readings of the local host, straight from `/proc` and `statvfs` (through sysinfo).
//! Shared by the `system_info` tool, the chat system prompt and (later) inspect reports.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Reads a whole file from `/proc` or `/sys`, trimming the trailing newline.
pub fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// `/proc/meminfo` as a map of field → bytes (the file's kB figures times 1024).
pub fn meminfo() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return out;
    };
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            _ => value,
        };
        out.insert(key.to_owned(), bytes);
    }
    out
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_pct: f64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
}

pub fn memory() -> Option<Memory> {
    let m = meminfo();
    let total = *m.get("MemTotal")?;
    let available = m
        .get("MemAvailable")
        .copied()
        .unwrap_or_else(|| m.get("MemFree").copied().unwrap_or(0));
    Some(Memory {
        total_bytes: total,
        available_bytes: available,
        used_pct: pct(total.saturating_sub(available), total),
        swap_total_bytes: m.get("SwapTotal").copied().unwrap_or(0),
        swap_free_bytes: m.get("SwapFree").copied().unwrap_or(0),
    })
}

/// `part / whole` as a percentage rounded to 0.1.
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    ((part as f64 / whole as f64) * 1000.0).round() / 10.0
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    pub running: u64,
    pub total_tasks: u64,
}

pub fn load() -> Option<Load> {
    let text = read_trimmed("/proc/loadavg")?;
    let mut parts = text.split_whitespace();
    let one = parts.next()?.parse().ok()?;
    let five = parts.next()?.parse().ok()?;
    let fifteen = parts.next()?.parse().ok()?;
    let (running, total) = parts.next()?.split_once('/')?;
    Some(Load {
        one,
        five,
        fifteen,
        running: running.parse().ok()?,
        total_tasks: total.parse().ok()?,
    })
}

/// Seconds since boot, from `/proc/uptime`.
pub fn uptime_sec() -> Option<u64> {
    let text = read_trimmed("/proc/uptime")?;
    let first = text.split_whitespace().next()?;
    first.parse::<f64>().ok().map(|s| s as u64)
}

pub fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into())
}

/// Number of CPUs this process may run on.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `PRETTY_NAME` from `/etc/os-release`.
pub fn os_pretty_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub release: String,
    pub version: String,
    pub arch: String,
}

pub fn kernel() -> Kernel {
    Kernel {
        name: read_trimmed("/proc/sys/kernel/ostype").unwrap_or_else(|| "Linux".into()),
        release: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        version: read_trimmed("/proc/sys/kernel/version").unwrap_or_default(),
        arch: std::env::consts::ARCH.to_owned(),
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Disk {
    pub mount_point: String,
    pub device: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_pct: f64,
}

/// File systems that hold no user data and only clutter a report.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "pstore",
    "bpf",
    "debugfs",
    "tracefs",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "rpc_pipefs",
    "squashfs",
    "overlay_internal",
    "ramfs",
];

/// Real (non-pseudo) mounted file systems with their space figures.
pub fn disks() -> Vec<Disk> {
    let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut out: Vec<Disk> = disks
        .iter()
        .filter_map(|d| {
            let fs_type = d.file_system().to_string_lossy().into_owned();
            if PSEUDO_FS.contains(&fs_type.as_str()) || d.total_space() == 0 {
                return None;
            }
            let total = d.total_space();
            let available = d.available_space();
            Some(Disk {
                mount_point: d.mount_point().display().to_string(),
                device: d.name().to_string_lossy().into_owned(),
                fs_type,
                total_bytes: total,
                available_bytes: available,
                used_pct: pct(total.saturating_sub(available), total),
            })
        })
        .collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out.dedup_by(|a, b| a.mount_point == b.mount_point);
    out
}

/// A one-screen picture of the host.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SystemSnapshot {
    pub hostname: String,
    pub os: Option<String>,
    pub kernel: Kernel,
    pub uptime_sec: Option<u64>,
    pub cpus: usize,
    pub load: Option<Load>,
    pub memory: Option<Memory>,
    pub disks: Vec<Disk>,
}

pub fn snapshot() -> SystemSnapshot {
    SystemSnapshot {
        hostname: hostname(),
        os: os_pretty_name(),
        kernel: kernel(),
        uptime_sec: uptime_sec(),
        cpus: cpu_count(),
        load: load(),
        memory: memory(),
        disks: disks(),
    }
}

/// Human-friendly byte count (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_matches_proc_meminfo() {
        let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
        let kb: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("MemTotal");
        let m = memory().expect("memory");
        assert_eq!(m.total_bytes, kb * 1024);
        assert!(m.available_bytes <= m.total_bytes);
        assert!((0.0..=100.0).contains(&m.used_pct));
    }

    #[test]
    fn load_and_uptime_are_plausible() {
        let l = load().expect("loadavg");
        assert!(l.one >= 0.0 && l.total_tasks >= l.running);
        assert!(uptime_sec().expect("uptime") > 0);
        assert!(cpu_count() >= 1);
        assert!(!hostname().is_empty());
    }

    #[test]
    fn disks_include_the_root_file_system() {
        let disks = disks();
        assert!(disks.iter().any(|d| d.mount_point == "/"), "{disks:?}");
        for d in &disks {
            assert!(d.available_bytes <= d.total_bytes, "{d:?}");
        }
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
