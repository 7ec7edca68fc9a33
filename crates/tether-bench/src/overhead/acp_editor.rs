//! `--acp`: an editor on the measured session. It runs a real `tether acp --url <agent>` as a
//! child process and speaks ACP to it as an editor does (newline-delimited JSON-RPC on its
//! stdin/stdout): `initialize` once, then `session/load` of each run's session before the
//! stream starts. Its reader stamps every `agent_message_chunk` the moment its line is read,
//! under the sequence number that starts the chunk's text, on the run's clock: the same chunks
//! the WebSocket client stamps, so the two can be compared chunk by chunk.

use super::timeline::{Clock, Stamps, leading_number};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

/// Where the reader stamps: the session measured now and its stamps.
type Target = Arc<Mutex<Option<(String, Arc<Stamps>)>>>;

pub struct AcpEditor {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::UnboundedReceiver<Value>,
    target: Target,
    next_id: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for AcpEditor {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

const CHUNK: &str = "\"agent_message_chunk\"";

impl AcpEditor {
    /// Starts `tether acp` against the agent at `url` and initializes it.
    pub async fn start(tether: &Path, url: &str, clock: Clock) -> anyhow::Result<AcpEditor> {
        let mut child = tokio::process::Command::new(tether)
            .args(["acp", "--url", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting `{} acp`", tether.display()))?;
        let stdin = child.stdin.take().context("tether acp stdin")?;
        let stdout = child.stdout.take().context("tether acp stdout")?;
        let target: Target = Arc::new(Mutex::new(None));
        let (tx, replies) = mpsc::unbounded_channel();
        let reader = tokio::spawn({
            let target = target.clone();
            async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let now = clock.now_ns();
                    let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if line.contains(CHUNK) {
                        let params = &msg["params"];
                        let text = params["update"]["content"]["text"].as_str();
                        let session = params["sessionId"].as_str();
                        let guard = target.lock().ok();
                        if let (Some(Some((id, stamps))), Some(text), Some(session)) =
                            (guard.as_deref(), text, session)
                            && id == session
                            && let Some(seq) = leading_number(text)
                        {
                            stamps.set(seq, now);
                        }
                    } else if msg.get("id").is_some() && msg.get("method").is_none() {
                        let _ = tx.send(msg);
                    }
                }
            }
        });
        let mut editor = AcpEditor {
            child,
            stdin,
            replies,
            target,
            next_id: 1,
            reader,
        };
        editor
            .request(
                "initialize",
                json!({"protocolVersion": 1, "clientCapabilities": {},
                       "clientInfo": {"name": "tether-bench", "version": "0"}}),
            )
            .await
            .context("ACP initialize")?;
        Ok(editor)
    }

    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .context("writing to tether acp")?;
        self.stdin.flush().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let reply = tokio::time::timeout_at(deadline, self.replies.recv())
                .await
                .with_context(|| format!("no reply to {method} within 30 s"))?
                .context("tether acp exited")?;
            if reply["id"] != id {
                continue;
            }
            if let Some(e) = reply.get("error") {
                bail!("{method} failed: {e}");
            }
            return Ok(reply["result"].clone());
        }
    }

    /// Loads `session_id` (its history is replayed first) and stamps its chunks into `received`.
    pub async fn load(&mut self, session_id: &str, received: Arc<Stamps>) -> anyhow::Result<()> {
        if let Ok(mut t) = self.target.lock() {
            *t = Some((session_id.to_owned(), received));
        }
        self.request(
            "session/load",
            json!({"sessionId": session_id, "cwd": "/", "mcpServers": []}),
        )
        .await
        .context("ACP session/load")?;
        Ok(())
    }

    /// Waits (at most `limit`) until `stamps` holds `chunks` chunks.
    pub async fn wait_all(stamps: &Stamps, chunks: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while stamps.count() < chunks && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends `tether acp` as an editor does: end of input (then a kill if it lingers).
    pub async fn stop(mut self) {
        let _ = self.stdin.shutdown().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
