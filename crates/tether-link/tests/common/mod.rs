//! Test harness for the hub link's acceptance tests: a real agent core (event log on disk,
//! engine with the scripted provider, multiplexer, remote sessions, SQLite alert spool) and
//! the real driver ([`Link::spawn`]) dialing a [`hub::TestHub`] over loopback sockets with
//! plaintext `ws://`, optionally through a [`proxy::FaultProxy`].
//!
//! Paused-time tests: with `start_paused = true` the runtime advances the clock to the next
//! timer whenever it is idle — including while a loopback socket hop is in flight, which
//! would let a 15 s dial timeout or the 10 s ack deadline fire in the middle of a handshake.
//! [`fine_clock`] keeps a 5 ms timer running so that each idle moment only moves the clock
//! 5 ms; waits are measured in virtual time by the hub (`tokio::time::Instant` in its
//! handler), and every `tokio::time::timeout` in those tests is a virtual-time guard.
#![allow(dead_code)]

pub mod hub;
pub mod proxy;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::scripted::ScriptedProvider;
use tether_host::tools::{ToolRegistry, ToolsConfig};
use tether_link::driver::{NoAlerts, load_or_create_agent_id, prepare_endpoint};
use tether_link::{
    AlertSink, AlertSpool, Link, LinkOptions, LinkStatus, RemoteConfig, RemoteSessions, TlsOptions,
};
use tether_mux::{Mux, MuxConfig};
use tether_proto::Mode;
use tether_proto::link::{AlertEvent, AlertStatus};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "agent-secret-token";

/// Generous bound for real-time waits (a loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(30);

/// Keeps a 5 ms timer pending so paused time advances in small steps (see the module docs).
pub fn fine_clock() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Each turn: one `system_info` call, then a short answer.
pub fn system_info_script() -> String {
    json!({"loop": true, "responses": [
        {"tool_calls": [{"tool": "system_info", "args": {}}]},
        {"text": "All fine."}
    ]})
    .to_string()
}

/// Each turn: a `shell` call (needs approval), then a short answer.
pub fn shell_script() -> String {
    json!({"loop": true, "responses": [
        {"text": "running it ", "tool_calls": [{"tool": "shell", "args": {"command": "echo remote-ran"}}]},
        {"text": "done"}
    ]})
    .to_string()
}

/// The builtin tools with only these names kept, as the agent builds a hub session's
/// toolset from `remote_tools`.
pub fn tools_named(names: &[&str]) -> ToolRegistry {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    ToolRegistry::builtin(&ToolsConfig::default())
        .for_hub_sessions(Some(&names))
        .expect("known tool names")
}

/// Everything an agent under test is built from.
pub struct AgentSetup {
    pub url: String,
    pub offered_version: u32,
    pub script: String,
    pub remote: RemoteConfig,
    pub labels: BTreeMap<String, String>,
    pub plugins: Vec<String>,
    pub spool_max: u64,
    pub seed: Option<u64>,
    /// Start the link at once (false: call [`TestAgent::start_link`] later).
    pub start_link: bool,
}

impl AgentSetup {
    pub fn new(url: impl Into<String>) -> AgentSetup {
        AgentSetup {
            url: url.into(),
            offered_version: 2,
            script: system_info_script(),
            remote: RemoteConfig {
                max_sessions: 4,
                idle_timeout: Duration::from_secs(30 * 60),
                // What the agent gives hub sessions without `remote_tools`.
                tools: ToolRegistry::builtin(&ToolsConfig::default()).read_only_for_hub(),
                session_types: vec![Mode::Chat, Mode::Diagnose, Mode::Inspect],
                model_configured: true,
            },
            labels: BTreeMap::from([("env".to_owned(), "test".to_owned())]),
            plugins: vec!["cpu".to_owned(), "disk".to_owned()],
            spool_max: tether_link::spool::DEFAULT_SPOOL_MAX,
            seed: Some(7),
            start_link: true,
        }
    }
}

pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub mux: Mux,
    pub spool: AlertSpool,
    pub sink: AlertSink,
    pub agent_id: String,
    pub shutdown: CancellationToken,
    link: Option<Link>,
    pending: Option<(LinkOptions, RemoteSessions)>,
}

