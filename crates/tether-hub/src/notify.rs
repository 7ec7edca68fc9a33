//! Notifications out of the hub (`[[notify]]` in the hub config): alert news posted to Slack
//! incoming webhooks or to any HTTP endpoint.
//!
//! * **What**: `firing` (an alert fires, or fires again), `resolved`, `report` (a diagnosis
//!   report was stored with an alert), `approval_waiting` (a permission prompt in a hub
//!   session has waited for a human longer than the notifier's `approval_wait`; once per
//!   prompt and notifier). Each notifier takes the kinds its `on` lists, of alerts of the
//!   severities its `severities` lists (all by default).
//! * **Silences**: an alert a silence covers notifies nobody — not its firing, its
//!   resolution or its report. An alert that fired while silenced and still fires when the
//!   silence ends is notified then.
//! * **Formats**: `slack` — `{"text", "blocks"}` for an incoming webhook: a header (what
//!   happened and the title), the severity, host, state and source, one paragraph (the
//!   report's summary, or the alert's summary or description), and a link to the alert (or
//!   the prompt) in the console; `webhook` — the news as JSON (`event`, `alert`, `report`,
//!   `url`, or the prompt's fields).
//! * **Delivery**: each notifier has its own queue ([`QUEUE`] messages; past it new ones are
//!   dropped and counted) and its own task, so a slow or failing endpoint delays nobody else.
//!   An attempt has the notifier's `timeout`; a network error, a timeout, 408, 429 or a 5xx
//!   is tried again after 1 s, 2 s, 4 s … (at most 60 s, or the server's `Retry-After`), up
//!   to `retries` times; another 4xx is given up at once.
//! * **Metrics**: `tether_hub_notifications_{sent,failed,retried,dropped}_total{notifier,
//!   kind}`.

use crate::alerts::{Alert, AlertState, Change};
use crate::config::{NotifyConfig, NotifyKind, NotifyOn};
use crate::hub::{Hub, NotifierCounters};
use crate::relay::{Activity, SessionNote};
use crate::store::{AlertChange, ReportRow, rfc3339_ms};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tether_host::sync::lock;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages one notifier may have waiting.
pub const QUEUE: usize = 256;
/// Prompts followed at once (more are not announced).
const MAX_PROMPTS: usize = 10_000;
/// The longest paragraph in a Slack message.
const MAX_PARAGRAPH: usize = 700;
/// The longest arguments shown in a Slack message.
const MAX_ARGS: usize = 1500;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A permission prompt waiting in a hub session.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub session_id: String,
    pub call_id: String,
    pub tool: String,
    pub args: Value,
    pub agent_id: String,
    pub hostname: String,
    /// By the hub's clock.
    pub requested_ms: i64,
}

/// One piece of news, formatted by each notifier for its kind.
#[derive(Debug)]
pub enum News {
    Alert {
        on: NotifyOn,
        /// Boxed: an alert is large, and every queued message is an `Arc` of this anyway.
        alert: Box<Alert>,
        report: Option<ReportRow>,
    },
    Approval {
        prompt: Prompt,
        waited_ms: i64,
    },
}

impl News {
    fn on(&self) -> NotifyOn {
        match self {
            News::Alert { on, .. } => *on,
            News::Approval { .. } => NotifyOn::ApprovalWaiting,
        }
    }

    /// For logs.
    fn describe(&self) -> String {
        match self {
            News::Alert { on, alert, .. } => {
                format!("{} of alert {}", on.as_str(), alert.alert_id)
            }
            News::Approval { prompt, .. } => format!(
                "approval_waiting of {} in session {}",
                prompt.call_id, prompt.session_id
            ),
        }
    }
}

struct Notifier {
    cfg: NotifyConfig,
    tx: mpsc::Sender<Arc<News>>,
    counters: Arc<NotifierCounters>,
}

impl Notifier {
    fn wants(&self, on: NotifyOn) -> bool {
        self.cfg.on.contains(&on)
    }

    /// Whether it takes this piece of news (its kind, and an alert's severity).
    fn takes(&self, news: &News) -> bool {
        self.wants(news.on())
            && match news {
                News::Alert { alert, .. } => self.cfg.severities.contains(&alert.severity),
                News::Approval { .. } => true,
            }
    }

