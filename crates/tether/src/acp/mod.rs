//! `tether acp`: an Agent Client Protocol agent on stdio, launched by an editor (Zed, or any
//! ACP client). It is a client of the local agent like `tether chat`: it connects over the
//! Unix socket (or `--url`/`--token`) and translates between ACP and the client protocol.
//!
//! * The ACP `sessionId` is the tether `session_id`, so any client can name the same session.
//! * `session/new` creates a chat session (with `--session ID`, it joins that session instead,
//!   replaying its history right after the reply); `session/load` attaches with `after_seq: 0`
//!   and replays the history as `session/update` notifications before it replies.
//! * `session/prompt` sends `input` with `queue: true` (so a prompt waits behind a turn another
//!   client runs) and completes when its own turn ends.
//! * Every event of an attached session becomes a `session/update`; a permission prompt this
//!   client may answer becomes `session/request_permission`.
//!
//! The ACP side runs on the SDK's connection (`agent-client-protocol`); its handlers only hand
//! requests to [`link::Link`], the one task that owns the connection to the agent and all state.

mod link;
mod map;

use crate::client_cmds::ConnectArgs;
use agent_client_protocol::v1::schema as s;
use agent_client_protocol::{
    Agent, JsonRpcMessage, JsonRpcNotification, JsonRpcRequest, Lines, UntypedMessage, v1,
};
use anyhow::Result;
use futures_util::StreamExt;
use link::{Cmd, End, Link};
use serde::de::DeserializeOwned;
use std::io;
use std::pin::Pin;
use tether_proto::SessionId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// `tether acp`: serves ACP on stdin/stdout until the editor closes stdin (exit 0) or the agent
/// goes away (an error naming why, so the editor can show it).
pub async fn run(connect: &ConnectArgs, join: Option<String>) -> Result<()> {
    let (client, hello) = connect.connect_as("tether-acp").await?;
    let (tx, rx) = mpsc::unbounded_channel::<Cmd>();
    let link = Link::new(client, hello, join.map(SessionId), tx.clone());
    let (tx1, tx2, tx3, tx4, tx5, tx6) = (
        tx.clone(),
        tx.clone(),
        tx.clone(),
        tx.clone(),
        tx.clone(),
        tx,
    );
    let end = Agent
        .v1()
        .name("tether-acp")
        .on_receive_request(
            async move |req: Checked<s::InitializeRequest>, responder, _cx| {
                let editor = req.0.client_info.map(|i| i.title.unwrap_or(i.name));
                forward(&tx1, Cmd::Initialize(editor, responder))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |_req: Checked<s::NewSessionRequest>, responder, _cx| {
                forward(&tx2, Cmd::New(responder))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: Checked<s::LoadSessionRequest>, responder, _cx| {
                let id = SessionId(req.0.session_id.0.to_string());
                forward(&tx3, Cmd::Load(id, responder))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: Checked<s::ListSessionsRequest>, responder, _cx| {
                forward(&tx4, Cmd::List(req.0, responder))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: Checked<s::PromptRequest>, responder, _cx| {
                forward(&tx5, Cmd::Prompt(req.0, responder))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_notification(
            async move |n: Checked<s::CancelNotification>, _cx| forward(&tx6, Cmd::Cancel(n.0)),
            agent_client_protocol::on_receive_notification!(),
        )
        .connect_with(stdio(), async move |cx| Ok(link.run(rx, cx).await))
        .await
        .map_err(|e| anyhow::anyhow!("the editor's ACP connection failed: {e}"))?;
    match end {
        End::EditorLeft => Ok(()),
        End::AgentGone(why) => Err(anyhow::anyhow!("{why}")),
    }
}

/// Hands a request to the link; it only stops taking them when `tether acp` is ending.
fn forward(tx: &mpsc::UnboundedSender<Cmd>, cmd: Cmd) -> Result<(), agent_client_protocol::Error> {
    tx.send(cmd).map_err(|_| {
        agent_client_protocol::Error::internal_error().data("tether acp is shutting down")
    })
}

type LineSink = Pin<Box<dyn futures_util::Sink<String, Error = io::Error> + Send>>;
type LineStream = Pin<Box<dyn futures_util::Stream<Item = io::Result<String>> + Send>>;

/// stdin and stdout as newline-delimited JSON-RPC. Each message is flushed at once: an editor
/// streams the answer as it comes. Bytes that are not UTF-8 are replaced (the SDK then answers
/// a parse error) rather than ending the connection.
fn stdio() -> Lines<LineSink, LineStream> {
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let incoming = futures_util::stream::unfold(Some(stdin), |reader| async move {
        let mut reader = reader?;
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => None,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                Some((Ok(line), Some(reader)))
            }
            // A read error ends the stream after it is reported.
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed();
    let outgoing =
        futures_util::sink::unfold(tokio::io::stdout(), |mut out, line: String| async move {
            out.write_all(line.as_bytes()).await?;
            out.write_all(b"\n").await?;
            out.flush().await?;
            Ok::<_, io::Error>(out)
        });
    Lines::new(Box::pin(outgoing) as LineSink, incoming as LineStream)
}

/// An ACP message whose params are decoded naming the field at fault: a missing or mistyped
/// field gets `-32602` "Invalid params: `sessionId`: invalid type: …", not a bare serde error.
#[derive(Clone, Debug)]
pub(crate) struct Checked<T>(pub T);

impl<T> JsonRpcMessage for Checked<T>
where
    T: JsonRpcMessage + DeserializeOwned,
{
    fn matches_method(method: &str) -> bool {
        T::matches_method(method)
    }

    fn method(&self) -> &str {
        self.0.method()
    }

    fn to_untyped_message(&self) -> Result<UntypedMessage, agent_client_protocol::Error> {
        self.0.to_untyped_message()
    }

    fn parse_message(
        method: &str,
        params: &serde_json::Value,
    ) -> Result<Self, agent_client_protocol::Error> {
        if !T::matches_method(method) {
            return Err(agent_client_protocol::Error::method_not_found());
        }
        decode_params(params).map(Checked)
    }
}

impl<T> JsonRpcRequest for Checked<T>
where
    T: JsonRpcRequest + DeserializeOwned,
{
    type Response = T::Response;
}

impl<T> JsonRpcNotification for Checked<T> where T: JsonRpcNotification + DeserializeOwned {}

/// Decodes params, naming the offending field (its path, e.g. `prompt[0]`) in the error.
pub(crate) fn decode_params<T: DeserializeOwned>(
    params: &serde_json::Value,
) -> Result<T, agent_client_protocol::Error> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // At the root serde already names the field ("missing field `sessionId`").
        let (message, field) = if path == "." || path.is_empty() {
            (format!("Invalid params: {inner}"), None)
        } else {
            (format!("Invalid params: `{path}`: {inner}"), Some(path))
        };
        let mut data = serde_json::json!({ "error": inner });
        if let Some(field) = field {
            data["field"] = serde_json::Value::String(field);
        }
        agent_client_protocol::Error::new(agent_client_protocol::ErrorCode::INVALID_PARAMS, message)
            .data(data)
    })
}

/// The responder type every ACP request handler gets on a v1 connection.
pub(crate) type Responder<T> = v1::Responder<T>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_params_name_the_field() {
        let e =
            decode_params::<s::PromptRequest>(&serde_json::json!({"sessionId": 5, "prompt": []}))
                .expect_err("mistyped");
        assert_eq!(e.code, agent_client_protocol::ErrorCode::INVALID_PARAMS);
        assert!(e.message.contains("`sessionId`"), "{}", e.message);
        let e = decode_params::<s::PromptRequest>(&serde_json::json!({"sessionId": "x"}))
            .expect_err("missing");
        assert!(e.message.contains("`prompt`"), "{}", e.message);
        let e = decode_params::<s::PromptRequest>(
            &serde_json::json!({"sessionId": "x", "prompt": [{"type": "text", "text": 3}]}),
        )
        .expect_err("nested");
        assert!(e.message.contains("prompt[0]"), "{}", e.message);
        let ok = decode_params::<s::PromptRequest>(
            &serde_json::json!({"sessionId": "x", "prompt": [{"type": "text", "text": "hi"}]}),
        )
        .expect("valid");
        assert_eq!(ok.session_id.0.as_ref(), "x");
    }
}
