//! Readings of the local host, straight from `/proc`, `/sys` and a few libc calls
//! (`statvfs`, `getifaddrs`, `sysconf`). Shared by the `system_info` tool, the diagnostic
//! tools, the chat system prompt and inspect reports.
//!
//! Parsers take the file's text and are pure (tested on fixed samples); readers open the
//! real file and return an empty or `None` reading when it is missing.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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

// ---------------------------------------------------------------------------------------------
// CPU: /proc/stat
// ---------------------------------------------------------------------------------------------

/// Cumulative CPU time of one `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// All time accounted (guest time is already part of `user` and `nice`).
    pub fn total(&self) -> u64 {
        self.user
            .saturating_add(self.nice)
            .saturating_add(self.system)
            .saturating_add(self.idle)
            .saturating_add(self.iowait)
            .saturating_add(self.irq)
            .saturating_add(self.softirq)
            .saturating_add(self.steal)
    }
}

/// The `cpu` lines of `/proc/stat`: the aggregate (`cpu`) first, then `cpu0`, `cpu1`, ….
pub fn parse_cpu_times(text: &str) -> Vec<(String, CpuTimes)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(name) = parts.next() else { continue };
        if !name.starts_with("cpu") {
            continue;
        }
        let v: Vec<u64> = parts.map_while(|p| p.parse().ok()).collect();
        if v.len() < 4 {
            continue;
        }
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        out.push((
            name.to_owned(),
            CpuTimes {
                user: at(0),
                nice: at(1),
                system: at(2),
                idle: at(3),
                iowait: at(4),
                irq: at(5),
                softirq: at(6),
                steal: at(7),
            },
        ));
    }
    out
}

pub fn cpu_times() -> Vec<(String, CpuTimes)> {
    std::fs::read_to_string("/proc/stat")
        .map(|t| parse_cpu_times(&t))
        .unwrap_or_default()
}

/// CPU use between two readings of one CPU, as percentages of the elapsed CPU time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CpuUsage {
    /// `cpu` for the total, `cpu0`, `cpu1`, … for each CPU.
    pub cpu: String,
    /// Everything but idle and iowait.
    pub usage_pct: f64,
    /// user + nice.
    pub user_pct: f64,
    /// system + irq + softirq.
    pub system_pct: f64,
    pub iowait_pct: f64,
    pub steal_pct: f64,
    pub idle_pct: f64,
}

/// Usage between `before` and `after` (counters that went backwards count as zero).
pub fn cpu_usage(cpu: &str, before: &CpuTimes, after: &CpuTimes) -> CpuUsage {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let total = d(before.total(), after.total());
    let idle = d(before.idle, after.idle);
    let iowait = d(before.iowait, after.iowait);
    let user = d(before.user, after.user) + d(before.nice, after.nice);
    let system = d(before.system, after.system)
        + d(before.irq, after.irq)
        + d(before.softirq, after.softirq);
    let steal = d(before.steal, after.steal);
    CpuUsage {
        cpu: cpu.to_owned(),
        usage_pct: pct(total.saturating_sub(idle + iowait).min(total), total),
        user_pct: pct(user.min(total), total),
        system_pct: pct(system.min(total), total),
        iowait_pct: pct(iowait.min(total), total),
        steal_pct: pct(steal.min(total), total),
        idle_pct: if total == 0 {
            100.0
        } else {
            pct(idle.min(total), total)
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Pressure stall information: /proc/pressure/{cpu,memory,io}
// ---------------------------------------------------------------------------------------------

/// One line of a PSI file: the share of time (percent) some or all tasks stalled.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_us: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Pressure {
    pub some: Option<PressureLine>,
    pub full: Option<PressureLine>,
}

pub fn parse_pressure(text: &str) -> Pressure {
    let mut out = Pressure::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let kind = parts.next();
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                fields.insert(k, v);
            }
        }
        let num = |k: &str| fields.get(k).and_then(|v| v.parse::<f64>().ok());
        let (Some(avg10), Some(avg60), Some(avg300)) = (num("avg10"), num("avg60"), num("avg300"))
        else {
            continue;
        };
        let parsed = PressureLine {
            avg10,
            avg60,
            avg300,
            total_us: fields
                .get("total")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
        match kind {
            Some("some") => out.some = Some(parsed),
            Some("full") => out.full = Some(parsed),
            _ => {}
        }
    }
    out
}

/// `/proc/pressure/<resource>` (`cpu`, `memory`, `io`) when the kernel has PSI.
pub fn pressure(resource: &str) -> Option<Pressure> {
    let text = std::fs::read_to_string(format!("/proc/pressure/{resource}")).ok()?;
    let p = parse_pressure(&text);
    (p.some.is_some() || p.full.is_some()).then_some(p)
}

