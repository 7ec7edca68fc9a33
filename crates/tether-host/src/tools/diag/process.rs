//! `top_processes` (the busiest processes, sampled) and `process_detail` (one process, or the
//! processes a name matches, in depth).

use super::{DEFAULT_SAMPLE_MS, blocking, clip, json_output, pause, round1};
use crate::host::{self, ProcStat};
use crate::tools::ToolSpec;
use crate::tools::{Tool, ToolContext, ToolOutput, parse_args};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Longest command line shown in a row of `top_processes`.
pub const CMDLINE_CHARS: usize = 200;

/// One process in `top_processes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessRow {
    pub pid: u32,
    pub user: String,
    /// The kernel's command name (at most 15 characters).
    pub command: String,
    /// The full command line, shortened to [`CMDLINE_CHARS`].
    pub cmdline: String,
    /// The state letter: R running, S sleeping, D uninterruptible (usually I/O), Z zombie, …
    pub state: String,
    /// CPU use over the sample, in percent of one CPU (can exceed 100 with several threads).
    pub cpu_pct: f64,
    pub rss_bytes: u64,
    /// Resident memory as a share of MemTotal.
    pub mem_pct: f64,
    pub threads: u64,
}

/// What `top_processes` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopProcessesReport {
    /// `cpu` or `memory`.
    pub sort_by: String,
    pub sample_ms: u64,
    pub processes_total: usize,
    /// Processes per state: running, sleeping, disk_sleep, zombie, stopped, idle, other.
    pub states: BTreeMap<String, usize>,
    pub processes: Vec<ProcessRow>,
    /// True when more processes exist than are listed.
    pub truncated: bool,
}

/// The name of a `/proc/PID/stat` state letter, as counted in [`TopProcessesReport::states`].
pub fn state_name(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk_sleep",
        'Z' => "zombie",
        'T' | 't' => "stopped",
        'I' => "idle",
        _ => "other",
    }
}

fn all_stats() -> HashMap<u32, ProcStat> {
    host::pids()
        .into_iter()
        .filter_map(|pid| host::proc_stat(pid).map(|s| (pid, s)))
        .collect()
}

/// Ranks processes from two readings `elapsed` apart. A pid whose start time changed
/// between them is a new process and counts from zero.
pub fn rank(
    before: &HashMap<u32, ProcStat>,
    after: &HashMap<u32, ProcStat>,
    elapsed: Duration,
    by_memory: bool,
) -> Vec<(ProcStat, f64)> {
    let hz = host::clock_ticks() as f64;
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut rows: Vec<(ProcStat, f64)> = after
        .values()
        .map(|now| {
            // A process that started during the sample used all its CPU time within it.
            let used_then = before
                .get(&now.pid)
                .filter(|then| then.start_ticks == now.start_ticks)
                .map_or(0, |then| then.utime + then.stime);
            let used = (now.utime + now.stime).saturating_sub(used_then);
            (now.clone(), round1(used as f64 / hz / secs * 100.0))
        })
        .collect();
    if by_memory {
        rows.sort_by(|a, b| {
            b.0.rss_pages
                .cmp(&a.0.rss_pages)
                .then(a.0.pid.cmp(&b.0.pid))
        });
    } else {
        rows.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(b.0.rss_pages.cmp(&a.0.rss_pages))
                .then(a.0.pid.cmp(&b.0.pid))
        });
    }
    rows
}

