//! `kernel_log` (the kernel ring buffer), `log_tail` and `log_grep` (text logs below the
//! configured directories).

use super::{blocking, clip, json_output, run_program};
use crate::tools::ToolSpec;
use crate::tools::blocking::{BLOCKING_TIMEOUT, run_blocking};
use crate::tools::files::{OpenError, describe, open_regular};
use crate::tools::read_file::resolve_allowed;
use crate::tools::{Tool, ToolContext, ToolOutput, parse_args};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Longest line shown by the log tools (longer ones are cut and marked with `…`).
pub const MAX_LINE_CHARS: usize = 1000;

/// Roughly how much line text one answer may carry, leaving room for the JSON around it
/// within the engine's 32 KiB cap.
pub const TEXT_BUDGET: usize = 24 * 1024;

/// Syslog severities, most severe first, as `kernel_log` names them.
pub const LEVELS: &[&str] = &[
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

fn level_number(name: &str) -> Option<u8> {
    LEVELS
        .iter()
        .position(|l| *l == name)
        .and_then(|i| u8::try_from(i).ok())
}

fn level_name(n: u8) -> Option<String> {
    LEVELS.get(usize::from(n)).map(|s| (*s).to_owned())
}

/// One kernel message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KernelLine {
    /// Wall-clock time (RFC 3339, UTC). From `/dev/kmsg` it is derived from the time since
    /// boot, so it is approximate (off by any time the host spent suspended).
    pub time: Option<String>,
    /// Seconds since boot (only from `/dev/kmsg`).
    pub uptime_sec: Option<f64>,
    /// `emerg` … `debug`.
    pub level: Option<String>,
    pub message: String,
}

/// What `kernel_log` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KernelLogReport {
    /// `/dev/kmsg` or `journalctl -k`.
    pub source: String,
    /// The `level` filter, if any: this severity and worse.
    pub level: Option<String>,
    /// The newest matching messages, oldest first.
    pub lines: Vec<KernelLine>,
    /// How many messages matched (more than listed when `truncated`).
    pub matched: usize,
    pub truncated: bool,
}

/// Parses one `/dev/kmsg` record: `prio,seq,usec,flags[,…];message` plus optional
/// continuation lines (` KEY=value`), which are dropped. Returns (level, usec, message).
pub fn parse_kmsg_record(record: &str) -> Option<(u8, u64, String)> {
    let (prefix, rest) = record.split_once(';')?;
    let mut fields = prefix.split(',');
    let prio: u32 = fields.next()?.trim().parse().ok()?;
    let _seq = fields.next()?;
    let usec: u64 = fields.next()?.trim().parse().ok()?;
    let message = rest.split('\n').next().unwrap_or("").to_owned();
    Some((u8::try_from(prio & 7).ok()?, usec, message))
}

/// Keeps the newest `max` lines that pass the filters.
struct Keeper<'a> {
    max: usize,
    max_level: Option<u8>,
    contains: Option<&'a str>,
    lines: VecDeque<KernelLine>,
    matched: usize,
}

impl Keeper<'_> {
    fn offer(&mut self, level: Option<u8>, line: KernelLine) {
        if let (Some(max), Some(l)) = (self.max_level, level)
            && l > max
        {
            return;
        }
        if let Some(c) = self.contains
            && !line.message.to_lowercase().contains(&c.to_lowercase())
        {
            return;
        }
        self.matched += 1;
        self.lines.push_back(line);
        if self.lines.len() > self.max {
            self.lines.pop_front();
        }
    }
}

/// Drops the oldest lines until the rest fit [`TEXT_BUDGET`] (each line also carries about
/// 130 bytes of JSON around its message).
fn fit_kernel_lines(mut lines: VecDeque<KernelLine>) -> Vec<KernelLine> {
    let mut total: usize = lines.iter().map(|l| l.message.len() + 130).sum();
    while total > TEXT_BUDGET {
        match lines.pop_front() {
            Some(l) => total -= l.message.len() + 130,
            None => break,
        }
    }
    lines.into()
}

