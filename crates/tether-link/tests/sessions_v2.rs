//! Remote sessions under version 2: client-protocol events relayed as `session_event`, hub
//! users sharing a session (`session_attach`), permission prompts answered from the hub
//! (`session_answer`), and the multiplexer's arbitration across the relay.

mod common;

use common::hub::{HubConn, HubSettings, TestHub};
use common::{AgentSetup, TestAgent, WAIT};
use serde_json::{Value, json};

/// Reads a v2 connection, keeping session events and acks apart so that neither is lost
/// while waiting for the other.
struct V2 {
    conn: HubConn,
    /// Every client-protocol event of the session, in arrival order.
    events: Vec<Value>,
    acks: Vec<Value>,
    /// Every frame, in arrival order.
    frames: Vec<Value>,
}

impl V2 {
    async fn pump(&mut self) {
        let f = self.conn.next(WAIT).await.expect("the connection ended");
        match f["type"].as_str() {
            Some("session_event") => {
                assert!(f.get("ref_id").is_none());
                self.events.push(f["payload"]["event"].clone());
                assert_eq!(
                    f["payload"]["session_id"], f["payload"]["event"]["session_id"],
                    "{f}"
                );
            }
            Some("ack") => self.acks.push(f.clone()),
            _ => {}
        }
        self.frames.push(f);
    }

    /// Waits for the `ack` of frame `id`.
    async fn ack(&mut self, id: &str) -> Value {
        loop {
            if let Some(a) = self.acks.iter().find(|a| a["ref_id"] == id) {
                return a["payload"].clone();
            }
            self.pump().await;
        }
    }

    /// Waits for the first event named `name` at index `from` or later; returns its index.
    async fn event(&mut self, name: &str, from: usize) -> usize {
        loop {
            if let Some(i) = self.events[from.min(self.events.len())..]
                .iter()
                .position(|e| e["event"] == name)
            {
                return from + i;
            }
            self.pump().await;
        }
    }

    fn send(&self, kind: &str, payload: Value) -> String {
        self.conn.send_msg(kind, payload)
    }
}