fn user_of(pid: u32, users: &HashMap<u32, String>) -> String {
    match host::proc_uid(pid) {
        Some(uid) => users.get(&uid).cloned().unwrap_or_else(|| uid.to_string()),
        None => "?".into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopArgs {
    #[serde(default)]
    sort_by: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    sample_ms: Option<u64>,
}

pub struct TopProcesses;

impl Tool for TopProcesses {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "top_processes".into(),
            description: "The top processes of this host by CPU (sampled over a short \
                interval) or by resident memory: pid, user, command, state, CPU %, RSS, memory \
                %, threads; plus process counts per state (zombies, D-state). Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "sort_by": {"type": "string", "enum": ["cpu", "memory"],
                        "description": "Rank by CPU use (default) or resident memory."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50,
                        "description": "How many processes to list (default 10)."},
                    "sample_ms": {"type": "integer", "minimum": 100, "maximum": 5000,
                        "description": "CPU sampling interval in milliseconds (default 500)."}
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
            let args: TopArgs = match parse_args("top_processes", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let by_memory = match args.sort_by.as_deref() {
                None | Some("cpu") => false,
                Some("memory") => true,
                Some(other) => {
                    return ToolOutput::error(format!(
                        "`sort_by` must be \"cpu\" or \"memory\", not {other:?}"
                    ));
                }
            };
            let limit = args.limit.unwrap_or(10).clamp(1, 50);
            let sample_ms = args.sample_ms.unwrap_or(DEFAULT_SAMPLE_MS).clamp(100, 5000);
            let start = Instant::now();
            let before = match blocking("top_processes", &ctx.cancel, all_stats).await {
                Ok(b) => b,
                Err(e) => return e,
            };
            if let Err(e) = pause(sample_ms, &ctx.cancel).await {
                return e;
            }
            let report = blocking("top_processes", &ctx.cancel, move || {
                let after = all_stats();
                let elapsed = start.elapsed();
                let mut states = BTreeMap::new();
                for s in after.values() {
                    *states.entry(state_name(s.state).to_owned()).or_insert(0) += 1;
                }
                let total_mem = host::meminfo().get("MemTotal").copied().unwrap_or(0);
                let users = host::user_names();
                let page = host::page_size();
                let ranked = rank(&before, &after, elapsed, by_memory);
                let processes: Vec<ProcessRow> = ranked
                    .into_iter()
                    .take(limit)
                    .map(|(s, cpu)| {
                        let rss = s.rss_pages.saturating_mul(page);
                        ProcessRow {
                            pid: s.pid,
                            user: user_of(s.pid, &users),
                            cmdline: clip(&host::proc_cmdline(s.pid), CMDLINE_CHARS),
                            command: s.comm,
                            state: s.state.to_string(),
                            cpu_pct: cpu,
                            rss_bytes: rss,
                            mem_pct: host::pct(rss, total_mem),
                            threads: s.num_threads,
                        }
                    })
                    .collect();
                TopProcessesReport {
                    sort_by: if by_memory { "memory" } else { "cpu" }.into(),
                    sample_ms,
                    processes_total: after.len(),
                    states,
                    truncated: after.len() > processes.len(),
                    processes,
                }
            })
            .await;
            match report {
                Ok(r) => json_output(&r, true),
                Err(e) => e,
            }
        })
    }
}

/// One process in depth.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessDetail {
    pub pid: u32,
    pub ppid: u32,
    pub name: String,
    /// As `/proc/PID/status` says, e.g. `S (sleeping)`.
    pub state: String,
    pub user: String,
    pub uid: Option<u32>,
    pub threads: u64,
    pub cmdline: String,
    pub exe: Option<String>,
    pub cwd: Option<String>,
    /// Open file descriptors; `None` when `/proc/PID/fd` is not readable.
    pub fds_open: Option<u64>,
    /// The soft and hard `Max open files` limits; `None` means unlimited or unknown.
    pub fd_soft_limit: Option<u64>,
    pub fd_hard_limit: Option<u64>,
    pub cpu_time_sec: f64,
    pub age_sec: Option<u64>,
    pub rss_bytes: u64,
    pub vm_size_bytes: u64,
    pub swap_bytes: Option<u64>,
    pub oom_score: Option<i64>,
    /// Selected `/proc/PID/status` fields as the kernel writes them.
    pub status: BTreeMap<String, String>,
    /// `/proc/PID/limits`: name → `soft / hard units`.
    pub limits: BTreeMap<String, String>,
    /// `/proc/PID/io` counters, when readable.
    pub io: Option<BTreeMap<String, u64>>,
}

/// What `process_detail` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessDetailReport {
    /// `pid N` or `name X`.
    pub query: String,
    /// How many processes matched (may exceed the number listed).
    pub matched: usize,
    pub processes: Vec<ProcessDetail>,
    pub truncated: bool,
}

/// The `/proc/PID/status` fields copied into [`ProcessDetail::status`].
const STATUS_FIELDS: &[&str] = &[
    "Name",
    "State",
    "Tgid",
    "PPid",
    "Uid",
    "Gid",
    "Threads",
    "VmPeak",
    "VmSize",
    "VmHWM",
    "VmRSS",
    "VmSwap",
    "voluntary_ctxt_switches",
    "nonvoluntary_ctxt_switches",
    "Cpus_allowed_list",
];

