//! Property test: random interleavings of several clients against one session, with the
//! multiplexer's invariants checked on everything each client received and on the event log.
//!
//! Clients are in-process connections ([`Mux::connect`]); each one's outbound queue is drained
//! by its own task into a list of frames, except one "lazy" client whose queue is only read at
//! the very end (so it overflows and is evicted when enough happens while it is attached).
//!
//! Invariants:
//! * at most one turn runs at a time, and a turn's events fall inside it;
//! * a session's `seq` rises by exactly 1 with no hole and no duplicate — in the log, and in
//!   what every client saw while attached (a replay plus live events, or live events only);
//!   every copy of an event is byte-identical;
//! * an agent-class client never gets a successful answer on a request raised in its own turn
//!   (same principal), and every `permission_resolved` by an agent names another principal
//!   than the turn's originator; under policy `human` only humans resolve by answering;
//! * every permission request is resolved exactly once;
//! * every attached client either sees every event or gets `evicted` as its last frame, and
//!   nothing after it; a replay ends with `replay_complete` naming the last replayed seq;
//! * observers are refused every act; replies match their requests.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::scripted::ScriptedProvider;
use tether_host::tools::{Tool, ToolContext, ToolOutput, ToolRegistry, ToolSpec};
use tether_mux::outbound::{Next, OutboundReceiver};
use tether_mux::{Connection, Identity, Mux, MuxConfig};
use tether_proto::Class;

/// A tool that always needs permission and returns at once.
struct Approve;

impl Tool for Approve {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "approve_me".into(),
            description: "needs permission".into(),
            parameters: json!({"type": "object"}),
        }
    }
    fn needs_permission(&self, _args: &Value) -> bool {
        true
    }
    fn read_only(&self) -> bool {
        false
    }
    fn call<'a>(
        &'a self,
        _args: Value,
        _ctx: ToolContext,
    ) -> futures_util::future::BoxFuture<'a, ToolOutput> {
        Box::pin(async { ToolOutput::ok("ran") })
    }
}

/// Each turn: a burst of deltas (no delay), a prompt, then more deltas.
const SCRIPT: &str = r#"{"loop": true, "responses": [
    {"reasoning": "hmm let me think ", "text": "let me check that for you right now, it will only take a moment ",
     "tool_calls": [{"tool": "approve_me", "args": {}}]},
    {"text": "all done, the thing was checked and everything looks fine from here on"}
]}"#;

/// The cast: (principal, class). Two connections share the principal `robot`.
const CAST: &[(&str, Class)] = &[
    ("alice", Class::Human),
    ("bob", Class::Human),
    ("robot", Class::Agent),
    ("robot", Class::Agent),
    ("robot2", Class::Agent),
    ("watcher", Class::Observer),
    ("lazy", Class::Human),
];
const LAZY: usize = 6;
/// Small, so that the lazy client overflows; a turn streams more events than this in one go.
const QUEUE_FRAMES: usize = 16;

#[derive(Clone, Copy, Debug)]
enum AttachFrom {
    Live,
    Zero,
    LastSeen,
}

