//! The hub's HTTP side: one listener for the console, `/v1/ws`, the REST mirror and
//! `/api/v1/agent/ws`; plain HTTP on loopback, TLS everywhere else (unless plaintext is asked
//! for by name).

use crate::agents::agent_ws;
use crate::hub::Hub;
use crate::operators::{
    AlertEvents, AlertsList, SilenceList, alert_events, list_agents, list_alerts, list_silences,
    operator_ws,
};
use crate::store::now_ms;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tether_proto::{ErrorBody, Reason};
use tether_transport::limits::{ConnectionLimits, DEFAULT_MAX_CONNECTIONS};
use tether_transport::metrics::PromText;
use tether_transport::ws::{http_error, request_token};
use tokio_util::sync::CancellationToken;

/// Every route of the hub.
pub fn router(hub: Hub) -> Router {
    // Operator connections per credential, and in total (`operator_ws` takes its place here).
    let limits = Arc::new(ConnectionLimits::new(
        DEFAULT_MAX_CONNECTIONS,
        hub.config().max_connections_per_operator,
    ));
    let api = Router::new()
        .route("/api/v1/agent/ws", get(agent_ws))
        .route("/v1/ws", get(operator_ws))
        .route("/api/v1/agents", get(rest_agents))
        .route("/api/v1/alerts", get(rest_alerts))
        .route("/api/v1/alerts/{id}", get(rest_alert))
        .route(
            "/api/v1/alerts/alertmanager",
            post(crate::intake::alertmanager),
        )
        // Grafana's webhook contact point may be set to PUT.
        .route(
            "/api/v1/alerts/grafana",
            post(crate::intake::grafana).put(crate::intake::grafana),
        )
        .route("/api/v1/silences", get(rest_silences))
        .route("/api/v1/sessions/{id}/events", get(rest_events))
        .route("/api/v1/reports", get(rest_reports))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    crate::console::routes(api)
        .with_state(hub)
        .layer(axum::Extension(limits))
}

/// Operators only (any class), by bearer token or `?token=`.
#[allow(clippy::result_large_err)] // the refusal is the response, sent as is
fn authorize(
    hub: &Hub,
    headers: &HeaderMap,
    token: Option<String>,
    peer: SocketAddr,
) -> Result<(), Response> {
    let token = request_token(headers, token);
    hub.operators()
        .authenticate(token.as_deref(), peer)
        .map(|_| ())
        .map_err(|e| http_error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()))
}

