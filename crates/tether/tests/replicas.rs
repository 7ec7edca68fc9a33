//! Two hub replicas on one PostgreSQL, with real binaries: a `tether agent` (protocol
//! version 2) reaches them through a TCP load balancer and lands on replica A; operators on
//! replica B open an inspect session and a chat on it, see every event and answer its
//! permission prompt; an operator on A shares the chat and sees the same events in the same
//! order. Then A is killed (SIGKILL) with a prompt pending and alerts streaming in: the agent
//! moves to B, the prompt is answered there, the operator who was on A re-attaches to B with
//! `after_seq` and misses nothing, and every alert is stored exactly once. An alert stored by
//! A reaches an `alerts.subscribe` on B.
//!
//! Runs against the throwaway cluster of `scripts/postgres.sh` (`TETHER_TEST_PG_URL`), in a
//! database of its own.

mod common;

use common::{BIN, ServiceProc, free_port, write_file};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tether_hub::store::testing::TestDatabase;
use tether_transport::client::Client;

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef01";
/// How long any wait may take before the test fails (never how long it takes).
const PATIENCE: Duration = Duration::from_secs(90);

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP load balancer on loopback: each connection goes to the first backend that accepts.
async fn balancer(backends: Vec<u16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in backends {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", b)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An operator on one replica, keeping every session event it has seen.
struct Operator {
    client: Client,
    seen: Vec<Value>,
}

impl Operator {
    async fn connect(port: u16, token: &str) -> Operator {
        let url = format!("ws://127.0.0.1:{port}/v1/ws");
        let client = tokio::time::timeout(PATIENCE, Client::connect_ws(&url, Some(token)))
            .await
            .expect("connect in time")
            .expect("operator connects");
        Operator {
            client,
            seen: Vec::new(),
        }
    }

    async fn request(&mut self, op: &str, params: Value) -> Result<Value, String> {
        tokio::time::timeout(PATIENCE, self.client.request(op, params))
            .await
            .unwrap_or_else(|_| panic!("{op}: no reply in time"))
            .map_err(|e| e.to_string())
    }

    /// Session events of `session` until one matches `pred` (kept in `seen`).
    async fn until(&mut self, session: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let text = tokio::time::timeout(PATIENCE, self.client.next_text())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("connection closed waiting for {what}"));
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if v.get("seq").is_none() || v["session_id"] != session {
                continue;
            }
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    /// The seqs seen of `session` (in arrival order).
    fn seqs(&self, session: &str) -> Vec<u64> {
        self.seen
            .iter()
            .filter(|v| v["session_id"] == session)
            .filter_map(|v| v["seq"].as_u64())
            .collect()
    }
}

fn hub_toml(root: &Path, name: &str, port: u16, url: &str) -> std::path::PathBuf {
    let path = root.join(format!("{name}/hub.toml"));
    write_file(
        &path,
        &format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n\
             [[operators]]\nname = \"alice\"\nclass = \"human\"\ntoken = \"{ALICE}\"\n\
             [[operators]]\nname = \"bob\"\nclass = \"human\"\ntoken = \"{BOB}\"\n\
             [store]\nurl = \"{url}\"\npool_size = 4\nreplica_lease = \"2s\"\n"
        ),
    );
    path
}

async fn healthy(port: u16) -> Option<()> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.starts_with("HTTP/1.1 200").then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_and_an_agent_survives_a_killed_replica() {
    let Some(db) = TestDatabase::create("replicas") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (pa, pb) = (free_port(), free_port());
    let a_toml = hub_toml(root, "a", pa, &db.url);
    let b_toml = hub_toml(root, "b", pb, &db.url);

    // The agent's credential, written to the database through replica A's config.
    let out = Command::new(BIN)
        .args(["hub", "token", "create", "--name", "web-1", "--config"])
        .arg(&a_toml)
        .output()
        .expect("token create");
    assert!(out.status.success(), "{out:?}");
    let agent_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let mut hub_a = ServiceProc::start(&["hub"], &a_toml);
    eventually("replica A", || healthy(pa)).await;
    let _hub_b = ServiceProc::start(&["hub"], &b_toml);
    eventually("replica B", || healthy(pb)).await;
    let lb = balancer(vec![pa, pb]).await;

    // Each turn: a shell call (a human must allow it), then an answer.
    write_file(
        &root.join("agent/script.json"),
        &json!({"loop": true, "responses": [
            {"text": "running it ", "tool_calls": [{"tool": "shell", "args": {"command": "echo tool-ran"}}]},
            {"text": "done"}
        ]})
        .to_string(),
    );
    let agent_toml = root.join("agent/agent.toml");
    write_file(
        &agent_toml,
        &format!(
            "listen = \"off\"\nstate_dir = \"state\"\n[model]\nprovider = \"scripted\"\nscript = \"script.json\"\n\
             [hub]\nurl = \"ws://127.0.0.1:{lb}\"\nallow_plaintext = true\ntoken = \"{agent_token}\"\n\
             remote_tools = [\"shell\", \"system_info\"]\n"
        ),
    );
    let _agent = ServiceProc::start(&["agent"], &agent_toml);

    // Replica B sees the agent, held by A, as connected.
    let mut bob = Operator::connect(pb, BOB).await;
    let deadline = Instant::now() + PATIENCE;
    let agent_id = loop {
        let r = bob.request("agents.list", json!({})).await.ok();
        let found = r.and_then(|r| {
            let agents = r["agents"]
                .as_array()
                .cloned()
                .or_else(|| r.as_array().cloned())?;
            agents
                .iter()
                .find(|a| a["connected"] == true)
                .and_then(|a| a["agent_id"].as_str().map(str::to_owned))
        });
        if let Some(id) = found {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "replica B never listed the agent as connected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Alert subscriptions span replicas: an alert the agent sends (stored by A) reaches a
    // subscriber on B.
    let mut watcher = Operator::connect(pb, BOB).await;
    watcher
        .request("alerts.subscribe", json!({}))
        .await
        .expect("subscribe");
    let out = Command::new(BIN)
        .args([
            "alert",
            "send",
            "--status",
            "Critical",
            "--key",
            "cross-replica",
        ])
        .args(["--description", "seen from the other replica", "--config"])
        .arg(&agent_toml)
        .output()
        .expect("alert send");
    assert!(out.status.success(), "{out:?}");
    loop {
        let text = tokio::time::timeout(PATIENCE, watcher.client.next_text())
            .await
            .expect("the alert reaches replica B's subscriber in time")
            .expect("open");
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        if v["event"] == "alert" && v["alert"]["alert_key"] == "cross-replica" {
            assert_eq!(v["change"], "created", "{v}");
            assert_eq!(v["alert"]["agent_id"], agent_id.as_str(), "{v}");
            break;
        }
    }

    // An inspect session from B on the agent held by A: every event arrives, in order.
    let r = bob
        .request(
            "session.create",
            json!({"agent_id": agent_id, "mode": "inspect", "params": {"plugin": "disk"}}),
        )
        .await
        .expect("inspect session");
    let inspect = r["session_id"].as_str().expect("session_id").to_owned();
    bob.request("attach", json!({"session_id": inspect, "after_seq": 0}))
        .await
        .expect("attach inspect");
    bob.until(&inspect, "the inspect turn's end", |v| {
        v["event"] == "turn_ended"
    })
    .await;
    let seqs = bob.seqs(&inspect);
    assert!(!seqs.is_empty());
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every inspect event, in order"
    );

    // A chat from B, shared with alice on A.
    let r = bob
        .request(
            "session.create",
            json!({"agent_id": agent_id, "mode": "chat"}),
        )
        .await
        .expect("chat session");
    let chat = r["session_id"].as_str().expect("session_id").to_owned();
    // Both from the first event (`after_seq: 0`), so both lists start at seq 1 whenever each
    // attached.
    bob.request("attach", json!({"session_id": chat, "after_seq": 0}))
        .await
        .expect("bob attaches");
    let mut alice = Operator::connect(pa, ALICE).await;
    alice
        .request("attach", json!({"session_id": chat, "after_seq": 0}))
        .await
        .expect("alice attaches");
    let r = bob
        .request(
            "input",
            json!({"session_id": chat, "text": "check the disk"}),
        )
        .await
        .expect("input");
    let turn = r["turn_id"].clone();
    let asked = bob
        .until(&chat, "permission_requested at B", |v| {
            v["event"] == "permission_requested" && v["turn_id"] == turn
        })
        .await;
    alice
        .until(&chat, "permission_requested at A", |v| {
            v["event"] == "permission_requested" && v["turn_id"] == turn
        })
        .await;
    bob.request(
        "answer",
        json!({"session_id": chat, "call_id": asked["call_id"], "decision": "allow"}),
    )
    .await
    .expect("bob allows, from B");
    for op in [&mut bob, &mut alice] {
        let ended = op
            .until(&chat, "the first turn's end", |v| {
                v["event"] == "turn_ended" && v["turn_id"] == turn
            })
            .await;
        assert_eq!(ended["stop"], "completed", "{ended}");
    }
    // One order for both replicas' operators.
    let shared: Vec<u64> = bob.seqs(&chat);
    assert_eq!(
        alice.seqs(&chat),
        shared,
        "A and B saw the chat's events in one order"
    );
    let tool_ran = bob.seen.iter().any(|v| {
        v["session_id"] == chat.as_str()
            && v["event"] == "tool_result"
            && v.to_string().contains("tool-ran")
    });
    assert!(tool_ran, "the approved shell call ran: {:?}", bob.seen);

    // Alerts stream in while A dies with a prompt pending.
    let sending = {
        let agent_toml = agent_toml.clone();
        std::thread::spawn(move || {
            for i in 0..40 {
                let out = Command::new(BIN)
                    .args(["alert", "send", "--status", "Warning", "--key"])
                    .arg(format!("flood-{i}"))
                    .args(["--description", "replica failover flood", "--config"])
                    .arg(&agent_toml)
                    .output()
                    .expect("alert send");
                assert!(out.status.success(), "alert {i}: {out:?}");
            }
        })
    };
    let r = bob
        .request("input", json!({"session_id": chat, "text": "and again"}))
        .await
        .expect("second input");
    let turn2 = r["turn_id"].clone();
    let asked = bob
        .until(&chat, "the second prompt", |v| {
            v["event"] == "permission_requested" && v["turn_id"] == turn2
        })
        .await;
    eventually("some alerts stored before the kill", || async {
        (db.scalar("SELECT COUNT(*) FROM alert_events") >= 6).then_some(())
    })
    .await;
    let alice_last = *alice.seqs(&chat).last().expect("alice saw events");
    hub_a.kill9();

    // The agent moves to B; the pending prompt is answered there (the agent keeps it).
    let call_id = asked["call_id"].clone();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let params = json!({"session_id": chat, "call_id": call_id, "decision": "allow"});
        match bob.request("answer", params).await {
            Ok(_) => break,
            // `overloaded` while the agent is between replicas.
            Err(e) => assert!(
                Instant::now() < deadline,
                "the prompt could not be answered on B: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ended = bob
        .until(&chat, "the second turn's end", |v| {
            v["event"] == "turn_ended" && v["turn_id"] == turn2
        })
        .await;
    assert_eq!(ended["stop"], "completed", "{ended}");

    // Alice lost A: she re-attaches to B where she left off and misses nothing.
    let mut alice_b = Operator::connect(pb, ALICE).await;
    alice_b
        .request(
            "attach",
            json!({"session_id": chat, "after_seq": alice_last}),
        )
        .await
        .expect("alice re-attaches on B");
    alice_b
        .until(&chat, "the second turn's end, replayed", |v| {
            v["event"] == "turn_ended" && v["turn_id"] == turn2
        })
        .await;
    let resumed = alice_b.seqs(&chat);
    let want: Vec<u64> = (alice_last + 1..=*resumed.last().expect("events")).collect();
    assert_eq!(
        resumed, want,
        "alice's events after {alice_last}: none missed, none twice"
    );
    let bob_all = bob.seqs(&chat);
    let tail: Vec<u64> = bob_all.into_iter().filter(|s| *s > alice_last).collect();
    assert_eq!(
        resumed, tail,
        "alice and bob saw the same events after the failover"
    );

    // Every alert the agent took is stored exactly once.
    sending.join().expect("the flood's sender");
    // The flood's 40 and the first one.
    eventually("all 41 alerts stored", || async {
        (db.scalar("SELECT COUNT(*) FROM alert_events") >= 41).then_some(())
    })
    .await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM alert_events"), 41);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM alerts"), 41);
    assert_eq!(
        db.scalar("SELECT COALESCE(MAX(event_count), 0) FROM alerts"),
        1
    );
}