fn kb_field(status: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    let v = status.get(key)?;
    let n: u64 = v.split_whitespace().next()?.parse().ok()?;
    Some(n.saturating_mul(1024))
}

fn link(pid: u32, what: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/{what}"))
        .ok()
        .map(|p| p.display().to_string())
}

/// Reads everything `process_detail` shows about `pid`; `None` when it is gone.
pub fn detail(pid: u32, users: &HashMap<u32, String>) -> Option<ProcessDetail> {
    let stat = host::proc_stat(pid)?;
    let status_text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let status_all = host::parse_status(&status_text);
    let limits = host::parse_limits(
        &std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default(),
    );
    let fd_limit = limits.iter().find(|l| l.name == "Max open files");
    let fds_open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .map(|t| {
            t.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_owned(), v.trim().parse().ok()?))
                })
                .collect()
        });
    let hz = host::clock_ticks();
    let uid = host::proc_uid(pid);
    Some(ProcessDetail {
        pid,
        ppid: stat.ppid,
        name: status_all
            .get("Name")
            .cloned()
            .unwrap_or_else(|| stat.comm.clone()),
        state: status_all
            .get("State")
            .cloned()
            .unwrap_or_else(|| stat.state.to_string()),
        user: match uid {
            Some(u) => users.get(&u).cloned().unwrap_or_else(|| u.to_string()),
            None => "?".into(),
        },
        uid,
        threads: stat.num_threads,
        cmdline: clip(&host::proc_cmdline(pid), 1000),
        exe: link(pid, "exe"),
        cwd: link(pid, "cwd"),
        fds_open,
        fd_soft_limit: fd_limit.and_then(|l| l.soft.parse().ok()),
        fd_hard_limit: fd_limit.and_then(|l| l.hard.parse().ok()),
        cpu_time_sec: round1((stat.utime + stat.stime) as f64 / hz as f64),
        age_sec: host::uptime_sec().map(|up| up.saturating_sub(stat.start_ticks / hz)),
        rss_bytes: stat.rss_pages.saturating_mul(host::page_size()),
        vm_size_bytes: stat.vsize_bytes,
        swap_bytes: kb_field(&status_all, "VmSwap"),
        oom_score: host::read_trimmed(format!("/proc/{pid}/oom_score"))
            .and_then(|s| s.parse().ok()),
        status: STATUS_FIELDS
            .iter()
            .filter_map(|k| status_all.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect(),
        limits: limits
            .into_iter()
            .map(|l| {
                let value = format!("{} / {} {}", l.soft, l.hard, l.units);
                (l.name, value.trim_end().to_owned())
            })
            .collect(),
        io,
    })
}

/// How a `name` argument selects processes: exactly, or as a glob when it has `*?[`.
pub enum NameMatcher {
    Exact(String),
    Glob(globset::GlobMatcher),
}

impl NameMatcher {
    pub fn new(name: &str) -> Result<Self, String> {
        if name.contains(['*', '?', '[']) {
            globset::GlobBuilder::new(name)
                .literal_separator(false)
                .build()
                .map(|g| NameMatcher::Glob(g.compile_matcher()))
                .map_err(|e| format!("`name` is not a valid glob: {e}"))
        } else {
            Ok(NameMatcher::Exact(name.to_owned()))
        }
    }

