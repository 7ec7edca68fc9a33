//! Turns events into terminal output. Colour only when stdout is a terminal.
//!
//! A prompt (`> `, `allow …?`) is drawn once and remembered: any other output first erases it
//! (or ends its line when the output is not a terminal), so notices and another client's
//! streamed turn never land on the prompt line; the chat loop draws it again when it is due.

use serde_json::Value;
use std::io::Write;
use tether_proto::{
    ClientId, ClientInfo, Control, Decision, Event, EventBody, NoticeLevel, ResolveCause,
    StopReason,
};

pub struct Renderer {
    color: bool,
    me: Option<ClientId>,
    /// False while a streamed answer is mid-line.
    at_line_start: bool,
    in_reasoning: bool,
    /// Report mode (`inspect`, `diagnose`): progress goes to stderr, the answer to stdout.
    report: Option<ReportMode>,
    spinner: Option<Spinner>,
    /// The prompt on screen (at the end of the last line), if any.
    prompt_shown: Option<String>,
    /// Where prompts go is a terminal: a prompt is erased in place, not ended with a newline.
    prompt_on_tty: bool,
    /// The turn whose input line is already on screen (typed at this terminal): its
    /// `turn_started` header is not printed again.
    typed_turn: Option<tether_proto::TurnId>,
    /// A write to stdout failed because its reader went away.
    stdout_closed: bool,
}

/// How `inspect` and `diagnose` print.
struct ReportMode {
    /// Stream the answer to stdout as it comes (stdout is a terminal, text output). Otherwise
    /// only keep it; the caller prints it when the turn ends.
    stream_text: bool,
    /// stderr is a terminal: show a spinner with the running tool.
    spinner: bool,
    /// Write no progress at all (only keep the answer).
    quiet: bool,
    /// The final answer: the text after the last tool call.
    answer: String,
}

/// A line on stderr that animates while a tool runs.
struct Spinner {
    stop: tokio_util::sync::CancellationToken,
}

impl Spinner {
    fn start(label: String) -> Spinner {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            const FRAMES: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let started = std::time::Instant::now();
            let mut i = 0usize;
            loop {
                {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2K{} {label} ({:.0} s)",
                        FRAMES[i % FRAMES.len()],
                        started.elapsed().as_secs_f64()
                    );
                    let _ = err.flush();
                }
                i += 1;
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        });
        Spinner { stop }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

/// Lines of tool output shown inline.
const TOOL_OUTPUT_LINES: usize = 12;

impl Renderer {
    pub fn new(color: bool) -> Self {
        use std::io::IsTerminal;
        Renderer {
            color,
            me: None,
            at_line_start: true,
            in_reasoning: false,
            report: None,
            spinner: None,
            prompt_shown: None,
            prompt_on_tty: std::io::stdout().is_terminal(),
            typed_turn: None,
            stdout_closed: false,
        }
    }

    /// Switches to report mode: progress and prompts on stderr, the answer on stdout (streamed
    /// when `stream_text`, else kept for [`Renderer::answer`]).
    pub fn report_mode(&mut self, stream_text: bool) {
        use std::io::IsTerminal;
        self.color = std::io::stderr().is_terminal();
        self.prompt_on_tty = std::io::stderr().is_terminal();
        self.report = Some(ReportMode {
            stream_text,
            spinner: std::io::stderr().is_terminal(),
            quiet: false,
            answer: String::new(),
        });
    }

    /// Report mode without any progress output: only the answer is kept.
    pub fn quiet(&mut self) {
        if let Some(r) = &mut self.report {
            r.quiet = true;
            r.spinner = false;
        }
    }

    /// A write to stdout found its reader gone.
    pub fn stdout_closed(&self) -> bool {
        self.stdout_closed
    }

    /// Writes to stdout (or, in report mode with `progress`, to stderr), remembering a closed
    /// stdout instead of failing.
    fn write(&mut self, progress: bool, text: &str) {
        if progress && let Some(report) = &self.report {
            if report.quiet {
                return;
            }
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
            return;
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.stdout_closed = true;
        }
    }

    /// Erases the prompt on screen, if any, before other output.
    fn clear_prompt(&mut self) {
        if self.prompt_shown.take().is_some() {
            let erase = if self.prompt_on_tty {
                "\r\x1b[2K"
            } else {
                "\n"
            };
            self.write(true, erase);
            self.at_line_start = true;
        }
    }

    /// The prompt is no longer on screen: the user ended its line by typing Enter (a terminal
    /// echoes the newline).
    pub fn prompt_answered(&mut self, echoed: bool) {
        if self.prompt_shown.take().is_some() {
            self.at_line_start = echoed;
        }
    }

