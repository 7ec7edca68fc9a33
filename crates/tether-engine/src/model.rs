//! The model provider interface: a streaming chat model that may ask for tool calls.
//!
//! A provider turns a [`ModelRequest`] into a stream of [`ModelChunk`]s. Dropping the stream
//! cancels the call (the HTTP connection, a scripted delay): the turn loop relies on that for
//! cancellation, so a provider must not keep working after its stream is dropped.

use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tether_host::tools::ToolSpec;
use tether_proto::Usage;

/// One message of the conversation sent to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    System {
        content: String,
    },
    User {
        content: String,
    },
    Assistant {
        content: String,
        /// Reasoning text streamed by the model; replayed to models that expect it back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallRequest>,
    },
    Tool {
        tool_call_id: String,
        name: String,
        content: String,
    },
}

/// A tool call as the model asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRequest {
    /// The model's id for the call (echoed back in the tool message).
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not yet validated.
    pub arguments: String,
}

/// What the model is asked.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
}

/// One piece of a streamed model answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelChunk {
    Text(String),
    Reasoning(String),
    /// A complete tool call (providers assemble streamed argument fragments themselves).
    ToolCall(ToolCallRequest),
    Usage(Usage),
}

/// Why a model call failed. The message is shown to users as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("model returned HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("cannot reach the model: {0}")]
    Connect(String),
    #[error("model stream broke off: {0}")]
    Stream(String),
    #[error("model sent nothing for {0} s")]
    Idle(u64),
    #[error("{0}")]
    Other(String),
}

pub type ModelStream = BoxStream<'static, Result<ModelChunk, ModelError>>;

/// A chat model with streaming and tool calls.
pub trait ModelProvider: Send + Sync {
    /// A short description for logs and `session` notices, e.g. `openai qwen2.5:7b`.
    fn describe(&self) -> String;

    /// Starts one model call. Errors may arrive as the first item of the stream.
    fn stream(&self, request: ModelRequest) -> ModelStream;
}
