//! `logfile`: counts the new lines of a log file that match, since the last run.
//!
//! Settings:
//! * `path` (required) — the log file.
//! * `pattern` — a substring a line must contain; or `patterns`, a list (any one matches).
//! * `ignore_case` — match regardless of case (default false).
//! * `from_start` — on the first run, read the file from its start (default false: the
//!   first run starts at the end, so history does not alert).
//! * `max_lines` — most lines read per run (default 10000); the rest is read by the next
//!   runs, so nothing is skipped.
//!
//! | check     | target | unit    | default thresholds |
//! |-----------|--------|---------|--------------------|
//! | `matches` | `path` | `count` | warn_ge 1          |
//!
//! The description names the last matching line. The check remembers its position (the
//! file's device and inode, and the offset after the last whole line read) and keeps the
//! file open between runs. When the file is rotated (`path` now names another inode) the rest
//! of the old file is read through the open handle — wherever it was renamed, even if
//! deleted — and then the new file from its start; when it shrank in place (copytruncate) it
//! is read again from its start. A line still being written (no newline yet) is counted once
//! it is complete. Lines longer than 64 KiB are matched on their first 64 KiB.

use super::{Settings, blocking, clip, number};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Thresholds};
use futures_util::future::BoxFuture;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use tether_host::tools::diag::logs::LineMatcher;

const KEYS: &[&str] = &[
    "path",
    "pattern",
    "patterns",
    "ignore_case",
    "from_start",
    "max_lines",
];

pub const DEFAULT_MAX_LINES: u64 = 10_000;

/// Longest part of a line that is matched.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

pub struct LogfilePlugin;

impl Plugin for LogfilePlugin {
    fn name(&self) -> &'static str {
        "logfile"
    }

    fn about(&self) -> &'static str {
        "New lines of a log file that contain a pattern, since the last run (follows rotation)"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        let s = Settings::new(self.name(), settings, self.settings_keys())?;
        let path = s.required_string("path")?;
        if !path.starts_with('/') {
            return Err(format!("`path`: `{path}` is not an absolute path"));
        }
        let mut patterns = Vec::new();
        if let Some(p) = s.string("pattern")? {
            patterns.push(p);
        }
        if let Some(list) = s.string_list("patterns")? {
            patterns.extend(list);
        }
        if patterns.is_empty() {
            return Err("`pattern` (or `patterns`) is required".into());
        }
        if patterns.iter().any(String::is_empty) {
            return Err("`pattern` must not be empty (it would match every line)".into());
        }
        let ignore_case = s.bool("ignore_case")?.unwrap_or(false);
        let matchers = patterns
            .iter()
            .map(|p| LineMatcher::new(p, false, ignore_case))
            .collect::<Result<Vec<_>, _>>()?;
        let max_lines = s.u64("max_lines")?.unwrap_or(DEFAULT_MAX_LINES);
        if max_lines == 0 {
            return Err("`max_lines` must be at least 1".into());
        }
        Ok(Box::new(LogfileCheck {
            path,
            matchers: Arc::new(matchers),
            from_start: s.bool("from_start")?.unwrap_or(false),
            max_lines: usize::try_from(max_lines).unwrap_or(usize::MAX),
            state: tokio::sync::Mutex::new(State::Fresh),
        }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    /// None: a log check needs a file and a pattern.
    fn default_instances(&self) -> Vec<toml::Table> {
        Vec::new()
    }
}

/// An open log file and the offset after the last whole line read.
struct Tail {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
}

enum State {
    /// Never read yet.
    Fresh,
    Following(Tail),
    /// The file disappeared after being followed; the next one is read from its start.
    Waiting,
}

struct LogfileCheck {
    path: String,
    matchers: Arc<Vec<LineMatcher>>,
    from_start: bool,
    max_lines: usize,
    state: tokio::sync::Mutex<State>,
}

/// What one run found.
#[derive(Default)]
struct Scan {
    matches: u64,
    last: Option<String>,
    /// The line cap stopped the run before the end.
    capped: bool,
    /// Extra words for the description (rotation, missing file).
    notes: Vec<String>,
}

struct Reader<'m> {
    matchers: &'m [LineMatcher],
    budget: usize,
    scan: Scan,
}

/// Reads one line of at most `MAX_LINE_BYTES` kept bytes into `buf` (consuming the whole
/// line). Returns the bytes consumed and whether the line ended with a newline.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<(u64, bool)> {
    buf.clear();
    let mut consumed = 0u64;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok((consumed, false));
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(buf.len());
        let keep = if done { take - 1 } else { take };
        buf.extend_from_slice(&chunk[..keep.min(room)]);
        r.consume(take);
        consumed += take as u64;
        if done {
            return Ok((consumed, true));
        }
    }
}