    /// Queues without waiting; a full queue drops the message (counted).
    fn offer(&self, news: &Arc<News>) {
        if self.tx.try_send(news.clone()).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(notifier = %self.cfg.name, what = %news.describe(), "notification dropped: the notifier's queue is full");
        }
    }
}

/// Starts the notifiers and the task that feeds them (nothing when none is configured).
pub fn spawn(hub: Hub, stop: CancellationToken) {
    if hub.config().notify.is_empty() {
        return;
    }
    tether_host::tls::ensure_provider();
    let client = match reqwest::Client::builder()
        .user_agent(concat!("tether-hub/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the HTTP client for notifications; none will be sent");
            return;
        }
    };
    let mut notifiers = Vec::new();
    for cfg in hub.config().notify.clone() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(NotifierCounters::default());
        lock(&hub.metrics().notifiers).push((
            cfg.name.clone(),
            cfg.kind.as_str(),
            counters.clone(),
        ));
        tokio::spawn(deliver(
            cfg.clone(),
            client.clone(),
            rx,
            counters.clone(),
            hub.console_url(),
            stop.clone(),
        ));
        notifiers.push(Notifier { cfg, tx, counters });
    }
    // Subscribed before the task runs: nothing published after `start` returns is missed.
    let changes = hub.alert_changes();
    let notes = hub.relay().notes();
    tokio::spawn(dispatch(hub, notifiers, changes, notes, stop));
}

/// What the dispatcher remembers.
struct Dispatch {
    hub: Hub,
    notifiers: Vec<Notifier>,
    /// Alert id → the episode (`started_at`) whose firing was announced.
    announced: HashMap<i64, i64>,
    /// Reports up to this id were there when the hub started (or are forgotten).
    reports_before: i64,
    /// Alert id → the newest of its reports announced.
    reported: HashMap<i64, i64>,
    /// Prompts waiting, by (session, call), with the notifiers already told.
    prompts: HashMap<(String, String), (Prompt, Vec<bool>)>,
}

async fn dispatch(
    hub: Hub,
    notifiers: Vec<Notifier>,
    mut changes: tokio::sync::broadcast::Receiver<Arc<AlertChange>>,
    mut notes: tokio::sync::broadcast::Receiver<Arc<SessionNote>>,
    stop: CancellationToken,
) {
    let reports_before = hub
        .store()
        .run(|s| s.list_reports(None, None, 1))
        .await
        .ok()
        .and_then(|r| r.first().map(|r| r.report_id))
        .unwrap_or(0);
    let mut d = Dispatch {
        hub,
        notifiers,
        announced: HashMap::new(),
        reports_before,
        reported: HashMap::new(),
        prompts: HashMap::new(),
    };
    let mut tick = tokio::time::interval(crate::operators::SILENCE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            c = changes.recv() => match c {
                Ok(c) => d.on_change(&c).await,
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "notifications fell behind the alert changes; some were not sent"),
                Err(RecvError::Closed) => return,
            },
            n = notes.recv() => match n {
                Ok(n) => d.on_note(&n),
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "notifications fell behind the sessions; some prompts are not followed"),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => d.on_tick(),
        }
    }
}

impl Dispatch {
    fn send(&self, news: News) {
        let news = Arc::new(news);
        for n in self.notifiers.iter().filter(|n| n.takes(&news)) {
            n.offer(&news);
        }
    }

    fn wants(&self, on: NotifyOn) -> bool {
        self.notifiers.iter().any(|n| n.wants(on))
    }

    async fn on_change(&mut self, c: &AlertChange) {
        let a = &c.alert;
        match c.change {
            Change::Created | Change::Fired if a.state == AlertState::Firing => self.firing(a),
            Change::Unsilenced
                if a.state == AlertState::Firing
                    && self.announced.get(&a.alert_id) != Some(&a.started_at) =>
            {
                self.firing(a)
            }
            Change::Resolved => {
                self.announced.remove(&a.alert_id);
                if !a.silenced {
                    self.send(News::Alert {
                        on: NotifyOn::Resolved,
                        alert: Box::new(a.clone()),
                        report: None,
                    });
                }
            }
            Change::Diagnosed => self.reports(a).await,
            _ => {}
        }
    }

