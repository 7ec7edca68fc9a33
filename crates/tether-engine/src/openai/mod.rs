//! The `openai` model provider: OpenAI-compatible chat completions, streamed.
//!
//! Works with OpenAI and the many servers that speak its chat-completions API (vLLM, Ollama,
//! llama.cpp, LiteLLM, OpenRouter, DeepSeek…).
//!
//! * One call posts `{base_url}/chat/completions` with `stream: true` and reads the
//!   server-sent events: text deltas become [`ModelChunk::Text`], `reasoning_content` (or
//!   `reasoning`) deltas [`ModelChunk::Reasoning`]; tool-call fragments are assembled by their
//!   `index` and handed out whole when the answer finishes; the usage report comes last. With
//!   `stream = false` the answer is read as one JSON document.
//! * Usage: the server's report, or, from a server that sends none, an estimate of the prompt
//!   sent and the answer read (about 4 bytes a token, see [`crate::context`]) marked
//!   `estimated`.
//! * Dialects of real servers: an assistant message with tool calls carries `content: ""`
//!   (OpenAI's clients send null, which llama-cpp-python refuses with HTTP 500); requests with
//!   tools carry `tool_choice` ([`ToolChoice`], `"auto"` unless configured: llama-cpp-python's
//!   function-calling handlers ignore tools without it); fragments that repeat a call's `id`,
//!   `type` and name are one call; the legacy `function_call` counts only when no `tool_calls`
//!   came (llama-cpp-python sends the same call in both); SSE comments (`: ping`) are skipped.
//! * Retries: HTTP 429/500/502/503/504, connection failures, a 200 answer that carried nothing
//!   (no text, reasoning, tool call or finish reason), and a stream that fails before
//!   anything was handed out are retried with jittered exponential backoff (a server's
//!   `Retry-After` is honoured, capped at `max_delay`). Other HTTP errors are request problems:
//!   reported at once, with the server's message, and never retried or failed over.
//! * Failover: when an endpoint runs out of tries on a retryable failure, the next endpoint in
//!   [`OpenAiConfig::endpoints`] is tried.
//! * Once a chunk was handed out, a failure ends the stream ([`ModelError::Stream`], or
//!   [`ModelError::Idle`] after `idle_timeout` of silence): a retry would repeat output.
//! * Per endpoint, a history estimated above `compact_at × context_window` is compacted
//!   ([`crate::context::compact`]) before sending.
//! * Dropping the stream drops the connection; nothing is spawned.
//!
//! [`ModelChunk::Text`]: crate::model::ModelChunk::Text
//! [`ModelChunk::Reasoning`]: crate::model::ModelChunk::Reasoning
//! [`ModelError::Stream`]: crate::model::ModelError::Stream
//! [`ModelError::Idle`]: crate::model::ModelError::Idle

mod call;
mod config;
mod sse;
mod wire;

pub use config::{ConfigError, OpenAiConfig, OpenAiEndpoint, RetryPolicy, ToolChoice};

use crate::model::{Message, ModelChunk, ModelError, ModelProvider, ModelRequest, ModelStream};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_proto::Usage;

/// Installs `ring` as the process-wide rustls crypto provider unless one is installed already.
/// reqwest is built without a provider of its own; call this before building any client (the
/// provider and [`probe`] do).
pub fn ensure_tls_provider() {
    tether_host::tls::ensure_provider();
}

/// An endpoint ready to be called.
pub(crate) struct Target {
    pub endpoint: OpenAiEndpoint,
    pub url: String,
    pub key: Option<String>,
}

/// What every call of one provider shares.
pub(crate) struct Shared {
    pub client: reqwest::Client,
    pub endpoints: Vec<Target>,
    pub retry: RetryPolicy,
    pub idle_timeout: Duration,
}

/// The OpenAI-compatible provider. Cheap to share: calls only hold an `Arc` of it.
pub struct OpenAiProvider {
    shared: Arc<Shared>,
}

