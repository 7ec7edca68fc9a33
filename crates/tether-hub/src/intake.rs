//! External alert intake over HTTP: `POST /api/v1/alerts/alertmanager` (Prometheus
//! Alertmanager's webhook, payload version 4) and `POST /api/v1/alerts/grafana` (Grafana's
//! webhook contact point: the same shape plus its own fields).
//!
//! * Authenticated by `Authorization: Bearer <token>` of an `[[alert_sources]]` entry: 401
//!   without a valid one.
//! * A body over [`MAX_INTAKE_BODY`] gets 413; a malformed one 400 with a message naming the
//!   field (`alerts[2].startsAt: …`), and nothing from it is stored: the whole notification
//!   is checked before any of it is.
//! * Unknown fields are accepted (both senders add fields over time); the ones used are
//!   checked: per alert `status` (`firing`, `resolved`), `labels` (strings, at least one),
//!   `annotations` (strings), `startsAt` (RFC 3339), `endsAt` (RFC 3339, or Go's zero time
//!   while firing), `fingerprint` (optional: derived from the labels when absent),
//!   `generatorURL`; Grafana's `valueString`, `values`, `dashboardURL`, `panelURL`,
//!   `silenceURL` are kept as annotations.
//! * Each alert is routed to a host ([`crate::routing`]) and stored
//!   ([`crate::store::Store::record_external`]); the same news delivered again (a retried
//!   webhook, a repeated group) is stored once and changes nothing.
//! * The answer is `200 {"stored": n, "duplicates": d}`.

use crate::alerts::{
    AlertState, Observation, Source, external_dedupe_key, external_title, severity_from_label,
};
use crate::hub::{Hub, HubEvent};
use crate::store::{ExternalAlert, StoreError};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use tether_transport::ws::http_error;

/// The largest notification accepted (413 past it). Alertmanager sends a whole group in one
/// notification: 4 MiB holds a few thousand alerts with their annotations (a receiver's
/// `max_alerts` caps a group below that).
pub const MAX_INTAKE_BODY: usize = 4 << 20;
/// The longest fingerprint accepted.
const MAX_FINGERPRINT: usize = 256;

/// `POST /api/v1/alerts/alertmanager`
pub async fn alertmanager(State(hub): State<Hub>, headers: HeaderMap, body: Body) -> Response {
    intake(hub, Source::Alertmanager, headers, body).await
}

/// `POST /api/v1/alerts/grafana`
pub async fn grafana(State(hub): State<Hub>, headers: HeaderMap, body: Body) -> Response {
    intake(hub, Source::Grafana, headers, body).await
}

/// The `[[alert_sources]]` name of the request's bearer token.
fn source_name(hub: &Hub, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)?;
    hub.config()
        .alert_sources
        .iter()
        .find(|s| crate::tokens::same(&s.token, token))
        .map(|s| s.name.clone())
}

/// Reads the body, refusing past [`MAX_INTAKE_BODY`] (`Err(true)`) or on a read error.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, bool> {
    // A body a little over the limit is read to its end (and dropped) before the 413, so the
    // sender, still writing, reads the answer instead of a reset connection; past twice the
    // limit the hub stops reading and answers at once.
    let drain_limit = 2 * MAX_INTAKE_BODY;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_limit as u64) {
        return Err(true);
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(MAX_INTAKE_BODY as u64) as usize);
    let mut seen = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| false)?;
        seen += chunk.len();
        if seen > drain_limit {
            return Err(true);
        }
        if seen <= MAX_INTAKE_BODY {
            out.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_INTAKE_BODY {
        return Err(true);
    }
    Ok(out)
}