    fn firing(&mut self, a: &Alert) {
        if a.silenced {
            return;
        }
        self.announced.insert(a.alert_id, a.started_at);
        if self.announced.len() > 100_000 {
            // Resolutions prune it; alerts that never resolve (a retention sweep) would not.
            self.announced.clear();
            self.announced.insert(a.alert_id, a.started_at);
        }
        self.send(News::Alert {
            on: NotifyOn::Firing,
            alert: Box::new(a.clone()),
            report: None,
        });
    }

    /// The reports newly linked to `a`.
    async fn reports(&mut self, a: &Alert) {
        let newest = a
            .diagnoses
            .iter()
            .filter_map(|d| d.report_id)
            .max()
            .unwrap_or(0);
        // Per alert: two agents' reports may be announced in another order than stored.
        let since = self
            .reported
            .get(&a.alert_id)
            .copied()
            .unwrap_or(0)
            .max(self.reports_before);
        if newest <= since {
            return;
        }
        if self.reported.len() > 100_000 {
            self.reports_before = self.reported.values().copied().max().unwrap_or(0);
            self.reported.clear();
        }
        self.reported.insert(a.alert_id, newest);
        if a.silenced || !self.wants(NotifyOn::Report) {
            return;
        }
        let id = a.alert_id;
        let rows = match self
            .hub
            .store()
            .run(move |s| s.list_reports(None, Some(id), 20))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(alert_id = id, error = %e, "cannot read a report to notify");
                return;
            }
        };
        // Oldest first.
        for r in rows.into_iter().rev().filter(|r| r.report_id > since) {
            self.send(News::Alert {
                on: NotifyOn::Report,
                alert: Box::new(a.clone()),
                report: Some(r),
            });
        }
    }

    fn on_note(&mut self, n: &SessionNote) {
        match &n.activity {
            Activity::PermissionRequested {
                call_id,
                tool,
                args,
            } => {
                if !self.wants(NotifyOn::ApprovalWaiting) || self.prompts.len() >= MAX_PROMPTS {
                    return;
                }
                let prompt = Prompt {
                    session_id: n.session_id.clone(),
                    call_id: call_id.clone(),
                    tool: tool.clone(),
                    args: args.clone(),
                    agent_id: n.agent_id.clone(),
                    hostname: n.hostname.clone(),
                    requested_ms: self.hub.now_ms(),
                };
                let told = vec![false; self.notifiers.len()];
                self.prompts
                    .entry((n.session_id.clone(), call_id.clone()))
                    .or_insert((prompt, told));
            }
            Activity::PermissionResolved { call_id } => {
                self.prompts
                    .remove(&(n.session_id.clone(), call_id.clone()));
            }
            Activity::Closed => self.prompts.retain(|(sid, _), _| *sid != n.session_id),
            Activity::TurnEnded { .. } => {}
        }
    }

    /// Prompts past a notifier's `approval_wait` are announced to it, once.
    fn on_tick(&mut self) {
        if self.prompts.is_empty() {
            return;
        }
        let now = self.hub.now_ms();
        for (prompt, told) in self.prompts.values_mut() {
            let waited = now.saturating_sub(prompt.requested_ms);
            for (i, n) in self.notifiers.iter().enumerate() {
                if told[i]
                    || !n.wants(NotifyOn::ApprovalWaiting)
                    || waited < n.cfg.approval_wait.as_millis() as i64
                {
                    continue;
                }
                told[i] = true;
                n.offer(&Arc::new(News::Approval {
                    prompt: prompt.clone(),
                    waited_ms: waited,
                }));
            }
        }
    }
}

