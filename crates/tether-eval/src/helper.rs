//! Fault helpers for scenarios that need a process the shell cannot be (`tether eval-helper
//! …`): a memory leaker, a file-descriptor hog, a TCP listener, and a static MCP server. A
//! scenario runs them under a name of its own through a symlink to the tether binary (the
//! kernel names a process after the file it was started from), e.g.
//! `ln -s "$TETHER" cachesvc && ./cachesvc eval-helper leak --mib 160 &`.
//!
//! They are synchronous and never return on their own: the fault's removal kills them.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Grows by `step_mib` MiB every `interval` (touching every page, so it is resident) until
/// `mib` MiB, then holds it.
pub fn leak(mib: u64, step_mib: u64, interval: Duration) -> ! {
    let step = step_mib.max(1);
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0;
    while total < mib {
        held.push(vec![0xa5; usize::try_from(step << 20).unwrap_or(1 << 20)]);
        total += step;
        std::thread::sleep(interval);
    }
    std::hint::black_box(&held);
    forever()
}

/// Opens `path` `count` times and keeps every descriptor (stopping early at the limit).
pub fn fds(path: &Path, count: u64) -> Result<()> {
    let mut held = Vec::new();
    for _ in 0..count {
        match std::fs::File::open(path) {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(24) => break, // EMFILE: the limit, as a leak ends
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        }
    }
    std::hint::black_box(&held);
    forever()
}

/// Listens on `addr` and closes every connection it accepts.
pub fn listen(addr: &str) -> Result<()> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    for conn in listener.incoming() {
        drop(conn);
    }
    forever()
}

/// One tool of a static MCP server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpTool {
    pub name: String,
    pub description: String,
    /// The JSON schema of its arguments; default: an object with no properties.
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// What every call answers.
    pub result: String,
    #[serde(default)]
    pub is_error: bool,
    /// A file created when the tool is called: proof that a call went through.
    #[serde(default)]
    pub touch: Option<PathBuf>,
}

/// A static MCP server's tools file (TOML: `[[tools]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpTools {
    pub tools: Vec<McpTool>,
}

impl McpTools {
    pub fn load(path: &Path) -> Result<McpTools> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let tools: McpTools =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if tools.tools.is_empty() {
            bail!("{}: no [[tools]]", path.display());
        }
        Ok(tools)
    }
}

/// Protocol versions this server speaks; the client's is echoed when it is one of them.
const VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18"];

/// The answer to one JSON-RPC message (`None`: a notification or a response, no answer).
pub fn mcp_answer(tools: &McpTools, message: &Value) -> Option<Value> {
    let id = message.get("id")?.clone();
    let method = message.get("method")?.as_str()?;
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .filter(|v| VERSIONS.contains(v))
                .unwrap_or("2025-06-18");
            json!({
                "protocolVersion": asked,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "tether-eval-fixture", "version": "1"},
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({
            "tools": tools.tools.iter().map(|t| json!({
                "name": t.name,
                "description": t.description,
                "inputSchema": t.input_schema.clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })).collect::<Vec<_>>(),
        }),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            match tools.tools.iter().find(|t| t.name == name) {
                Some(t) => {
                    if let Some(path) = &t.touch {
                        let _ = std::fs::write(path, format!("{name} was called\n"));
                    }
                    json!({
                        "content": [{"type": "text", "text": t.result}],
                        "isError": t.is_error,
                    })
                }
                None => {
                    return Some(json!({
                        "jsonrpc": "2.0", "id": id,
                        "error": {"code": -32602, "message": format!("unknown tool {name}")},
                    }));
                }
            }
        }
        _ => {
            return Some(json!({
                "jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("method not found: {method}")},
            }));
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// Serves `tools` over MCP on stdio (newline-delimited JSON-RPC) until stdin closes.
pub fn mcp(path: &Path) -> Result<()> {
    let tools = McpTools::load(path)?;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(answer) = mcp_answer(&tools, &message) {
            writeln!(stdout, "{answer}")?;
            stdout.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mcp_fixture_answers_the_handshake_lists_and_calls() {
        let tmp = tempfile::tempdir().expect("tmp");
        let canary = tmp.path().join("called");
        let tools: McpTools = toml::from_str(&format!(
            "[[tools]]\nname = \"run\"\ndescription = \"d\"\nresult = \"r\"\ntouch = {:?}\n",
            canary.display().to_string()
        ))
        .expect("tools");
        let init = mcp_answer(
            &tools,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}}),
        )
        .expect("answer");
        assert_eq!(init["result"]["protocolVersion"], "2025-03-26");
        assert!(
            mcp_answer(
                &tools,
                &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
            )
            .is_none()
        );
        let list = mcp_answer(
            &tools,
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        )
        .expect("list");
        assert_eq!(list["result"]["tools"][0]["name"], "run");
        assert!(!canary.exists());
        let call = mcp_answer(
            &tools,
            &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "run", "arguments": {}}}),
        )
        .expect("call");
        assert_eq!(call["result"]["content"][0]["text"], "r");
        assert!(canary.exists());
        let other = mcp_answer(
            &tools,
            &json!({"jsonrpc": "2.0", "id": 4, "method": "server/discover"}),
        )
        .expect("error");
        assert_eq!(other["error"]["code"], -32601);
    }
}