// ---------------------------------------------------------------------------------------------
// Block devices: /proc/diskstats
// ---------------------------------------------------------------------------------------------

/// Cumulative counters of one block device (see the kernel's `iostats.rst`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStat {
    pub name: String,
    pub reads: u64,
    pub sectors_read: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub sectors_written: u64,
    pub write_ms: u64,
    pub in_progress: u64,
    /// Milliseconds the device had I/O in flight (the base of %util).
    pub io_ms: u64,
}

pub fn parse_diskstats(text: &str) -> Vec<DiskStat> {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 14 {
                return None;
            }
            let n = |i: usize| {
                parts
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Some(DiskStat {
                name: parts[2].to_owned(),
                reads: n(3),
                sectors_read: n(5),
                read_ms: n(6),
                writes: n(7),
                sectors_written: n(9),
                write_ms: n(10),
                in_progress: n(11),
                io_ms: n(12),
            })
        })
        .collect()
}

pub fn diskstats() -> Vec<DiskStat> {
    std::fs::read_to_string("/proc/diskstats")
        .map(|t| parse_diskstats(&t))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Mounts and statvfs
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub options: String,
}

impl Mount {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Decodes the octal escapes (`\040` for a space) of `/proc/mounts` fields.
fn unescape_mount_field(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = u32::from(bytes[i + 1] - b'0') * 64
                + u32::from(bytes[i + 2] - b'0') * 8
                + u32::from(bytes[i + 3] - b'0');
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/self/mounts` lines, in mount order.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(Mount {
                device: unescape_mount_field(parts.next()?),
                mount_point: unescape_mount_field(parts.next()?),
                fs_type: parts.next()?.to_owned(),
                options: parts.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|t| parse_mounts(&t))
        .unwrap_or_default()
}

/// Whether `fs_type` holds no user data (proc, sysfs, cgroup, tmpfs, …).
pub fn is_pseudo_fs(fs_type: &str) -> bool {
    PSEUDO_FS.contains(&fs_type)
        || matches!(
            fs_type,
            "tmpfs" | "efivarfs" | "fuse.lxcfs" | "fuse.gvfsd-fuse"
        )
}

/// Space and inode figures of one file system (`statvfs(3)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Fragment size: the unit of the block counts.
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    /// Free blocks an unprivileged user may use.
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

/// `statvfs(3)` of `path`. May block on a hung network file system: call it off the async
/// workers.
#[allow(unsafe_code, clippy::unnecessary_cast)]
pub fn statvfs(path: &Path) -> std::io::Result<FsStats> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte")
    })?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call, and `st`
    // points to writable memory the size of `struct statvfs`, which the call fills in.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    Ok(FsStats {
        block_size: st.f_frsize as u64,
        blocks: st.f_blocks as u64,
        blocks_free: st.f_bfree as u64,
        blocks_available: st.f_bavail as u64,
        files: st.f_files as u64,
        files_free: st.f_ffree as u64,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes: /proc/PID/*
// ---------------------------------------------------------------------------------------------

/// `sysconf(name)`, or `None` when the system does not say.
#[allow(unsafe_code)]
fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf(3) only reads a configuration value; it has no memory-safety
    // preconditions.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// Clock ticks per second (`USER_HZ`), the unit of the CPU times in `/proc`.
pub fn clock_ticks() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| sysconf(libc::_SC_CLK_TCK).unwrap_or(100))
}

/// The memory page size in bytes.
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| sysconf(libc::_SC_PAGESIZE).unwrap_or(4096))
}

/// The ids of all processes in `/proc`, ascending.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

/// The fields of `/proc/PID/stat` the tools use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// The command name (at most 15 bytes, from the kernel).
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// User and system CPU time in clock ticks.
    pub utime: u64,
    pub stime: u64,
    pub num_threads: u64,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name is parenthesised and may itself hold spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let f = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: f(4).and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
        utime: f(14)?,
        stime: f(15)?,
        num_threads: f(20).unwrap_or(0),
        start_ticks: f(22).unwrap_or(0),
        vsize_bytes: f(23).unwrap_or(0),
        rss_pages: f(24).unwrap_or(0),
    })
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The command line of a process, arguments joined by spaces (empty for kernel threads).
pub fn proc_cmdline(pid: u32) -> String {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return String::new();
    };
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    parts.join(" ")
}

/// The owner of a process (the owner of its `/proc` directory, its real uid).
pub fn proc_uid(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// `/proc/PID/status` as field → value text (`VmRSS` → `1234 kB`).
pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// One row of `/proc/PID/limits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub name: String,
    pub soft: String,
    pub hard: String,
    pub units: String,
}

/// Parses `/proc/PID/limits`: fixed-width columns named by its header line.
pub fn parse_limits(text: &str) -> Vec<Limit> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let (Some(soft_at), Some(hard_at), Some(units_at)) = (
        header.find("Soft Limit"),
        header.find("Hard Limit"),
        header.find("Units"),
    ) else {
        return Vec::new();
    };
    let col = |l: &str, from: usize, to: usize| -> String {
        let end = to.min(l.len());
        l.get(from.min(end)..end).unwrap_or("").trim().to_owned()
    };
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| Limit {
            name: col(l, 0, soft_at),
            soft: col(l, soft_at, hard_at),
            hard: col(l, hard_at, units_at),
            units: col(l, units_at, l.len()),
        })
        .collect()
}

/// User names by uid, from `/etc/passwd`.
pub fn user_names() -> HashMap<u32, String> {
    let Ok(text) = std::fs::read_to_string("/etc/passwd") else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split(':');
            let name = parts.next()?;
            let uid = parts.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

/// For each socket inode in `wanted`, a process holding it (the lowest pid). Processes whose
/// file descriptors cannot be read (another user's, without privileges) are skipped.
pub fn socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    for pid in pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if wanted.contains(&inode) {
                out.entry(inode).or_insert(pid);
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Network: /proc/net/{tcp,tcp6,udp,udp6,dev}, /sys/class/net, getifaddrs
// ---------------------------------------------------------------------------------------------

/// One socket of `/proc/net/{tcp,udp}{,6}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's TCP state number (UDP uses 7 for unconnected, 1 for connected).
    pub state: u8,
    pub uid: u32,
    pub inode: u64,
}

/// An address of `/proc/net/*`: the IP as the kernel's in-memory words printed in hex
/// (so in host byte order per 32-bit word), a colon, and the port in hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => {
            let word = u32::from_str_radix(ip, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

pub fn parse_net_sockets(text: &str) -> Vec<SocketEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 10 {
                return None;
            }
            Some(SocketEntry {
                local: parse_proc_addr(parts[1])?,
                remote: parse_proc_addr(parts[2])?,
                state: u8::from_str_radix(parts[3], 16).ok()?,
                uid: parts[7].parse().ok()?,
                inode: parts[9].parse().ok()?,
            })
        })
        .collect()
}

/// The sockets of one `/proc/net` table (`tcp`, `tcp6`, `udp`, `udp6`).
pub fn net_sockets(table: &str) -> Vec<SocketEntry> {
    std::fs::read_to_string(format!("/proc/net/{table}"))
        .map(|t| parse_net_sockets(&t))
        .unwrap_or_default()
}

pub const TCP_LISTEN: u8 = 0x0A;
pub const UDP_UNCONNECTED: u8 = 0x07;

/// The name of a TCP state number (`include/net/tcp_states.h`).
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Counters of one interface from `/proc/net/dev`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map_while(|p| p.parse().ok())
                .collect();
            if v.len() < 12 {
                return None;
            }
            Some(NetDev {
                name: name.trim().to_owned(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

pub fn net_dev() -> Vec<NetDev> {
    std::fs::read_to_string("/proc/net/dev")
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

/// One address of a network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub interface: String,
    pub address: IpAddr,
    pub prefix_len: Option<u8>,
}

/// The IP address in a `sockaddr`, if it is an IPv4 or IPv6 one.
///
/// # Safety
/// `sa` must be null or point to a readable `sockaddr` whose real size matches its family
/// (as the entries of a `getifaddrs` list do).
#[allow(unsafe_code)]
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: `sa` is non-null and readable per the contract; read_unaligned makes no
    // assumption about alignment.
    let family = unsafe { std::ptr::read_unaligned(sa) }.sa_family;
    match libc::c_int::from(family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a `sockaddr_in`.
            let sin = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>()) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a `sockaddr_in6`.
            let sin6 = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in6>()) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// Number of leading one bits of a netmask.
fn prefix_len(mask: IpAddr) -> u8 {
    let ones = match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones(),
        IpAddr::V6(m) => u128::from(m).leading_ones(),
    };
    u8::try_from(ones).unwrap_or(u8::MAX)
}

/// The IPv4 and IPv6 addresses of every interface (`getifaddrs(3)`).
#[allow(unsafe_code)]
pub fn interface_addresses() -> std::io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a pointer to a list it allocated in `head`, or fails.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned; the list stays
        // valid until freeifaddrs below, and nothing here keeps a reference into it.
        let ifa = unsafe { std::ptr::read(cur) };
        let name = if ifa.ifa_name.is_null() {
            String::new()
        } else {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: ifa_addr and ifa_netmask are null or sockaddrs sized for their family.
        if let Some(address) = unsafe { sockaddr_ip(ifa.ifa_addr) } {
            // SAFETY: as above.
            let mask = unsafe { sockaddr_ip(ifa.ifa_netmask) };
            out.push(IfAddr {
                interface: name,
                address,
                prefix_len: mask.map(prefix_len),
            });
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Whether `ip` names this host: loopback, unspecified (which connects to the host itself),
/// an IPv4-mapped form of those, or an address of one of its interfaces.
pub fn is_local_ip(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    interface_addresses()
        .map(|addrs| addrs.iter().any(|a| a.address == ip))
        .unwrap_or(false)
}

/// Reads a small `/sys/class/net/<iface>/<attr>` value.
pub fn net_attr(iface: &str, attr: &str) -> Option<String> {
    if iface.contains('/') || iface.starts_with('.') {
        return None;
    }
    read_trimmed(format!("/sys/class/net/{iface}/{attr}")).filter(|s| !s.is_empty())
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

    #[test]
    fn proc_stat_parsers() {
        let cpus = parse_cpu_times("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 2 3 4\nintr 5\n");
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].1.total(), 36);
        assert_eq!(cpus[1].1.iowait, 0);
        let p = parse_pressure(
            "some avg10=1.50 avg60=2.00 avg300=0.10 total=123\nfull avg10=0.00 avg60=0.50 avg300=0.00 total=7\n",
        );
        assert_eq!(p.some.as_ref().map(|l| l.avg60), Some(2.0));
        assert_eq!(p.full.as_ref().map(|l| l.total_us), Some(7));
    }

    #[test]
    fn process_stat_with_a_tricky_name() {
        let s = parse_proc_stat(
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 9999 1048576 256 18446744073709551615",
        )
        .expect("stat");
        assert_eq!(s.pid, 1234);
        assert_eq!(s.comm, "a) b (c");
        assert_eq!(s.state, 'S');
        assert_eq!((s.utime, s.stime, s.num_threads), (250, 50, 3));
        assert_eq!(
            (s.start_ticks, s.vsize_bytes, s.rss_pages),
            (9999, 1_048_576, 256)
        );
        let me = proc_stat(std::process::id()).expect("own stat");
        assert_eq!(me.pid, std::process::id());
        assert!(me.num_threads >= 1);
    }

    #[test]
    fn limits_mounts_and_net_dev_parse() {
        let limits = parse_limits(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max open files            1024                 524288               files     \n\
             Max nice priority         0                    0                    \n",
        );
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].name, "Max open files");
        assert_eq!(
            (limits[0].soft.as_str(), limits[0].hard.as_str()),
            ("1024", "524288")
        );
        assert_eq!(limits[0].units, "files");
        assert_eq!(limits[1].units, "");
        let real = parse_limits(&std::fs::read_to_string("/proc/self/limits").expect("limits"));
        assert!(real.iter().any(|l| l.name == "Max open files"), "{real:?}");

        let mounts = parse_mounts("/dev/sdb1 /mnt/my\\040disk ext4 ro,relatime 0 0\n");
        assert_eq!(mounts[0].mount_point, "/mnt/my disk");
        assert!(mounts[0].read_only());
        assert!(is_pseudo_fs("tmpfs") && is_pseudo_fs("proc") && !is_pseudo_fs("xfs"));

        let dev = parse_net_dev(
            "Inter-| Receive\n face |bytes\n  eth0: 100 2 3 4 0 0 0 0 200 5 6 7 0 0 0 0\n",
        );
        assert_eq!(dev.len(), 1);
        assert_eq!(dev[0].name, "eth0");
        assert_eq!(
            (
                dev[0].rx_bytes,
                dev[0].rx_errors,
                dev[0].tx_bytes,
                dev[0].tx_dropped
            ),
            (100, 3, 200, 7)
        );
    }

    #[test]
    fn libc_readings_are_plausible() {
        let st = statvfs(Path::new("/")).expect("statvfs /");
        assert!(st.blocks > 0 && st.block_size > 0);
        assert!(st.blocks_free <= st.blocks && st.blocks_available <= st.blocks_free);
        assert!(statvfs(Path::new("/nonexistent/path")).is_err());
        assert!(clock_ticks() >= 1 && page_size() >= 1024);
        let addrs = interface_addresses().expect("getifaddrs");
        assert!(
            addrs
                .iter()
                .any(|a| a.address == IpAddr::V4(Ipv4Addr::LOCALHOST) && a.prefix_len == Some(8)),
            "{addrs:?}"
        );
        assert!(is_local_ip("127.0.0.1".parse().expect("ip")));
        assert!(is_local_ip("::1".parse().expect("ip")));
        assert!(is_local_ip("::ffff:127.0.0.2".parse().expect("ip")));
        assert!(!is_local_ip("192.0.2.1".parse().expect("ip")));
        for a in addrs {
            assert!(is_local_ip(a.address), "{a:?}");
        }
    }
}