async fn intake(hub: Hub, source: Source, headers: HeaderMap, body: Body) -> Response {
    let m = hub.metrics();
    let Some(name) = source_name(&hub, &headers) else {
        m.intake_auth_failures.fetch_add(1, Ordering::Relaxed);
        return http_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token of an [[alert_sources]] entry is required",
        );
    };
    if hub.is_shutting_down() {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the hub is shutting down",
        );
    }
    let bytes = match read_body(&headers, body).await {
        Ok(b) => b,
        Err(true) => {
            m.intake_rejected.fetch_add(1, Ordering::Relaxed);
            return http_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the body is over {MAX_INTAKE_BODY} bytes"),
            );
        }
        Err(false) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the body could not be read",
            );
        }
    };
    let now = hub.now_ms();
    let checked = match parse_notification(source, &bytes, now) {
        Ok(c) => c,
        Err(e) => {
            m.intake_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(source = %name, kind = source.as_str(), "refused a notification: {e}");
            return http_error(StatusCode::BAD_REQUEST, "bad_request", &e);
        }
    };
    m.external_received
        .fetch_add(checked.len() as u64, Ordering::Relaxed);
    let rules = hub.config().alert_routes.clone();
    let sender = name.clone();
    let result = hub
        .store()
        .run(move |s| {
            let mut routed = Vec::with_capacity(checked.len());
            for (fingerprint, obs) in checked {
                let (agent, route) = crate::routing::route(s, &rules, &obs.labels)?;
                routed.push(ExternalAlert {
                    fingerprint,
                    obs,
                    agent: agent.map(|a| (a.agent_id, a.hostname)),
                    route,
                });
            }
            s.record_external(source, &sender, &routed, now)
        })
        .await;
    match result {
        Ok(done) => {
            m.external_stored
                .fetch_add(done.stored as u64, Ordering::Relaxed);
            m.external_duplicate
                .fetch_add(done.duplicates as u64, Ordering::Relaxed);
            let body = json!({"stored": done.stored, "duplicates": done.duplicates});
            for c in done.changes {
                hub.publish(HubEvent::Alert(c));
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(StoreError { message: e, .. }) => {
            tracing::error!(source = %name, error = %e, "cannot store external alerts");
            // 503: the sender retries.
            http_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "internal",
                &format!("the hub cannot store alerts right now: {e}"),
            )
        }
    }
}

/// The webhook body (Alertmanager's `template.Data` + Grafana's additions). Only what is
/// used is declared; everything else is accepted and ignored.
#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    status: Option<String>,
    alerts: Vec<WebhookAlert>,
}

#[derive(Deserialize)]
struct WebhookAlert {
    status: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(rename = "startsAt", default)]
    starts_at: Option<String>,
    #[serde(rename = "endsAt", default)]
    ends_at: Option<String>,
    #[serde(rename = "generatorURL", default)]
    generator_url: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
    // Grafana's.
    #[serde(rename = "valueString", default)]
    value_string: Option<String>,
    #[serde(default)]
    values: Option<Value>,
    #[serde(rename = "dashboardURL", default)]
    dashboard_url: Option<String>,
    #[serde(rename = "panelURL", default)]
    panel_url: Option<String>,
    #[serde(rename = "silenceURL", default)]
    silence_url: Option<String>,
}

/// A webhook time as unix ms: RFC 3339 with `Z` or a `±hh:mm` offset and up to nanosecond
/// fractions; `Ok(None)` for Go's zero time (`0001-01-01T00:00:00Z`, "not set").
pub fn parse_time(text: &str) -> Result<Option<i64>, String> {
    let t = text.trim();
    if t.starts_with("0001-01-01") {
        return Ok(None);
    }
    let bad = || format!("`{text}` is not an RFC 3339 time");
    let (base, offset_min) = if let Some(b) = t.strip_suffix(['Z', 'z']) {
        (b, 0i64)
    } else if t.len() > 6 && t.is_char_boundary(t.len() - 6) {
        let (b, off) = t.split_at(t.len() - 6);
        let sign = match off.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let (h, mm) = off[1..].split_once(':').ok_or_else(bad)?;
        let h: i64 = h.parse().map_err(|_| bad())?;
        let mm: i64 = mm.parse().map_err(|_| bad())?;
        if h > 23 || mm > 59 {
            return Err(bad());
        }
        (b, sign * (h * 60 + mm))
    } else {
        return Err(bad());
    };
    if !base.contains('T') && !base.contains('t') {
        return Err(bad());
    }
    let ms = crate::store::parse_rfc3339_ms(base).ok_or_else(bad)?;
    Ok(Some(ms - offset_min * 60_000))
}