/// One notifier's task: its queue, one message at a time, each retried as the module doc
/// says.
async fn deliver(
    cfg: NotifyConfig,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Arc<News>>,
    counters: Arc<NotifierCounters>,
    console: String,
    stop: CancellationToken,
) {
    loop {
        let news = tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv() => match n {
                Some(n) => n,
                None => return,
            },
        };
        let body = match cfg.kind {
            NotifyKind::Slack => slack_message(&news, &console),
            NotifyKind::Webhook => webhook_message(&news, &console),
        };
        let mut attempt: u32 = 0;
        loop {
            let outcome =
                tokio::time::timeout(cfg.timeout, client.post(&cfg.url).json(&body).send()).await;
            let (retry, why, wait) = match outcome {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(notifier = %cfg.name, what = %news.describe(), "notification sent");
                    break;
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(MAX_BACKOFF));
                    let transient = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                    (transient, format!("answered {status}"), after)
                }
                Ok(Err(e)) => (true, format!("failed: {}", without_url(&e)), None),
                Err(_) => (
                    true,
                    format!("no answer within {} s", cfg.timeout.as_secs_f64()),
                    None,
                ),
            };
            if !retry || attempt >= cfg.retries {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(notifier = %cfg.name, what = %news.describe(), attempts = attempt + 1, "notification given up: the endpoint {why}");
                break;
            }
            counters.retried.fetch_add(1, Ordering::Relaxed);
            let backoff = wait
                .unwrap_or_else(|| Duration::from_secs(1u64 << attempt.min(6)).min(MAX_BACKOFF));
            tracing::info!(notifier = %cfg.name, what = %news.describe(), "notification not delivered ({why}); trying again in {} s", backoff.as_secs());
            attempt += 1;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }
}

/// A request error without its URL (a Slack webhook's URL is its secret).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

// ---- formats ----------------------------------------------------------------------------

/// The console page of an alert.
pub fn alert_link(console: &str, alert_id: i64) -> String {
    format!("{console}#/alert/{alert_id}")
}

/// The console page of a session, where its prompts are answered.
pub fn session_link(console: &str, session_id: &str) -> String {
    format!("{console}#/session/{session_id}")
}

/// Text for Slack's mrkdwn: `&`, `<` and `>` escaped (Slack's only escapes).
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One paragraph of a report: its `Summary` section's first paragraph, else its first
/// paragraph that is not a heading; joined into one line.
pub fn summary_paragraph(report: &str) -> String {
    let lines: Vec<&str> = report.lines().collect();
    let heading = |l: &str| l.trim_start().starts_with('#');
    let start = lines
        .iter()
        .position(|l| {
            let t = l.trim_start().trim_start_matches('#').trim();
            heading(l) && t.to_ascii_lowercase().starts_with("summary")
        })
        .map(|i| i + 1);
    let paragraph = |from: usize| -> Vec<&str> {
        lines[from..]
            .iter()
            .map(|l| l.trim())
            .skip_while(|l| l.is_empty())
            .take_while(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    };
    let mut para = start.map(paragraph).unwrap_or_default();
    if para.is_empty() {
        let first = lines
            .iter()
            .position(|l| !l.trim().is_empty() && !heading(l))
            .unwrap_or(lines.len());
        para = paragraph(first);
    }
    clip(&para.join(" "), MAX_PARAGRAPH)
}

fn headline(on: NotifyOn) -> &'static str {
    match on {
        NotifyOn::Firing => "FIRING",
        NotifyOn::Resolved => "RESOLVED",
        NotifyOn::Report => "DIAGNOSIS",
        NotifyOn::ApprovalWaiting => "APPROVAL WAITING",
    }
}

/// Slack's `plain_text` header: 150 characters at most.
fn header(text: &str) -> Value {
    let text: String = if text.chars().count() > 150 {
        text.chars().take(149).collect::<String>() + "…"
    } else {
        text.to_owned()
    };
    json!({"type": "header", "text": {"type": "plain_text", "text": text}})
}

fn host_of(a: &Alert) -> String {
    a.hostname
        .clone()
        .or_else(|| a.agent_id.clone())
        .unwrap_or_else(|| "fleet (no agent matched)".into())
}

