//! The scripted model provider: replays model responses from a JSON file, one per model call.
//!
//! ```json
//! {"responses": [
//!   {"text": "Let me look.", "chunk_delay_ms": 20},
//!   {"tool_calls": [{"tool": "shell", "args": {"command": "uname -a"}}]},
//!   {"text": "done", "usage": {"prompt_tokens": 900, "completion_tokens": 100, "total_tokens": 1000}}
//! ], "loop": false}
//! ```
//!
//! Which response answers a call is decided by the conversation, not by hidden state: the
//! n-th model call of a session (counted as assistant messages already in the conversation)
//! gets response n. So every session replays the script from the top, and a session restored
//! after a restart continues where it stopped. With `"loop": true` the script starts over when
//! it runs out; otherwise the call fails with a clear error.

use crate::model::{
    Message, ModelChunk, ModelError, ModelProvider, ModelRequest, ModelStream, ToolCallRequest,
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// One scripted model answer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedResponse {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub reasoning: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<ScriptedToolCall>,
    /// Delay between streamed chunks, in milliseconds.
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// Fail this call with the given message instead of answering.
    #[serde(default)]
    pub error: Option<String>,
    /// The token counts this call reports, as a model server's `usage` (none by default).
    #[serde(default)]
    pub usage: Option<tether_proto::Usage>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedToolCall {
    pub tool: String,
    #[serde(default = "empty_object")]
    pub args: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub responses: Vec<ScriptedResponse>,
    #[serde(default, rename = "loop")]
    pub repeat: bool,
}

/// The demo script built into the binary, used when no model is configured.
pub const DEMO_SCRIPT: &str = include_str!("demo_script.json");

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read script {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("script {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

pub struct ScriptedProvider {
    script: Script,
    origin: String,
}

impl ScriptedProvider {
    pub fn from_file(path: &Path) -> Result<Self, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses a script; `origin` names it in errors and in `describe()`.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ScriptError> {
        let script: Script = serde_json::from_str(text).map_err(|e| ScriptError::Invalid {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        if script.responses.is_empty() {
            return Err(ScriptError::Invalid {
                path: origin.to_owned(),
                message: "`responses` is empty".into(),
            });
        }
        for (i, r) in script.responses.iter().enumerate() {
            if r.text.is_none()
                && r.reasoning.is_none()
                && r.tool_calls.is_empty()
                && r.error.is_none()
            {
                return Err(ScriptError::Invalid {
                    path: origin.to_owned(),
                    message: format!(
                        "response {i} has none of `text`, `reasoning`, `tool_calls`, `error`"
                    ),
                });
            }
        }
        Ok(ScriptedProvider {
            script,
            origin: origin.to_owned(),
        })
    }

    pub fn demo() -> Self {
        // The embedded demo script is checked by a unit test; fall back to a one-liner anyway.
        Self::from_json(DEMO_SCRIPT, "built-in demo script").unwrap_or_else(|_| ScriptedProvider {
            script: Script {
                responses: vec![ScriptedResponse {
                    text: Some("Hello from the tether demo model.".into()),
                    reasoning: None,
                    tool_calls: vec![],
                    chunk_delay_ms: 0,
                    error: None,
                    usage: None,
                }],
                repeat: true,
            },
            origin: "built-in demo script".into(),
        })
    }

    fn pick(&self, request: &ModelRequest) -> Result<&ScriptedResponse, ModelError> {
        // Count model calls since the session began: one assistant message per call.
        let calls = request
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Assistant { .. }))
            .count();
        let n = self.script.responses.len();
        let index = if self.script.repeat { calls % n } else { calls };
        self.script.responses.get(index).ok_or_else(|| {
            ModelError::Other(format!(
                "scripted model: {} has {n} responses and all are used (set \"loop\": true to repeat)",
                self.origin
            ))
        })
    }
}

/// Splits text into small chunks at word boundaries, keeping the whitespace.
fn chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        current.push(ch);
        if ch.is_whitespace() && current.chars().any(|c| !c.is_whitespace()) {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl ModelProvider for ScriptedProvider {
    fn describe(&self) -> String {
        format!("scripted ({})", self.origin)
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let response = match self.pick(&request) {
            Ok(r) => r.clone(),
            Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
        };
        if let Some(message) = response.error {
            return futures_util::stream::once(async move { Err(ModelError::Other(message)) })
                .boxed();
        }
        let delay = Duration::from_millis(response.chunk_delay_ms);
        let mut items: Vec<ModelChunk> = Vec::new();
        if let Some(reasoning) = &response.reasoning {
            items.extend(chunks(reasoning).into_iter().map(ModelChunk::Reasoning));
        }
        if let Some(text) = &response.text {
            items.extend(chunks(text).into_iter().map(ModelChunk::Text));
        }
        let calls = request
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Assistant { .. }))
            .count();
        for (i, call) in response.tool_calls.iter().enumerate() {
            items.push(ModelChunk::ToolCall(ToolCallRequest {
                id: format!("script_{calls}_{i}"),
                name: call.tool.clone(),
                arguments: call.args.to_string(),
            }));
        }
        if let Some(u) = &response.usage {
            items.push(ModelChunk::Usage(u.clone()));
        }
        futures_util::stream::iter(items)
            .then(move |item| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(item)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_script_parses() {
        let p = ScriptedProvider::from_json(DEMO_SCRIPT, "demo");
        assert!(p.is_ok(), "{:?}", p.err());
    }

    #[test]
    fn chunks_keep_every_character() {
        let text = "hello  wide world\nnext";
        let parts = chunks(text);
        assert!(parts.len() > 2);
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn empty_or_meaningless_scripts_are_refused() {
        assert!(ScriptedProvider::from_json(r#"{"responses": []}"#, "t").is_err());
        assert!(ScriptedProvider::from_json(r#"{"responses": [{}]}"#, "t").is_err());
        assert!(ScriptedProvider::from_json(r#"{"responses": [{"txt": "x"}]}"#, "t").is_err());
    }
}