/// Reads what `/dev/kmsg` holds without waiting for more.
fn read_kmsg(keeper: &mut Keeper<'_>, cancel: &CancellationToken) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let boot = host_boot_time();
    // One read returns one record; records are at most about 8 KiB.
    let mut buf = vec![0u8; 16 * 1024];
    for round in 0u32..2_000_000 {
        if round.is_multiple_of(1024) && cancel.is_cancelled() {
            break;
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                let Some((level, usec, message)) = parse_kmsg_record(&text) else {
                    continue;
                };
                let since_boot = Duration::from_micros(usec);
                keeper.offer(
                    Some(level),
                    KernelLine {
                        time: boot
                            .map(|b| humantime::format_rfc3339_seconds(b + since_boot).to_string()),
                        uptime_sec: Some(super::round2(since_boot.as_secs_f64())),
                        level: level_name(level),
                        message: clip(&message, MAX_LINE_CHARS),
                    },
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The record we were about to read was overwritten: go on with the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => {
                if keeper.matched == 0 {
                    return Err(e);
                }
                break;
            }
        }
    }
    Ok(())
}

fn host_boot_time() -> Option<SystemTime> {
    let text = crate::host::read_trimmed("/proc/uptime")?;
    let up: f64 = text.split_whitespace().next()?.parse().ok()?;
    SystemTime::now().checked_sub(Duration::from_secs_f64(up))
}

/// Turns `journalctl -o json` lines into kernel lines.
pub fn parse_journal_json(text: &str) -> Vec<(Option<u8>, KernelLine)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let message = match v.get("MESSAGE") {
            Some(Value::String(s)) => s.clone(),
            // Non-UTF-8 messages come as an array of bytes.
            Some(Value::Array(bytes)) => {
                let raw: Vec<u8> = bytes
                    .iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                String::from_utf8_lossy(&raw).into_owned()
            }
            _ => continue,
        };
        let level = v
            .get("PRIORITY")
            .and_then(Value::as_str)
            .and_then(|p| p.parse::<u8>().ok())
            .filter(|p| *p < 8);
        let time = v
            .get("__REALTIME_TIMESTAMP")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<u64>().ok())
            .map(|us| {
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_micros(us),
                )
                .to_string()
            });
        out.push((
            level,
            KernelLine {
                time,
                uptime_sec: None,
                level: level.and_then(level_name),
                message: clip(&message, MAX_LINE_CHARS),
            },
        ));
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelArgs {
    #[serde(default)]
    lines: Option<usize>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    contains: Option<String>,
}

pub struct KernelLog {
    timeout: Duration,
}

impl KernelLog {
    pub fn new(timeout: Duration) -> Self {
        KernelLog { timeout }
    }
}