/// A hub user (human, via `session_attach`) answers the permission prompt and the shell
/// tool runs; an agent-class user who started a turn cannot approve its own request
/// (`agent_cannot_self_approve`); every event reaches the hub as `session_event` with a
/// gap-free `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_permission_answered_from_the_hub() {
    let hub = TestHub::start(HubSettings::default()).await;
    let mut setup = AgentSetup::new(hub.url());
    setup.script = common::shell_script();
    setup.remote.tools = common::tools_named(&["system_info", "shell"]);
    let agent = TestAgent::start(setup);
    let conn = hub.next_conn(WAIT).await;
    assert_eq!(conn.version, 2);
    agent
        .wait_status("registered v2", WAIT, |s| s.version == Some(2))
        .await;
    let mut s = V2 {
        conn,
        events: Vec::new(),
        acks: Vec::new(),
        frames: Vec::new(),
    };
    let sid = "remote-7";

    // Alice starts a chat; its first turn asks to run `shell`.
    let id = s.send(
        "session_start",
        json!({"session_id": sid, "session_type": "chat", "user_name": "alice",
               "class": "human", "params": {"message": "run it"}}),
    );
    assert_eq!(s.ack(&id).await["ok"], true);
    let asked = s.event("permission_requested", 0).await;
    let prompt = s.events[asked].clone();
    assert_eq!(prompt["tool"], "shell", "{prompt}");
    assert_eq!(prompt["args"]["command"], "echo remote-ran");
    assert_eq!(prompt["originator"]["name"], "alice");
    assert_eq!(prompt["originator"]["class"], "human");
    let call_id = prompt["call_id"].as_str().expect("call_id").to_owned();
    let turn1 = prompt["turn_id"].clone();

    // Bob joins from the hub as a human and allows it.
    let id = s.send(
        "session_attach",
        json!({"session_id": sid, "user_name": "bob", "class": "human"}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let id = s.send(
        "session_answer",
        json!({"session_id": sid, "call_id": call_id, "user_name": "bob", "class": "human", "decision": "allow"}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let resolved = s.event("permission_resolved", asked).await;
    let r = &s.events[resolved];
    assert_eq!(r["call_id"], call_id.as_str());
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["cause"], "answered");
    assert_eq!(r["by"]["name"], "bob");
    assert_eq!(r["by"]["class"], "human");
    let result = s.event("tool_result", resolved).await;
    let r = &s.events[result];
    assert_eq!(r["call_id"], call_id.as_str());
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["output"]
            .as_str()
            .unwrap_or_default()
            .contains("remote-ran"),
        "the command ran: {r}"
    );
    let ended = s.event("turn_ended", result).await;
    assert_eq!(s.events[ended]["turn_id"], turn1);
    assert_eq!(s.events[ended]["stop"], "completed");

    // An empty input is refused out loud, not dropped.
    let id = s.send(
        "session_input",
        json!({"session_id": sid, "message": "  ", "user_name": "bob", "class": "human"}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["reason"], "bad_request", "{ack}");

    // An agent-class hub user starts the next turn and tries to approve its own request.
    let id = s.send(
        "session_input",
        json!({"session_id": sid, "message": "again", "user_name": "robot", "class": "agent"}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let turn2 = ack["result"]["turn_id"].clone();
    assert!(turn2.is_string(), "{ack}");
    let asked2 = s.event("permission_requested", ended).await;
    let prompt2 = s.events[asked2].clone();
    assert_eq!(prompt2["turn_id"], turn2);
    assert_eq!(prompt2["originator"]["name"], "robot");
    assert_eq!(prompt2["originator"]["class"], "agent");
    let call2 = prompt2["call_id"].as_str().expect("call_id").to_owned();
    let id = s.send(
        "session_answer",
        json!({"session_id": sid, "call_id": call2, "user_name": "robot", "class": "agent", "decision": "allow"}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["reason"], "agent_cannot_self_approve", "{ack}");
    assert!(ack["error"].is_string(), "{ack}");
    // Still pending: bob denies it, and the turn ends without running the command.
    let id = s.send(
        "session_answer",
        json!({"session_id": sid, "call_id": call2, "user_name": "bob", "class": "human", "decision": "deny"}),
    );
    assert_eq!(s.ack(&id).await["ok"], true);
    let resolved2 = s.event("permission_resolved", asked2).await;
    assert_eq!(s.events[resolved2]["decision"], "deny");
    assert_eq!(s.events[resolved2]["by"]["name"], "bob");
    let result2 = s.event("tool_result", resolved2).await;
    assert_eq!(s.events[result2]["ok"], false);
    let ended2 = s.event("turn_ended", result2).await;
    assert_eq!(s.events[ended2]["turn_id"], turn2);

    // The hub ends the session.
    s.send(
        "session_cancel",
        json!({"session_id": sid, "reason": "done"}),
    );
    let closed = s.event("session_closed", ended2).await;
    assert_eq!(closed, s.events.len() - 1);

    // Every event: a client-protocol event of this session, with seq 1, 2, 3, ... and a ts.
    for (i, e) in s.events.iter().enumerate() {
        assert_eq!(e["session_id"], sid, "{e}");
        assert_eq!(
            e["seq"],
            json!(i as u64 + 1),
            "seq hole or duplicate at {i}: {e}"
        );
        assert!(e["ts"].is_string(), "{e}");
        assert!(e["event"].is_string(), "{e}");
    }
    // The first turn as the hub saw it, in order.
    let names: Vec<&str> = s.events[..=ended]
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default())
        .filter(|n| {
            !matches!(
                *n,
                "text_delta"
                    | "reasoning_delta"
                    | "client_attached"
                    | "client_detached"
                    | "session_state"
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            "turn_started",
            "tool_call",
            "permission_requested",
            "permission_resolved",
            "tool_result",
            "turn_ended"
        ],
        "{:#?}",
        s.events
    );
    // Version 2 never falls back to catpaw's session_output.
    assert!(
        s.frames.iter().all(|f| f["type"] != "session_output"),
        "{:?}",
        s.frames
    );
    agent
        .wait_status("the session is gone", WAIT, |st| st.remote_sessions == 0)
        .await;
    agent.stop().await;
}

/// Session messages for a session the agent does not hold are refused by ack under v2
/// (`unknown_session`), and an observer-class user cannot answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_refusals_carry_client_protocol_reasons() {
    let hub = TestHub::start(HubSettings::default()).await;
    let mut setup = AgentSetup::new(hub.url());
    setup.script = common::shell_script();
    setup.remote.tools = common::tools_named(&["shell"]);
    let agent = TestAgent::start(setup);
    let conn = hub.next_conn(WAIT).await;
    let mut s = V2 {
        conn,
        events: Vec::new(),
        acks: Vec::new(),
        frames: Vec::new(),
    };
    let id = s.send(
        "session_input",
        json!({"session_id": "nope", "message": "hi", "user_name": "alice", "class": "human"}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["reason"], "unknown_session");

    let id = s.send(
        "session_start",
        json!({"session_id": "s-obs", "session_type": "chat", "user_name": "alice", "params": {"message": "go"}}),
    );
    assert_eq!(s.ack(&id).await["ok"], true);
    let asked = s.event("permission_requested", 0).await;
    let call_id = s.events[asked]["call_id"]
        .as_str()
        .expect("call")
        .to_owned();
    let id = s.send(
        "session_answer",
        json!({"session_id": "s-obs", "call_id": call_id, "user_name": "eve", "class": "observer", "decision": "allow"}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["reason"], "forbidden", "{ack}");
    // Alice (human, the originator) may answer.
    let id = s.send(
        "session_answer",
        json!({"session_id": "s-obs", "call_id": call_id, "user_name": "alice", "class": "human", "decision": "allow"}),
    );
    assert_eq!(s.ack(&id).await["ok"], true);
    // A second answer is too late.
    let id = s.send(
        "session_answer",
        json!({"session_id": "s-obs", "call_id": call_id, "user_name": "alice", "class": "human", "decision": "deny"}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["reason"], "already_resolved", "{ack}");
    agent.stop().await;
}

/// Issue 10 item 8, agent side: `session_attach` with `after_seq` resumes a session the hub
/// started — the relay starts over from the event after `after_seq`, on the connection the
/// attach came on — but never reaches a local session (hub or not, the hub only ever gets
/// what it started), nor a session the agent does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_resume_replays_hub_sessions_and_never_reaches_local_ones() {
    let hub = TestHub::start(HubSettings::default()).await;
    let setup = AgentSetup::new(hub.url());
    let agent = TestAgent::start(setup);
    let conn = hub.next_conn(WAIT).await;
    let mut s = V2 {
        conn,
        events: Vec::new(),
        acks: Vec::new(),
        frames: Vec::new(),
    };
    let id = s.send(
        "session_start",
        json!({"session_id": "s-resume", "session_type": "chat", "user_name": "alice",
               "title": "from the hub", "params": {"message": "hello"}}),
    );
    assert_eq!(s.ack(&id).await["ok"], true);
    let ended = s.event("turn_ended", 0).await;
    let title = agent
        .mux
        .list_sessions()
        .sessions
        .into_iter()
        .find(|x| x.session_id.as_str() == "s-resume")
        .and_then(|x| x.title);
    assert_eq!(title.as_deref(), Some("from the hub"), "the hub's title");

    // Resume from seq 2: every event after it again (same seqs), then live.
    let seen = s.events.len();
    let id = s.send(
        "session_attach",
        json!({"session_id": "s-resume", "user_name": "", "class": "", "after_seq": 2}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], true, "{ack}");
    // (A live event of the first relay may come in between.)
    let replayed = |s: &V2| -> Vec<u64> {
        s.events[seen..]
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .skip_while(|&q| q != 3)
            .take(ended - 1)
            .collect()
    };
    while replayed(&s).len() < ended - 1 {
        s.pump().await;
    }
    assert_eq!(
        replayed(&s),
        (3..=ended as u64 + 1).collect::<Vec<_>>(),
        "replayed from after_seq"
    );
    let id = s.send(
        "session_attach",
        json!({"session_id": "s-resume", "user_name": "", "class": "", "after_seq": 999}),
    );
    let ack = s.ack(&id).await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["reason"], "bad_request", "{ack}");

    // A local session: as unknown to the hub as one that does not exist.
    let local = agent
        .mux
        .create_session(
            None,
            tether_proto::Mode::Chat,
            Some("local".into()),
            tether_proto::Policy::Human,
            serde_json::Map::new(),
            tether_mux::SessionOptions::default(),
        )
        .await
        .expect("local session");
    for sid in [local.as_str(), "no-such-session"] {
        let id = s.send(
            "session_attach",
            json!({"session_id": sid, "user_name": "", "class": "", "after_seq": 0}),
        );
        let ack = s.ack(&id).await;
        assert_eq!(ack["ok"], false, "{sid}: {ack}");
        assert_eq!(ack["reason"], "unknown_session", "{sid}: {ack}");
    }
    assert!(
        !s.events.iter().any(|e| e["session_id"] == local.as_str()),
        "nothing of the local session reached the hub"
    );
    agent.stop().await;
}

/// A hub session with the default toolset (read-only tools) whose model calls `shell` is
/// told that `shell` is not allowed in sessions started from the hub and how an operator
/// allows it, not that the tool is unknown; nobody is asked to approve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_a_tool_withheld_from_hub_sessions_is_explained() {
    let hub = TestHub::start(HubSettings::default()).await;
    let mut setup = AgentSetup::new(hub.url());
    setup.script = common::shell_script();
    let agent = TestAgent::start(setup);
    let conn = hub.next_conn(WAIT).await;
    let mut s = V2 {
        conn,
        events: Vec::new(),
        acks: Vec::new(),
        frames: Vec::new(),
    };
    let id = s.send(
        "session_start",
        json!({"session_id": "s-shell", "session_type": "chat", "user_name": "alice",
               "class": "human", "params": {"message": "run uname"}}),
    );
    assert_eq!(s.ack(&id).await["ok"], true);
    let result = s.event("tool_result", 0).await;
    let r = s.events[result].clone();
    assert_eq!(r["ok"], false, "{r}");
    let output = r["output"].as_str().unwrap_or_default();
    assert!(
        output.starts_with("`shell` is not allowed in sessions started from the hub"),
        "{output}"
    );
    assert!(
        output.contains("under [hub] in this host's agent.toml")
            && output.contains("remote_tools = [")
            && output.ends_with("\"shell\"]"),
        "{output}"
    );
    assert!(r.get("waited_ms").is_none(), "nobody was asked: {r}");
    let ended = s.event("turn_ended", result).await;
    assert_eq!(s.events[ended]["stop"], "completed", "{:?}", s.events);
    assert!(
        s.events
            .iter()
            .all(|e| e["event"] != "permission_requested"),
        "{:?}",
        s.events
    );
    agent.stop().await;
}