/// Checks a notification and makes its alerts observations: (fingerprint, observation)
/// each, or the first problem, naming the field.
pub fn parse_notification(
    source: Source,
    body: &[u8],
    now_ms: i64,
) -> Result<Vec<(String, Observation)>, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let n: Notification = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("the body is not a webhook notification: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })?;
    if source == Source::Alertmanager
        && let Some(v) = &n.version
        && v != "4"
    {
        return Err(format!(
            "version: `{v}` is not supported; this endpoint takes Alertmanager's webhook payload version 4"
        ));
    }
    if let Some(s) = &n.status
        && AlertState::parse(s).is_none()
    {
        return Err(format!("status: `{s}` is not firing or resolved"));
    }
    let mut out = Vec::with_capacity(n.alerts.len());
    for (i, a) in n.alerts.into_iter().enumerate() {
        let field = |f: &str| format!("alerts[{i}].{f}");
        let state = AlertState::parse(&a.status).ok_or_else(|| {
            format!(
                "{}: `{}` is not firing or resolved",
                field("status"),
                a.status
            )
        })?;
        let labels = a
            .labels
            .ok_or_else(|| format!("{}: required", field("labels")))?;
        if labels.is_empty() {
            return Err(format!("{}: must hold at least one label", field("labels")));
        }
        let starts_text = a
            .starts_at
            .ok_or_else(|| format!("{}: required", field("startsAt")))?;
        let starts = parse_time(&starts_text)
            .map_err(|e| format!("{}: {e}", field("startsAt")))?
            .ok_or_else(|| format!("{}: the zero time is not a start", field("startsAt")))?;
        let ends = match &a.ends_at {
            Some(t) => parse_time(t).map_err(|e| format!("{}: {e}", field("endsAt")))?,
            None => None,
        };
        let fingerprint = match a.fingerprint.map(|f| f.trim().to_owned()) {
            Some(f) if f.is_empty() => {
                return Err(format!("{}: must not be empty", field("fingerprint")));
            }
            Some(f) if f.len() > MAX_FINGERPRINT => {
                return Err(format!(
                    "{}: {} bytes; the limit is {MAX_FINGERPRINT}",
                    field("fingerprint"),
                    f.len()
                ));
            }
            Some(f) => f,
            None => tether_proto::link::alert_key(&labels),
        };
        let mut annotations = a.annotations.unwrap_or_default();
        let mut keep = |k: &str, v: Option<String>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                annotations.entry(k.to_owned()).or_insert(v);
            }
        };
        keep("valueString", a.value_string);
        keep(
            "values",
            a.values.filter(|v| !v.is_null()).map(|v| v.to_string()),
        );
        keep("dashboardURL", a.dashboard_url);
        keep("panelURL", a.panel_url);
        keep("silenceURL", a.silence_url);
        // A resolution without its end (never sent by Alertmanager) ends when it arrives.
        let at = match state {
            AlertState::Firing => starts,
            AlertState::Resolved => ends.unwrap_or(now_ms).max(starts),
        };
        let ends = (state == AlertState::Resolved).then_some(at);
        let severity = severity_from_label(labels.get("severity").map(String::as_str));
        out.push((
            fingerprint.clone(),
            Observation {
                state,
                severity: Some(severity),
                status: state.as_str().to_owned(),
                at_ms: at,
                starts_ms: Some(starts),
                title: external_title(&labels, &annotations, &fingerprint),
                labels,
                annotations,
                url: a.generator_url.filter(|u| !u.is_empty()),
                seq: None,
                dedupe: Some(external_dedupe_key(&fingerprint, state, starts, ends)),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_times() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(Some(1_000)));
        assert_eq!(
            parse_time("2021-10-12T09:51:03.157076+02:00"),
            parse_time("2021-10-12T07:51:03.157076Z")
        );
        assert_eq!(
            parse_time("1970-01-01T00:00:00-01:30"),
            Ok(Some(90 * 60_000))
        );
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), Ok(None));
        for bad in [
            "yesterday",
            "2021-10-12",
            "2021-10-12T09:51:03+2",
            "2021-13-01T00:00:00Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    fn am(alerts: Value) -> Vec<u8> {
        json!({"version": "4", "status": "firing", "receiver": "tether", "groupKey": "{}:{}",
               "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {},
               "commonAnnotations": {}, "externalURL": "http://am:9093", "alerts": alerts})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_malformed_notification_names_the_field() {
        let ok = json!({"status": "firing", "labels": {"alertname": "A"},
                        "startsAt": "2024-01-01T00:00:00Z"});
        let cases = [
            (
                b"not json".to_vec(),
                "the body is not a webhook notification",
            ),
            (
                json!({"version": "4"}).to_string().into_bytes(),
                "missing field `alerts`",
            ),
            (
                json!({"version": "5", "alerts": []})
                    .to_string()
                    .into_bytes(),
                "version:",
            ),
            (
                am(
                    json!([ok, {"status": "firing", "labels": {"a": 1}, "startsAt": "2024-01-01T00:00:00Z"}]),
                ),
                "alerts[1].labels.a:",
            ),
            (
                am(
                    json!([{"status": "burning", "labels": {"a": "b"}, "startsAt": "2024-01-01T00:00:00Z"}]),
                ),
                "alerts[0].status:",
            ),
            (
                am(json!([{"status": "firing", "labels": {"a": "b"}, "startsAt": "noon"}])),
                "alerts[0].startsAt:",
            ),
            (
                am(json!([{"status": "firing", "labels": {"a": "b"}}])),
                "alerts[0].startsAt: required",
            ),
            (
                am(
                    json!([{"status": "resolved", "labels": {"a": "b"}, "startsAt": "2024-01-01T00:00:00Z", "endsAt": "later"}]),
                ),
                "alerts[0].endsAt:",
            ),
            (
                am(json!([{"status": "firing", "labels": {}, "startsAt": "2024-01-01T00:00:00Z"}])),
                "alerts[0].labels:",
            ),
            (
                am(json!([{"status": "firing", "startsAt": "2024-01-01T00:00:00Z"}])),
                "alerts[0].labels: required",
            ),
            (
                am(json!([{"labels": {"a": "b"}, "startsAt": "2024-01-01T00:00:00Z"}])),
                "alerts[0]: missing field `status`",
            ),
        ];
        for (body, want) in cases {
            let e = parse_notification(Source::Alertmanager, &body, 0).expect_err(want);
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn grafana_fields_are_kept_and_fingerprints_derived() {
        let body = json!({"receiver": "r", "status": "firing", "orgId": 1, "version": "1",
            "title": "[FIRING:1]", "state": "alerting", "message": "m",
            "alerts": [{"status": "firing", "labels": {"alertname": "High memory", "severity": "critical"},
                "annotations": {"summary": "s"}, "startsAt": "2021-10-12T09:51:03.157076+02:00",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "https://g/alerting/1/edit",
                "silenceURL": "https://g/silence", "dashboardURL": "", "panelURL": "",
                "values": {"B": 44.2, "C": 1}, "valueString": "[ var='B' value=44.2 ]"}]})
        .to_string();
        let out = parse_notification(Source::Grafana, body.as_bytes(), 0).expect("valid");
        let (fp, obs) = &out[0];
        assert_eq!(fp.len(), 16, "derived from the labels: {fp}");
        assert_eq!(obs.title, "High memory");
        assert_eq!(obs.severity, Some(crate::alerts::Severity::Critical));
        assert_eq!(obs.annotations["valueString"], "[ var='B' value=44.2 ]");
        assert_eq!(obs.annotations["silenceURL"], "https://g/silence");
        assert!(!obs.annotations.contains_key("dashboardURL"));
        assert_eq!(obs.url.as_deref(), Some("https://g/alerting/1/edit"));
    }
}
