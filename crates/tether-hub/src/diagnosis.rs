//! Automatic diagnosis at the hub (`[diagnosis]` in the hub config).
//!
//! A firing alert of a configured source and severity, not silenced and routed to an agent,
//! starts an ordinary `diagnose` hub session on that agent, created by `auto-diagnosis`
//! (agent class, policy `human`: operators attach, watch and approve its tool calls as in any
//! hub session). The session is linked to the alert (`params.alert_id`), so the agent's
//! report is stored with the alert (`diagnoses`).
//!
//! * **Parameters**: the alert's `title`, `labels`, and the `summary`, `description` and
//!   `runbook_url` annotations, plus `alert` (all of it as one text: what the agent's engine
//!   shows the model, fenced as data) and `alert_key`. A version-1 (catpaw) agent gets the
//!   text as `params.descriptions` (the relay fills it from `alert`), and every parameter as
//!   a string.
//! * **When**: on an alert's `created` (firing), `fired`, `updated` and `unsilenced` changes,
//!   at most once per firing episode; an episode already diagnosed (by the hub or an
//!   operator) is left alone.
//! * **Bounds**: one diagnosis per (agent, alertname) per `cooldown`; `max_per_agent` and
//!   `max_fleet` running at once (a diagnosis runs until its first turn ends or its session
//!   closes, `timeout` at most); `daily_tokens` per UTC day fleet-wide, counted from the
//!   usage agents report on `turn_ended` in the sessions this module started (read back from
//!   the store when the hub starts).
//! * **Skipped**: a silenced alert, a fleet alert, an agent not connected, a cooldown, a
//!   limit or the budget is recorded on the alert (`diagnosis_skipped {reason, at}`, change
//!   `skipped`). Alerts outside `sources` or `severities` are not the hub's to diagnose and
//!   are not marked.
//! * **Resolved meanwhile**: when the alert resolves while its diagnosis runs, the session
//!   gets a `notice` saying so.
//!
//! Times (cooldown, day, timeout) are the hub's clock ([`crate::config::Clock`]).
//!
//! Agents diagnose their own alerts too (`diagnose = true` on a check, `[diagnosis]` in the
//! agent config): that is why `sources` leaves out `agent` by default, so that one alert is
//! never diagnosed twice.

use crate::alerts::{Alert, AlertState, Change};
use crate::config::DiagnosisConfig;
use crate::hub::Hub;
use crate::relay::{Activity, SessionNote};
use crate::store::{AlertChange, rfc3339_ms};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tether_host::sync::lock;
use tether_proto::{ClientId, ClientInfo, Mode, NoticeLevel, Policy, SessionCreate};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// The creator of the hub's automatic diagnoses, as sessions show it.
pub const AUTO_DIAGNOSIS: &str = "auto-diagnosis";

/// Longest annotation passed on (each of summary, description, runbook_url).
const MAX_ANNOTATION: usize = 8 * 1024;
/// Longest session title (the client protocol's limit).
const MAX_TITLE_CHARS: usize = 200;
const DAY_MS: i64 = 86_400_000;

/// Who starts the automatic diagnoses: agent class (never a human's approval), with a
/// connection id of its own.
pub fn creator() -> ClientInfo {
    ClientInfo {
        client_id: ClientId(format!("{AUTO_DIAGNOSIS}/hub")),
        class: tether_proto::Class::Agent,
        name: AUTO_DIAGNOSIS.into(),
    }
}

/// A diagnosis started and not finished.
#[derive(Clone, Debug)]
struct Running {
    agent_id: String,
    /// Set once the agent accepted the session.
    session_id: Option<String>,
    started_ms: i64,
    /// The alert resolved before the session was accepted: tell it once it is.
    resolved: bool,
}

