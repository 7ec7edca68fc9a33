//! `tether agent`: assembles the engine, the multiplexer and the transports, and runs them
//! until SIGINT/SIGTERM, then shuts down in order: turns end with an event, connections get
//! their last frames and a close frame, the event log is flushed.

use crate::config::{AgentConfig, ModelChoice};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::audit::AuditLog;
use tether_engine::log::EventLog;
use tether_engine::mcp::{McpServers, McpTimeouts};
use tether_engine::model::ModelProvider;
use tether_engine::openai::OpenAiProvider;
use tether_engine::scripted::ScriptedProvider;
use tether_host::tools::{ToolRegistry, ToolsConfig};
use tether_mux::{Mux, MuxConfig};
use tether_transport::auth::{Authenticator, ClientCredential};
use tether_transport::limits::{ConnectionLimits, DEFAULT_MAX_CONNECTIONS};
use tether_transport::ws::{WsState, router};
use tokio_util::sync::CancellationToken;

/// The model provider the config asks for.
pub fn build_provider(choice: &ModelChoice) -> Result<Arc<dyn ModelProvider>> {
    Ok(match choice {
        ModelChoice::Demo => Arc::new(ScriptedProvider::demo()),
        ModelChoice::Scripted {
            script: Some(script),
        } => Arc::new(ScriptedProvider::from_file(script).context("model.script")?),
        ModelChoice::Scripted { script: None } => Arc::new(ScriptedProvider::demo()),
        ModelChoice::OpenAi(cfg) => {
            Arc::new(OpenAiProvider::new(cfg.clone()).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
    })
}

pub fn build_engine(cfg: &AgentConfig) -> Result<Engine> {
    let provider = build_provider(&cfg.model)?;
    let tools = ToolRegistry::builtin(&ToolsConfig {
        read_dirs: cfg.tools.read_dirs.clone(),
        shell_timeout: cfg.tools.shell_timeout,
        shell_enabled: cfg.tools.shell,
        log_dirs: cfg.tools.log_dirs.clone(),
        ..ToolsConfig::default()
    });
    let mut engine = Engine::new(Some(provider), tools);
    engine.max_rounds = cfg.sessions.max_rounds;
    if !cfg.mcp.servers.is_empty() {
        let mut timeouts = McpTimeouts::default();
        if let Some(t) = cfg.mcp.start_timeout {
            timeouts.start = t;
        }
        if let Some(t) = cfg.mcp.call_timeout {
            timeouts.call = t;
        }
        engine.mcp = Some(Arc::new(
            McpServers::with_timeouts(cfg.mcp.servers.clone(), timeouts)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
    }
    // The demo script keeps `chat` alive without a model; `diagnose` falls back to inspect.
    engine.model_configured = cfg.model.answers_diagnoses();
    Ok(engine)
}

pub fn mux_config(cfg: &AgentConfig) -> MuxConfig {
    MuxConfig {
        client_queue_frames: cfg.sessions.client_queue,
        retention_events: cfg.sessions.retention_events,
        permission_grace: cfg.sessions.permission_grace,
        permission_timeout: cfg.sessions.permission_timeout,
        max_queued_inputs: cfg.sessions.max_queued_inputs,
        max_sessions_per_client: cfg.sessions.max_sessions_per_client,
        closed_retention: cfg.sessions.closed_retention,
        ..MuxConfig::default()
    }
}

/// Creates the state directory readable by its owner only, and tightens an existing one (and
/// the files in it) that other users could read: it holds transcripts and tool output.
pub fn ensure_state_dir(cfg: &AgentConfig) -> Result<()> {
    use tether_host::perms;
    let dir = &cfg.state_dir;
    if let Some(w) = perms::private_dir(dir)
        .with_context(|| format!("state_dir: cannot create or restrict {}", dir.display()))?
    {
        tracing::warn!("state_dir: {w}");
    }
    for w in perms::tighten_files_in(dir)
        .with_context(|| format!("state_dir: cannot restrict the files in {}", dir.display()))?
    {
        tracing::warn!("state_dir: {w}");
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// A running agent core: the multiplexer and its listeners.
pub struct Core {
    pub mux: Mux,
    pub log: EventLog,
    pub hub: Option<crate::hub_link::HubLink>,
    pub checks: tether_checks::engine::CheckEngine,
    checks_stop: CancellationToken,
    notifiers: tether_checks::notify::Notifiers,
    delivery: tokio::task::JoinHandle<()>,
    pub closing: CancellationToken,
    pub socket: std::path::PathBuf,
    pub endpoints: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Core {
    /// Opens the state, the engine and the listeners the config names. Tool calls are
    /// audited to `audit_path` (normally `state_dir/audit.jsonl`).
    pub async fn start(cfg: &AgentConfig, audit_path: &std::path::Path) -> Result<Core> {
        Self::start_with(cfg, audit_path, build_engine(cfg)?).await
    }

    /// [`Core::start`] with an engine built by the caller from `cfg` (`tether eval` meters
    /// its model).
    pub async fn start_with(
        cfg: &AgentConfig,
        audit_path: &std::path::Path,
        mut engine: Engine,
    ) -> Result<Core> {
        ensure_state_dir(cfg)?;
        engine.audit = Some(Arc::new(AuditLog::open(audit_path).with_context(|| {
            format!("cannot open the audit log {}", audit_path.display())
        })?));
        let log = EventLog::open(&cfg.state_dir.join("events.db"))?;
        let mux = Mux::open(mux_config(cfg), engine, log.clone())?;
        let checks_stop = CancellationToken::new();
        let notifiers = tether_checks::notify::Notifiers::start(&cfg.notifiers)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let history = Arc::new(
            tether_checks::history::AlertHistory::open(
                &cfg.state_dir.join("alerts.db"),
                tether_checks::history::DEFAULT_HISTORY_MAX,
            )
            .context("alert history")?,
        );
        let (deliver, pending) = crate::alerting::channel();
        let checks = {
            let deliver = deliver.clone();
            tether_checks::engine::CheckEngine::start(
                cfg.checks_dir.clone(),
                tether_checks::plugins::registry(),
                Arc::new(move |ev| deliver.send(crate::alerting::Delivery::Check(ev))),
                checks_stop.clone(),
            )
        };
        let hub = match &cfg.hub {
            Some(h) => {
                let mut plugins: Vec<String> =
                    checks.list().into_iter().map(|i| i.plugin).collect();
                plugins.sort();
                plugins.dedup();
                Some(crate::hub_link::start(
                    cfg,
                    h,
                    &mux,
                    Arc::new(crate::alerting::EngineFigures(checks.clone())),
                    plugins,
                )?)
            }
            None => None,
        };
        let autodiag = {
            let reports = hub.as_ref().map(|h| h.link.report_sender());
            let notifiers = notifiers.clone();
            crate::autodiag::AutoDiagnosis::new(
                mux.clone(),
                cfg.diagnosis.clone(),
                Arc::new(move |f: crate::autodiag::Finished| {
                    tracing::info!(alert_key = %f.alert_key, session = %f.session_id, "automatic diagnosis finished");
                    if let Some(tx) = &reports {
                        let _ = tx.try_send(tether_proto::link::DiagnoseReport {
                            alert_key: f.alert_key.clone(),
                            session_id: Some(f.session_id.clone()),
                            report: f.report.clone(),
                            created_at: f.created_at.clone(),
                        });
                    }
                    notifiers.report(&tether_checks::notify::DiagnosisReport {
                        alert_key: f.alert_key.clone(),
                        session_id: Some(f.session_id.clone()),
                        report: f.report.clone(),
                        created_at: f.created_at.clone(),
                        labels: std::collections::BTreeMap::from([
                            ("plugin".to_owned(), f.plugin.clone()),
                            ("target".to_owned(), f.target.clone()),
                        ]),
                    });
                }),
            )
        };
        let delivery = pending.start(crate::alerting::Outlets {
            history,
            hub: hub.as_ref().map(|h| h.sink.clone()),
            notifiers: notifiers.clone(),
            autodiag,
        });
        mux.add_extension(Arc::new(crate::hub_link::AlertOps {
            deliver,
            checks: checks.clone(),
        }));
        for e in checks.config_errors() {
            tracing::error!("checks config: {e}");
        }
        let auth = Authenticator::new(
            cfg.clients
                .iter()
                .map(|c| ClientCredential {
                    name: c.name.clone(),
                    class: c.class,
                    token: c.token.clone(),
                })
                .collect(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;

        // One set of caps for both listeners: the total counts every client connection.
        let limits = cfg.clients.iter().fold(
            ConnectionLimits::new(DEFAULT_MAX_CONNECTIONS, cfg.max_connections_per_client),
            |limits, c| match c.max_connections {
                Some(n) => limits.with_cap(&c.name, n),
                None => limits,
            },
        );
        let limits = Arc::new(limits);

        let closing = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut endpoints = Vec::new();
        if let Some(addr) = cfg.listen {
            let listener = tether_transport::bind_tcp(addr, &auth).await?;
            let bound = listener.local_addr()?;
            endpoints.push(format!("ws://{bound}/v1/ws"));
            let mut state = WsState::new(mux.clone(), auth.clone(), closing.clone());
            state.limits = limits.clone();
            if let Some(h) = &hub {
                let watch = h.link.watch();
                state.health = Some(Arc::new(
                    move || serde_json::json!({ "hub": *watch.borrow() }),
                ));
                // Every alert the link lost is visible here as well as in the heartbeat.
                let watch = h.link.watch();
                state.metrics = Some(Arc::new(move |text| {
                    let s = watch.borrow();
                    text.gauge(
                        "tether_agent_alerts_spooled",
                        "Alert events waiting in the spool for the hub.",
                        s.spool_pending as f64,
                    )
                    .counter(
                        "tether_agent_alerts_dropped_total",
                        "Alert events dropped since start: spool overflow, or too large for any frame.",
                        s.dropped_alerts,
                    );
                }));
            }
            endpoints.push(format!("http://{bound}/mcp"));
            let mcp = crate::mcp_server::http_router(
                mux.clone(),
                state.auth.clone(),
                state.limits.clone(),
                closing.clone(),
            );
            let routes = router(state).merge(mcp);
            let closing = closing.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = tether_transport::serve_http(listener, routes, closing).await {
                    tracing::error!(error = %e, "HTTP listener failed");
                }
            }));
        }
        let unix_listener = tether_transport::unix::bind(&cfg.socket)?;
        endpoints.push(format!("unix:{}", cfg.socket.display()));
        tasks.push(tokio::spawn(tether_transport::unix::serve_with_limits(
            unix_listener,
            mux.clone(),
            limits,
            closing.clone(),
        )));
        if auth.is_open() && cfg.listen.is_some() {
            tracing::info!("no [[clients]] tokens configured: serving loopback peers only");
        }
        Ok(Core {
            mux,
            log,
            hub,
            checks,
            checks_stop,
            notifiers,
            delivery,
            closing,
            socket: cfg.socket.clone(),
            endpoints,
            tasks,
        })
    }

    /// Ends running turns with an event, closes every connection, flushes the log.
    pub async fn stop(self) {
        // Checks stop first, so their last events are delivered before the link closes.
        self.checks_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.checks.stopped()).await;
        self.mux.shutdown().await;
        if let Some(hub) = self.hub {
            // Let remote sessions' last events reach the link's queue, then close it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            hub.stop().await;
        }
        if let Some(mcp) = &self.mux.engine().mcp {
            mcp.shutdown().await;
        }
        self.closing.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        // Delivery ends once the extension ops (in the mux) and the engine drop their senders;
        // don't wait long for it.
        drop(self.checks);
        self.delivery.abort();
        self.notifiers.shutdown(Duration::from_secs(3)).await;
        let _ = std::fs::remove_file(&self.socket);
        self.log.close();
    }
}

pub async fn run(cfg: AgentConfig) -> Result<()> {
    let core = Core::start(&cfg, &cfg.state_dir.join("audit.jsonl")).await?;
    let model = core
        .mux
        .engine()
        .provider
        .as_ref()
        .map_or_else(|| "none".to_owned(), |p| p.describe());
    tracing::info!(
        endpoints = %core.endpoints.join(", "),
        state_dir = %cfg.state_dir.display(),
        config = %cfg.source.as_ref().map_or_else(|| "built-in defaults".to_owned(), |p| p.display().to_string()),
        model = %model,
        sessions = core.mux.list_sessions().sessions.len(),
        "tether agent ready"
    );
    shutdown_signal().await;
    tracing::info!("shutting down: ending running turns");
    core.stop().await;
    tracing::info!("stopped");
    Ok(())
}