#[derive(Clone, Debug)]
enum Step {
    Input {
        who: usize,
        queue: bool,
    },
    Answer {
        who: usize,
        pick: usize,
        allow: bool,
    },
    Cancel {
        who: usize,
        stale: bool,
    },
    Attach {
        who: usize,
        from: AttachFrom,
    },
    Detach {
        who: usize,
    },
    /// The connection goes away (no reply; the session learns it asynchronously).
    Disconnect {
        who: usize,
    },
    Pump {
        yields: u8,
    },
    Sleep {
        ms: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let who = 0..CAST.len();
    prop_oneof![
        4 => (who.clone(), any::<bool>()).prop_map(|(who, queue)| Step::Input { who, queue }),
        4 => (who.clone(), 0usize..8, any::<bool>())
            .prop_map(|(who, pick, allow)| Step::Answer { who, pick, allow }),
        1 => (who.clone(), any::<bool>()).prop_map(|(who, stale)| Step::Cancel { who, stale }),
        3 => (
            who.clone(),
            prop_oneof![Just(AttachFrom::Live), Just(AttachFrom::Zero), Just(AttachFrom::LastSeen)]
        )
            .prop_map(|(who, from)| Step::Attach { who, from }),
        1 => who.clone().prop_map(|who| Step::Detach { who }),
        1 => who.prop_map(|who| Step::Disconnect { who }),
        4 => (1u8..40).prop_map(|yields| Step::Pump { yields }),
        1 => (1u8..15).prop_map(|ms| Step::Sleep { ms }),
    ]
}

/// What a request was, to check its reply.
#[derive(Clone, Debug)]
enum Req {
    Create,
    Attach { after: Option<u64> },
    Detach,
    Input,
    Answer { call_id: String },
    Cancel,
    Close,
}

struct Cl {
    principal: &'static str,
    class: Class,
    conn: Connection,
    frames: Arc<Mutex<Vec<Bytes>>>,
    drain: Option<tokio::task::JoinHandle<()>>,
    /// The lazy client's receiver, read only at the end.
    parked: Option<OutboundReceiver>,
    requests: HashMap<u64, Req>,
    next_id: u64,
}

async fn drain(mut rx: OutboundReceiver, frames: Arc<Mutex<Vec<Bytes>>>) {
    loop {
        match rx.next().await {
            Next::Frame(f) => frames.lock().expect("frames").push(f),
            Next::Evicted(f) => {
                frames.lock().expect("frames").push(f);
                return;
            }
            Next::Closed => return,
        }
    }
}

impl Cl {
    async fn send(&mut self, req: Req, op: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.requests.insert(id, req);
        let text = tether_proto::encode_request(&id.into(), op, params);
        self.conn.handle_text(&text).await;
        id
    }

    /// Parses a copy: the lock is held only to clone, so the drain task never waits on it.
    fn frames(&self) -> Vec<Value> {
        let copy = self.frames.lock().expect("frames").clone();
        copy.iter()
            .map(|b| serde_json::from_slice(b).expect("every frame is JSON"))
            .collect()
    }

    fn last_seen(&self) -> Option<u64> {
        self.frames().iter().filter_map(seq_of).max()
    }