impl Tool for KernelLog {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "kernel_log".into(),
            description: "The newest kernel log messages (like `dmesg`): from /dev/kmsg, or \
                `journalctl -k` when that is not readable. Each line has its time, level and \
                text. `level` keeps that severity and worse (e.g. `err` for errors, critical and \
                emergency messages); `contains` keeps lines with that text (case-insensitive). \
                Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "lines": {"type": "integer", "minimum": 1, "maximum": 500,
                        "description": "How many of the newest matching lines (default 50)."},
                    "level": {"type": "string", "enum": LEVELS,
                        "description": "Minimum severity to keep."},
                    "contains": {"type": "string", "minLength": 1, "maxLength": 200,
                        "description": "Keep only lines containing this text (case-insensitive)."}
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
            let args: KernelArgs = match parse_args("kernel_log", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let max = args.lines.unwrap_or(50).clamp(1, 500);
            let max_level = match args.level.as_deref().map(level_number) {
                None => None,
                Some(Some(l)) => Some(l),
                Some(None) => {
                    return ToolOutput::error(format!(
                        "`level` must be one of {}",
                        LEVELS.join(", ")
                    ));
                }
            };
            let contains = args.contains.clone();
            let from_kmsg =
                run_blocking("kernel_log", &ctx.cancel, BLOCKING_TIMEOUT, move |stop| {
                    let mut keeper = Keeper {
                        max,
                        max_level,
                        contains: contains.as_deref(),
                        lines: VecDeque::new(),
                        matched: 0,
                    };
                    read_kmsg(&mut keeper, &stop).map(|()| (keeper.lines, keeper.matched))
                })
                .await
                .map_err(ToolOutput::from);
            let kmsg_error = match from_kmsg {
                Ok(Ok((lines, matched))) => {
                    let lines = fit_kernel_lines(lines);
                    return json_output(
                        &KernelLogReport {
                            source: "/dev/kmsg".into(),
                            level: args.level,
                            truncated: matched > lines.len(),
                            lines,
                            matched,
                        },
                        true,
                    );
                }
                Ok(Err(e)) => e.to_string(),
                Err(cancelled) => return cancelled,
            };

            // Fallback: the journal's copy of the kernel log.
            let fetch = if args.contains.is_some() {
                (max * 20).min(5000)
            } else {
                max
            };
            let n = fetch.to_string();
            let mut jargs = vec!["-k", "-q", "--no-pager", "-o", "json", "-n", n.as_str()];
            let level_arg;
            if let Some(l) = max_level {
                level_arg = format!("0..{l}");
                jargs.extend(["-p", level_arg.as_str()]);
            }
            let journal = run_program("journalctl", &jargs, self.timeout, &ctx.cancel).await;
            let journal_error = match journal {
                Ok(out) if out.success => {
                    let mut keeper = Keeper {
                        max,
                        max_level,
                        contains: args.contains.as_deref(),
                        lines: VecDeque::new(),
                        matched: 0,
                    };
                    for (level, line) in parse_journal_json(&out.stdout) {
                        keeper.offer(level, line);
                    }
                    let lines = fit_kernel_lines(keeper.lines);
                    return json_output(
                        &KernelLogReport {
                            source: "journalctl -k".into(),
                            level: args.level,
                            truncated: keeper.matched > lines.len(),
                            lines,
                            matched: keeper.matched,
                        },
                        true,
                    );
                }
                Ok(out) => format!(
                    "exit status {}: {}",
                    out.code.map_or("none".into(), |c| c.to_string()),
                    clip(&out.stderr, 300)
                ),
                Err(e) if e == "cancelled" => return super::cancelled(),
                Err(e) => e,
            };
            ToolOutput::error(format!(
                "not available: the kernel log cannot be read on this host (/dev/kmsg: \
                 {kmsg_error}; journalctl -k: {journal_error})"
            ))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// log_tail and log_grep
// ---------------------------------------------------------------------------------------------

/// File name endings of compressed logs, which the tools refuse (they read plain text only).
pub const COMPRESSED: &[&str] = &[".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".Z"];

fn compressed_suffix(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    COMPRESSED.iter().find(|s| name.ends_with(*s)).copied()
}

fn refuse_compressed(path: &Path, suffix: &str) -> String {
    format!(
        "{} is compressed ({suffix}); log_tail and log_grep read plain-text logs only. The \
         newest rotated log is usually kept uncompressed (e.g. `syslog.1`).",
        path.display()
    )
}

/// Whether the first 8 KiB of a file hold a NUL byte (wtmp, lastlog, journal files).
fn looks_binary(path: &Path) -> bool {
    let Ok((mut f, _)) = open_regular(path) else {
        return false;
    };
    let mut buf = [0u8; 8192];
    let n = f.read(&mut buf).unwrap_or(0);
    buf[..n].contains(&0)
}

fn modified(meta: &std::fs::Metadata) -> Option<String> {
    meta.modified()
        .ok()
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// What `log_tail` prints for a file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogTailReport {
    /// The file read (symlinks resolved).
    pub path: String,
    pub size_bytes: u64,
    pub modified: Option<String>,
    /// The last lines, oldest first.
    pub lines: Vec<String>,
    /// Whether the lines shown start at the beginning of the file.
    pub from_start: bool,
    /// Whether fewer lines than asked are shown, or some were cut, to fit the output limit.
    pub truncated: bool,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogDirEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size_bytes: u64,
    pub modified: Option<String>,
}

/// What `log_tail` prints when `path` is a directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogDirReport {
    pub directory: String,
    pub entries: Vec<LogDirEntry>,
    pub truncated: bool,
}

/// At most this many directory entries are listed.
pub const MAX_DIR_ENTRIES: usize = 300;

fn list_dir(dir: &Path) -> Result<LogDirReport, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut entries: Vec<LogDirEntry> = rd
        .flatten()
        .map(|e| {
            let meta = e.path().symlink_metadata().ok();
            let kind = match &meta {
                Some(m) if m.is_file() => "file",
                Some(m) if m.is_dir() => "dir",
                Some(m) if m.file_type().is_symlink() => "symlink",
                _ => "other",
            };
            LogDirEntry {
                name: e.file_name().to_string_lossy().into_owned(),
                kind: kind.into(),
                size_bytes: meta.as_ref().map_or(0, |m| m.len()),
                modified: meta.as_ref().and_then(modified),
            }
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let truncated = entries.len() > MAX_DIR_ENTRIES;
    entries.truncate(MAX_DIR_ENTRIES);
    Ok(LogDirReport {
        directory: dir.display().to_string(),
        entries,
        truncated,
    })
}

/// The last `want` lines of the file `f` of `size` bytes, reading backwards from the end in
/// blocks so a huge file is never loaded whole. Reads at most `max_bytes`.
pub fn tail_lines(
    mut f: std::fs::File,
    size: u64,
    want: usize,
    max_bytes: u64,
) -> std::io::Result<(Vec<String>, bool)> {
    const BLOCK: u64 = 64 * 1024;
    let mut start = size;
    let mut data: Vec<u8> = Vec::new();
    loop {
        // Newlines seen, not counting one that ends the file.
        let body = data.strip_suffix(b"\n").unwrap_or(&data);
        let newlines = body.iter().filter(|b| **b == b'\n').count();
        if newlines >= want || start == 0 || size - start >= max_bytes {
            break;
        }
        let step = BLOCK.min(start).min(max_bytes - (size - start));
        start -= step;
        f.seek(SeekFrom::Start(start))?;
        let mut block = vec![0u8; usize::try_from(step).unwrap_or(0)];
        f.read_exact(&mut block)?;
        block.extend_from_slice(&data);
        data = block;
    }
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    let mut lines: Vec<&[u8]> = if body.is_empty() {
        Vec::new()
    } else {
        body.split(|b| *b == b'\n').collect()
    };
    // The first piece may be the middle of a line unless we reached the start.
    let mut from_start = start == 0;
    if lines.len() > want {
        lines.drain(..lines.len() - want);
        from_start = false;
    } else if !from_start && !lines.is_empty() {
        lines.remove(0);
    }
    let text = lines
        .into_iter()
        .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
        .collect();
    Ok((text, from_start))
}

/// Cuts long lines and drops the oldest until the text fits [`TEXT_BUDGET`]; true if it cut.
fn fit_lines(lines: &mut Vec<String>) -> bool {
    let mut cut = false;
    for l in lines.iter_mut() {
        if l.chars().count() > MAX_LINE_CHARS {
            *l = clip(l, MAX_LINE_CHARS);
            cut = true;
        }
    }
    let mut total: usize = lines.iter().map(|l| l.len() + 8).sum();
    let mut drop = 0;
    while total > TEXT_BUDGET && drop < lines.len() {
        total -= lines[drop].len() + 8;
        drop += 1;
    }
    if drop > 0 {
        lines.drain(..drop);
        cut = true;
    }
    cut
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailArgs {
    path: String,
    #[serde(default)]
    lines: Option<usize>,
}

pub struct LogTail {
    roots: Vec<PathBuf>,
}

impl LogTail {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        LogTail { roots }
    }
}

fn roots_text(roots: &[PathBuf]) -> String {
    let r: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    r.join(", ")
}

fn tail(path: &str, want: usize, roots: &[PathBuf]) -> ToolOutput {
    let resolved = match resolve_allowed(path, roots) {
        Ok(p) => p,
        Err(e) => return ToolOutput::error(e),
    };
    if resolved.is_dir() {
        return match list_dir(&resolved) {
            Ok(r) => json_output(&r, true),
            Err(e) => ToolOutput::error(e),
        };
    }
    if let Some(suffix) = compressed_suffix(&resolved) {
        return ToolOutput::error(refuse_compressed(&resolved, suffix));
    }
    // A FIFO or device would block open(2) or read(2) for ever: regular files only.
    let (file, meta) = match open_regular(&resolved) {
        Ok(opened) => opened,
        Err(e) => return ToolOutput::error(e.to_string()),
    };
    if looks_binary(&resolved) {
        return ToolOutput::error(format!(
            "{} is a binary file, not a text log (use `last`/`lastb` or journalctl for such files)",
            resolved.display()
        ));
    }
    match tail_lines(file, meta.len(), want, 8 * 1024 * 1024) {
        Ok((mut lines, from_start)) => {
            let truncated = fit_lines(&mut lines);
            json_output(
                &LogTailReport {
                    path: resolved.display().to_string(),
                    size_bytes: meta.len(),
                    modified: modified(&meta),
                    from_start: from_start && !truncated,
                    lines,
                    truncated,
                },
                true,
            )
        }
        Err(e) => ToolOutput::error(format!("cannot read {}: {e}", resolved.display())),
    }
}

impl Tool for LogTail {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "log_tail".into(),
            description: format!(
                "The last lines of a plain-text log file (like `tail -n`). Only files below \
                 these directories: {}. Given a directory, lists its files with size and \
                 modification time instead. Compressed rotated logs (.gz, …) are refused. \
                 Read-only.",
                roots_text(&self.roots)
            ),
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "minLength": 1,
                        "description": "Absolute path of the log file (or of a directory to list)."},
                    "lines": {"type": "integer", "minimum": 1, "maximum": 1000,
                        "description": "How many lines from the end (default 100)."}
                },
                "required": ["path"],
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
            let args: TailArgs = match parse_args("log_tail", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let want = args.lines.unwrap_or(100).clamp(1, 1000);
            let roots = self.roots.clone();
            blocking("log_tail", &ctx.cancel, move || {
                tail(&args.path, want, &roots)
            })
            .await
            .unwrap_or_else(|e| e)
        })
    }
}

