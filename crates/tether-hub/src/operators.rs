//! Operators: the client protocol at the hub (`GET /v1/ws`), plus the hub's own ops
//! (`agents.list`, `agents.subscribe`; the alert ops `alerts.list`, `alerts.subscribe`,
//! `alert.events`, `alert.ack`, `silence.create`, `silence.list`, `silence.expire`;
//! `reports.list`; `session.create` takes an `agent_id`). Each operator connection is a
//! transport [`Handler`], so framing, size limits, slow-consumer eviction and shutdown behave
//! exactly as on an agent. Observers may read, not act: `alert.ack` and the silence changes
//! are refused to them (`forbidden`).

use crate::alerts::{AlertState, Change, Matcher, Severity, Source, check_matchers};
use crate::hub::{AlertSubFilter, Hub, HubEvent};
use crate::store::{AlertChange, AlertFilter};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tether_host::sync::lock;
use tether_mux::Identity;
use tether_mux::outbound::Outbound;
use tether_proto::{
    ClientId, ClientInfo, ErrorBody, HelloResult, Op, RawRequest, Reason, ReplyFrame, RequestId,
    ServerInfo,
};
use tether_transport::driver::Handler;
use tether_transport::limits::ConnectionLimits;
use tether_transport::ws::{configure, http_error, refused, request_token, serve_handler};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// One operator connection.
pub struct OperatorConn {
    hub: Hub,
    conn_id: u64,
    /// The credential's name (the operator's `name` in the hub config).
    operator: String,
    /// Who this connection is, as sessions show it: see [`display_name`].
    client: Mutex<ClientInfo>,
    outbound: Outbound,
    attached: Mutex<HashSet<String>>,
}

/// How an operator connection is shown in sessions (`client_attached`, `originator`,
/// `permission_resolved.by`, `hello`'s `name`): the credential's name, the connection's tag
/// `#<n>` (the `<n>` of its client id `<principal>/<n>`), and the `client_name` its `hello`
/// gave, e.g. `alice #3 (tether-console)`. Two tabs and a CLI of one credential are three.
pub fn display_name(operator: &str, conn_id: u64, client_name: Option<&str>) -> String {
    match client_name.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("{operator} #{conn_id} ({c})"),
        None => format!("{operator} #{conn_id}"),
    }
}

/// `?token=` for browsers.
#[derive(Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// `GET /v1/ws` at the hub.
pub async fn operator_ws(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(limits): Extension<Arc<ConnectionLimits>>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = request_token(&headers, q.token);
    let identity = match hub.operators().authenticate(token.as_deref(), peer) {
        Ok(id) => id,
        Err(e) => return http_error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()),
    };
    if hub.is_shutting_down() {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the hub is shutting down",
        );
    }
    let permit = match limits.acquire(&identity.principal) {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    configure(ws).on_upgrade(move |socket| {
        let (conn, rx) = OperatorConn::new(hub.clone(), identity);
        // `map`: an async block awaiting it would hold the connection's state twice.
        serve_handler(socket, conn, rx, hub.closing()).map(move |()| drop(permit))
    })
}

fn bad(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(Reason::BadRequest, message)
}

/// `"k=v"` → (k, v).
pub fn parse_label(text: &str) -> Result<(String, String), ErrorBody> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(bad(format!("field `label`: `{text}` is not k=v"))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AgentsList {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    connected: Option<bool>,
}

fn internal(e: impl ToString) -> ErrorBody {
    ErrorBody::new(Reason::Internal, e.to_string())
}

fn parse_state(field: &str, v: &Option<String>) -> Result<Option<AlertState>, ErrorBody> {
    v.as_deref()
        .map(|s| {
            AlertState::parse(s)
                .ok_or_else(|| bad(format!("field `{field}`: `{s}` is not firing or resolved")))
        })
        .transpose()
}

fn parse_severity(v: &Option<String>) -> Result<Option<Severity>, ErrorBody> {
    v.as_deref()
        .map(|s| {
            Severity::parse(s).ok_or_else(|| {
                bad(format!(
                    "field `severity`: `{s}` is not critical, warning or info"
                ))
            })
        })
        .transpose()
}

fn parse_source(v: &Option<String>) -> Result<Option<Source>, ErrorBody> {
    v.as_deref()
        .map(|s| {
            Source::parse(s).ok_or_else(|| {
                bad(format!(
                    "field `source`: `{s}` is not agent, alertmanager or grafana"
                ))
            })
        })
        .transpose()
}

/// Filters of `alerts.list` / `GET /api/v1/alerts`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertsList {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    /// `true`: fleet alerts only (no agent matched); `false`: agents' alerts only.
    #[serde(default)]
    pub fleet: Option<bool>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// A page's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<String>,
}