impl OpenAiProvider {
    /// Checks `config`, reads API keys from the environment where configured, and builds the
    /// HTTP client.
    pub fn new(config: OpenAiConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for (i, endpoint) in config.endpoints.into_iter().enumerate() {
            let key = endpoint.resolve_api_key(&OpenAiConfig::endpoint_key(i))?;
            endpoints.push(Target {
                url: endpoint.chat_completions_url(),
                endpoint,
                key,
            });
        }
        ensure_tls_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .user_agent(concat!("tether/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ConfigError::new(
                    "model",
                    format!(
                        "cannot set up the HTTP client for the model: {}",
                        tether_host::text::error_chain(&e)
                    ),
                )
            })?;
        Ok(OpenAiProvider {
            shared: Arc::new(Shared {
                client,
                endpoints,
                retry: config.retry,
                idle_timeout: config.idle_timeout,
            }),
        })
    }

    /// The endpoints in the order they are tried.
    pub fn endpoints(&self) -> impl Iterator<Item = &OpenAiEndpoint> {
        self.shared.endpoints.iter().map(|t| &t.endpoint)
    }
}

impl ModelProvider for OpenAiProvider {
    fn describe(&self) -> String {
        let mut text = String::from("openai");
        if let Some(primary) = self.shared.endpoints.first() {
            text.push(' ');
            text.push_str(&primary.endpoint.model);
        }
        match self.shared.endpoints.len() {
            0 | 1 => {}
            2 => text.push_str(" (+1 fallback)"),
            n => text.push_str(&format!(" (+{} fallbacks)", n - 1)),
        }
        text
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        call::start(Arc::clone(&self.shared), request)
    }
}

/// What [`probe`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// From sending the request to the end of the answer.
    pub latency: Duration,
    /// From sending the request to the first streamed chunk.
    pub first_chunk: Option<Duration>,
    /// The start of the answer (or of the reasoning, when the model only reasoned).
    pub model_answer_preview: String,
    pub usage: Option<Usage>,
}

/// The prompt of [`probe`].
pub const PROBE_PROMPT: &str = "Reply with the single word: ready";
/// The longest preview [`probe`] returns, in characters.
const PREVIEW_CHARS: usize = 120;

/// Asks `endpoint` one tiny question without tools (one try, no fallback), for
/// `tether models test`. The whole exchange must finish within `timeout`.
pub async fn probe(
    endpoint: &OpenAiEndpoint,
    timeout: Duration,
) -> Result<ProbeReport, ModelError> {
    let mut endpoint = endpoint.clone();
    // Keep the answer short, in whichever field this endpoint understands.
    if let Some(n) = endpoint.max_completion_tokens.as_mut() {
        *n = (*n).min(64);
    } else if let Some(n) = endpoint.max_tokens.as_mut() {
        *n = (*n).min(64);
    }
    endpoint.context_window = None;
    let config = OpenAiConfig {
        endpoints: vec![endpoint],
        retry: RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        },
        idle_timeout: timeout,
        request_timeout: timeout,
    };
    let provider = OpenAiProvider::new(config).map_err(|e| ModelError::Other(e.to_string()))?;
    let started = Instant::now();
    let mut stream = provider.stream(ModelRequest {
        messages: vec![Message::User {
            content: PROBE_PROMPT.into(),
        }],
        tools: vec![],
    });
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut first_chunk = None;
    let mut usage = None;
    let exchange = async {
        while let Some(item) = stream.next().await {
            let chunk = item?;
            first_chunk.get_or_insert_with(|| started.elapsed());
            match chunk {
                ModelChunk::Text(t) => text.push_str(&t),
                ModelChunk::Reasoning(t) => reasoning.push_str(&t),
                ModelChunk::ToolCall(_) => {}
                ModelChunk::Usage(u) => usage = Some(u),
            }
        }
        Ok::<(), ModelError>(())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            return Err(ModelError::Other(format!(
                "the model did not finish answering within {} s",
                timeout.as_secs_f64()
            )));
        }
        Ok(result) => result?,
    }
    let preview = |s: &str| -> String {
        let s = s.trim();
        let mut out: String = s.chars().take(PREVIEW_CHARS).collect();
        if s.chars().nth(PREVIEW_CHARS).is_some() {
            out.push('…');
        }
        out
    };
    let model_answer_preview = if !text.trim().is_empty() {
        preview(&text)
    } else if !reasoning.trim().is_empty() {
        format!("(reasoning only) {}", preview(&reasoning))
    } else {
        "(empty answer)".into()
    };
    Ok(ProbeReport {
        latency: started.elapsed(),
        first_chunk,
        model_answer_preview,
        usage,
    })
}