    /// Waits (bounded) until the reply to `id` has been drained.
    async fn reply(&self, id: u64) -> Result<Value, TestCaseError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            let frames = self.frames();
            if let Some(r) = frames.iter().find(|v| v["re"] == id) {
                return Ok(r.clone());
            }
            if let Some(v) = frames.iter().find(|v| v["event"] == "evicted") {
                return Err(TestCaseError::fail(format!(
                    "{}: evicted though it keeps reading ({v}); no reply to request {id}",
                    self.principal
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Err(TestCaseError::fail(format!(
            "{}: no reply to request {id}",
            self.principal
        )))
    }
}

fn seq_of(v: &Value) -> Option<u64> {
    v.get("seq").and_then(Value::as_u64)
}

fn principal(client_id: &str) -> &str {
    client_id.rsplit_once('/').map_or(client_id, |(p, _)| p)
}

/// What one client received, and what it had asked.
struct Seen {
    name: String,
    class: Class,
    frames: Vec<Bytes>,
    requests: HashMap<u64, Req>,
    /// Its last act was to disconnect (its stream may end early).
    disconnected: bool,
}

struct Outcome {
    policy: &'static str,
    log: Vec<(u64, Bytes)>,
    clients: Vec<Seen>,
}

async fn run_case(policy: &'static str, steps: Vec<Step>) -> Result<Outcome, TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(&dir.path().join("events.db")).expect("log");
    let mut tools = ToolRegistry::new();
    tools.add(Arc::new(Approve));
    let provider = ScriptedProvider::from_json(SCRIPT, "interleavings").expect("script");
    let engine = Engine::new(Some(Arc::new(provider)), tools);
    let config = MuxConfig {
        client_queue_frames: QUEUE_FRAMES,
        permission_grace: Duration::from_millis(20),
        ..MuxConfig::default()
    };
    let mux = Mux::open(config, engine, log).expect("mux");

    let mut clients: Vec<Cl> = CAST
        .iter()
        .enumerate()
        .map(|(i, (principal, class))| {
            let (conn, rx) = mux.connect(Identity {
                principal: (*principal).into(),
                class: *class,
                name: (*principal).into(),
            });
            let frames = Arc::new(Mutex::new(Vec::new()));
            let (drain, parked) = if i == LAZY {
                (None, Some(rx))
            } else {
                (Some(tokio::spawn(drain(rx, frames.clone()))), None)
            };
            Cl {
                principal,
                class: *class,
                conn,
                frames,
                drain,
                parked,
                requests: HashMap::new(),
                next_id: 1,
            }
        })
        .collect();

    let id = clients[0]
        .send(
            Req::Create,
            "session.create",
            json!({"mode": "chat", "policy": policy}),
        )
        .await;
    let created = clients[0].reply(id).await?;
    let sid = created["result"]["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let mut disconnected = vec![false; CAST.len()];

    for step in steps {
        match step {
            Step::Input { who, queue } => {
                clients[who]
                    .send(
                        Req::Input,
                        "input",
                        json!({"session_id": sid, "text": "go", "queue": queue}),
                    )
                    .await;
            }
            Step::Answer { who, pick, allow } => {
                let events = read_log(&mux, &sid).await;
                let calls: Vec<String> = events
                    .iter()
                    .filter(|v| v["event"] == "permission_requested")
                    .map(|v| v["call_id"].as_str().expect("call_id").to_owned())
                    .collect();
                // Mostly the latest request; sometimes an older one, or one that never was.
                let call_id = if calls.is_empty() || pick == 7 {
                    "no-such-call".to_owned()
                } else {
                    calls[calls.len() - 1 - (pick % calls.len()).min(2)].clone()
                };
                let decision = if allow { "allow" } else { "deny" };
                clients[who]
                    .send(
                        Req::Answer {
                            call_id: call_id.clone(),
                        },
                        "answer",
                        json!({"session_id": sid, "call_id": call_id, "decision": decision}),
                    )
                    .await;
            }
            Step::Cancel { who, stale } => {
                let events = read_log(&mux, &sid).await;
                let turns: Vec<&str> = events
                    .iter()
                    .filter(|v| v["event"] == "turn_started")
                    .filter_map(|v| v["turn_id"].as_str())
                    .collect();
                let turn_id = match (stale, turns.as_slice()) {
                    (_, []) => "no-such-turn",
                    (false, [.., last]) => last,
                    (true, [first, ..]) => first,
                };
                clients[who]
                    .send(
                        Req::Cancel,
                        "cancel",
                        json!({"session_id": sid, "turn_id": turn_id}),
                    )
                    .await;
            }
            Step::Attach { who, from } => {
                let after = match from {
                    AttachFrom::Live => None,
                    AttachFrom::Zero => Some(0),
                    AttachFrom::LastSeen => Some(clients[who].last_seen().unwrap_or(0)),
                };
                let params = match after {
                    Some(a) => json!({"session_id": sid, "after_seq": a}),
                    None => json!({"session_id": sid}),
                };
                disconnected[who] = false;
                clients[who]
                    .send(Req::Attach { after }, "attach", params)
                    .await;
            }
            Step::Detach { who } => {
                clients[who]
                    .send(Req::Detach, "detach", json!({"session_id": sid}))
                    .await;
            }
            Step::Disconnect { who } => {
                clients[who].conn.close("disconnected").await;
                disconnected[who] = true;
            }
            Step::Pump { yields } => {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
            }
            Step::Sleep { ms } => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
        }
    }

    // The end: close the session (its running turn ends first), then let every queue run dry.
    let id = clients[0]
        .send(Req::Close, "session.close", json!({"session_id": sid}))
        .await;
    let _ = id; // its reply is checked with the others (alice may have been evicted)
    // The reply can overtake the commit of `session_closed`: wait for the event (bounded).
    let mut log = read_log_raw(&mux, &sid).await;
    for _ in 0..10_000 {
        let last: Value = serde_json::from_slice(&log.last().expect("events").1).expect("json");
        if last["event"] == "session_closed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        log = read_log_raw(&mux, &sid).await;
    }
    let mut out = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let frames = c.frames.clone();
        let handle = match (c.drain.take(), c.parked.take()) {
            (Some(h), _) => h,
            (None, Some(rx)) => tokio::spawn(drain(rx, frames.clone())),
            (None, None) => unreachable!(),
        };
        // Dropping the connection closes its queue (the closed session holds no copy).
        drop(c.conn);
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("a queue did not run dry")
            .expect("drain task");
        let frames = frames.lock().expect("frames").clone();
        out.push(Seen {
            name: format!("{}#{i}", c.principal),
            class: c.class,
            frames,
            requests: c.requests,
            disconnected: disconnected[i],
        });
    }
    mux.shutdown().await;
    mux.log().close();
    Ok(Outcome {
        policy,
        log,
        clients: out,
    })
}

async fn read_log_raw(mux: &Mux, sid: &str) -> Vec<(u64, Bytes)> {
    mux.log()
        .read_range(&sid.into(), 0, u64::MAX >> 1, 1_000_000)
        .await
        .expect("read log")
        .into_iter()
        .map(|e| (e.seq, e.frame))
        .collect()
}

async fn read_log(mux: &Mux, sid: &str) -> Vec<Value> {
    read_log_raw(mux, sid)
        .await
        .iter()
        .map(|(_, f)| serde_json::from_slice(f).expect("json"))
        .collect()
}

fn check(outcome: &Outcome) -> Result<(), TestCaseError> {
    // ---- the log: one total order --------------------------------------------------------
    let log = &outcome.log;
    prop_assert!(!log.is_empty());
    for (i, (seq, _)) in log.iter().enumerate() {
        prop_assert_eq!(*seq, i as u64 + 1, "log seqs must be 1, 2, 3, …");
    }
    let last_seq = log.len() as u64;
    let events: Vec<Value> = log
        .iter()
        .map(|(_, f)| serde_json::from_slice(f).expect("json"))
        .collect();
    for (e, (seq, _)) in events.iter().zip(log) {
        prop_assert_eq!(seq_of(e), Some(*seq));
    }
    prop_assert_eq!(&events[events.len() - 1]["event"], "session_closed");

    // Turns: one at a time; a turn's events inside it; prompts resolved once.
    let mut running: Option<(String, String)> = None; // (turn_id, originator principal)
    let mut started_turns: HashSet<String> = HashSet::new();
    let mut queued_started: Vec<String> = Vec::new();
    let mut pending: HashMap<String, (String, String)> = HashMap::new(); // call → (turn, principal)
    let mut requested: HashMap<String, String> = HashMap::new(); // call → originator principal
    for e in &events {
        let name = e["event"].as_str().unwrap_or("");
        match name {
            "turn_started" => {
                prop_assert!(
                    running.is_none(),
                    "turn started while {:?} ran: {}",
                    running,
                    e
                );
                let id = e["turn_id"].as_str().expect("turn_id").to_owned();
                let who = e["originator"]["client_id"].as_str().expect("originator");
                prop_assert_ne!(&e["originator"]["class"], "observer");
                started_turns.insert(id.clone());
                if let Some(input) = e["input_id"].as_str() {
                    queued_started.push(input.to_owned());
                }
                running = Some((id, principal(who).to_owned()));
            }
            "turn_ended" => {
                let (id, _) = running.take().expect("turn_ended with no running turn");
                prop_assert_eq!(e["turn_id"].as_str(), Some(id.as_str()));
                prop_assert!(
                    pending.values().all(|(turn, _)| *turn != id),
                    "a turn ended with a prompt still pending"
                );
            }
            "text_delta" | "reasoning_delta" | "tool_call" | "tool_result" => {
                let (id, _) = running.as_ref().expect("turn event outside a turn");
                prop_assert_eq!(e["turn_id"].as_str(), Some(id.as_str()), "{}", e);
            }
            "permission_requested" => {
                let (id, who) = running.as_ref().expect("prompt outside a turn");
                prop_assert_eq!(e["turn_id"].as_str(), Some(id.as_str()));
                prop_assert_eq!(
                    principal(e["originator"]["client_id"].as_str().expect("o")),
                    who
                );
                prop_assert_eq!(&e["policy"], outcome.policy);
                let call = e["call_id"].as_str().expect("call_id").to_owned();
                prop_assert!(
                    pending
                        .insert(call.clone(), (id.clone(), who.clone()))
                        .is_none()
                );
                requested.insert(call, who.clone());
            }
            "permission_resolved" => {
                let call = e["call_id"].as_str().expect("call_id");
                let (_, originator) = pending.remove(call).ok_or_else(|| {
                    TestCaseError::fail(format!("resolved twice or never asked: {e}"))
                })?;
                let cause = e["cause"].as_str().expect("cause");
                let by = &e["by"];
                prop_assert_eq!(cause == "answered", !by.is_null(), "{}", e);
                if !by.is_null() {
                    let class = by["class"].as_str().expect("class");
                    prop_assert_ne!(class, "observer", "{}", e);
                    if class == "agent" {
                        prop_assert_ne!(
                            principal(by["client_id"].as_str().expect("by")),
                            originator.as_str(),
                            "an agent approved its own request: {}",
                            e
                        );
                    }
                    if outcome.policy == "human" {
                        prop_assert_eq!(class, "human", "{}", e);
                    }
                }
            }
            _ => {}
        }
    }
    prop_assert!(running.is_none(), "a turn outlived session.close");
    prop_assert!(pending.is_empty(), "prompts never resolved: {:?}", pending);
    let unique: HashSet<&String> = queued_started.iter().collect();
    prop_assert_eq!(
        unique.len(),
        queued_started.len(),
        "a queued input ran twice"
    );

    // ---- every client ---------------------------------------------------------------------
    let by_seq: BTreeMap<u64, &Bytes> = log.iter().map(|(s, f)| (*s, f)).collect();
    for seen in &outcome.clients {
        let Seen {
            name,
            class,
            frames,
            requests,
            disconnected,
        } = seen;
        let values: Vec<Value> = frames
            .iter()
            .map(|f| serde_json::from_slice(f).expect("json"))
            .collect();
        // Attachment periods, in frame order: each starts at an `attach` reply.
        let mut expect: Option<u64> = None; // next seq this client must see
        let mut in_replay = false;
        let mut evicted = false;
        let mut receipts: Vec<String> = Vec::new();
        for (i, (v, raw)) in values.iter().zip(frames).enumerate() {
            prop_assert!(!evicted, "{}: frames after `evicted`", name);
            if let Some(re) = v.get("re") {
                let id = re.as_u64().expect("numeric ids");
                let req = requests
                    .get(&id)
                    .ok_or_else(|| TestCaseError::fail(format!("{name}: unasked reply {v}")))?;
                let ok = v["ok"] == true;
                let reason = v["error"]["reason"].as_str().unwrap_or("");
                match req {
                    Req::Attach { after } if ok => {
                        let last = v["result"]["snapshot"]["last_seq"]
                            .as_u64()
                            .expect("last_seq");
                        expect = Some(after.map_or(last + 1, |a| a + 1));
                        in_replay = after.is_some();
                    }
                    Req::Attach { .. } => prop_assert!(false, "{}: attach failed: {}", name, v),
                    Req::Detach => {
                        prop_assert!(ok, "{}: {}", name, v);
                        expect = None;
                        in_replay = false;
                    }
                    Req::Input => {
                        if *class == Class::Observer {
                            prop_assert_eq!(reason, "forbidden", "{}: {}", name, v);
                        } else if ok {
                            let r = &v["result"];
                            if let Some(turn) = r["turn_id"].as_str() {
                                prop_assert!(started_turns.contains(turn), "{}", v);
                            } else {
                                let input = r["input_id"].as_str().expect("receipt");
                                prop_assert!(r["position"].as_u64().expect("position") >= 1);
                                receipts.push(input.to_owned());
                            }
                        } else {
                            prop_assert!(
                                ["turn_in_progress", "session_closed"].contains(&reason),
                                "{}: {}",
                                name,
                                v
                            );
                            if reason == "turn_in_progress" {
                                let turn = v["error"]["turn_id"].as_str().expect("turn_id");
                                prop_assert!(started_turns.contains(turn), "{}", v);
                                prop_assert!(v["error"]["originator"]["client_id"].is_string());
                            }
                        }
                    }
                    Req::Answer { call_id } => {
                        if *class == Class::Observer {
                            prop_assert_eq!(reason, "forbidden", "{}: {}", name, v);
                        }
                        if ok {
                            let originator = requested.get(call_id).ok_or_else(|| {
                                TestCaseError::fail(format!(
                                    "{name}: answer to an unknown call accepted: {v}"
                                ))
                            })?;
                            if *class == Class::Agent {
                                let own = name.split('#').next().unwrap_or("");
                                prop_assert_ne!(
                                    originator.as_str(),
                                    own,
                                    "{}: an agent's answer on its own turn succeeded",
                                    name
                                );
                                if outcome.policy == "human" {
                                    prop_assert!(
                                        false,
                                        "{}: agent answer accepted under `human`",
                                        name
                                    );
                                }
                            }
                        } else {
                            prop_assert!(
                                [
                                    "forbidden",
                                    "already_resolved",
                                    "no_pending_permission",
                                    "agent_cannot_self_approve",
                                    "human_answer_required",
                                    "session_closed",
                                ]
                                .contains(&reason),
                                "{}: {}",
                                name,
                                v
                            );
                            if reason == "agent_cannot_self_approve" {
                                prop_assert_eq!(*class, Class::Agent);
                                let own = name.split('#').next().unwrap_or("");
                                prop_assert_eq!(
                                    requested.get(call_id).map(String::as_str),
                                    Some(own)
                                );
                            }
                            if reason == "human_answer_required" {
                                prop_assert_eq!(*class, Class::Agent);
                                prop_assert_eq!(outcome.policy, "human");
                            }
                        }
                    }
                    Req::Cancel => {
                        if *class == Class::Observer {
                            prop_assert_eq!(reason, "forbidden", "{}: {}", name, v);
                        } else if !ok {
                            prop_assert!(
                                ["stale_turn", "session_closed"].contains(&reason),
                                "{}",
                                v
                            );
                        }
                    }
                    Req::Create | Req::Close => prop_assert!(ok, "{}: {}", name, v),
                }
                continue;
            }
            if let Some(seq) = seq_of(v) {
                let want = expect.ok_or_else(|| {
                    TestCaseError::fail(format!("{name}: event {seq} while not attached"))
                })?;
                prop_assert_eq!(seq, want, "{}: hole or duplicate at frame {}", name, i);
                expect = Some(seq + 1);
                prop_assert_eq!(
                    Some(raw),
                    by_seq.get(&seq).copied(),
                    "{}: event {} differs from the log",
                    name,
                    seq
                );
                continue;
            }
            match v["event"].as_str().unwrap_or("") {
                "replay_complete" => {
                    prop_assert!(in_replay, "{}: replay_complete without a replay", name);
                    in_replay = false;
                    prop_assert_eq!(v["last_seq"].as_u64(), expect.map(|e| e - 1));
                }
                // Expected of the lazy client once enough happens while it is attached. A
                // client that keeps reading may be evicted too if the scheduler lets it fall
                // a whole queue behind (nothing in the mux can promise otherwise); either way
                // it must be the last frame.
                "evicted" => evicted = true,
                // A burst may warn even a client that keeps reading.
                "slow_consumer" => prop_assert!(v["queued"].as_u64().unwrap_or(0) > 0),
                other => prop_assert!(false, "{}: unexpected frame {} ({})", name, other, v),
            }
        }
        // Attached at the end, still connected, not evicted: it saw everything.
        if let Some(next) = expect
            && !evicted
            && !disconnected
        {
            prop_assert_eq!(
                next - 1,
                last_seq,
                "{}: missed the end of the session",
                name
            );
        }
        // A client's own queued inputs run in the order it queued them.
        let ran: Vec<&String> = queued_started
            .iter()
            .filter(|id| receipts.contains(id))
            .collect();
        let expected: Vec<&String> = receipts.iter().filter(|id| ran.contains(id)).collect();
        prop_assert_eq!(ran, expected, "{}: queued inputs out of order", name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 40,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn interleavings_keep_the_invariants(
        policy in prop_oneof![Just("human"), Just("any")],
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = runtime.block_on(run_case(policy, steps))?;
        check(&outcome)?;
    }
}