    /// Erases the prompt if one is shown (nothing is due).
    pub fn hide_prompt(&mut self) {
        self.clear_prompt();
    }

    /// The turn `turn_id` was started by a line typed at this terminal: don't echo it.
    pub fn typed_turn(&mut self, turn_id: tether_proto::TurnId) {
        self.typed_turn = Some(turn_id);
    }

    /// Report mode: the final answer (also when it was streamed).
    pub fn answer(&self) -> Option<&str> {
        self.report.as_ref().map(|r| r.answer.as_str())
    }

    /// Report mode: the answer was streamed to stdout as it came.
    pub fn streamed(&self) -> bool {
        self.report.as_ref().is_some_and(|r| r.stream_text)
    }

    pub fn set_me(&mut self, me: ClientId) {
        self.me = Some(me);
    }

    fn paint(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    fn who(&self, c: &ClientInfo) -> String {
        if self.me.as_ref() == Some(&c.client_id) {
            "you".into()
        } else {
            format!("{} ({})", c.name, c.class)
        }
    }

    /// Prints a line of its own (after ending a streamed line if needed). In report mode it
    /// is progress: stderr, so stdout carries only the answer.
    pub fn line(&mut self, text: &str) {
        self.spinner = None;
        self.clear_prompt();
        let start = if self.at_line_start { "" } else { "\n" };
        self.write(true, &format!("{start}{text}\n"));
        self.at_line_start = true;
    }

    /// Streamed answer text.
    fn stream(&mut self, text: &str) {
        if let Some(report) = &mut self.report {
            report.answer.push_str(text);
            if !report.stream_text {
                return;
            }
        }
        self.clear_prompt();
        self.write(false, text);
        self.at_line_start = text.ends_with('\n');
    }

    /// Streamed text that is not part of the answer (the model's reasoning): in report mode
    /// it is progress, on stderr.
    fn aside(&mut self, text: &str) {
        self.clear_prompt();
        self.write(true, text);
        self.at_line_start = text.ends_with('\n');
    }

    /// Shows `text` as a prompt (without a newline), unless it is already on screen.
    pub fn prompt(&mut self, text: &str) {
        if self.prompt_shown.as_deref() == Some(text) {
            return;
        }
        self.clear_prompt();
        let start = if self.at_line_start { "" } else { "\n" };
        let painted = self.paint(BOLD, text);
        self.write(true, &format!("{start}{painted}"));
        self.at_line_start = false;
        self.prompt_shown = Some(text.to_owned());
    }

    pub fn note(&mut self, text: &str) {
        let painted = self.paint(DIM, text);
        self.line(&painted);
    }

    pub fn warn(&mut self, text: &str) {
        let painted = self.paint(YELLOW, text);
        self.line(&painted);
    }

    pub fn error(&mut self, text: &str) {
        let painted = self.paint(RED, text);
        self.line(&painted);
    }

    fn end_reasoning(&mut self) {
        if self.in_reasoning {
            self.in_reasoning = false;
            if self.color {
                self.aside(RESET);
            }
            self.line("");
        }
    }

    pub fn event(&mut self, ev: &Event) {
        if !matches!(ev.body, EventBody::ReasoningDelta { .. }) {
            self.end_reasoning();
        }
        match &ev.body {
            EventBody::SessionState { .. } => {}
            EventBody::ClientAttached { client, .. } => {
                if self.me.as_ref() != Some(&client.client_id) {
                    let t = format!("· {} joined", self.who(client));
                    self.note(&t);
                }
            }
            EventBody::ClientDetached { client, reason } => {
                let t = match reason {
                    Some(r) => format!("· {} left ({r})", self.who(client)),
                    None => format!("· {} left", self.who(client)),
                };
                self.note(&t);
            }
            EventBody::TurnStarted {
                turn_id,
                originator,
                text,
                ..
            } => {
                // A line typed here is already on screen after its prompt.
                if self.typed_turn.as_ref() == Some(turn_id) {
                    return;
                }
                let who = self.who(originator);
                let head = self.paint(BOLD, &format!("{who}>"));
                self.line(&format!("{head} {text}"));
            }
            EventBody::TextDelta { text, .. } => self.stream(text),
            EventBody::ReasoningDelta { text, .. } => {
                if !self.in_reasoning {
                    self.in_reasoning = true;
                    if !self.at_line_start {
                        self.line("");
                    }
                    if self.color {
                        self.aside(DIM);
                    }
                    self.aside("(thinking) ");
                }
                self.aside(text);
            }
            EventBody::ToolCall { tool, args, .. } => {
                let t = self.paint(CYAN, &format!("⚙ {tool} {}", compact(args)));
                self.line(&t);
                if let Some(report) = &mut self.report {
                    // Text before a tool call was the model thinking aloud, not the answer.
                    report.answer.clear();
                    if report.spinner {
                        self.spinner = Some(Spinner::start(format!("running {tool}")));
                    }
                }
            }
            EventBody::PermissionRequested {
                tool,
                args,
                originator,
                policy,
                ..
            } => {
                let t = format!(
                    "⚠ permission needed: {tool} {} (turn of {}, policy {policy})",
                    compact(args),
                    self.who(originator)
                );
                let t = self.paint(YELLOW, &t);
                self.line(&t);
            }
            EventBody::PermissionResolved {
                decision,
                by,
                cause,
                ..
            } => {
                let verdict = match decision {
                    Decision::Allow => self.paint(GREEN, "allowed"),
                    Decision::Deny => self.paint(RED, "denied"),
                };
                let t = match (by, cause) {
                    (Some(by), _) => format!("  {verdict} by {}", self.who(by)),
                    (None, ResolveCause::NoEligibleAnswerer) => {
                        format!("  {verdict}: nobody who may answer was attached")
                    }
                    (None, ResolveCause::Timeout) => format!("  {verdict}: no answer in time"),
                    (None, _) => format!("  {verdict}: cancelled"),
                };
                self.line(&t);
            }
            EventBody::ToolResult {
                ok,
                output,
                truncated,
                duration_ms,
                ..
            } => {
                self.spinner = None;
                let mark = if *ok {
                    self.paint(GREEN, "✓")
                } else {
                    self.paint(RED, "✗")
                };
                self.line(&format!("  {mark} {duration_ms} ms"));
                if self.report.is_some() {
                    // Reports summarise tool output themselves; progress stays one line each.
                    return;
                }
                let lines: Vec<&str> = output.lines().collect();
                for l in lines.iter().take(TOOL_OUTPUT_LINES) {
                    let t = self.paint(DIM, &format!("  │ {l}"));
                    self.line(&t);
                }
                if lines.len() > TOOL_OUTPUT_LINES || *truncated {
                    let more = lines.len().saturating_sub(TOOL_OUTPUT_LINES);
                    let t = self.paint(DIM, &format!("  │ … {more} more lines"));
                    self.line(&t);
                }
            }
            EventBody::TurnEnded { stop, error, .. } => match (stop, error) {
                (StopReason::Completed, _) => match &self.report {
                    None => self.line(""),
                    // The streamed answer ends its line on stdout.
                    Some(r) if r.stream_text && !self.at_line_start => {
                        self.write(false, "\n");
                        self.at_line_start = true;
                    }
                    Some(_) => {}
                },
                (StopReason::Cancelled, _) => self.warn("[turn cancelled]"),
                (StopReason::MaxRounds, e) => {
                    let t = format!(
                        "[turn stopped: {}]",
                        e.as_deref().unwrap_or("too many rounds")
                    );
                    self.warn(&t)
                }
                (StopReason::Error, e) => {
                    let t = format!("[turn failed: {}]", e.as_deref().unwrap_or("unknown error"));
                    self.error(&t)
                }
            },
            EventBody::Notice { level, message } => match level {
                NoticeLevel::Info => self.note(&format!("· {message}")),
                NoticeLevel::Warning => self.warn(&format!("! {message}")),
                NoticeLevel::Error => self.error(&format!("! {message}")),
            },
            EventBody::SessionClosed { reason } => {
                self.warn(&format!("[session closed: {reason}]"))
            }
        }
    }

    pub fn control(&mut self, c: &Control) {
        match c {
            Control::StreamGap {
                from_seq, to_seq, ..
            } => self.warn(&format!(
                "[events {from_seq}–{to_seq} are no longer kept by the agent]"
            )),
            Control::ReplayComplete { .. } => self.note("── live ──"),
            Control::SlowConsumer { queued } => {
                self.warn(&format!("[falling behind: {queued} frames queued]"))
            }
            Control::Evicted { reason } => {
                self.error(&format!("[disconnected by the agent: {reason}]"))
            }
            Control::LogUnavailable { message, .. } => self.error(&format!("[{message}]")),
            Control::LogRestored { .. } => {
                self.note("[the event log writes again; the session takes input]")
            }
        }
    }
}

/// One-line JSON for arguments, shortened.
fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 {
        let cut: String = s.chars().take(200).collect();
        format!("{cut}…")
    } else {
        s
    }
}