    /// Whether a process with kernel name `comm` and command line `cmdline` matches: on the
    /// kernel name or the file name of the program (`argv[0]`).
    pub fn matches(&self, comm: &str, cmdline: &str) -> bool {
        let argv0 = cmdline.split_whitespace().next().unwrap_or("");
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        match self {
            NameMatcher::Exact(n) => comm == n || (!base.is_empty() && base == n),
            NameMatcher::Glob(g) => g.is_match(comm) || (!base.is_empty() && g.is_match(base)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetailArgs {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    max_processes: Option<usize>,
}

/// The `process_detail` tool ([`ProcessDetail`] is one row of its report).
pub struct ProcessDetailTool;

impl Tool for ProcessDetailTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "process_detail".into(),
            description: "Details of one process (by `pid`) or of the processes a `name` \
                matches (exactly, or a glob like `php-fpm*`, against the kernel name or the \
                program file name): state, parent, user, threads, command line, exe and cwd, \
                open file descriptors against the limit, CPU time, age, memory, OOM score, \
                /proc/PID/limits and I/O counters. Give `pid` or `name`, not both. Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "pid": {"type": "integer", "minimum": 1, "maximum": 4194304,
                        "description": "Process id."},
                    "name": {"type": "string", "minLength": 1, "maxLength": 256,
                        "description": "Process name or glob (e.g. nginx, java, php-fpm*)."},
                    "max_processes": {"type": "integer", "minimum": 1, "maximum": 10,
                        "description": "With `name`: how many matching processes to detail (default 5)."}
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
            let args: DetailArgs = match parse_args("process_detail", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let max = args.max_processes.unwrap_or(5).clamp(1, 10);
            let (query, matcher) = match (args.pid, args.name) {
                (Some(pid), None) => (format!("pid {pid}"), None),
                (None, Some(name)) => match NameMatcher::new(&name) {
                    Ok(m) => (format!("name {name}"), Some(m)),
                    Err(e) => return ToolOutput::error(e),
                },
                _ => return ToolOutput::error("give exactly one of `pid` and `name`"),
            };
            let pid = args.pid;
            let report = blocking("process_detail", &ctx.cancel, move || {
                let pids: Vec<u32> = match (&matcher, pid) {
                    (Some(m), _) => host::pids()
                        .into_iter()
                        .filter(|p| {
                            host::proc_stat(*p)
                                .is_some_and(|s| m.matches(&s.comm, &host::proc_cmdline(*p)))
                        })
                        .collect(),
                    (None, Some(p)) => vec![p],
                    (None, None) => Vec::new(),
                };
                let users = host::user_names();
                let processes: Vec<ProcessDetail> = pids
                    .iter()
                    .take(max)
                    .filter_map(|p| detail(*p, &users))
                    .collect();
                ProcessDetailReport {
                    query,
                    matched: if matcher.is_some() {
                        pids.len()
                    } else {
                        processes.len()
                    },
                    truncated: pids.len() > max,
                    processes,
                }
            })
            .await;
            match report {
                // Nothing matched: still the report (matched = 0), flagged as a failure.
                Ok(r) => json_output(&r, !r.processes.is_empty()),
                Err(e) => e,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly_or_as_globs() {
        let exact = NameMatcher::new("nginx").expect("ok");
        assert!(exact.matches("nginx", "nginx: worker process"));
        assert!(exact.matches("nginx-worker", "/usr/sbin/nginx -g daemon"));
        assert!(!exact.matches("nginx2", "/usr/sbin/nginx2"));
        let glob = NameMatcher::new("php-fpm*").expect("ok");
        assert!(glob.matches("php-fpm8.2", "php-fpm: pool www"));
        assert!(!glob.matches("php", "/usr/bin/php"));
        assert!(NameMatcher::new("[").is_err());
    }

    #[test]
    fn ranking_uses_deltas_and_ignores_reused_pids() {
        let hz = host::clock_ticks();
        let st = |pid: u32, ticks: u64, start: u64, rss: u64| ProcStat {
            pid,
            comm: format!("p{pid}"),
            state: 'R',
            utime: ticks,
            start_ticks: start,
            rss_pages: rss,
            ..ProcStat::default()
        };
        let before: HashMap<u32, ProcStat> = [
            (1, st(1, 100, 5, 10)),
            (2, st(2, 0, 5, 30)),
            (3, st(3, 1000, 5, 20)),
        ]
        .into();
        // pid 1 used one second of CPU in one second; pid 3 was replaced by a new process.
        let after: HashMap<u32, ProcStat> = [
            (1, st(1, 100 + hz, 5, 10)),
            (2, st(2, hz / 2, 5, 30)),
            (3, st(3, hz / 10, 99, 20)),
        ]
        .into();
        let by_cpu = rank(&before, &after, Duration::from_secs(1), false);
        let order: Vec<(u32, f64)> = by_cpu.iter().map(|(s, c)| (s.pid, *c)).collect();
        assert_eq!(order, [(1, 100.0), (2, 50.0), (3, 10.0)]);
        let by_mem = rank(&before, &after, Duration::from_secs(1), true);
        let order: Vec<u32> = by_mem.iter().map(|(s, _)| s.pid).collect();
        assert_eq!(order, [2, 3, 1]);
    }
}