/// One matching line with its context.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GrepMatch {
    pub file: String,
    /// 1-based; counted from where the scan started (see [`LogGrepReport::partial_files`]).
    pub line_number: u64,
    pub line: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// A file `log_grep` did not search, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SkippedFile {
    pub file: String,
    pub reason: String,
}

/// What `log_grep` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogGrepReport {
    pub pattern: String,
    pub files_searched: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedFile>,
    /// Files larger than the scan limit: only their last part was searched, and line numbers
    /// count from there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial_files: Vec<String>,
    pub matches: Vec<GrepMatch>,
    /// Whether more lines matched than are listed (the search stopped at `max_matches` or at
    /// the output size limit).
    pub truncated: bool,
    pub bytes_scanned: u64,
}

/// Most bytes `log_grep` reads from one file: a larger file is searched from this far before
/// its end (recent lines matter most).
pub const MAX_SCAN_BYTES: u64 = 256 * 1024 * 1024;

/// How lines are matched.
pub enum LineMatcher {
    Substring { needle: String, ignore_case: bool },
    Glob(globset::GlobMatcher),
}

impl LineMatcher {
    pub fn new(pattern: &str, glob: bool, ignore_case: bool) -> Result<Self, String> {
        if glob {
            globset::GlobBuilder::new(pattern)
                .literal_separator(false)
                .case_insensitive(ignore_case)
                .backslash_escape(true)
                .build()
                .map(|g| LineMatcher::Glob(g.compile_matcher()))
                .map_err(|e| format!("`pattern` is not a valid glob: {e}"))
        } else {
            Ok(LineMatcher::Substring {
                needle: if ignore_case {
                    pattern.to_lowercase()
                } else {
                    pattern.to_owned()
                },
                ignore_case,
            })
        }
    }

