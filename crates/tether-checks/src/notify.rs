//! Notifiers: where alert events (and, optionally, diagnosis reports) go besides the hub.
//!
//! * `console` — one line per alert event on stdout (a report: a header line, then its text).
//! * `webhook` — POSTs the event (or report) as JSON to `url`, with `headers` (values may use
//!   `${ENV_VAR}`), a per-attempt `timeout`, and up to `retries` retries with exponential
//!   backoff (from `retry_backoff`, doubling, at most 60 s, ±25 % jitter) on connection
//!   errors, timeouts, 5xx, 408 and 429; another 4xx gives up at once. Header
//!   `X-Tether-Kind: alert|report` says which it is.
//! * `exec` — runs `command` with `args`, the event JSON (one line) on its stdin and
//!   `TETHER_KIND`, `TETHER_ALERT_KEY` (and `TETHER_STATUS` for alerts) in its environment;
//!   killed (its whole process group) after `timeout`. A non-zero exit is logged with the
//!   start of its stderr. Its environment is minimal — `PATH`, `HOME`, `LANG`, `LC_ALL`,
//!   `LC_CTYPE`, `TERM`, `TZ`, `USER`, `LOGNAME`, `SHELL`, `TMPDIR` from the agent's — plus
//!   `env`; `inherit_env = true` gives it the agent's whole environment (secrets included).
//!
//! Each notifier has its own bounded queue and task, so a slow or failing one never delays
//! the others or the caller: [`Notifiers::notify`] and [`Notifiers::report`] never wait; a full
//! queue drops the item with a counted warning ([`NotifierStats::dropped`]).
//!
//! ```toml
//! [[notifiers]]
//! kind = "webhook"
//! url = "https://hooks.example.com/tether"
//! headers = { Authorization = "Bearer ${TETHER_HOOK_TOKEN}" }
//! timeout = "5s"
//! retries = 3
//! reports = true
//!
//! [[notifiers]]
//! kind = "exec"
//! command = "/usr/local/bin/page-oncall"
//! args = ["--team", "infra"]
//! env = { PAGER_ROUTE = "infra" }
//! timeout = "10s"
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tether_host::process::{kill_group, minimal_env};
use tether_proto::link::{AlertEvent, DiagnoseReport};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default per-delivery timeout (one HTTP attempt, one command run).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default webhook retries after the first attempt.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default first backoff between webhook attempts.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff between webhook attempts.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// Default queue length per notifier.
pub const DEFAULT_QUEUE: usize = 256;
/// How much of an exec notifier's stderr is kept for the log.
const STDERR_LIMIT: usize = 2048;

/// Which notifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifierKind {
    Console,
    Webhook,
    Exec,
}

impl NotifierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifierKind::Console => "console",
            NotifierKind::Webhook => "webhook",
            NotifierKind::Exec => "exec",
        }
    }
}

/// One `[[notifiers]]` entry of the agent's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    pub kind: NotifierKind,
    /// A name for logs and stats (default: the kind and position, `webhook#1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// webhook: where to POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// webhook: extra request headers; `${VAR}` in a value is replaced by the environment
    /// variable (unset → configuration error).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// exec: the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// exec: its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// exec: environment variables for the command, on top of the minimal environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// exec: `true` gives the command the agent's whole environment (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit_env: Option<bool>,
    /// webhook, exec: per attempt / per run (default 10s).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// webhook: retries after the first attempt (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// webhook: the first backoff (default 1s), doubling per retry.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_backoff: Option<Duration>,
    /// Queue length (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Also receives diagnosis reports.
    #[serde(default)]
    pub reports: bool,
}

mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration (write e.g. \"5s\", \"1m\")"
            ))
        })
    }
}

