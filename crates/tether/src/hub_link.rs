//! The agent's side of the hub: starts the link (when `[hub]` is configured) and serves the
//! `alert.send` op, which lets scripts raise an alert through the running agent.

use crate::config::{AgentConfig, HubConfig};
use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tether_host::tools::ToolRegistry;
use tether_link::driver::{HeartbeatSource, load_or_create_agent_id, prepare_endpoint};
use tether_link::{
    AlertSink, AlertSpool, Link, LinkOptions, RemoteConfig, RemoteSessions, TlsOptions,
};
use tether_mux::{ExtensionOps, Mux};
use tether_proto::link::{AlertEvent, AlertStatus};
use tether_proto::{Class, ClientInfo, ErrorBody, RawRequest, Reason};
use tokio_util::sync::CancellationToken;

/// A running hub link.
pub struct HubLink {
    pub link: Link,
    pub sink: AlertSink,
    shutdown: CancellationToken,
}

impl HubLink {
    /// Closes the link (close frame; what is queued stays in the spool) and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.link.join()).await;
        self.sink.flush().await;
    }
}

/// The tools remote sessions may use: the configured list, or every read-only tool. The
/// others are withheld: a hub session's call to one is told how an operator would allow it.
pub fn remote_tools(all: &ToolRegistry, names: Option<&[String]>) -> Result<ToolRegistry> {
    all.for_hub_sessions(names).map_err(anyhow::Error::msg)
}

/// Starts the link to the hub. `figures` fills heartbeats; `plugins` names the check plugins
/// in use (sent at registration).
pub fn start(
    cfg: &AgentConfig,
    hub: &HubConfig,
    mux: &Mux,
    figures: Arc<dyn HeartbeatSource>,
    plugins: Vec<String>,
) -> Result<HubLink> {
    let (endpoint, connector) = prepare_endpoint(
        &hub.url,
        hub.allow_plaintext,
        &TlsOptions {
            ca_file: hub.ca_file.clone(),
            client_cert: hub.client_cert.clone(),
            client_key: hub.client_key.clone(),
        },
    )?;
    let agent_id = load_or_create_agent_id(&cfg.state_dir)?;
    let spool = AlertSpool::open(&cfg.state_dir.join("spool.db"), hub.alert_spool_max)
        .context("alert spool")?;
    let sink = spool.sink().context("alert spool")?;
    let engine = mux.engine();
    let remote = RemoteSessions::new(
        mux.clone(),
        RemoteConfig {
            max_sessions: hub.max_remote_sessions,
            idle_timeout: hub.remote_idle_timeout,
            tools: remote_tools(&engine.tools, hub.remote_tools.as_deref())?,
            session_types: hub.remote_sessions.clone(),
            // Remote chat needs a provider the owner chose, the demo script named in `[model]`
            // included (`tether up`); that is wider than what `diagnose` counts as a model.
            model_configured: cfg.model.chosen(),
        },
    );
    let shutdown = CancellationToken::new();
    let link = Link::spawn(
        LinkOptions {
            endpoint,
            token: hub.token.clone(),
            agent_id,
            offered_version: hub.proto_version,
            labels: hub.labels.clone(),
            plugins,
            connector,
            seed: None,
        },
        spool.clone(),
        remote,
        figures,
        shutdown.clone(),
    );
    Ok(HubLink {
        link,
        sink,
        shutdown,
    })
}

/// `alert.send` params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertSend {
    status: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    attrs: BTreeMap<String, String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    description_format: Option<String>,
    /// Unix seconds; default now.
    #[serde(default)]
    event_time: Option<i64>,
}

/// Serves `alert.send` (into the same delivery as checks' events) and `checks.list`.
pub struct AlertOps {
    pub deliver: crate::alerting::Deliver,
    pub checks: tether_checks::engine::CheckEngine,
}

impl AlertOps {
    fn send(&self, client: &ClientInfo, raw: &RawRequest) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(ErrorBody::new(
                Reason::Forbidden,
                "observers cannot raise alerts",
            ));
        }
        let p: AlertSend = raw
            .params()
            .map_err(|e| ErrorBody::new(Reason::BadRequest, e.error.to_string()))?;
        let status = AlertStatus::parse(&p.status).ok_or_else(|| {
            ErrorBody::new(
                Reason::BadRequest,
                format!(
                    "field `status`: `{}` is not Critical, Warning, Info or Ok",
                    p.status
                ),
            )
        })?;
        if p.key.as_deref().is_none_or(|k| k.trim().is_empty()) && p.labels.is_empty() {
            return Err(ErrorBody::new(
                Reason::BadRequest,
                "give the alert a `key`, or `labels` to derive one from",
            ));
        }
        if p.description.len() > tether_proto::link::MAX_ALERT_DESCRIPTION_BYTES {
            return Err(ErrorBody::new(
                Reason::BadRequest,
                "field `description`: longer than 64 KiB",
            ));
        }
        let key = p
            .key
            .filter(|k| !k.trim().is_empty())
            .unwrap_or_else(|| tether_proto::link::alert_key(&p.labels));
        if key.len() > tether_proto::link::MAX_ALERT_KEY_BYTES {
            return Err(ErrorBody::new(
                Reason::BadRequest,
                format!(
                    "field `key`: {} bytes; the limit is {}",
                    key.len(),
                    tether_proto::link::MAX_ALERT_KEY_BYTES
                ),
            ));
        }
        let now = tether_proto::time::now_secs();
        let event_time = match p.event_time {
            None => now,
            Some(t) => tether_proto::time::check_event_time(t, now).map_err(|problem| {
                ErrorBody::new(
                    Reason::BadRequest,
                    format!(
                        "field `event_time`: {t} is {} (unix seconds expected)",
                        problem.as_str()
                    ),
                )
            })?,
        };
        let mut attrs = p.attrs;
        attrs.insert("sent_by".into(), client.name.clone());
        self.deliver
            .send(crate::alerting::Delivery::Manual(AlertEvent {
                event_time,
                event_status: status,
                alert_key: key.clone(),
                labels: p.labels,
                attrs,
                description: p.description,
                description_format: p.description_format.unwrap_or_default(),
                seq: None,
            }));
        Ok(json!({"queued": true, "alert_key": key}))
    }
}

impl ExtensionOps for AlertOps {
    fn handles(&self, op: &str) -> bool {
        matches!(op, "alert.send" | "checks.list")
    }

    fn call<'a>(
        &'a self,
        client: &'a ClientInfo,
        request: &'a RawRequest,
    ) -> futures_util::future::BoxFuture<'a, Result<Value, ErrorBody>> {
        Box::pin(async move {
            match request.op.as_str() {
                "checks.list" => Ok(json!({
                    "instances": self.checks.list(),
                    "config_errors": self.checks.config_errors(),
                    "active_alerts": self.checks.active_alerts(),
                })),
                _ => self.send(client, request),
            }
        })
    }
}