impl TestAgent {
    pub fn start(setup: AgentSetup) -> TestAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(&dir.path().join("events.db")).expect("event log");
        let provider = ScriptedProvider::from_json(&setup.script, "test script").expect("script");
        let engine = Engine::new(
            Some(Arc::new(provider)),
            ToolRegistry::builtin(&ToolsConfig::default()),
        );
        let mux = Mux::open(MuxConfig::default(), engine, log).expect("mux");
        let remote = RemoteSessions::new(mux.clone(), setup.remote);
        let spool = AlertSpool::open(&dir.path().join("spool.db"), setup.spool_max).expect("spool");
        let sink = spool.sink().expect("sink");
        let agent_id = load_or_create_agent_id(dir.path()).expect("agent id");
        let (endpoint, connector) =
            prepare_endpoint(&setup.url, true, &TlsOptions::default()).expect("endpoint");
        let options = LinkOptions {
            endpoint,
            token: TOKEN.to_owned(),
            agent_id: agent_id.clone(),
            offered_version: setup.offered_version,
            labels: setup.labels,
            plugins: setup.plugins,
            connector,
            seed: setup.seed,
        };
        let mut agent = TestAgent {
            dir,
            mux,
            spool,
            sink,
            agent_id,
            shutdown: CancellationToken::new(),
            link: None,
            pending: Some((options, remote)),
        };
        if setup.start_link {
            agent.start_link();
        }
        agent
    }

    pub fn start_link(&mut self) {
        let Some((options, remote)) = self.pending.take() else {
            return;
        };
        self.link = Some(Link::spawn(
            options,
            self.spool.clone(),
            remote,
            Arc::new(NoAlerts),
            self.shutdown.clone(),
        ));
    }

    pub fn link(&self) -> &Link {
        self.link.as_ref().expect("link started")
    }

    pub fn status(&self) -> LinkStatus {
        self.link().status()
    }

    /// Waits until the link's status satisfies `pred` (bounded; virtual time when paused).
    pub async fn wait_status(
        &self,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&LinkStatus) -> bool,
    ) -> LinkStatus {
        let mut rx = self.link().watch();
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if pred(&s) {
                        return s.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(s) => s,
            Err(_) => panic!(
                "timed out after {limit:?} waiting for link status: {what}; status: {:?}",
                self.status()
            ),
        }
    }

    /// Sends `n` alert events with keys `alert-00000`.. (from `first`) and waits until the
    /// spool has committed them.
    pub async fn send_alerts(&self, first: usize, n: usize, description_len: usize) {
        for i in first..first + n {
            self.sink.send(alert(i, description_len));
        }
        self.sink.flush().await;
    }

    /// Cancels the link and waits for it (bounded), then shuts the multiplexer down.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(link) = self.link.take() {
            tokio::time::timeout(WAIT, link.join())
                .await
                .expect("the link did not stop");
        }
        let _ = tokio::time::timeout(WAIT, self.mux.shutdown()).await;
        self.mux.log().close();
    }

    /// Cancels the link and returns how long `Link::join` took (real time).
    pub async fn stop_link_timed(&mut self) -> std::time::Duration {
        let started = std::time::Instant::now();
        self.shutdown.cancel();
        if let Some(link) = self.link.take() {
            link.join().await;
        }
        started.elapsed()
    }
}

pub fn alert_key(i: usize) -> String {
    format!("alert-{i:05}")
}

pub fn alert(i: usize, description_len: usize) -> AlertEvent {
    let mut description = format!("alert number {i} ");
    while description.len() < description_len {
        description.push('x');
    }
    AlertEvent {
        event_time: 1_700_000_000 + i as i64,
        event_status: if i.is_multiple_of(2) {
            AlertStatus::Critical
        } else {
            AlertStatus::Warning
        },
        alert_key: alert_key(i),
        labels: BTreeMap::from([("check".to_owned(), "test".to_owned())]),
        attrs: BTreeMap::new(),
        description,
        description_format: String::new(),
        seq: None,
    }
}

/// `session_start` payload.
pub fn session_start(
    session_id: &str,
    session_type: &str,
    user: &str,
    message: Option<&str>,
) -> Value {
    let mut params = json!({});
    if let Some(m) = message {
        params["message"] = json!(m);
    }
    json!({"session_id": session_id, "session_type": session_type, "user_name": user, "params": params})
}

/// The payload of a frame.
pub fn payload(v: &Value) -> &Value {
    &v["payload"]
}

/// Splits a v2 `session_event` frame into (session_id, event).
pub fn session_event(v: &Value) -> (&str, &Value) {
    (
        v["payload"]["session_id"].as_str().unwrap_or_default(),
        &v["payload"]["event"],
    )
}