impl NotifierConfig {
    /// Checks the entry; errors name the key (`url: …`).
    pub fn validate(&self) -> Result<(), String> {
        let is = |k: NotifierKind| self.kind == k;
        let only = |key: &str, set: bool, kinds: &[NotifierKind]| -> Result<(), String> {
            if set && !kinds.contains(&self.kind) {
                let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                Err(format!(
                    "{key}: not used by a {} notifier (only {})",
                    self.kind.as_str(),
                    names.join(", ")
                ))
            } else {
                Ok(())
            }
        };
        use NotifierKind::{Exec, Webhook};
        only("url", self.url.is_some(), &[Webhook])?;
        only("headers", !self.headers.is_empty(), &[Webhook])?;
        only("retries", self.retries.is_some(), &[Webhook])?;
        only("retry_backoff", self.retry_backoff.is_some(), &[Webhook])?;
        only("command", self.command.is_some(), &[Exec])?;
        only("args", !self.args.is_empty(), &[Exec])?;
        only("env", !self.env.is_empty(), &[Exec])?;
        only("inherit_env", self.inherit_env.is_some(), &[Exec])?;
        for var in self.env.keys() {
            if var.is_empty() || var.contains(['=', '\0']) {
                return Err(format!(
                    "env: `{var}` is not a valid environment variable name"
                ));
            }
        }
        only("timeout", self.timeout.is_some(), &[Webhook, Exec])?;
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err("timeout: must be longer than zero".into());
        }
        if self.queue == Some(0) {
            return Err("queue: must be at least 1".into());
        }
        if is(Webhook) {
            let url = self.url.as_deref().ok_or("url: required for a webhook")?;
            let parsed =
                reqwest::Url::parse(url).map_err(|e| format!("url: {url:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("url: {url:?} must be http:// or https://"));
            }
            for (name, value) in &self.headers {
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("headers.{name}: not a valid header name"))?;
                let value = expand_env(value).map_err(|e| format!("headers.{name}: {e}"))?;
                reqwest::header::HeaderValue::from_str(&value)
                    .map_err(|_| format!("headers.{name}: not a valid header value"))?;
            }
        }
        if is(Exec) && self.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
            return Err("command: required for an exec notifier".into());
        }
        Ok(())
    }
}

/// Replaces every `${NAME}` in `s` by the environment variable `NAME`. An unset variable or
/// an unterminated `${` is an error; a `$` not followed by `{` is kept.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err(format!("empty `${{}}` in {s:?}"));
        }
        let value =
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A finished diagnosis report, for notifiers with `reports = true`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnosisReport {
    pub alert_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub report: String,
    /// RFC 3339.
    pub created_at: String,
    /// The alert's labels, when known.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl From<&DiagnoseReport> for DiagnosisReport {
    fn from(r: &DiagnoseReport) -> Self {
        DiagnosisReport {
            alert_key: r.alert_key.clone(),
            session_id: r.session_id.clone(),
            report: r.report.clone(),
            created_at: r.created_at.clone(),
            labels: BTreeMap::new(),
        }
    }
}

/// Counters of one notifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotifierStats {
    pub name: String,
    pub kind: NotifierKind,
    /// Items delivered.
    pub sent: u64,
    /// Items given up on (after retries, a timeout, a failed command).
    pub failed: u64,
    /// Items dropped because the queue was full.
    pub dropped: u64,
}

#[derive(Clone)]
enum Item {
    Alert(Arc<AlertEvent>),
    Report(Arc<DiagnosisReport>),
}

