//! The system under test: an agent core assembled as `tether` assembles it — the event log in
//! a temporary directory, the engine with the real OpenAI-compatible provider pointed at the
//! stand-in model server, the multiplexer, the WebSocket listener on loopback (open mode) —
//! and one measured turn per run.
//!
//! The provider is wrapped in a probe that stamps each text chunk the moment the provider
//! hands it to the engine (one clock read and one atomic store per chunk), which splits the
//! end-to-end figure into "model side" and "mux side".

use super::acp_editor::AcpEditor;
use super::model_server::{ModelServer, Plan};
use super::timeline::{Clock, Stamps, leading_number};
use super::ws_client::{ReadEnd, WsClient};
use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::model::{ModelChunk, ModelProvider, ModelRequest, ModelStream};
use tether_engine::openai::{OpenAiConfig, OpenAiEndpoint, OpenAiProvider, RetryPolicy};
use tether_host::tools::ToolRegistry;
use tether_mux::{Mux, MuxConfig};
use tether_transport::auth::Authenticator;
use tether_transport::ws::{WsState, router};
use tokio_util::sync::CancellationToken;

/// The real provider, plus the probe.
struct ProbedProvider {
    inner: OpenAiProvider,
    clock: Clock,
    armed: Mutex<Option<Arc<Stamps>>>,
}

impl ModelProvider for ProbedProvider {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let stream = self.inner.stream(request);
        let Some(stamps) = self.armed.lock().ok().and_then(|mut a| a.take()) else {
            return stream;
        };
        let clock = self.clock;
        stream
            .inspect(move |item| {
                if let Ok(ModelChunk::Text(t)) = item {
                    let now = clock.now_ns();
                    if let Some(seq) = leading_number(t) {
                        stamps.set(seq, now);
                    }
                }
            })
            .boxed()
    }
}

/// Per-chunk instants of one end-to-end run.
pub struct E2eRun {
    /// The model server handed the chunk to its socket.
    pub sent: Arc<Stamps>,
    /// The provider handed the chunk to the engine.
    pub yielded: Arc<Stamps>,
    /// The client received the `text_delta`.
    pub received: Arc<Stamps>,
    /// With `--acp`: the editor received the `agent_message_chunk`.
    pub acp_received: Option<Arc<Stamps>>,
}

pub struct Agent {
    dir: tempfile::TempDir,
    mux: Mux,
    provider: Arc<ProbedProvider>,
    url: String,
    closing: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Starts a core whose model is `model_base_url`; the event log goes to a temporary
    /// directory under `log_parent` (the system's temporary directory when `None`).
    pub async fn start(
        model_base_url: &str,
        log_parent: Option<&Path>,
        clock: Clock,
    ) -> anyhow::Result<Agent> {
        let dir = match log_parent {
            Some(p) => tempfile::tempdir_in(p),
            None => tempfile::tempdir(),
        }
        .context("creating a temporary directory for the event log")?;
        let log = EventLog::open(&dir.path().join("events.db"))?;
        let inner = OpenAiProvider::new(OpenAiConfig {
            endpoints: vec![OpenAiEndpoint::new(model_base_url, "bench-model")],
            // One try: a failed run must show, not be papered over.
            retry: RetryPolicy {
                attempts: 1,
                ..RetryPolicy::default()
            },
            idle_timeout: OpenAiConfig::DEFAULT_IDLE_TIMEOUT,
            request_timeout: OpenAiConfig::DEFAULT_REQUEST_TIMEOUT,
        })
        .context("configuring the OpenAI provider")?;
        let provider = Arc::new(ProbedProvider {
            inner,
            clock,
            armed: Mutex::new(None),
        });
        let engine = Engine::new(
            Some(provider.clone() as Arc<dyn ModelProvider>),
            ToolRegistry::new(),
        );
        let mux = Mux::open(MuxConfig::default(), engine, log)?;
        let auth = Authenticator::default();
        let listener = tether_transport::bind_tcp(([127, 0, 0, 1], 0).into(), &auth).await?;
        let addr = listener.local_addr()?;
        let closing = CancellationToken::new();
        let state = WsState::new(mux.clone(), auth, closing.clone());
        let server = tokio::spawn({
            let closing = closing.clone();
            async move {
                if let Err(e) = tether_transport::serve_http(listener, router(state), closing).await
                {
                    crate::client::note(&format!("agent listener failed: {e}"));
                }
            }
        });
        Ok(Agent {
            dir,
            mux,
            provider,
            url: format!("ws://{addr}/v1/ws"),
            closing,
            server,
        })
    }

    /// The agent's WebSocket URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the event log is.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// One measured turn: a client creates a chat session, attaches, and sends `input`; the
    /// model streams `chunks` chunks `interval` apart. With `acp`, an editor on `tether acp`
    /// loads the same session before the input and receives the same chunks.
    pub async fn run(
        &self,
        model: &ModelServer,
        chunks: u64,
        interval: Duration,
        clock: Clock,
        acp: Option<&tokio::sync::Mutex<AcpEditor>>,
    ) -> anyhow::Result<E2eRun> {
        let run = E2eRun {
            sent: Stamps::new(chunks),
            yielded: Stamps::new(chunks),
            received: Stamps::new(chunks),
            acp_received: acp.map(|_| Stamps::new(chunks)),
        };
        let mut client = WsClient::connect(&self.url, run.received.clone(), chunks, clock).await?;
        let created = client
            .request(
                "session.create",
                json!({"mode": "chat", "title": "overhead"}),
            )
            .await?;
        let session_id = created
            .get("session_id")
            .and_then(Value::as_str)
            .context("session.create returned no session_id")?
            .to_owned();
        client
            .request("attach", json!({ "session_id": session_id }))
            .await?;
        if let (Some(editor), Some(stamps)) = (acp, &run.acp_received) {
            editor
                .lock()
                .await
                .load(&session_id, stamps.clone())
                .await?;
        }
        // Let the attach settle (replies, `client_attached`) before the stream starts.
        tokio::time::sleep(Duration::from_millis(50)).await;
        model.arm(Plan {
            chunks,
            interval,
            sent: run.sent.clone(),
            clock,
        });
        if let Ok(mut a) = self.provider.armed.lock() {
            *a = Some(run.yielded.clone());
        }
        client
            .request(
                "input",
                json!({"session_id": session_id, "text": "stream, please"}),
            )
            .await?;
        let limit = interval
            .saturating_mul(u32::try_from(chunks).unwrap_or(u32::MAX).saturating_mul(4))
            + Duration::from_secs(60);
        let end = client.wait_end(limit).await;
        if let Some(stamps) = &run.acp_received {
            AcpEditor::wait_all(stamps, chunks, Duration::from_secs(10)).await;
        }
        let _ = client
            .request("session.close", json!({ "session_id": session_id }))
            .await;
        client.close().await;
        match end? {
            ReadEnd::All => {}
            ReadEnd::TurnEnded(frame) => crate::client::note(&format!(
                "the turn ended before every delta arrived: {frame}"
            )),
            ReadEnd::Closed(why) => crate::client::note(&format!("agent run: {why}")),
        }
        Ok(run)
    }

    pub async fn stop(self) {
        self.mux.shutdown().await;
        self.closing.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        self.mux.log().close();
        drop(self.dir);
    }
}
