//! A session started from the hub uses the hub link's `remote_tools`, also after the agent
//! restarted: the multiplexer restores sessions before the hub link tells it that toolset,
//! and a resumed hub session used to fall back to the read-only default (so `shell`, allowed
//! by `remote_tools`, was refused as not allowed).

mod common;

use common::*;
use serde_json::json;
use tether_host::tools::{ToolRegistry, ToolsConfig};
use tether_mux::{MuxConfig, SessionOptions};
use tether_proto::{Class, ClientId, ClientInfo, Mode, Policy, SessionId};

fn with_shell() -> ToolRegistry {
    ToolRegistry::builtin(&ToolsConfig::default())
        .filtered(|name, _| ["shell", "system_info"].contains(&name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_hub_session_gets_the_configured_remote_tools() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub_user = ClientInfo {
        client_id: ClientId::from("hub:alice/1"),
        class: Class::Human,
        name: "alice".into(),
    };
    {
        let mux = open_mux(dir.path(), &prompt_script(), MuxConfig::default());
        mux.set_remote_tools(with_shell());
        mux.create_session(
            None,
            Mode::Chat,
            Some("from the hub".into()),
            Policy::Human,
            serde_json::Map::new(),
            SessionOptions {
                tools: Some(with_shell()),
                remote: true,
                session_id: Some(SessionId("hub-1".into())),
            },
        )
        .await
        .expect("hub session");
        mux.shutdown().await;
    }
    // The agent restarts: sessions are restored first, the hub link sets its tools after.
    let mux = open_mux(dir.path(), &prompt_script(), MuxConfig::default());
    mux.set_remote_tools(with_shell());
    let mut alice = TestClient::connect(&mux, &hub_user.client_id.to_string(), Class::Human);
    alice.ok("attach", json!({"session_id": "hub-1"})).await;
    alice
        .ok("input", json!({"session_id": "hub-1", "text": "run it"}))
        .await;
    let seen = alice
        .until(|v| is_event(v, "permission_requested") || is_event(v, "tool_result"))
        .await;
    let last = seen.last().expect("an event");
    assert!(
        is_event(last, "permission_requested"),
        "shell is in remote_tools, so it asks for approval instead of being refused: {last}"
    );
    mux.shutdown().await;
}