impl AlertsList {
    pub fn to_filter(&self) -> Result<AlertFilter, ErrorBody> {
        let after = match &self.cursor {
            None => None,
            Some(c) => {
                let parsed = c
                    .split_once(':')
                    .and_then(|(l, i)| Some((l.parse::<i64>().ok()?, i.parse::<i64>().ok()?)));
                Some(parsed.ok_or_else(|| {
                    bad(format!(
                        "field `cursor`: `{c}` is not a cursor (give a page's `next_cursor`)"
                    ))
                })?)
            }
        };
        Ok(AlertFilter {
            state: parse_state("state", &self.state)?,
            severity: parse_severity(&self.severity)?,
            agent_id: self.agent_id.clone(),
            fleet: self.fleet,
            source: parse_source(&self.source)?,
            label: self.label.as_deref().map(parse_label).transpose()?,
            after,
            limit: self.limit.unwrap_or(100).clamp(1, 1000),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AlertsSubscribe {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    label: Option<String>,
}

impl AlertsSubscribe {
    fn to_filter(&self) -> Result<AlertSubFilter, ErrorBody> {
        Ok(AlertSubFilter {
            state: parse_state("state", &self.state)?,
            severity: parse_severity(&self.severity)?,
            agent_id: self.agent_id.clone(),
            source: parse_source(&self.source)?,
            label: self.label.as_deref().map(parse_label).transpose()?,
        })
    }
}

/// `alert.events` / `GET /api/v1/alerts/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertEvents {
    pub alert_id: i64,
    /// Paging: a page's `next_before_event_id`.
    #[serde(default)]
    pub before_event_id: Option<i64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertAck {
    alert_id: i64,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceCreate {
    matchers: Vec<Matcher>,
    duration: DurationArg,
    comment: String,
}

/// A duration as text (`"2h"`, `"30m"`, `"1d 12h"`) or whole seconds (`7200`).
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationArg {
    Seconds(u64),
    Text(String),
}

impl DurationArg {
    fn parse(&self) -> Result<std::time::Duration, ErrorBody> {
        match self {
            DurationArg::Seconds(n) => Ok(std::time::Duration::from_secs(*n)),
            DurationArg::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                bad(format!(
                    "field `duration`: `{t}` is not a duration ({e}); write e.g. \"2h\" or \"30m\", or a number of seconds"
                ))
            }),
        }
    }

    fn text(&self) -> String {
        match self {
            DurationArg::Seconds(n) => format!("{n}s"),
            DurationArg::Text(t) => t.clone(),
        }
    }
}

/// `silence.list` / `GET /api/v1/silences`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SilenceList {
    /// `active` (default), `expired` or `all`.
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceExpire {
    silence_id: i64,
}

/// Comments (acknowledgements, silences) are this long at most.
const MAX_COMMENT: usize = 4096;
/// Silences last this long at most.
const MAX_SILENCE: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

fn check_comment(text: &str) -> Result<(), ErrorBody> {
    if text.len() > MAX_COMMENT {
        return Err(bad(format!(
            "field `comment`: {} bytes; the limit is {MAX_COMMENT}",
            text.len()
        )));
    }
    Ok(())
}

/// `alerts.list` / `GET /api/v1/alerts`.
pub async fn list_alerts(hub: &Hub, q: &AlertsList) -> Result<Value, ErrorBody> {
    let filter = q.to_filter()?;
    let now = hub.now_ms();
    let page = hub
        .store()
        .run(move |s| s.list_alerts(&filter, now))
        .await
        .map_err(internal)?;
    let mut v = json!({ "alerts": page.alerts });
    if let (Some(n), Value::Object(m)) = (page.next_cursor, &mut v) {
        m.insert("next_cursor".into(), json!(n));
    }
    Ok(v)
}

/// `alert.events` / `GET /api/v1/alerts/{id}`: the alert, its timeline (newest first) and
/// every acknowledgement.
pub async fn alert_events(hub: &Hub, q: &AlertEvents) -> Result<Value, ErrorBody> {
    let (id, before) = (q.alert_id, q.before_event_id);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let now = hub.now_ms();
    let (alert, events, acks) = hub
        .store()
        .run(move |s| {
            let Some(alert) = s.get_alert(id, now)? else {
                return Ok((None, Vec::new(), Vec::new()));
            };
            Ok((
                Some(alert),
                s.alert_events(id, before, limit)?,
                s.alert_acks(id)?,
            ))
        })
        .await
        .map_err(internal)?;
    let Some(alert) = alert else {
        return Err(bad(format!("field `alert_id`: no alert {id}")));
    };
    let next = (events.len() == limit)
        .then(|| events.last().map(|e| e.event_id))
        .flatten();
    let mut v = json!({"alert": alert, "events": events, "acks": acks});
    if let (Some(n), Value::Object(m)) = (next, &mut v) {
        m.insert("next_before_event_id".into(), json!(n));
    }
    Ok(v)
}

/// `silence.list` / `GET /api/v1/silences`.
pub async fn list_silences(hub: &Hub, q: &SilenceList) -> Result<Value, ErrorBody> {
    let state = q.state.clone().unwrap_or_else(|| "active".into());
    if !matches!(state.as_str(), "active" | "expired" | "all") {
        return Err(bad(format!(
            "field `state`: `{state}` is not active, expired or all"
        )));
    }
    let now = hub.now_ms();
    let all = state != "active";
    let silences = hub
        .store()
        .run(move |s| s.list_silences(all, now))
        .await
        .map_err(internal)?;
    let silences: Vec<_> = silences
        .into_iter()
        .filter(|s| state == "all" || s.state == state)
        .collect();
    Ok(json!({ "silences": silences }))
}

/// Tells subscribers about the alerts a silence now covers (or no longer does).
async fn publish_covered(hub: &Hub, silence: crate::alerts::Silence, change: Change) {
    let now = hub.now_ms();
    match hub
        .store()
        .run(move |s| s.alerts_matching(&silence, now))
        .await
    {
        Ok(alerts) => {
            for alert in alerts {
                hub.publish(HubEvent::Alert(AlertChange {
                    previous_state: Some(alert.state),
                    alert,
                    change,
                }));
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list the alerts of a silence"),
    }
}

/// How often the hub looks for silences that ran out by themselves.
pub const SILENCE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Announces the end of silences that ran out by themselves: every firing alert one covered
/// goes to subscribers as `unsilenced` (an operator's `silence.expire` announces its own).
/// Times are the hub's clock, so a test's manual clock ends them too.
pub fn spawn_silence_watch(hub: Hub, stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut seen = hub.now_ms();
        let mut tick = tokio::time::interval(SILENCE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = hub.now_ms();
            if now <= seen {
                continue;
            }
            let ended = hub.store().run(move |s| s.silences_ended(seen, now)).await;
            match ended {
                Ok(ended) => {
                    // Up to the last one read (1000 at most per pass).
                    seen = match ended.last() {
                        Some(s) if ended.len() >= 1000 => s.ends_at,
                        _ => now,
                    };
                    for silence in ended {
                        publish_covered(&hub, silence, Change::Unsilenced).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for ended silences"),
            }
        }
    });
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionsList {
    #[serde(default)]
    agent_id: Option<String>,
}

/// `agents.list` / `GET /api/v1/agents`.
pub async fn list_agents(
    hub: &Hub,
    label: Option<&str>,
    connected: Option<bool>,
) -> Result<Value, ErrorBody> {
    let label = label.map(parse_label).transpose()?;
    let agents = hub
        .store()
        .run(|s| s.list_agents())
        .await
        .map_err(|e| ErrorBody::new(Reason::Internal, e.to_string()))?;
    let agents: Vec<_> = agents
        .into_iter()
        .map(|mut a| {
            // The registry, not the row, knows who is connected this instant; in a cluster
            // the row knows the others' (held under a live lease), the registry this one's.
            a.connected = match hub.cluster() {
                Some(_) => a.connected || hub.agent(&a.agent_id).is_some(),
                None => hub.is_connected(&a.agent_id),
            };
            a
        })
        .filter(|a| connected.is_none_or(|c| a.connected == c))
        .filter(|a| {
            label
                .as_ref()
                .is_none_or(|(k, v)| a.labels.get(k) == Some(v))
        })
        .collect();
    Ok(json!({ "agents": agents }))
}

/// `reports.list` / `GET /api/v1/reports`: diagnosis reports, newest first.
pub async fn list_reports(
    hub: &Hub,
    agent_id: Option<String>,
    alert_id: Option<i64>,
    limit: Option<usize>,
) -> Result<Value, ErrorBody> {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    let reports = hub
        .store()
        .run(move |s| s.list_reports(agent_id.as_deref(), alert_id, limit))
        .await
        .map_err(|e| ErrorBody::new(Reason::Internal, e.to_string()))?;
    Ok(json!({ "reports": reports }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReportsList {
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    alert_id: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

impl OperatorConn {
    pub fn new(
        hub: Hub,
        identity: Identity,
    ) -> (OperatorConn, tether_mux::outbound::OutboundReceiver) {
        let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let (outbound, rx) = hub.relay().operator_queue();
        (
            OperatorConn {
                client: Mutex::new(ClientInfo {
                    client_id: ClientId(format!("{}/{conn_id}", identity.principal)),
                    class: identity.class,
                    name: display_name(&identity.name, conn_id, None),
                }),
                operator: identity.name,
                hub,
                conn_id,
                outbound,
                attached: Mutex::new(HashSet::new()),
            },
            rx,
        )
    }

    fn reply(&self, re: RequestId, result: Result<Value, ErrorBody>) {
        let frame = match result {
            Ok(v) => ReplyFrame::ok(re, v),
            Err(e) => ReplyFrame::err(Some(re), e),
        };
        self.outbound.push_frame(frame.encode());
    }

    async fn dispatch(&self, raw: RawRequest) {
        let hub = &self.hub;
        let re = raw.id.clone();
        let result: Result<Value, ErrorBody> = match raw.op.as_str() {
            "agents.list" => match raw.params::<AgentsList>() {
                Ok(p) => list_agents(hub, p.label.as_deref(), p.connected).await,
                Err(e) => Err(bad(e.error.to_string())),
            },
            "agents.subscribe" => {
                hub.subscribe_agents(self.conn_id, self.outbound.clone());
                Ok(json!({}))
            }
            "alerts.list" => match raw.params::<AlertsList>() {
                Ok(p) => list_alerts(hub, &p).await,
                Err(e) => Err(bad(e.error.to_string())),
            },
            "alerts.subscribe" => match raw.params::<AlertsSubscribe>() {
                Ok(p) => p.to_filter().map(|filter| {
                    hub.subscribe_alerts(self.conn_id, filter, self.outbound.clone());
                    json!({})
                }),
                Err(e) => Err(bad(e.error.to_string())),
            },
            "alert.events" => match raw.params::<AlertEvents>() {
                Ok(p) => alert_events(hub, &p).await,
                Err(e) => Err(bad(e.error.to_string())),
            },
            // Observers are refused before their params are read: whatever they send.
            "alert.ack" => match self.may_act("acknowledge them") {
                Err(e) => Err(e),
                Ok(()) => match raw.params::<AlertAck>() {
                    Ok(p) => self.ack(p).await,
                    Err(e) => Err(bad(e.error.to_string())),
                },
            },
            "silence.create" => match self.may_act("silence them") {
                Err(e) => Err(e),
                Ok(()) => match raw.params::<SilenceCreate>() {
                    Ok(p) => self.silence_create(p).await,
                    Err(e) => Err(bad(e.error.to_string())),
                },
            },
            "silence.list" => match raw.params::<SilenceList>() {
                Ok(p) => list_silences(hub, &p).await,
                Err(e) => Err(bad(e.error.to_string())),
            },
            "silence.expire" => match self.may_act("expire silences") {
                Err(e) => Err(e),
                Ok(()) => match raw.params::<SilenceExpire>() {
                    Ok(p) => self.silence_expire(p).await,
                    Err(e) => Err(bad(e.error.to_string())),
                },
            },
            "reports.list" => match raw.params::<ReportsList>() {
                Ok(p) => list_reports(hub, p.agent_id, p.alert_id, p.limit).await,
                Err(e) => Err(bad(e.error.to_string())),
            },
            "session.list" => match raw.params::<SessionsList>() {
                Ok(p) => hub
                    .relay()
                    .list(p.agent_id)
                    .await
                    .map(|sessions| json!({ "sessions": sessions })),
                Err(e) => Err(bad(e.error.to_string())),
            },
            _ => match Op::from_raw(&raw) {
                Err(e) => Err(e.to_reply().error.unwrap_or_else(|| bad("bad request"))),
                Ok(op) => return self.base_op(re, op).await,
            },
        };
        self.reply(re, result);
    }

    fn client(&self) -> ClientInfo {
        lock(&self.client).clone()
    }

    /// Observers may read, not act.
    fn may_act(&self, what: &str) -> Result<(), ErrorBody> {
        if self.client().class == tether_proto::Class::Observer {
            return Err(ErrorBody::new(
                Reason::Forbidden,
                format!("observers may read alerts, not {what}"),
            ));
        }
        Ok(())
    }

    async fn ack(&self, p: AlertAck) -> Result<Value, ErrorBody> {
        self.may_act("acknowledge them")?;
        let comment = p.comment.unwrap_or_default();
        check_comment(&comment)?;
        let (id, by, now) = (p.alert_id, self.operator.clone(), self.hub.now_ms());
        let change = self
            .hub
            .store()
            .run(move |s| s.ack_alert(id, &by, &comment, now))
            .await
            .map_err(internal)?
            .ok_or_else(|| bad(format!("field `alert_id`: no alert {id}")))?;
        let alert = json!({ "alert": change.alert });
        self.hub.publish(HubEvent::Alert(change));
        Ok(alert)
    }

    async fn silence_create(&self, p: SilenceCreate) -> Result<Value, ErrorBody> {
        self.may_act("silence them")?;
        check_matchers(&p.matchers).map_err(bad)?;
        let duration = p.duration.parse()?;
        if duration < std::time::Duration::from_secs(1) || duration > MAX_SILENCE {
            return Err(bad(format!(
                "field `duration`: `{}` is not between 1 s and 366 days",
                p.duration.text()
            )));
        }
        if p.comment.trim().is_empty() {
            return Err(bad(
                "field `comment`: say why (it is shown with the silence)",
            ));
        }
        check_comment(&p.comment)?;
        let now = self.hub.now_ms();
        let ends = now.saturating_add(duration.as_millis() as i64);
        let by = self.operator.clone();
        let silence = self
            .hub
            .store()
            .run(move |s| s.create_silence(&p.matchers, &p.comment, &by, now, ends))
            .await
            .map_err(internal)?;
        let reply = json!({"silence_id": silence.silence_id, "silence": &silence});
        publish_covered(&self.hub, silence, Change::Silenced).await;
        Ok(reply)
    }

    async fn silence_expire(&self, p: SilenceExpire) -> Result<Value, ErrorBody> {
        self.may_act("expire silences")?;
        let (id, by, now) = (p.silence_id, self.operator.clone(), self.hub.now_ms());
        let silence = self
            .hub
            .store()
            .run(move |s| s.expire_silence(id, &by, now))
            .await
            .map_err(internal)?
            .ok_or_else(|| bad(format!("field `silence_id`: no silence {id}")))?;
        let reply = json!({ "silence": &silence });
        // The alerts it covered, as they are now (another silence may still cover some).
        publish_covered(&self.hub, silence, Change::Unsilenced).await;
        Ok(reply)
    }

    async fn base_op(&self, re: RequestId, op: Op) {
        let hub = &self.hub;
        let relay = hub.relay();
        let client = &self.client();
        let result = match op {
            Op::Hello(hello) => {
                // The client's own name joins its display name (sessions joined from now on
                // show it). A lower `class` is forwarded to the agent with every later op, so
                // the agent's arbitration judges it as that class.
                let client = {
                    let attached = lock(&self.attached).len();
                    let mut c = lock(&self.client);
                    if let Some(class) = hello.class {
                        if let Err(e) =
                            tether_mux::arbitration::check_class_change(c.class, class, attached)
                        {
                            drop(c);
                            return self.reply(re, Err(e));
                        }
                        c.class = class;
                    }
                    if hello.client_name.is_some() {
                        c.name = display_name(
                            &self.operator,
                            self.conn_id,
                            hello.client_name.as_deref(),
                        );
                    }
                    c.clone()
                };
                Ok(serde_json::to_value(HelloResult {
                    client_id: client.client_id.clone(),
                    class: client.class,
                    name: client.name.clone(),
                    protocol: tether_proto::CLIENT_PROTOCOL_VERSION,
                    server: ServerInfo {
                        name: "tether-hub".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    },
                })
                .unwrap_or(json!({})))
            }
            Op::SessionCreate(c) => relay
                .create(client, c)
                .await
                .map(|id| json!({ "session_id": id })),
            Op::SessionList(_) => relay
                .list(None)
                .await
                .map(|sessions| json!({ "sessions": sessions })),
            Op::Attach(a) => {
                let newly = lock(&self.attached).insert(a.session_id.to_string());
                // Replies itself: the snapshot must precede the replay in the queue.
                let attached = relay
                    .attach(
                        client,
                        self.conn_id,
                        &self.outbound,
                        re,
                        a.session_id.as_str(),
                        a.after_seq,
                    )
                    .await;
                if !attached && newly {
                    // A refused attach leaves nothing attached (a lower class may follow).
                    lock(&self.attached).remove(a.session_id.as_str());
                }
                return;
            }
            Op::Detach(d) => {
                {
                    let mut set = lock(&self.attached);
                    set.remove(d.session_id.as_str());
                }
                relay
                    .detach(client, self.conn_id, d.session_id.as_str())
                    .await
                    .map(|()| json!({}))
            }
            Op::Input(i) => relay.input(client, i).await,
            Op::Answer(a) => relay.answer(client, a).await,
            Op::Cancel(c) => relay.cancel(client, c).await,
            Op::SessionClose(c) => relay.close(client, c.session_id.as_str()).await,
        };
        self.reply(re, result);
    }
}

impl Handler for OperatorConn {
    fn handle_text<'a>(&'a self, text: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match RawRequest::parse(text) {
                Ok(raw) => self.dispatch(raw).await,
                Err(e) => {
                    self.outbound.push_frame(e.to_reply().encode());
                }
            }
        })
    }

    fn reply_error(&self, re: Option<RequestId>, error: ErrorBody) {
        self.outbound
            .push_frame(ReplyFrame::err(re, error).encode());
    }

    fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    fn close<'a>(&'a self, _reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.hub.unsubscribe(self.conn_id);
            let sessions: Vec<String> = lock(&self.attached).drain().collect();
            self.hub
                .relay()
                .operator_gone(&self.client(), self.conn_id, sessions)
                .await;
        })
    }
}