    pub fn is_match(&self, line: &str) -> bool {
        match self {
            LineMatcher::Substring {
                needle,
                ignore_case: false,
            } => line.contains(needle.as_str()),
            LineMatcher::Substring {
                needle,
                ignore_case: true,
            } => line.to_lowercase().contains(needle.as_str()),
            LineMatcher::Glob(g) => g.is_match(line),
        }
    }
}

struct GrepState<'a> {
    matcher: &'a LineMatcher,
    context: usize,
    max_matches: usize,
    matches: Vec<GrepMatch>,
    /// (index into matches, after-lines still wanted)
    pending: Vec<(usize, usize)>,
    truncated: bool,
    text_used: usize,
    bytes_scanned: u64,
}

impl GrepState<'_> {
    fn full(&self) -> bool {
        self.matches.len() >= self.max_matches || self.text_used >= TEXT_BUDGET
    }

    /// Searches one file (`f`, of `size` bytes, named `file`); returns whether the search
    /// should stop (done or cancelled) and whether only the file's end was searched.
    fn search(
        &mut self,
        mut f: std::fs::File,
        size: u64,
        file: &Path,
        cancel: &CancellationToken,
    ) -> std::io::Result<(bool, bool)> {
        let partial = size > MAX_SCAN_BYTES;
        let mut reader = if partial {
            f.seek(SeekFrom::Start(size - MAX_SCAN_BYTES))?;
            let mut r = BufReader::new(f);
            // Skip the partial first line.
            let mut skip = Vec::new();
            r.read_until(b'\n', &mut skip)?;
            r
        } else {
            BufReader::new(f)
        };
        let name = file.display().to_string();
        let mut before: VecDeque<String> = VecDeque::new();
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            self.bytes_scanned += n as u64;
            number += 1;
            if number.is_multiple_of(8192) && cancel.is_cancelled() {
                return Ok((true, partial));
            }
            let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = String::from_utf8_lossy(raw);
            // Feed the after-context of earlier matches.
            if !self.pending.is_empty() {
                let shown = clip(&line, MAX_LINE_CHARS);
                for (idx, left) in self.pending.iter_mut() {
                    self.text_used += shown.len() + 8;
                    self.matches[*idx].after.push(shown.clone());
                    *left -= 1;
                }
                self.pending.retain(|(_, left)| *left > 0);
            }
            let is_match = self.matcher.is_match(&line);
            if is_match && self.full() {
                // One match past the limit proves the list is cut; stop once context is done.
                self.truncated = true;
                if self.pending.is_empty() {
                    return Ok((true, partial));
                }
            } else if is_match {
                let shown = clip(&line, MAX_LINE_CHARS);
                self.text_used += shown.len() + name.len() + 40;
                self.text_used += before.iter().map(|l| l.len() + 8).sum::<usize>();
                self.matches.push(GrepMatch {
                    file: name.clone(),
                    line_number: number,
                    line: shown,
                    before: before.iter().cloned().collect(),
                    after: Vec::new(),
                });
                if self.context > 0 {
                    self.pending.push((self.matches.len() - 1, self.context));
                }
            }
            if self.truncated && self.pending.is_empty() {
                return Ok((true, partial));
            }
            if self.context > 0 {
                before.push_back(clip(&line, MAX_LINE_CHARS));
                if before.len() > self.context {
                    before.pop_front();
                }
            }
        }
        // Context does not run on into the next file.
        self.pending.clear();
        Ok((false, partial))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrepArgs {
    path: String,
    pattern: String,
    #[serde(default)]
    ignore_case: bool,
    #[serde(default)]
    glob: bool,
    #[serde(default)]
    max_matches: Option<usize>,
    #[serde(default)]
    context: Option<usize>,
}