fn reply(result: Result<Value, ErrorBody>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => {
            let status = match e.reason {
                Reason::BadRequest => StatusCode::BAD_REQUEST,
                Reason::UnknownSession => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            http_error(status, e.reason.as_str(), &e.message)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsQuery {
    token: Option<String>,
    label: Option<String>,
    connected: Option<bool>,
}

async fn rest_agents(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<AgentsQuery>,
) -> Response {
    if let Err(r) = authorize(&hub, &headers, q.token.clone(), peer) {
        return r;
    }
    reply(list_agents(&hub, q.label.as_deref(), q.connected).await)
}

/// Query values arrive as strings: those of `numbers` become numbers and those of `bools`
/// booleans before the params are read, as from a `/v1/ws` request.
#[allow(clippy::result_large_err)] // the refusal is the response, sent as is
fn typed_query<T: serde::de::DeserializeOwned>(
    mut q: serde_json::Map<String, Value>,
    numbers: &[&str],
    bools: &[&str],
) -> Result<T, Response> {
    for key in numbers {
        if let Some(Value::String(s)) = q.get(*key).cloned() {
            match s.parse::<i64>() {
                Ok(n) => {
                    q.insert((*key).into(), json!(n));
                }
                Err(_) => {
                    return Err(reply(Err(ErrorBody::new(
                        Reason::BadRequest,
                        format!("`{key}`: `{s}` is not a number"),
                    ))));
                }
            }
        }
    }
    for key in bools {
        if let Some(Value::String(s)) = q.get(*key).cloned() {
            match s.as_str() {
                "true" | "false" => {
                    q.insert((*key).into(), json!(s == "true"));
                }
                _ => {
                    return Err(reply(Err(ErrorBody::new(
                        Reason::BadRequest,
                        format!("`{key}`: `{s}` is not true or false"),
                    ))));
                }
            }
        }
    }
    serde_json::from_value(Value::Object(q))
        .map_err(|e| reply(Err(ErrorBody::new(Reason::BadRequest, e.to_string()))))
}

/// The operator check of a REST request whose query is read as a map (`token` taken out).
#[allow(clippy::result_large_err)] // the refusal is the response, sent as is
fn authorize_map(
    hub: &Hub,
    headers: &HeaderMap,
    q: &mut serde_json::Map<String, Value>,
    peer: SocketAddr,
) -> Result<(), Response> {
    let token = q
        .remove("token")
        .and_then(|v| v.as_str().map(str::to_owned));
    authorize(hub, headers, token, peer)
}

async fn rest_alerts(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(mut q): Query<serde_json::Map<String, Value>>,
) -> Response {
    if let Err(r) = authorize_map(&hub, &headers, &mut q, peer) {
        return r;
    }
    match typed_query::<AlertsList>(q, &["limit"], &["fleet"]) {
        Ok(params) => reply(list_alerts(&hub, &params).await),
        Err(r) => r,
    }
}

async fn rest_alert(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(mut q): Query<serde_json::Map<String, Value>>,
) -> Response {
    if let Err(r) = authorize_map(&hub, &headers, &mut q, peer) {
        return r;
    }
    let Ok(id) = id.parse::<i64>() else {
        return reply(Err(ErrorBody::new(
            Reason::BadRequest,
            format!("`{id}` is not an alert id"),
        )));
    };
    q.insert("alert_id".into(), json!(id));
    match typed_query::<AlertEvents>(q, &["before_event_id", "limit"], &[]) {
        Ok(params) => reply(alert_events(&hub, &params).await),
        Err(r) => r,
    }
}

async fn rest_silences(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(mut q): Query<serde_json::Map<String, Value>>,
) -> Response {
    if let Err(r) = authorize_map(&hub, &headers, &mut q, peer) {
        return r;
    }
    match typed_query::<SilenceList>(q, &[], &[]) {
        Ok(params) => reply(list_silences(&hub, &params).await),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    token: Option<String>,
    after_seq: Option<u64>,
    limit: Option<usize>,
}

async fn rest_events(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Response {
    if let Err(r) = authorize(&hub, &headers, q.token.clone(), peer) {
        return r;
    }
    let after = q.after_seq.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let key = id.clone();
    let result = hub
        .store()
        .run(move |s| {
            let session = s.get_session(&key)?;
            let events = s.read_events(&key, after + 1, u64::MAX >> 1, limit)?;
            Ok((session, events))
        })
        .await;
    match result {
        Ok((None, _)) => reply(Err(ErrorBody::new(
            Reason::UnknownSession,
            format!("no session {id}"),
        ))),
        Ok((Some(s), events)) => {
            let events: Vec<Value> = events
                .into_iter()
                .filter_map(|(_, frame)| serde_json::from_str(&frame).ok())
                .collect();
            reply(Ok(json!({"events": events, "last_seq": s.last_seq})))
        }
        Err(e) => reply(Err(ErrorBody::new(Reason::Internal, e.to_string()))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportsQuery {
    token: Option<String>,
    agent_id: Option<String>,
    alert_id: Option<i64>,
    limit: Option<usize>,
}

async fn rest_reports(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<ReportsQuery>,
) -> Response {
    if let Err(r) = authorize(&hub, &headers, q.token.clone(), peer) {
        return r;
    }
    reply(crate::operators::list_reports(&hub, q.agent_id, q.alert_id, q.limit).await)
}

async fn healthz(State(hub): State<Hub>) -> Response {
    axum::Json(json!({
        "status": if hub.is_shutting_down() { "shutting_down" } else { "ok" },
        "server": {"name": "tether-hub", "version": env!("CARGO_PKG_VERSION")},
        "agents_connected": hub.connected_agents(),
    }))
    .into_response()
}

async fn metrics(State(hub): State<Hub>) -> Response {
    let m = hub.metrics();
    let (stored, firing) = hub
        .store()
        .run(|s| Ok((s.count_alert_events()?, s.count_firing_alerts()?)))
        .await
        .unwrap_or((0, 0));
    let mut prom = PromText::new();
    let body = prom
        .gauge(
            "tether_hub_agents_connected",
            "Agents connected now.",
            hub.connected_agents() as f64,
        )
        .counter(
            "tether_hub_registrations_total",
            "Agent registrations.",
            m.registrations.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_auth_failures_total",
            "Agent connections refused for their credential.",
            m.auth_failures.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_alerts_received_total",
            "Alert events received from agents.",
            m.alerts_received.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_alerts_stored_total",
            "Alert events stored.",
            m.alerts_stored.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_alerts_deduplicated_total",
            "Alert events received again and stored once.",
            m.alerts_duplicate.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_alerts_rejected_total",
            "Alert events refused for good (undecodable, no key, or alone in an oversized frame).",
            m.alerts_rejected.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_alerts_sanitized_total",
            "Alert events stored with a field replaced (an unbelievable event time, a description cut to 64 KiB).",
            m.alerts_sanitized.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_link_frames_refused_total",
            "Link frames refused for their size or shape, or because the store could not take their alerts (answered under version 2).",
            m.frames_refused.load(Ordering::Relaxed),
        )
        .gauge(
            "tether_hub_agent_alerts_dropped",
            "Alert events connected agents report dropped (spool overflow, refused as too large), from their last heartbeat.",
            hub.agents_dropped_alerts() as f64,
        )
        .gauge(
            "tether_hub_alerts_in_store",
            "Alert events held in the store (every alert's timeline).",
            stored as f64,
        )
        .gauge(
            "tether_hub_alerts_firing",
            "Alerts firing now (agents' and external).",
            firing as f64,
        )
        .counter(
            "tether_hub_external_alerts_received_total",
            "Alerts received in valid Alertmanager and Grafana notifications.",
            m.external_received.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_external_alerts_stored_total",
            "External alert events stored.",
            m.external_stored.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_external_alerts_deduplicated_total",
            "External alert events delivered again and stored once.",
            m.external_duplicate.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_intake_rejected_total",
            "Alert notifications refused as malformed or too large.",
            m.intake_rejected.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_intake_auth_failures_total",
            "Alert notifications refused for their token.",
            m.intake_auth_failures.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_sessions_created_total",
            "Remote sessions started.",
            m.sessions_created.load(Ordering::Relaxed),
        )
        .gauge(
            "tether_hub_sessions_active",
            "Remote sessions open now.",
            hub.relay().active() as f64,
        )
        .counter(
            "tether_hub_link_frames_in_total",
            "Link frames received from agents.",
            m.frames_in.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_link_frames_out_total",
            "Link frames sent to agents.",
            m.frames_out.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_operator_evictions_total",
            "Operators evicted for not keeping up.",
            m.operator_evictions.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_diagnoses_started_total",
            "Automatic diagnoses started.",
            m.diagnoses_started.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_diagnoses_skipped_total",
            "Alerts the automatic diagnosis passed over (the reason is on the alert).",
            m.diagnoses_skipped.load(Ordering::Relaxed),
        )
        .counter(
            "tether_hub_diagnosis_tokens_total",
            "Tokens the automatic diagnoses' turns reported.",
            m.diagnosis_tokens.load(Ordering::Relaxed),
        );
    let notifiers = tether_host::sync::lock(&m.notifiers).clone();
    let per = |pick: fn(&crate::hub::NotifierCounters) -> u64| -> Vec<(Vec<(&str, String)>, u64)> {
        notifiers
            .iter()
            .map(|(name, kind, c)| {
                (
                    vec![("notifier", name.clone()), ("kind", (*kind).to_owned())],
                    pick(c),
                )
            })
            .collect()
    };
    let body = body
        .counter_with(
            "tether_hub_notifications_sent_total",
            "Notifications delivered, per notifier.",
            &per(|c| c.sent.load(Ordering::Relaxed)),
        )
        .counter_with(
            "tether_hub_notifications_failed_total",
            "Notifications given up on (refused, or every attempt failed), per notifier.",
            &per(|c| c.failed.load(Ordering::Relaxed)),
        )
        .counter_with(
            "tether_hub_notifications_retried_total",
            "Notification attempts that failed and were tried again, per notifier.",
            &per(|c| c.retried.load(Ordering::Relaxed)),
        )
        .counter_with(
            "tether_hub_notifications_dropped_total",
            "Notifications dropped because the notifier's queue was full, per notifier.",
            &per(|c| c.dropped.load(Ordering::Relaxed)),
        )
        .finish();
    tether_transport::metrics::response(body)
}

/// Deletes old alert events, old resolved alerts and closed sessions every hour.
pub fn spawn_retention(hub: Hub, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let alerts_before = now_ms() - hub.config().alert_retention.as_millis() as i64;
            let sessions_before = now_ms() - hub.config().session_retention.as_millis() as i64;
            let pruned = hub
                .store()
                .run(move |s| {
                    Ok((
                        s.prune_alerts(alerts_before)?,
                        s.prune_sessions(sessions_before)?,
                    ))
                })
                .await;
            match pruned {
                Ok((a, s)) if a + s > 0 => {
                    tracing::info!(alerts = a, sessions = s, "retention: pruned")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "retention failed"),
            }
        }
    });
}

/// TLS for the shared listener loop ([`tether_transport::serve`]): each handshake runs in its
/// connection's own task under the request deadline, so a slow client holds up nobody.
pub struct Tls(pub tokio_rustls::TlsAcceptor);

impl tether_transport::serve::Handshake for Tls {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

    async fn handshake(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Self::Io> {
        self.0.accept(tcp).await
    }

    fn plaintext(&self) -> bool {
        false
    }
}

/// The server side of TLS from PEM files.
pub fn tls_config(cert: &FsPath, key: &FsPath) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_cert: cannot read {}: {e}", cert.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("tls_cert: {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_cert: {} holds no PEM certificate",
            cert.display()
        ));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls_key: {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(Arc::new)
        .map_err(|e| format!("tls_cert/tls_key: {e}"))
}