impl Item {
    fn kind(&self) -> &'static str {
        match self {
            Item::Alert(_) => "alert",
            Item::Report(_) => "report",
        }
    }

    fn alert_key(&self) -> &str {
        match self {
            Item::Alert(e) => &e.alert_key,
            Item::Report(r) => &r.alert_key,
        }
    }

    fn json(&self) -> String {
        let r = match self {
            Item::Alert(e) => serde_json::to_string(e.as_ref()),
            Item::Report(r) => serde_json::to_string(r.as_ref()),
        };
        r.unwrap_or_else(|e| format!("{{\"error\":\"cannot encode: {e}\"}}"))
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

struct Handle {
    name: String,
    kind: NotifierKind,
    reports: bool,
    tx: mpsc::Sender<Item>,
    counters: Arc<Counters>,
}

/// The running notifiers. Cheap to clone; every clone feeds the same queues.
#[derive(Clone)]
pub struct Notifiers {
    handles: Arc<Vec<Handle>>,
    closing: CancellationToken,
    tracker: TaskTracker,
}

impl Notifiers {
    /// Validates every entry and starts one task per notifier. Must be called within a tokio
    /// runtime. Errors name the entry and key: `notifiers[1].url: required for a webhook`.
    pub fn start(configs: &[NotifierConfig]) -> Result<Notifiers, String> {
        let closing = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut prepared = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            config
                .validate()
                .map_err(|e| format!("notifiers[{i}].{e}"))?;
            let name = config
                .name
                .clone()
                .unwrap_or_else(|| format!("{}#{i}", config.kind.as_str()));
            let deliver = Deliver::new(config).map_err(|e| format!("notifiers[{i}]: {e}"))?;
            prepared.push((name, config, deliver));
        }
        let mut handles = Vec::new();
        for (name, config, deliver) in prepared {
            let (tx, rx) = mpsc::channel(config.queue.unwrap_or(DEFAULT_QUEUE));
            let counters = Arc::new(Counters::default());
            tracker.spawn(worker(
                name.clone(),
                deliver,
                rx,
                counters.clone(),
                closing.clone(),
            ));
            handles.push(Handle {
                name,
                kind: config.kind,
                reports: config.reports,
                tx,
                counters,
            });
        }
        Ok(Notifiers {
            handles: Arc::new(handles),
            closing,
            tracker,
        })
    }

    /// Queues an alert event for every notifier. Never waits.
    pub fn notify(&self, event: &AlertEvent) {
        let item = Item::Alert(Arc::new(event.clone()));
        for h in self.handles.iter() {
            offer(h, item.clone());
        }
    }

    /// Queues a diagnosis report for the notifiers with `reports = true`. Never waits.
    pub fn report(&self, report: &DiagnosisReport) {
        let item = Item::Report(Arc::new(report.clone()));
        for h in self.handles.iter().filter(|h| h.reports) {
            offer(h, item.clone());
        }
    }

    pub fn stats(&self) -> Vec<NotifierStats> {
        self.handles
            .iter()
            .map(|h| NotifierStats {
                name: h.name.clone(),
                kind: h.kind,
                sent: h.counters.sent.load(Ordering::Relaxed),
                failed: h.counters.failed.load(Ordering::Relaxed),
                dropped: h.counters.dropped.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops taking items, lets each notifier deliver what is queued (a webhook stops
    /// retrying), and waits at most `within` for them; whatever is still going is abandoned.
    pub async fn shutdown(&self, within: Duration) {
        self.closing.cancel();
        self.tracker.close();
        if tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("notifiers still delivering at shutdown; abandoned");
        }
    }
}

fn offer(h: &Handle, item: Item) {
    match h.tx.try_send(item) {
        Ok(()) => {}
        Err(e) => {
            let n = h.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "notifier stopped",
            };
            tracing::warn!(notifier = %h.name, dropped_total = n, "notification dropped: {why}");
        }
    }
}

async fn worker(
    name: String,
    deliver: Deliver,
    mut rx: mpsc::Receiver<Item>,
    counters: Arc<Counters>,
    closing: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
            _ = closing.cancelled() => {
                rx.close();
                match rx.recv().await {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        match deliver.deliver(&name, &item, &closing).await {
            Ok(()) => counters.sent.fetch_add(1, Ordering::Relaxed),
            Err(error) => {
                tracing::warn!(notifier = %name, kind = item.kind(), alert_key = item.alert_key(), %error, "notification failed");
                counters.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

enum Deliver {
    Console,
    Webhook {
        client: reqwest::Client,
        url: reqwest::Url,
        headers: reqwest::header::HeaderMap,
        retries: u32,
        backoff: Duration,
    },
    Exec(ExecSpec),
}

/// How an exec notifier runs its command.
struct ExecSpec {
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    inherit_env: bool,
    timeout: Duration,
}

impl Deliver {
    fn new(c: &NotifierConfig) -> Result<Deliver, String> {
        let timeout = c.timeout.unwrap_or(DEFAULT_TIMEOUT);
        Ok(match c.kind {
            NotifierKind::Console => Deliver::Console,
            NotifierKind::Webhook => {
                let url = c.url.as_deref().unwrap_or_default();
                let url = reqwest::Url::parse(url).map_err(|e| format!("url: {e}"))?;
                let mut headers = reqwest::header::HeaderMap::new();
                for (name, value) in &c.headers {
                    let value = expand_env(value).map_err(|e| format!("headers.{name}: {e}"))?;
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("headers.{name}: not a valid header name"))?;
                    let value = reqwest::header::HeaderValue::from_str(&value)
                        .map_err(|_| format!("headers.{name}: not a valid header value"))?;
                    headers.insert(name, value);
                }
                // rustls needs a process-wide crypto provider; an error means one is
                // installed already.
                tether_host::tls::ensure_provider();
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout)
                    .user_agent(concat!("tether-notifier/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
                Deliver::Webhook {
                    client,
                    url,
                    headers,
                    retries: c.retries.unwrap_or(DEFAULT_RETRIES),
                    backoff: c.retry_backoff.unwrap_or(DEFAULT_RETRY_BACKOFF),
                }
            }
            NotifierKind::Exec => Deliver::Exec(ExecSpec {
                command: c.command.clone().unwrap_or_default(),
                args: c.args.clone(),
                env: c.env.clone(),
                inherit_env: c.inherit_env.unwrap_or(false),
                timeout,
            }),
        })
    }

    async fn deliver(
        &self,
        name: &str,
        item: &Item,
        closing: &CancellationToken,
    ) -> Result<(), String> {
        match self {
            Deliver::Console => console(item).await,
            Deliver::Webhook {
                client,
                url,
                headers,
                retries,
                backoff,
            } => {
                let body = item.json();
                let attempts = retries.saturating_add(1);
                let mut last = String::new();
                for attempt in 1..=attempts {
                    if attempt > 1 {
                        let wait = backoff_delay(*backoff, attempt - 1);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = closing.cancelled() => {
                                return Err(format!("gave up at shutdown after {} attempts: {last}", attempt - 1));
                            }
                        }
                    }
                    let request = client
                        .post(url.clone())
                        .headers(headers.clone())
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .header("x-tether-kind", item.kind())
                        .body(body.clone());
                    match request.send().await {
                        Ok(resp) if resp.status().is_success() => return Ok(()),
                        Ok(resp) => {
                            let status = resp.status();
                            last = format!("HTTP {status}");
                            let retryable = status.is_server_error()
                                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                                || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                            if !retryable {
                                return Err(format!("{last}; not retried"));
                            }
                        }
                        Err(e) => last = error_chain(&e),
                    }
                    tracing::debug!(notifier = %name, attempt, error = %last, "webhook attempt failed");
                }
                Err(format!("gave up after {attempts} attempts: {last}"))
            }
            Deliver::Exec(spec) => exec(spec, item).await,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `base` doubled per retry (`retry` from 1), at most [`MAX_RETRY_BACKOFF`], with ±25 %
/// jitter.
pub fn backoff_delay(base: Duration, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(20));
    let d = base.saturating_mul(factor).min(MAX_RETRY_BACKOFF);
    d.mul_f64(0.75 + 0.5 * random_unit())
}

/// A number in [0, 1), different on every call (not for cryptography).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    #[allow(clippy::cast_precision_loss)]
    let x = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    x
}

/// The console line of an alert event.
pub fn console_line(e: &AlertEvent) -> String {
    // Whatever time a script or peer gave (year 11476 once killed this notifier).
    let time = tether_proto::time::rfc3339_secs(e.event_time);
    let mut what: Vec<&str> = ["plugin", "target", "check"]
        .iter()
        .filter_map(|k| e.labels.get(*k).map(String::as_str))
        .collect();
    if what.is_empty() {
        what.push("-");
    }
    format!(
        "{time} {:<8} {} [{}] {}",
        e.event_status.as_str(),
        what.join(" "),
        e.alert_key,
        e.description.replace('\n', " ")
    )
}

async fn console(item: &Item) -> Result<(), String> {
    let text = match item {
        Item::Alert(e) => format!("{}\n", console_line(e)),
        Item::Report(r) => format!(
            "{} report [{}]\n{}\n",
            r.created_at,
            r.alert_key,
            r.report.trim_end()
        ),
    };
    // A blocking write on its own thread: a stdout nobody reads stalls only this notifier.
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    })
    .await
    .map_err(|e| format!("stdout: {e}"))?
    .map_err(|e| format!("stdout: {e}"))
}

async fn exec(spec: &ExecSpec, item: &Item) -> Result<(), String> {
    let (command, timeout) = (spec.command.as_str(), spec.timeout);
    let mut cmd = tokio::process::Command::new(command);
    if !spec.inherit_env {
        minimal_env(&mut cmd);
    }
    cmd.args(&spec.args)
        .envs(&spec.env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env("TETHER_KIND", item.kind())
        .env("TETHER_ALERT_KEY", item.alert_key())
        .kill_on_drop(true)
        .process_group(0);
    if let Item::Alert(e) = item {
        cmd.env("TETHER_STATUS", e.event_status.as_str());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let group = child.id();
    let stdin = child.stdin.take();
    let stderr = child.stderr.take();
    let mut line = item.json();
    line.push('\n');
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is fine.
            if let Err(e) = stdin.write_all(line.as_bytes()).await {
                tracing::debug!(%e, "exec notifier did not take its input");
            }
        }
    };
    let drain = async move {
        let mut buf = Vec::new();
        if let Some(stderr) = stderr {
            use tokio::io::AsyncReadExt;
            let mut limited = stderr.take(STDERR_LIMIT as u64);
            let _ = limited.read_to_end(&mut buf).await;
            // Keep reading (and discarding) so the command never blocks on a full pipe.
            let mut rest = limited.into_inner();
            let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
        }
        buf
    };
    let run = async {
        let ((), err) = tokio::join!(feed, drain);
        (child.wait().await, err)
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    match outcome {
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), err)) => {
            let err = String::from_utf8_lossy(&err).trim().to_owned();
            Err(format!("{command:?} exited with {status}: {err}"))
        }
        Ok((Err(e), _)) => Err(format!("{command:?}: {e}")),
        Err(_) => {
            // Not reaped yet, so the group id is still this command's.
            if let Some(pid) = group {
                kill_group(pid);
            }
            let _ = child.kill().await;
            Err(format!(
                "{command:?} did not finish within {}; killed",
                humantime::format_duration(timeout)
            ))
        }
    }
}
