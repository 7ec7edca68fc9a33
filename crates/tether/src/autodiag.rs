//! Automatic diagnosis: when an alert key of an instance with `diagnose = true` fires for the
//! first time, the agent investigates it in an ordinary `diagnose` session (a human can
//! attach and watch), and sends the report to the hub and to notifiers that take reports.
//!
//! Bounds: alerts of one target arriving within `window` are diagnosed together; a target is
//! diagnosed at most once per `cooldown`; at most `max_concurrent` diagnoses run at once (a
//! budget separate from the hub's remote sessions); and once `daily_token_budget` tokens
//! have been spent today (UTC), new diagnoses are skipped until tomorrow.

use serde::Deserialize;
use serde_json::{Map, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_mux::outbound::Next;
use tether_mux::{Identity, Mux, SessionOptions};
use tether_proto::link::{AlertEvent, AlertStatus};
use tether_proto::{
    Attach, Class, ClientId, ClientInfo, EventBody, Mode, Op, Policy, Request, RequestId,
    ServerFrame, SessionId, StopReason,
};
use tokio::sync::Semaphore;

/// `[diagnosis]` in the agent config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosisConfig {
    /// Master switch (instances still opt in with `diagnose = true`).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_concurrent")]
    pub max_concurrent: usize,
    /// Tokens per UTC day across automatic diagnoses; 0 means no limit.
    #[serde(default = "default_tokens")]
    pub daily_token_budget: u64,
    /// Alerts of one target within this window are diagnosed together.
    #[serde(
        default = "default_window",
        deserialize_with = "crate::config::duration"
    )]
    pub window: Duration,
    /// A target is diagnosed at most once per this long.
    #[serde(
        default = "default_cooldown",
        deserialize_with = "crate::config::duration"
    )]
    pub cooldown: Duration,
}

fn yes() -> bool {
    true
}
fn default_concurrent() -> usize {
    2
}
fn default_tokens() -> u64 {
    500_000
}
fn default_window() -> Duration {
    Duration::from_secs(30)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(30 * 60)
}

impl Default for DiagnosisConfig {
    fn default() -> Self {
        DiagnosisConfig {
            enabled: true,
            max_concurrent: default_concurrent(),
            daily_token_budget: default_tokens(),
            window: default_window(),
            cooldown: default_cooldown(),
        }
    }
}

/// A finished automatic diagnosis.
#[derive(Clone, Debug)]
pub struct Finished {
    pub alert_key: String,
    pub session_id: String,
    pub report: String,
    pub created_at: String,
    pub plugin: String,
    pub target: String,
}

pub type ReportSink = Arc<dyn Fn(Finished) + Send + Sync>;

#[derive(Default)]
struct State {
    /// Alert keys diagnosed during their current firing (cleared when they recover).
    diagnosed: HashSet<String>,
    /// Targets collecting alerts before their diagnosis starts.
    windows: HashMap<String, Vec<(AlertEvent, String, String)>>,
    /// Targets in cooldown, until when.
    cooldown: HashMap<String, tokio::time::Instant>,
    /// (UTC day number, tokens spent that day).
    tokens: (u64, u64),
}

#[derive(Clone)]
pub struct AutoDiagnosis {
    inner: Arc<Inner>,
}

struct Inner {
    mux: Mux,
    cfg: DiagnosisConfig,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    reports: ReportSink,
}

fn utc_day() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