#[derive(Default)]
struct State {
    /// By alert id.
    running: HashMap<i64, Running>,
    /// (agent_id, alertname) → when its last diagnosis started.
    cooldown: HashMap<(String, String), i64>,
    /// (UTC day number, tokens spent that day).
    tokens: (i64, u64),
    /// Alert id → the episode (`started_at`) a diagnosis was started for.
    launched: HashMap<i64, i64>,
}

/// The hub's automatic diagnosis. Cheap to clone.
#[derive(Clone)]
pub struct AutoDiagnosis {
    hub: Hub,
    cfg: DiagnosisConfig,
    state: Arc<Mutex<State>>,
}

/// The name a cooldown is kept under: the `alertname` label, else the title.
fn alertname(a: &Alert) -> String {
    a.labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| a.title.clone())
}

fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn human_duration(d: std::time::Duration) -> String {
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

/// The parameters of an alert's diagnosis session (see the module doc).
pub fn diagnosis_params(a: &Alert) -> Map<String, Value> {
    let mut annotations = Map::new();
    for k in ["summary", "description", "runbook_url"] {
        if let Some(v) = a.annotations.get(k).filter(|v| !v.trim().is_empty()) {
            annotations.insert(k.into(), json!(clip(v, MAX_ANNOTATION)));
        }
    }
    let mut text = format!(
        "{} ({} alert, firing since {})",
        a.title,
        a.severity.as_str(),
        rfc3339_ms(a.started_at)
    );
    if let Some(h) = &a.hostname {
        text.push_str(&format!("\nHost: {h}"));
    }
    for (k, label) in [
        ("summary", "Summary"),
        ("description", "Description"),
        ("runbook_url", "Runbook"),
    ] {
        if let Some(Value::String(v)) = annotations.get(k) {
            text.push_str(&format!("\n{label}: {v}"));
        }
    }
    if !a.labels.is_empty() {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        text.push_str(&format!("\nLabels: {}", labels.join(", ")));
    }
    let mut p = Map::new();
    p.insert("alert".into(), json!(text));
    p.insert("title".into(), json!(a.title));
    p.insert("labels".into(), json!(a.labels));
    p.insert("annotations".into(), Value::Object(annotations));
    p.insert("alert_key".into(), json!(a.alert_key));
    p.insert("alert_id".into(), json!(a.alert_id));
    // tether's checks label their alerts with the plugin and target the engine shows.
    for (k, from) in [("plugin", "plugin"), ("target", "target")] {
        if let Some(v) = a.labels.get(from) {
            p.insert(k.into(), json!(v));
        }
    }
    p
}

impl AutoDiagnosis {
    pub fn new(hub: Hub, cfg: DiagnosisConfig) -> AutoDiagnosis {
        AutoDiagnosis {
            hub,
            cfg,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Listens to alert changes and session notes until `stop`.
    pub fn spawn(self, stop: CancellationToken) {
        // Subscribed before the task runs: nothing published after `start` returns is missed.
        let mut changes = self.hub.alert_changes();
        let mut notes = self.hub.relay().notes();
        tokio::spawn(async move {
            self.recount_tokens().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    c = changes.recv() => match c {
                        Ok(c) => self.on_change(&c).await,
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "automatic diagnosis fell behind the alert changes; some alerts were not considered");
                        }
                        Err(RecvError::Closed) => return,
                    },
                    n = notes.recv() => match n {
                        Ok(n) => self.on_note(&n),
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "automatic diagnosis fell behind the sessions; rechecking the running ones");
                            self.resync().await;
                        }
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        });
    }

    /// Today's spending, from the store (the sessions this hub's diagnoses ran).
    async fn recount_tokens(&self) {
        let now = self.hub.now_ms();
        let day = now.div_euclid(DAY_MS);
        let since = day * DAY_MS;
        match self
            .hub
            .store()
            .run(move |s| s.session_tokens_since(AUTO_DIAGNOSIS, since))
            .await
        {
            Ok(spent) => {
                let mut st = lock(&self.state);
                if st.tokens.0 != day {
                    st.tokens = (day, 0);
                }
                st.tokens.1 = st.tokens.1.max(spent);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read today's diagnosis token use"),
        }
    }

    /// After missing session notes: a diagnosis whose session closed is over.
    async fn resync(&self) {
        let sessions: Vec<(i64, String)> = lock(&self.state)
            .running
            .iter()
            .filter_map(|(id, r)| r.session_id.clone().map(|s| (*id, s)))
            .collect();
        for (alert_id, sid) in sessions {
            let state = self.hub.relay().session_state(&sid).await;
            if state.is_none_or(|s| s == tether_proto::SessionState::Closed) {
                lock(&self.state).running.remove(&alert_id);
            }
        }
    }

    fn on_note(&self, n: &SessionNote) {
        if n.created_by != AUTO_DIAGNOSIS {
            return;
        }
        let mut st = lock(&self.state);
        if let Activity::TurnEnded { tokens, .. } = n.activity {
            let day = self.hub.now_ms().div_euclid(DAY_MS);
            if st.tokens.0 != day {
                st.tokens = (day, 0);
            }
            st.tokens.1 = st.tokens.1.saturating_add(tokens);
            self.hub
                .metrics()
                .diagnosis_tokens
                .fetch_add(tokens, Ordering::Relaxed);
        }
        if matches!(n.activity, Activity::TurnEnded { .. } | Activity::Closed)
            && let Some(alert_id) = n.alert_id
            && let Some(r) = st.running.get(&alert_id)
            && r.agent_id == n.agent_id
            && r.session_id.as_ref().is_none_or(|s| *s == n.session_id)
        {
            // Its first turn is over (the report, if any, is on its way): no longer running.
            st.running.remove(&alert_id);
        }
    }

    async fn on_change(&self, c: &AlertChange) {
        let a = &c.alert;
        if c.change == Change::Resolved {
            self.on_resolved(a).await;
            return;
        }
        let trigger = matches!(
            c.change,
            Change::Created | Change::Fired | Change::Updated | Change::Unsilenced
        );
        if !trigger || a.state != AlertState::Firing {
            return;
        }
        if !self.cfg.sources.contains(&a.source) || !self.cfg.severities.contains(&a.severity) {
            return;
        }
        match self.decide(a) {
            Decision::Ignore => {}
            Decision::Skip(reason) => self.skip(a.alert_id, reason).await,
            Decision::Launch => self.launch(a.clone()),
        }
    }

    /// Whether to diagnose `a` now (and, when so, the diagnosis is counted as running).
    fn decide(&self, a: &Alert) -> Decision {
        let now = self.hub.now_ms();
        let mut st = lock(&self.state);
        if st.launched.get(&a.alert_id) == Some(&a.started_at)
            || st.running.contains_key(&a.alert_id)
            || a.diagnoses.iter().any(|d| d.created_at >= a.started_at)
        {
            // This episode is diagnosed (or being diagnosed), by the hub or an operator.
            return Decision::Ignore;
        }
        if a.silenced {
            let ids: Vec<String> = a.silenced_by.iter().map(|i| i.to_string()).collect();
            return Decision::Skip(format!("silenced (silence {})", ids.join(", ")));
        }
        let Some(agent_id) = a.agent_id.clone() else {
            let why = a
                .route
                .as_ref()
                .map(|r| format!(": {}", r.reason))
                .unwrap_or_default();
            return Decision::Skip(format!("unroutable: a fleet alert is about no agent{why}"));
        };
        let host = a.hostname.clone().unwrap_or_else(|| agent_id.clone());
        if !self.hub.is_connected(&agent_id) {
            return Decision::Skip(format!(
                "agent offline: {host} ({agent_id}) is not connected"
            ));
        }
        let name = alertname(a);
        let cooldown_ms = self.cfg.cooldown.as_millis() as i64;
        if let Some(last) = st.cooldown.get(&(agent_id.clone(), name.clone()))
            && now < last.saturating_add(cooldown_ms)
        {
            return Decision::Skip(format!(
                "cooldown: `{name}` on {host} was diagnosed at {}; the next diagnosis may start at {} (cooldown {})",
                rfc3339_ms(*last),
                rfc3339_ms(last.saturating_add(cooldown_ms)),
                human_duration(self.cfg.cooldown)
            ));
        }
        // Diagnoses past their timeout no longer count.
        let timeout_ms = self.cfg.timeout.as_millis() as i64;
        st.running
            .retain(|_, r| now < r.started_ms.saturating_add(timeout_ms));
        let on_agent = st
            .running
            .values()
            .filter(|r| r.agent_id == agent_id)
            .count();
        if on_agent >= self.cfg.max_per_agent {
            return Decision::Skip(format!(
                "max_per_agent: {on_agent} diagnosis(es) already running on {host} (limit {})",
                self.cfg.max_per_agent
            ));
        }
        if st.running.len() >= self.cfg.max_fleet {
            return Decision::Skip(format!(
                "max_fleet: {} diagnoses already running in the fleet (limit {})",
                st.running.len(),
                self.cfg.max_fleet
            ));
        }
        let day = now.div_euclid(DAY_MS);
        if st.tokens.0 != day {
            st.tokens = (day, 0);
        }
        if self.cfg.daily_tokens > 0 && st.tokens.1 >= self.cfg.daily_tokens {
            return Decision::Skip(format!(
                "daily_tokens: {} of {} tokens spent today (UTC); diagnoses start again at {}",
                st.tokens.1,
                self.cfg.daily_tokens,
                rfc3339_ms((day + 1) * DAY_MS)
            ));
        }
        st.cooldown.insert((agent_id.clone(), name), now);
        st.launched.insert(a.alert_id, a.started_at);
        st.running.insert(
            a.alert_id,
            Running {
                agent_id,
                session_id: None,
                started_ms: now,
                resolved: false,
            },
        );
        // Forget what no longer matters (the maps would otherwise only grow): cooldowns that
        // ran out, episodes of alerts not running.
        if st.cooldown.len() > 10_000 {
            st.cooldown
                .retain(|_, last| now < last.saturating_add(cooldown_ms));
        }
        if st.launched.len() > 100_000 {
            let running: Vec<i64> = st.running.keys().copied().collect();
            st.launched.retain(|id, _| running.contains(id));
        }
        Decision::Launch
    }

    async fn skip(&self, alert_id: i64, reason: String) {
        tracing::info!(alert_id, %reason, "automatic diagnosis skipped");
        self.hub
            .metrics()
            .diagnoses_skipped
            .fetch_add(1, Ordering::Relaxed);
        let now = self.hub.now_ms();
        match self
            .hub
            .store()
            .run(move |s| s.note_diagnosis_skipped(alert_id, &reason, now))
            .await
        {
            Ok(Some(change)) => self.hub.publish(crate::hub::HubEvent::Alert(change)),
            Ok(None) => {}
            Err(e) => tracing::error!(alert_id, error = %e, "cannot record a skipped diagnosis"),
        }
    }

    /// Starts the session (a task of its own: the agent may take a while to accept).
    fn launch(&self, a: Alert) {
        let this = self.clone();
        tokio::spawn(async move {
            let Some(agent_id) = a.agent_id.clone() else {
                return;
            };
            let mut title = format!("{AUTO_DIAGNOSIS}: {}", a.title);
            if title.chars().count() > MAX_TITLE_CHARS {
                title = title.chars().take(MAX_TITLE_CHARS - 1).collect::<String>() + "…";
            }
            let create = SessionCreate {
                mode: Mode::Diagnose,
                params: Some(diagnosis_params(&a)),
                title: Some(title),
                policy: Some(Policy::Human),
                agent_id: Some(agent_id.clone()),
            };
            let hub = this.hub.clone();
            match hub.relay().create(&creator(), create).await {
                Ok(session_id) => {
                    hub.metrics()
                        .diagnoses_started
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(alert_id = a.alert_id, agent = %agent_id, session = %session_id, "automatic diagnosis started");
                    let resolved = {
                        let mut st = lock(&this.state);
                        match st.running.get_mut(&a.alert_id) {
                            Some(r) => {
                                r.session_id = Some(session_id.clone());
                                r.resolved
                            }
                            None => false,
                        }
                    };
                    if resolved {
                        this.tell_resolved(&session_id, &a).await;
                    }
                }
                Err(e) => {
                    {
                        let mut st = lock(&this.state);
                        st.running.remove(&a.alert_id);
                        // Not diagnosed after all: the next change of the alert may try again,
                        // and the cooldown did not start.
                        st.launched.remove(&a.alert_id);
                        st.cooldown.remove(&(agent_id.clone(), alertname(&a)));
                    }
                    this.skip(
                        a.alert_id,
                        format!("the agent did not start the diagnosis: {}", e.message),
                    )
                    .await;
                }
            }
        });
    }

    async fn on_resolved(&self, a: &Alert) {
        let session = {
            let mut st = lock(&self.state);
            match st.running.get_mut(&a.alert_id) {
                Some(r) if r.session_id.is_none() => {
                    r.resolved = true;
                    None
                }
                Some(r) => r.session_id.clone(),
                None => None,
            }
        };
        if let Some(sid) = session {
            self.tell_resolved(&sid, a).await;
        }
    }

    async fn tell_resolved(&self, session_id: &str, a: &Alert) {
        let at = a.resolved_at.unwrap_or(a.last_at);
        let message = format!(
            "The alert `{}` resolved at {} while this diagnosis was running; what it reports may be over.",
            a.title,
            rfc3339_ms(at)
        );
        self.hub
            .relay()
            .notice(session_id, NoticeLevel::Info, &message)
            .await;
    }
}

enum Decision {
    Ignore,
    Skip(String),
    Launch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Observation, Severity, Source};
    use std::collections::BTreeMap;

    #[test]
    fn params_carry_the_title_labels_and_the_three_annotations() {
        let obs = Observation {
            state: AlertState::Firing,
            severity: Some(Severity::Critical),
            status: "firing".into(),
            at_ms: 1_714_557_600_000,
            starts_ms: Some(1_714_557_600_000),
            title: "DiskFull".into(),
            labels: BTreeMap::from([
                ("alertname".into(), "DiskFull".into()),
                ("instance".into(), "web-01:9100".into()),
            ]),
            annotations: BTreeMap::from([
                ("summary".into(), "/var is 97% full".into()),
                ("description".into(), "grows 1 GB/h".into()),
                ("runbook_url".into(), "https://runbooks/disk".into()),
                ("valueString".into(), "not passed on".into()),
            ]),
            url: None,
            seq: None,
            dedupe: None,
        };
        let mut a = Alert::new(Source::Alertmanager, "fp1", &obs, 1);
        a.alert_id = 7;
        a.hostname = Some("web-01".into());
        let p = diagnosis_params(&a);
        assert_eq!(p["title"], "DiskFull");
        assert_eq!(p["labels"]["instance"], "web-01:9100");
        assert_eq!(
            p["annotations"],
            json!({"summary": "/var is 97% full", "description": "grows 1 GB/h", "runbook_url": "https://runbooks/disk"})
        );
        assert_eq!(p["alert_id"], 7);
        assert_eq!(p["alert_key"], "fp1");
        let text = p["alert"].as_str().unwrap_or_default();
        for part in [
            "DiskFull (critical alert, firing since 2024-05-01T10:00:00.000Z)",
            "Host: web-01",
            "Summary: /var is 97% full",
            "Description: grows 1 GB/h",
            "Runbook: https://runbooks/disk",
            "Labels: alertname=DiskFull, instance=web-01:9100",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert!(!text.contains("not passed on"), "{text}");
    }
}