fn grep(args: GrepArgs, roots: &[PathBuf], cancel: &CancellationToken) -> ToolOutput {
    let matcher = match LineMatcher::new(&args.pattern, args.glob, args.ignore_case) {
        Ok(m) => m,
        Err(e) => return ToolOutput::error(e),
    };
    let resolved = match resolve_allowed(&args.path, roots) {
        Ok(p) => p,
        Err(e) => return ToolOutput::error(e),
    };
    let mut skipped = Vec::new();
    let files: Vec<PathBuf> = if resolved.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(&resolved) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) => return ToolOutput::error(format!("cannot list {}: {e}", resolved.display())),
        };
        entries.sort();
        entries
            .into_iter()
            .filter_map(|p| {
                let shown = p.display().to_string();
                // Each entry is checked on its own: a symlink inside may point outside.
                let real = match resolve_allowed(&shown, roots) {
                    Ok(r) => r,
                    Err(e) => {
                        skipped.push(SkippedFile {
                            file: shown,
                            reason: e,
                        });
                        return None;
                    }
                };
                match std::fs::metadata(&real) {
                    Ok(m) if m.is_file() => {}
                    // Not recursive: subdirectories are left out without a word.
                    Ok(m) if m.is_dir() => return None,
                    Ok(m) => {
                        skipped.push(SkippedFile {
                            file: shown,
                            reason: format!("{}, not a regular file", describe(m.file_type())),
                        });
                        return None;
                    }
                    Err(e) => {
                        skipped.push(SkippedFile {
                            file: shown,
                            reason: e.to_string(),
                        });
                        return None;
                    }
                }
                if let Some(s) = compressed_suffix(&real) {
                    skipped.push(SkippedFile {
                        file: shown,
                        reason: format!("compressed ({s})"),
                    });
                    return None;
                }
                if looks_binary(&real) {
                    skipped.push(SkippedFile {
                        file: shown,
                        reason: "binary".into(),
                    });
                    return None;
                }
                Some(real)
            })
            .collect()
    } else {
        if let Some(s) = compressed_suffix(&resolved) {
            return ToolOutput::error(refuse_compressed(&resolved, s));
        }
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_file() => {}
            Ok(m) => {
                return ToolOutput::error(format!(
                    "{} is {}, not a regular file",
                    resolved.display(),
                    describe(m.file_type())
                ));
            }
            Err(e) => {
                return ToolOutput::error(format!("cannot stat {}: {e}", resolved.display()));
            }
        }
        if looks_binary(&resolved) {
            return ToolOutput::error(format!(
                "{} is a binary file, not a text log",
                resolved.display()
            ));
        }
        vec![resolved]
    };
    let mut state = GrepState {
        matcher: &matcher,
        context: args.context.unwrap_or(0).min(5),
        max_matches: args.max_matches.unwrap_or(50).clamp(1, 500),
        matches: Vec::new(),
        pending: Vec::new(),
        truncated: false,
        text_used: 0,
        bytes_scanned: 0,
    };
    let mut searched = Vec::new();
    let mut partial_files = Vec::new();
    for file in &files {
        if cancel.is_cancelled() {
            break;
        }
        // A FIFO or device would block open(2) or read(2) for ever: regular files only (the
        // listing checked, but the file may have been swapped since).
        let searched_file = open_regular(file)
            .map_err(|e| match e {
                OpenError::NotRegular(_) => "not a regular file".to_owned(),
                OpenError::Io(m) => m,
            })
            .and_then(|(f, meta)| {
                state
                    .search(f, meta.len(), file, cancel)
                    .map_err(|e| e.to_string())
            });
        match searched_file {
            Ok((stop, partial)) => {
                searched.push(file.display().to_string());
                if partial {
                    partial_files.push(file.display().to_string());
                }
                if stop {
                    break;
                }
            }
            Err(e) => skipped.push(SkippedFile {
                file: file.display().to_string(),
                reason: e,
            }),
        }
    }
    if cancel.is_cancelled() {
        return super::cancelled();
    }
    skipped.truncate(50);
    json_output(
        &LogGrepReport {
            pattern: args.pattern,
            files_searched: searched,
            skipped,
            partial_files,
            matches: state.matches,
            truncated: state.truncated,
            bytes_scanned: state.bytes_scanned,
        },
        true,
    )
}