/// A Slack incoming-webhook message.
pub fn slack_message(news: &News, console: &str) -> Value {
    match news {
        News::Alert { on, alert, report } => {
            let host = host_of(alert);
            let paragraph = match (on, report) {
                (_, Some(r)) => summary_paragraph(&r.report),
                (NotifyOn::Resolved, _) => format!(
                    "Resolved at {} (firing since {}).",
                    rfc3339_ms(alert.resolved_at.unwrap_or(alert.last_at)),
                    rfc3339_ms(alert.started_at)
                ),
                _ => ["summary", "description", "message"]
                    .iter()
                    .filter_map(|k| alert.annotations.get(*k))
                    .map(|t| summary_paragraph(t))
                    .find(|t| !t.is_empty())
                    .unwrap_or_else(|| format!("Firing since {}.", rfc3339_ms(alert.started_at))),
            };
            let link = alert_link(console, alert.alert_id);
            json!({
                "text": format!("[{}] {} {} on {}", headline(*on), alert.severity.as_str(), alert.title, host),
                "blocks": [
                    header(&format!("[{}] {}", headline(*on), alert.title)),
                    {"type": "section", "fields": [
                        {"type": "mrkdwn", "text": format!("*Severity*\n{}", alert.severity.as_str())},
                        {"type": "mrkdwn", "text": format!("*Host*\n{}", esc(&host))},
                        {"type": "mrkdwn", "text": format!("*State*\n{}", alert.state.as_str())},
                        {"type": "mrkdwn", "text": format!("*Source*\n{}", alert.source.as_str())},
                    ]},
                    {"type": "section", "text": {"type": "mrkdwn", "text": esc(&paragraph)}},
                    {"type": "context", "elements": [
                        {"type": "mrkdwn", "text": format!("<{link}|Open alert {} in the tether console>", alert.alert_id)},
                    ]},
                ],
            })
        }
        News::Approval { prompt, waited_ms } => {
            let link = session_link(console, &prompt.session_id);
            let args = clip(
                &serde_json::to_string_pretty(&prompt.args).unwrap_or_default(),
                MAX_ARGS,
            );
            let waited =
                humantime::format_duration(Duration::from_secs((*waited_ms).max(0) as u64 / 1000));
            json!({
                "text": format!("[{}] {} on {} waits for a human", headline(NotifyOn::ApprovalWaiting), prompt.tool, prompt.hostname),
                "blocks": [
                    header(&format!("[{}] {} on {}", headline(NotifyOn::ApprovalWaiting), prompt.tool, prompt.hostname)),
                    {"type": "section", "fields": [
                        {"type": "mrkdwn", "text": format!("*Tool*\n`{}`", esc(&prompt.tool))},
                        {"type": "mrkdwn", "text": format!("*Host*\n{}", esc(&prompt.hostname))},
                        {"type": "mrkdwn", "text": format!("*Waiting*\n{waited}")},
                        {"type": "mrkdwn", "text": format!("*Session*\n{}", esc(&prompt.session_id))},
                    ]},
                    {"type": "section", "text": {"type": "mrkdwn", "text": format!("*Arguments*\n```{}```", esc(&args))}},
                    {"type": "context", "elements": [
                        {"type": "mrkdwn", "text": format!("<{link}|Answer the prompt in the tether console> (call {})", esc(&prompt.call_id))},
                    ]},
                ],
            })
        }
    }
}

/// A generic webhook's body.
pub fn webhook_message(news: &News, console: &str) -> Value {
    match news {
        News::Alert { on, alert, report } => {
            let mut v = json!({
                "event": on.as_str(),
                "alert": alert,
                "url": alert_link(console, alert.alert_id),
            });
            if let (Some(r), Value::Object(m)) = (report, &mut v) {
                m.insert("report".into(), json!(r));
            }
            v
        }
        News::Approval { prompt, waited_ms } => json!({
            "event": NotifyOn::ApprovalWaiting.as_str(),
            "session_id": prompt.session_id,
            "call_id": prompt.call_id,
            "tool": prompt.tool,
            "args": prompt.args,
            "agent_id": prompt.agent_id,
            "hostname": prompt.hostname,
            "requested_at": rfc3339_ms(prompt.requested_ms),
            "waited_ms": waited_ms,
            "url": session_link(console, &prompt.session_id),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_summary_is_its_summary_section_or_first_paragraph() {
        let report = "## Severity\nCRITICAL\n\n## Summary\n/var is full:\nthe journal grew.\n\n## Root cause\nx";
        assert_eq!(summary_paragraph(report), "/var is full: the journal grew.");
        assert_eq!(
            summary_paragraph("# Report\n\nFirst paragraph\nstill.\n\nSecond."),
            "First paragraph still."
        );
        assert_eq!(
            summary_paragraph("Summary: just text"),
            "Summary: just text"
        );
        let long = "x".repeat(2000);
        assert!(summary_paragraph(&long).len() <= MAX_PARAGRAPH + '…'.len_utf8());
    }

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(esc("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
    }
}
