//! The system under test: an agent core (event log in a temporary directory, the multiplexer
//! with the bench model provider, the WebSocket listener on loopback in open mode), and one
//! measured turn per run.

use crate::client::{self, BenchClient, RunResult};
use crate::credit::{Progress, delta_text};
use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::model::{ModelChunk, ModelError, ModelProvider, ModelRequest, ModelStream};
use tether_host::tools::ToolRegistry;
use tether_mux::{Mux, MuxConfig};
use tether_transport::auth::Authenticator;
use tether_transport::limits::{ConnectionLimits, DEFAULT_MAX_CONNECTIONS};
use tether_transport::ws::{WsState, router};
use tokio_util::sync::CancellationToken;

/// A model that streams `Text` chunks as fast as the credit window allows, each carrying its
/// creation time. A run arms it with its [`Progress`]; the next model call takes it.
#[derive(Default)]
pub struct BenchProvider {
    armed: Mutex<Option<Arc<Progress>>>,
}

impl BenchProvider {
    fn arm(&self, progress: Arc<Progress>) {
        if let Ok(mut a) = self.armed.lock() {
            *a = Some(progress);
        }
    }
}

impl ModelProvider for BenchProvider {
    fn describe(&self) -> String {
        "tether-bench fan-out producer".into()
    }

    fn stream(&self, _request: ModelRequest) -> ModelStream {
        let armed = self.armed.lock().ok().and_then(|mut a| a.take());
        let Some(progress) = armed else {
            return futures_util::stream::once(async {
                Err(ModelError::Other("no benchmark run is armed".into()))
            })
            .boxed();
        };
        futures_util::stream::unfold((progress, 0u64), |(progress, i)| async move {
            if i >= progress.events() {
                return None;
            }
            let nanos = progress.acquire(i).await;
            Some((Ok(ModelChunk::Text(delta_text(nanos))), (progress, i + 1)))
        })
        .boxed()
    }
}

/// A running agent core on loopback.
pub struct Core {
    dir: tempfile::TempDir,
    mux: Mux,
    provider: Arc<BenchProvider>,
    url: String,
    limits: Arc<ConnectionLimits>,
    closing: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Core {
    pub async fn start(config: MuxConfig) -> anyhow::Result<Core> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let log = EventLog::open(&dir.path().join("events.db"))?;
        let provider = Arc::new(BenchProvider::default());
        let engine = Engine::new(
            Some(provider.clone() as Arc<dyn ModelProvider>),
            ToolRegistry::new(),
        );
        let mux = Mux::open(config, engine, log)?;
        let auth = Authenticator::default();
        let listener = tether_transport::bind_tcp(([127, 0, 0, 1], 0).into(), &auth).await?;
        let addr = listener.local_addr()?;
        let closing = CancellationToken::new();
        let mut state = WsState::new(mux.clone(), auth, closing.clone());
        // Every bench client is the same loopback principal: no per-client cap.
        state.limits = Arc::new(ConnectionLimits::new(
            DEFAULT_MAX_CONNECTIONS,
            DEFAULT_MAX_CONNECTIONS,
        ));
        let limits = state.limits.clone();
        let server = tokio::spawn({
            let closing = closing.clone();
            async move {
                if let Err(e) = tether_transport::serve_http(listener, router(state), closing).await
                {
                    client::note(&format!("agent listener failed: {e}"));
                }
            }
        });
        Ok(Core {
            dir,
            mux,
            provider,
            url: format!("ws://{addr}/v1/ws"),
            limits,
            closing,
            server,
        })
    }

    /// One measured turn: `n` clients attach to a fresh session, the first sends `input`,
    /// and every client receives `events` text deltas.
    pub async fn run(
        &self,
        n: usize,
        events: u64,
        window: u64,
        epoch: Instant,
    ) -> anyhow::Result<RunResult> {
        let progress = Arc::new(Progress::new(n, events, window, epoch));
        let other = Arc::new(AtomicU64::new(0));
        let mut clients = client::connect_all(&self.url, n, &progress, &other).await?;
        let result = self.measure(&mut clients, &progress, &other).await;
        let session = result.as_ref().ok().map(|(_, s)| s.clone());
        if let (Some(session_id), Some(first)) = (session, clients.first_mut()) {
            // Closing first means the disconnects below publish nothing.
            let _ = first
                .request("session.close", json!({ "session_id": session_id }))
                .await;
        }
        client::close_all(clients).await;
        self.wait_idle().await;
        result.map(|(r, _)| r)
    }

    async fn measure(
        &self,
        clients: &mut [BenchClient],
        progress: &Arc<Progress>,
        other: &client::OtherFrames,
    ) -> anyhow::Result<(RunResult, String)> {
        let first = clients.first_mut().context("no clients")?;
        let created = first
            .request("session.create", json!({"mode": "chat", "title": "fanout"}))
            .await?;
        let session_id = created
            .get("session_id")
            .and_then(Value::as_str)
            .context("session.create returned no session_id")?
            .to_owned();
        let attaches = futures_util::stream::iter(clients.iter_mut())
            .map(|c| attach(c, &session_id))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        attaches.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        // Let the `client_attached` flood drain before the measured stream starts.
        client::settle(other).await;
        self.provider.arm(progress.clone());
        let cpu_start = crate::cpu::process_cpu_s();
        let first = clients.first_mut().context("no clients")?;
        first
            .request(
                "input",
                json!({"session_id": session_id, "text": "stream, please"}),
            )
            .await?;
        let result = client::gather(clients, progress, Duration::from_secs(600), cpu_start).await?;
        Ok((result, session_id))
    }

    /// Waits (bounded) until the server has let go of every connection of the last run.
    async fn wait_idle(&self) {
        for _ in 0..600 {
            if self.limits.open() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client::note("connections of the previous run are still open; continuing");
    }

    pub async fn stop(self) {
        self.mux.shutdown().await;
        self.closing.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        self.mux.log().close();
        drop(self.dir);
    }
}

/// `attach`, retrying while the session's inbox is full.
async fn attach(client: &mut BenchClient, session_id: &str) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match client
            .request("attach", json!({ "session_id": session_id }))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if tries < 50 && e.to_string().contains("overloaded") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("attach: {e}"),
        }
    }
}