pub struct LogGrep {
    roots: Vec<PathBuf>,
}

impl LogGrep {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        LogGrep { roots }
    }
}

impl Tool for LogGrep {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "log_grep".into(),
            description: format!(
                "Search plain-text log files for lines containing a text (like `grep -F`), or \
                 matching a glob over the whole line when `glob` is true (`*timeout*`). `path` \
                 is a file or a directory (its files, not recursive; compressed and binary \
                 files are skipped). Only below these directories: {}. Files over 256 MiB are \
                 searched in their last 256 MiB. Read-only.",
                roots_text(&self.roots)
            ),
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "minLength": 1,
                        "description": "Absolute path of a log file or directory."},
                    "pattern": {"type": "string", "minLength": 1, "maxLength": 512,
                        "description": "Text to look for (not a regex)."},
                    "ignore_case": {"type": "boolean", "description": "Default false."},
                    "glob": {"type": "boolean",
                        "description": "Treat `pattern` as a glob (* ? [..]) that must match the whole line. Default false."},
                    "max_matches": {"type": "integer", "minimum": 1, "maximum": 500,
                        "description": "Stop after this many matches (default 50)."},
                    "context": {"type": "integer", "minimum": 0, "maximum": 5,
                        "description": "Lines of context before and after each match (default 0)."}
                },
                "required": ["path", "pattern"],
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
            let args: GrepArgs = match parse_args("log_grep", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            if args.pattern.is_empty() {
                return ToolOutput::error("`pattern` is empty");
            }
            let roots = self.roots.clone();
            run_blocking("log_grep", &ctx.cancel, BLOCKING_TIMEOUT, move |stop| {
                grep(args, &roots, &stop)
            })
            .await
            .unwrap_or_else(ToolOutput::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records_parse() {
        let (level, usec, msg) = parse_kmsg_record(
            "3,1234,5678901,-;EXT4-fs error (device sda1): bad\n SUBSYSTEM=block\n",
        )
        .expect("record");
        assert_eq!((level, usec), (3, 5_678_901));
        assert_eq!(msg, "EXT4-fs error (device sda1): bad");
        // Facility bits are stripped from the priority.
        assert_eq!(parse_kmsg_record("30,1,2,c;x").map(|r| r.0), Some(6));
        assert!(parse_kmsg_record("garbage").is_none());
    }

    #[test]
    fn journal_json_lines_parse() {
        let text = r#"{"MESSAGE":"usb 1-1: new device","PRIORITY":"6","__REALTIME_TIMESTAMP":"1700000000000000"}
{"MESSAGE":[104,105],"PRIORITY":"3"}
not json
"#;
        let lines = parse_journal_json(text);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].1.level.as_deref(), Some("info"));
        assert_eq!(lines[0].1.time.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(lines[1].1.message, "hi");
        assert_eq!(lines[1].0, Some(3));
    }

    #[test]
    fn keeper_filters_by_level_and_text_and_keeps_the_newest() {
        let mut k = Keeper {
            max: 2,
            max_level: Some(3),
            contains: Some("DISK"),
            lines: VecDeque::new(),
            matched: 0,
        };
        let line = |m: &str| KernelLine {
            time: None,
            uptime_sec: None,
            level: None,
            message: m.into(),
        };
        k.offer(Some(6), line("disk info"));
        k.offer(Some(3), line("disk a"));
        k.offer(Some(2), line("net b"));
        k.offer(Some(3), line("disk c"));
        k.offer(Some(1), line("Disk d"));
        assert_eq!(k.matched, 3);
        let kept: Vec<&str> = k.lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(kept, ["disk c", "Disk d"]);
    }

    fn tail_of(path: &Path, want: usize, max_bytes: u64) -> std::io::Result<(Vec<String>, bool)> {
        let (f, meta) = open_regular(path).map_err(|e| std::io::Error::other(e.to_string()))?;
        tail_lines(f, meta.len(), want, max_bytes)
    }

    #[test]
    fn tail_reads_backwards_across_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("big.log");
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&f, &text).expect("write");
        let (lines, from_start) = tail_of(&f, 3, 1 << 30).expect("tail");
        assert_eq!(lines, ["line 49997", "line 49998", "line 49999"]);
        assert!(!from_start);
        // A byte cap stops the backwards read; the partial first line is dropped.
        let (lines, _) = tail_of(&f, 50_000, 100).expect("tail");
        assert!(lines.len() < 20 && lines.last().map(String::as_str) == Some("line 49999"));
        let small = dir.path().join("small.log");
        std::fs::write(&small, "a\r\nb\nc").expect("write");
        assert_eq!(
            tail_of(&small, 10, 1 << 30).expect("tail"),
            (vec!["a".to_owned(), "b".into(), "c".into()], true)
        );
        let empty = dir.path().join("empty.log");
        std::fs::write(&empty, "").expect("write");
        assert_eq!(
            tail_of(&empty, 10, 1 << 30).expect("tail"),
            (Vec::new(), true)
        );
    }

    #[test]
    fn substring_and_glob_matching() {
        let plain = LineMatcher::new("Timeout", false, false).expect("ok");
        assert!(plain.is_match("upstream Timeout after 3s"));
        assert!(!plain.is_match("upstream timeout after 3s"));
        let folded = LineMatcher::new("Timeout", false, true).expect("ok");
        assert!(folded.is_match("upstream TIMEOUT"));
        let glob = LineMatcher::new("*error*/var/*", true, true).expect("ok");
        assert!(glob.is_match("ERROR: cannot open /var/lib/x"));
        assert!(!glob.is_match("error only"));
    }
}