impl AutoDiagnosis {
    pub fn new(mux: Mux, cfg: DiagnosisConfig, reports: ReportSink) -> AutoDiagnosis {
        AutoDiagnosis {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(cfg.max_concurrent.max(1))),
                mux,
                cfg,
                state: Mutex::new(State::default()),
                reports,
            }),
        }
    }

    /// Considers one alert event. Never blocks.
    pub fn offer(&self, event: &AlertEvent, plugin: &str, target: &str, diagnose: bool) {
        let Ok(mut st) = self.inner.state.lock() else {
            return;
        };
        if event.event_status == AlertStatus::Ok {
            st.diagnosed.remove(&event.alert_key);
            return;
        }
        if !diagnose || !self.inner.cfg.enabled {
            return;
        }
        // Only the first firing of a key: reminders and severity changes are not new news.
        if !st.diagnosed.insert(event.alert_key.clone()) {
            return;
        }
        let target_key = format!("{plugin}::{target}");
        if let Some(until) = st.cooldown.get(&target_key)
            && *until > tokio::time::Instant::now()
        {
            tracing::info!(target = %target_key, "automatic diagnosis skipped: target in cooldown");
            return;
        }
        let first = !st.windows.contains_key(&target_key);
        st.windows.entry(target_key.clone()).or_default().push((
            event.clone(),
            plugin.to_owned(),
            target.to_owned(),
        ));
        if first {
            let this = self.clone();
            let window = self.inner.cfg.window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                this.launch(&target_key);
            });
        }
    }

    /// The window closed: start the target's diagnosis, budgets permitting.
    fn launch(&self, target_key: &str) {
        let (events, permit) = {
            let Ok(mut st) = self.inner.state.lock() else {
                return;
            };
            let Some(events) = st.windows.remove(target_key) else {
                return;
            };
            let day = utc_day();
            if st.tokens.0 != day {
                st.tokens = (day, 0);
            }
            let budget = self.inner.cfg.daily_token_budget;
            if budget > 0 && st.tokens.1 >= budget {
                tracing::warn!(target = %target_key, spent = st.tokens.1, budget, "automatic diagnosis skipped: daily token budget spent");
                return;
            }
            let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
                tracing::warn!(target = %target_key, limit = self.inner.cfg.max_concurrent, "automatic diagnosis skipped: too many running");
                return;
            };
            st.cooldown.insert(
                target_key.to_owned(),
                tokio::time::Instant::now() + self.inner.cfg.cooldown,
            );
            (events, permit)
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.run(events).await;
            drop(permit);
        });
    }

    async fn run(&self, events: Vec<(AlertEvent, String, String)>) {
        let Some((first, plugin, target)) = events.first().cloned() else {
            return;
        };
        let descriptions: Vec<String> = events
            .iter()
            .map(|(e, _, _)| format!("[{}] {}", e.event_status, e.description))
            .collect();
        let mut params = Map::new();
        params.insert("alert".into(), json!(descriptions.join("\n")));
        params.insert("plugin".into(), json!(plugin));
        params.insert("target".into(), json!(target));
        params.insert("alert_key".into(), json!(first.alert_key));
        let creator = ClientInfo {
            client_id: ClientId("auto-diagnosis/0".into()),
            class: Class::Agent,
            name: "auto-diagnosis".into(),
        };
        let mux = &self.inner.mux;
        let session_id = match mux
            .create_session(
                Some(creator),
                Mode::Diagnose,
                Some(format!("auto-diagnosis: {plugin} {target}")),
                Policy::Human,
                params,
                SessionOptions::default(),
            )
            .await
        {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "cannot start an automatic diagnosis");
                return;
            }
        };
        tracing::info!(session = %session_id, %plugin, %target, "automatic diagnosis started");
        let outcome =
            tokio::time::timeout(Duration::from_secs(30 * 60), self.watch(&session_id)).await;
        let (report, tokens) = match outcome {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(session = %session_id, "automatic diagnosis ran 30 min; giving up");
                (None, 0)
            }
        };
        if let Ok(mut st) = self.inner.state.lock() {
            st.tokens.1 += tokens;
        }
        if let Some(report) = report {
            (self.inner.reports)(Finished {
                alert_key: first.alert_key.clone(),
                session_id: session_id.to_string(),
                report,
                created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
                plugin,
                target,
            });
        }
        let _ = mux.close_session(&session_id, "diagnosis finished").await;
    }

    /// Follows the session until its first turn ends: (report, tokens used).
    async fn watch(&self, session_id: &SessionId) -> (Option<String>, u64) {
        let mux = &self.inner.mux;
        let (conn, mut rx) = mux.connect(Identity {
            principal: "auto-diagnosis-watch".into(),
            class: Class::Observer,
            name: "auto-diagnosis".into(),
        });
        conn.handle(Request {
            id: RequestId::from(1),
            op: Op::Attach(Attach {
                session_id: session_id.clone(),
                after_seq: Some(0),
            }),
        })
        .await;
        let mut result = (None, 0);
        loop {
            let frame = match rx.next().await {
                Next::Frame(f) => f,
                Next::Evicted(_) | Next::Closed => break,
            };
            let Ok(text) = std::str::from_utf8(&frame) else {
                continue;
            };
            let Ok(ServerFrame::Event(ev)) = ServerFrame::decode(text) else {
                continue;
            };
            if let EventBody::TurnEnded {
                stop, usage, error, ..
            } = ev.body
            {
                let tokens = usage.map_or(0, |u| u.total_tokens);
                let report = if stop == StopReason::Completed {
                    mux.session_report(session_id).await
                } else {
                    tracing::warn!(session = %session_id, ?stop, error = error.as_deref().unwrap_or(""), "automatic diagnosis did not finish");
                    None
                };
                result = (report, tokens);
                break;
            }
            if matches!(ev.body, EventBody::SessionClosed { .. }) {
                break;
            }
        }
        conn.close("done").await;
        result
    }
}
