//! Operators: the client protocol at the hub (`GET /v1/ws`), plus the hub's own ops
//! (`agents.list`, `agents.subscribe`, `alerts.list`, `alerts.subscribe`; `session.create`
//! takes an `agent_id`). Each operator connection is a transport [`Handler`], so framing, size
//! limits, slow-consumer eviction and shutdown behave exactly as on an agent.

use crate::hub::{AlertSubFilter, Hub};
use crate::store::{AlertFilter, parse_rfc3339_ms};
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
use tether_engine::sync::lock;
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

/// Filters of `alerts.list` / `GET /api/v1/alerts`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertsList {
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub before_id: Option<i64>,
}

impl AlertsList {
    pub fn to_filter(&self) -> Result<AlertFilter, ErrorBody> {
        let time = |field: &str, v: &Option<String>| -> Result<Option<i64>, ErrorBody> {
            match v {
                None => Ok(None),
                Some(t) => parse_rfc3339_ms(t)
                    .map(Some)
                    .ok_or_else(|| bad(format!("field `{field}`: `{t}` is not an RFC 3339 time"))),
            }
        };
        if let Some(s) = &self.status
            && tether_proto::link::AlertStatus::parse(s).is_none()
        {
            return Err(bad(format!(
                "field `status`: `{s}` is not Critical, Warning, Info or Ok"
            )));
        }
        Ok(AlertFilter {
            agent_id: self.agent_id.clone(),
            status: self.status.clone(),
            label: self.label.as_deref().map(parse_label).transpose()?,
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
            before_id: self.before_id,
            limit: self.limit.unwrap_or(100).clamp(1, 1000),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AlertsSubscribe {
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    label: Option<String>,
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
            // The registry, not the row, knows who is connected this instant.
            a.connected = hub.is_connected(&a.agent_id);
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
    limit: Option<usize>,
) -> Result<Value, ErrorBody> {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    let reports = hub
        .store()
        .run(move |s| s.list_reports(agent_id.as_deref(), limit))
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
    limit: Option<usize>,
}

/// `alerts.list` / `GET /api/v1/alerts`.
pub async fn list_alerts(hub: &Hub, q: &AlertsList) -> Result<Value, ErrorBody> {
    let filter = q.to_filter()?;
    let limit = filter.limit;
    let alerts = hub
        .store()
        .run(move |s| s.list_alerts(&filter))
        .await
        .map_err(|e| ErrorBody::new(Reason::Internal, e.to_string()))?;
    let next = (alerts.len() == limit)
        .then(|| alerts.last().map(|a| a.id))
        .flatten();
    let mut v = json!({ "alerts": alerts });
    if let (Some(n), Value::Object(m)) = (next, &mut v) {
        m.insert("next_before_id".into(), json!(n));
    }
    Ok(v)
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
                Ok(p) => match p.label.as_deref().map(parse_label).transpose() {
                    Ok(label) => {
                        hub.subscribe_alerts(
                            self.conn_id,
                            AlertSubFilter {
                                agent_id: p.agent_id,
                                status: p.status,
                                label,
                            },
                            self.outbound.clone(),
                        );
                        Ok(json!({}))
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(bad(e.error.to_string())),
            },
            "reports.list" => match raw.params::<ReportsList>() {
                Ok(p) => list_reports(hub, p.agent_id, p.limit).await,
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
                .create(hub, client, c)
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
                        hub,
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
                    .detach(hub, client, self.conn_id, d.session_id.as_str())
                    .await
                    .map(|()| json!({}))
            }
            Op::Input(i) => relay.input(hub, client, i).await,
            Op::Answer(a) => relay.answer(hub, client, a).await,
            Op::Cancel(c) => relay.cancel(hub, client, c).await,
            Op::SessionClose(c) => relay.close(hub, client, c.session_id.as_str()).await,
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
                .operator_gone(&self.hub, &self.client(), self.conn_id, sessions)
                .await;
        })
    }
}