impl Reader<'_> {
    fn line(&mut self, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = String::from_utf8_lossy(bytes);
        if self.matchers.iter().any(|m| m.is_match(&text)) {
            self.scan.matches += 1;
            self.scan.last = Some(clip(text.trim_end(), 500));
        }
    }

    /// Reads `file` from `offset`; returns the offset after the last line consumed. With
    /// `to_end`, a last line without a newline counts too (the file is finished with).
    fn read(&mut self, file: &mut File, offset: u64, to_end: bool) -> std::io::Result<u64> {
        file.seek(SeekFrom::Start(offset))?;
        let mut r = BufReader::new(file);
        let mut pos = offset;
        let mut buf = Vec::new();
        loop {
            if self.budget == 0 {
                self.scan.capped = true;
                break;
            }
            let (n, complete) = read_line(&mut r, &mut buf)?;
            if n == 0 {
                break;
            }
            if !complete && !to_end {
                break;
            }
            pos += n;
            self.budget -= 1;
            self.line(&buf);
            if !complete {
                break;
            }
        }
        Ok(pos)
    }
}

/// Opens `path`, or `None` when it does not exist.
fn open(path: &str) -> Result<Option<(File, u64, u64, u64)>, String> {
    match File::open(path) {
        Ok(f) => {
            let m = f
                .metadata()
                .map_err(|e| format!("cannot examine {path}: {e}"))?;
            Ok(Some((f, m.dev(), m.ino(), m.len())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot open {path}: {e}")),
    }
}

/// One run: reads what is new and returns the state to keep.
fn step(
    state: State,
    path: &str,
    matchers: &[LineMatcher],
    from_start: bool,
    max_lines: usize,
) -> (State, Result<Scan, String>) {
    let current = match open(path) {
        Ok(c) => c,
        Err(e) => return (state, Err(e)),
    };
    let mut rd = Reader {
        matchers,
        budget: max_lines,
        scan: Scan::default(),
    };
    let io_err = |e: std::io::Error| format!("cannot read {path}: {e}");
    let new_state = match state {
        State::Fresh => {
            let Some((mut file, dev, ino, len)) = current else {
                return (State::Fresh, Err(format!("{path} does not exist")));
            };
            let offset = if from_start {
                match rd.read(&mut file, 0, false) {
                    Ok(o) => o,
                    Err(e) => return (State::Fresh, Err(io_err(e))),
                }
            } else {
                rd.scan
                    .notes
                    .push("watching from the end of the file".into());
                len
            };
            State::Following(Tail {
                file,
                dev,
                ino,
                offset,
            })
        }
        State::Waiting => match current {
            None => {
                rd.scan.notes.push(format!("{path} does not exist"));
                State::Waiting
            }
            Some((mut file, dev, ino, _)) => match rd.read(&mut file, 0, false) {
                Ok(offset) => State::Following(Tail {
                    file,
                    dev,
                    ino,
                    offset,
                }),
                Err(e) => return (State::Waiting, Err(io_err(e))),
            },
        },
        State::Following(mut tail) => match current {
            Some((_, dev, ino, len)) if (dev, ino) == (tail.dev, tail.ino) => {
                let from = if len < tail.offset {
                    rd.scan
                        .notes
                        .push("the file was truncated; read again from its start".into());
                    0
                } else {
                    tail.offset
                };
                match rd.read(&mut tail.file, from, false) {
                    Ok(o) => tail.offset = o,
                    Err(e) => return (State::Following(tail), Err(io_err(e))),
                }
                State::Following(tail)
            }
            other => {
                // Rotated (another inode at `path`) or removed: finish the old file first.
                match rd.read(&mut tail.file, tail.offset, true) {
                    Ok(o) => tail.offset = o,
                    Err(e) => return (State::Following(tail), Err(io_err(e))),
                }
                if rd.scan.capped {
                    // The rest of the old file waits for the next run.
                    State::Following(tail)
                } else if let Some((mut file, dev, ino, _)) = other {
                    rd.scan.notes.push("the file was rotated".into());
                    match rd.read(&mut file, 0, false) {
                        Ok(offset) => State::Following(Tail {
                            file,
                            dev,
                            ino,
                            offset,
                        }),
                        Err(e) => return (State::Waiting, Err(io_err(e))),
                    }
                } else {
                    rd.scan
                        .notes
                        .push(format!("{path} was removed; waiting for a new file"));
                    State::Waiting
                }
            }
        },
    };
    (new_state, Ok(rd.scan))
}

impl Check for LogfileCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            // One run at a time; the state goes to the blocking reader and comes back.
            let mut guard = self.state.lock().await;
            let state = std::mem::replace(&mut *guard, State::Fresh);
            let path = self.path.clone();
            let matchers = Arc::clone(&self.matchers);
            let (from_start, max_lines) = (self.from_start, self.max_lines);
            let (state, result) =
                blocking(move || step(state, &path, &matchers, from_start, max_lines)).await?;
            *guard = state;
            drop(guard);
            let scan = result?;
            let p = &self.path;
            let mut description = match (&scan.last, scan.matches) {
                (Some(last), n) => format!(
                    "{n} new line{} of {p} match{}; the last: {last}",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "es" } else { "" }
                ),
                (None, _) => format!("no new line of {p} matches"),
            };
            if scan.capped {
                description.push_str(&format!(
                    " (read {} lines; the rest is read next run)",
                    self.max_lines
                ));
            }
            if !scan.notes.is_empty() {
                description.push_str(&format!(" ({})", scan.notes.join("; ")));
            }
            Ok(vec![number(
                "matches",
                p,
                scan.matches as f64,
                "count",
                description,
                Thresholds {
                    warn_ge: Some(1.0),
                    ..Thresholds::default()
                },
            )])
        })
    }
}
